//! A hostile bundle costs bounded memory before its signature is checked: `abup bundle info`
//! reads unverified manifests of up to 8 MiB, and one made of empty objects (`{},{},...`) must
//! not turn into millions of structs. Alone in its test binary so that the process's peak
//! memory measures this and nothing else.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use abup::bundle::{read_unverified, Error, FORMAT_VERSION, MAGIC, MAX_MANIFEST_LEN};

/// Peak resident memory of this process (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// A bundle front with `manifest`, an arbitrary signature block and no payload.
fn front(manifest: &[u8]) -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
    b.extend_from_slice(manifest);
    b.extend_from_slice(&[0; 96]);
    b
}

/// `prefix`, then `item` repeated (comma-separated) to fill the manifest limit, then `suffix`.
fn filled(prefix: &str, item: &str, suffix: &str) -> Vec<u8> {
    let room = MAX_MANIFEST_LEN - prefix.len() - suffix.len();
    let n = room / (item.len() + 1);
    let mut m = prefix.as_bytes().to_vec();
    m.extend_from_slice(vec![item; n].join(",").as_bytes());
    m.extend_from_slice(suffix.as_bytes());
    assert!(m.len() <= MAX_MANIFEST_LEN);
    m
}

#[test]
fn hostile_manifests_cost_bounded_memory() {
    let top = r#"{"compatible":"c","version":"v","security_version":0,"created":0,"images":["#;
    let cases = [
        filled(top, "{}", "]}"),
        filled(&format!("{top}{{\"chunks\":["), "{}", "]}]}"),
        filled(&format!("{top}{{\"chunks\":["), r#"{"op":"data"}"#, "]}]}"),
        filled(&format!("{top}{{\"chunks\":["), "[]", "]}]}"),
    ];
    let bundles: Vec<Vec<u8>> = cases.iter().map(|m| front(m)).collect();
    drop(cases);
    let before = peak_rss();
    for b in &bundles {
        match read_unverified(&mut b.as_slice()) {
            Err(Error::ImageCount { count }) => assert!(count > 1_000_000),
            Err(Error::TooManyChunks { count }) => assert!(count > 500_000),
            Err(Error::ManifestSyntax { .. }) => {}
            r => panic!("{r:?}"),
        }
    }
    let grown = peak_rss().saturating_sub(before);
    // The manifest itself (8 MiB, read once) and at most 65,536 kept chunks.
    assert!(grown < 48 << 20, "peak memory grew by {} MiB", grown >> 20);
}
