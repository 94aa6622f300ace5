//! The man pages and shell completions are generated from the command-line definition, so
//! they cannot drift from it; this checks they are generated, complete and readable by man.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use common::{abup, have, Tmp};

#[test]
fn man_pages_for_every_command() {
    let t = Tmp::new();
    let dir = t.path("man");
    abup(&["generate", "man", dir.to_str().unwrap()]).success();
    for page in [
        "abup.1",
        "abup-install.1",
        "abup-provision.1",
        "abup-status.1",
        "abup-mark-good.1",
        "abup-mark-bad.1",
        "abup-mark-active.1",
        "abup-keygen.1",
        "abup-bundle.1",
        "abup-bundle-create.1",
        "abup-bundle-info.1",
        "abup-bundle-verify.1",
        "abup-env.1",
        "abup-env-get.1",
        "abup-generate.1",
    ] {
        let text =
            std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page} is not a man page"
        );
    }
    let main = std::fs::read_to_string(dir.join("abup.1")).unwrap();
    assert!(
        main.contains("another install is running"),
        "exit statuses are documented"
    );
    let install = std::fs::read_to_string(dir.join("abup-install.1")).unwrap();
    assert!(install.contains("Range"), "the long help is the man page");
    if have("man") {
        let out = std::process::Command::new("man")
            .arg("-l")
            .arg(dir.join("abup-install.1"))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80")
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("SOURCE"));
    }
}

#[test]
fn completions_for_common_shells() {
    for shell in ["bash", "zsh", "fish"] {
        let out = abup(&["generate", "completions", shell]);
        out.success();
        let text = out.stdout_text();
        for word in ["install", "mark-good", "bundle", "progress", "retry-wait"] {
            assert!(text.contains(word), "{shell} completion lacks {word}");
        }
    }
}

#[test]
fn help_documents_exit_statuses_and_bad_arguments_exit_two() {
    let out = abup(&["--help"]);
    out.success();
    for status in [
        "0  success",
        "3  `env get`",
        "4  the bundle is refused or damaged",
        "5  another install",
        "6  the bundle's source is unavailable",
        "7  a pre- or post-install hook failed",
        "8  the running slot is not confirmed",
    ] {
        assert!(out.stdout_text().contains(status), "{status}");
    }
    assert_eq!(abup(&["install"]).code, Some(2));
    assert_eq!(abup(&["no-such-command"]).code, Some(2));
}
