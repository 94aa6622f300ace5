//! Helpers shared by the integration tests: the reference tools, loop devices, fixtures.
#![allow(dead_code)] // each test binary uses a different subset of these helpers

use std::path::{Path, PathBuf};
use std::process::Command;

use u_boot_env::Env;

/// The tool's path, or `None` after saying on stderr which test is skipped and why. In CI
/// (`CI` set) a missing tool fails the test instead: a tool missing from
/// `scripts/install-deps` must not turn a cross-check into a silent pass.
pub fn tool(name: &str, test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        unavailable(
            test,
            &format!("{name} is not installed (scripts/install-deps installs it)"),
        );
    }
    found
}

/// True when every tool is present; reports the first missing one.
pub fn tools(names: &[&str], test: &str) -> bool {
    names.iter().all(|name| tool(name, test).is_some())
}

/// Whether the test runs as root (loop devices), with [`tool`]'s rule: a skip outside CI, a
/// failure in CI.
pub fn root(test: &str) -> bool {
    let uid = run(Command::new("id").arg("-u"));
    let root = String::from_utf8_lossy(&uid).trim() == "0";
    if !root {
        unavailable(test, "it needs root (CI runs the tests as root)");
    }
    root
}

fn unavailable(test: &str, why: &str) {
    assert!(
        std::env::var_os("CI").is_none_or(|ci| ci.is_empty()),
        "{test}: {why}; CI is set, so the test fails instead of skipping"
    );
    eprintln!("skipping: {test}: {why}");
}

/// Runs a command and returns its stdout, failing the test with its stderr otherwise.
pub fn run(command: &mut Command) -> Vec<u8> {
    let output = command.output().expect("spawning a reference tool");
    assert!(
        output.status.success(),
        "{command:?} failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// `fw_printenv -c CONFIG` as (name, value) pairs in its listing order.
pub fn fw_printenv(config: &Path) -> Vec<(String, String)> {
    parse_listing(&run(Command::new("fw_printenv").arg("-c").arg(config)))
}

/// `fw_setenv -c CONFIG NAME VALUE`.
pub fn fw_setenv(config: &Path, name: &str, value: &str) {
    run(Command::new("fw_setenv")
        .arg("-c")
        .arg(config)
        .arg(name)
        .arg(value));
}

/// A `name=value` listing, one per line.
pub fn parse_listing(text: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(text)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// An environment as (name, value) pairs in storage order, for comparison with a listing.
pub fn pairs(env: &Env) -> Vec<(String, String)> {
    env.iter()
        .map(|(n, v)| {
            (
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect()
}

/// An environment from string pairs.
pub fn env(pairs: &[(&str, &str)]) -> Env {
    let mut env = Env::new();
    for (n, v) in pairs {
        env.set(n, v).unwrap();
    }
    env
}

/// Pseudo-random bytes, so that a stray write anywhere shows.
pub fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A loop device over a file, detached when dropped, also when the test panics.
pub struct LoopDevice {
    pub path: PathBuf,
}

impl LoopDevice {
    pub fn attach(file: &Path) -> LoopDevice {
        let out = run(Command::new("losetup").args(["-f", "--show"]).arg(file));
        let path = PathBuf::from(String::from_utf8(out).unwrap().trim());
        assert!(path.starts_with("/dev/"), "losetup printed {path:?}");
        LoopDevice { path }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let status = Command::new("losetup").arg("-d").arg(&self.path).status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("could not detach {}: {status:?}", self.path.display());
        }
    }
}
