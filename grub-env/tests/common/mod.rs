//! Helpers shared by the integration tests that run the reference tools.

use std::process::Command;

/// Whether a tool is installed. Outside CI a test without its tool says `skipping: ...` and
/// passes; in CI (`CI` set) it fails, so a tool missing from `scripts/install-deps` cannot turn
/// a cross-check into a silent pass.
pub fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        let why = format!("{tool} is not installed (scripts/install-deps installs it)");
        assert!(
            std::env::var_os("CI").is_none_or(|ci| ci.is_empty()),
            "{why}; CI is set, so the test fails instead of skipping"
        );
        eprintln!("skipping: {why}");
    }
    found
}
