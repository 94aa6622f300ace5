//! Running the reference tools that unit tests cross-check abup against (mke2fs, debugfs,
//! sgdisk, sfdisk...), with the crate's rule for a missing one.

use std::ffi::OsString;
use std::process::Command;

/// e2fsprogs installs into /sbin, which is not on every user's PATH.
pub fn search_path() -> OsString {
    let mut path = std::env::var_os("PATH").unwrap_or_default();
    path.push(":/usr/sbin:/sbin");
    path
}

/// Whether the tools are installed, with the crate's rule: outside CI a test without them says
/// `skipping: ...` and passes; in CI (`CI` set) it fails, so a missing tool cannot turn the
/// cross-check into a silent pass.
pub fn have(tools: &[&str]) -> bool {
    let path = search_path();
    for tool in tools {
        if !std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()) {
            let why = format!("{tool} is not installed");
            assert!(
                std::env::var_os("CI").is_none_or(|ci| ci.is_empty()),
                "{why}; CI is set, so the test fails instead of skipping"
            );
            eprintln!("skipping: {why}");
            return false;
        }
    }
    true
}

pub fn run_status(tool: &str, args: &[&str], ok: &[i32]) -> String {
    let out = Command::new(tool)
        .args(args)
        .env("PATH", search_path())
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(
        out.status.code().is_some_and(|code| ok.contains(&code)),
        "{tool} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn run(tool: &str, args: &[&str]) -> String {
    run_status(tool, args, &[0])
}
