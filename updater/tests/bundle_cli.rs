//! `abup keygen` and `abup bundle create | info | verify` as the binary.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use common::fixture::{image, Fixture};

#[test]
fn create_is_deterministic_and_info_and_verify_report() {
    let f = Fixture::new(1 << 20, "");
    let a = f.bundle("a.abup", &image(700_000, 30), "2.0", 7);
    let b = f.bundle("b.abup", &image(700_000, 30), "2.0", 7);
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "same inputs, same bytes"
    );

    let info = f.abup(&["bundle", "info", "--json", a.to_str().unwrap()]);
    info.success();
    let v: serde_json::Value = serde_json::from_str(&info.stdout_text()).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["verified"], false);
    assert_eq!(v["security_version"], 7);
    assert_eq!(v["compatible"], "abup-test");
    let info = f.abup(&[
        "bundle",
        "info",
        "--json",
        "--keyring",
        f.keyring.to_str().unwrap(),
        a.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&info.stdout_text()).unwrap();
    assert_eq!(v["verified"], true);

    f.abup(&[
        "bundle",
        "verify",
        "--keyring",
        f.keyring.to_str().unwrap(),
        a.to_str().unwrap(),
    ])
    .success();
    // Another device's keyring does not trust it.
    let other = Fixture::new(1 << 20, "");
    let r = f.abup(&[
        "bundle",
        "verify",
        "--keyring",
        other.keyring.to_str().unwrap(),
        a.to_str().unwrap(),
    ]);
    assert_eq!(r.code, Some(4));
    assert!(
        r.stderr_text().contains("not in the keyring"),
        "{}",
        r.stderr_text()
    );

    // keygen never replaces a key, and leaves nothing behind when it refuses.
    let r = f.abup(&[
        "keygen",
        "--secret",
        f.key.to_str().unwrap(),
        "--public",
        f.t.path("new.pem").to_str().unwrap(),
    ]);
    assert_eq!(r.code, Some(1));
    assert!(!f.t.path("new.pem").exists());
    let r = f.abup(&[
        "keygen",
        "--secret",
        f.t.path("s.pem").to_str().unwrap(),
        "--public",
        f.t.path("no/dir/p.pem").to_str().unwrap(),
    ]);
    assert_eq!(r.code, Some(1));
    assert!(!f.t.path("s.pem").exists(), "no stray secret key");
}

/// A bundle is there to be served: it gets the mode of any new file, 0666 less the umask, so
/// that a web server running as another user can read it (a temporary file's 0600 would not).
#[test]
fn bundles_get_the_mode_the_umask_gives() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new(1 << 20, "");
    let img = f.t.path("rootfs.img");
    std::fs::write(&img, image(300_000, 31)).unwrap();
    for (umask, mode) in [("022", 0o644), ("027", 0o640), ("002", 0o664)] {
        let out = f.t.path(&format!("umask-{umask}.abup"));
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_abup"))
            .args([
                "bundle",
                "create",
                "--compatible",
                "abup-test",
                "--version",
                "1",
            ])
            .arg("--key")
            .arg(&f.key)
            .arg("--image")
            .arg(&img)
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success());
        let got = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(got, mode, "umask {umask}: mode {got:o}");
    }
}
