//! A hostile bundle costs bounded memory before its signature is checked: `abup bundle info`
//! reads unverified manifests of up to 8 MiB, and one made of empty objects (`{},{},...`) must
//! not turn into millions of structs.
//!
//! Measured as the growth of the process's peak resident memory (VmHWM) while parsing, with the
//! peak reset just before, so the fixture does not count. Each case runs in a fresh copy of this
//! test binary and its fixture is built without temporaries: memory that was freed before the
//! parse (by an earlier case, or while building the fixture) stays resident, and the parser
//! could reuse it without the peak moving.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::Command;

use abup::bundle::{read_unverified, Error, FORMAT_VERSION, MAGIC, MAX_MANIFEST_LEN};

/// Set in the copies of this binary the test starts: the case that copy measures.
const CASE_VAR: &str = "ABUP_BUNDLE_MEMORY_CASE";
const CASES: usize = 4;
const TEST: &str = "hostile_manifests_cost_bounded_memory";

/// Peak resident memory of this process (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Resets the peak to the current resident memory (Linux: `5` to `clear_refs`) and returns it,
/// so that [`peak_rss`] then measures what happens from here on and not what came before.
fn reset_peak() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    peak_rss()
}

/// A bundle front with an arbitrary signature block and no payload, whose manifest is
/// `prefix`, then `item` repeated (comma-separated) to fill the manifest limit, then `suffix`.
/// Written into one buffer of the exact size, so that nothing is freed on the way.
fn bundle(prefix: &str, item: &str, suffix: &str) -> Vec<u8> {
    let n = (MAX_MANIFEST_LEN - prefix.len() - suffix.len()) / (item.len() + 1);
    let manifest_len = prefix.len() + n * (item.len() + 1) - 1 + suffix.len();
    assert!(manifest_len <= MAX_MANIFEST_LEN);
    let mut b = Vec::with_capacity(MAGIC.len() + 8 + manifest_len + 96);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&(manifest_len as u32).to_le_bytes());
    b.extend_from_slice(prefix.as_bytes());
    for i in 0..n {
        if i > 0 {
            b.push(b',');
        }
        b.extend_from_slice(item.as_bytes());
    }
    b.extend_from_slice(suffix.as_bytes());
    b.extend_from_slice(&[0; 96]);
    assert_eq!(b.len(), b.capacity(), "the bundle was built in place");
    b
}

/// Case `case`'s bundle: a manifest of empty images, of chunk lists of empty chunks, of
/// minimal chunks, and of arrays where chunks belong.
fn case_bundle(case: usize) -> Vec<u8> {
    let top = r#"{"compatible":"c","version":"v","security_version":0,"created":0,"images":["#;
    let chunks = format!("{top}{{\"chunks\":[");
    match case {
        0 => bundle(top, "{}", "]}"),
        1 => bundle(&chunks, "{}", "]}]}"),
        2 => bundle(&chunks, r#"{"op":"data"}"#, "]}]}"),
        3 => bundle(&chunks, "[]", "]}]}"),
        _ => unreachable!("case {case}"),
    }
}

/// Parses case `case`'s bundle and bounds the growth of the peak.
fn measure(case: usize) {
    let bundle = case_bundle(case);
    let before = reset_peak();
    match read_unverified(&mut bundle.as_slice()) {
        Err(Error::ImageCount { count }) => assert!(count > 1_000_000),
        Err(Error::TooManyChunks { count }) => assert!(count > 500_000),
        Err(Error::ManifestSyntax { .. }) => {}
        r => panic!("case {case}: {r:?}"),
    }
    let grown = peak_rss().saturating_sub(before);
    eprintln!("case {case}: parsing grew the peak by {} KiB", grown >> 10);
    // The manifest (close to 8 MiB) is read whole: a measurement that misses most of it is
    // blind, not a pass.
    assert!(
        grown >= MAX_MANIFEST_LEN as u64 / 2,
        "case {case}: the peak grew by only {} KiB, the manifest read unseen",
        grown >> 10
    );
    // The manifest itself (8 MiB, read once) and at most 65,536 kept chunks.
    assert!(
        grown < 48 << 20,
        "case {case}: peak memory grew by {} MiB",
        grown >> 20
    );
}

#[test]
fn hostile_manifests_cost_bounded_memory() {
    if let Some(case) = std::env::var_os(CASE_VAR) {
        measure(case.to_str().unwrap().parse().unwrap());
        return;
    }
    for case in 0..CASES {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env(CASE_VAR, case.to_string())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprint!("{stderr}");
        assert!(
            out.status.success(),
            "case {case} failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr.contains(&format!("case {case}: parsing grew")),
            "case {case} was not measured: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
