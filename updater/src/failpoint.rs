//! Cut points for fault-injection tests. Every write that reaches the disk (a slot chunk, the
//! bootloader environment, a state file) is counted here; with `ABUP_CUT_AFTER_WRITES=N` in
//! the environment the process aborts right after its N-th write, as a power cut would stop
//! it, so tests can check what every prefix of an install leaves behind. `-vv` logs each
//! write with its number, which is how tests find out how many there are.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static WRITES: AtomicU64 = AtomicU64::new(0);

fn limit() -> Option<u64> {
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("ABUP_CUT_AFTER_WRITES")
            .ok()
            .and_then(|v| v.parse().ok())
    })
}

/// Records one durable write; aborts the process if it is the one a test cuts after.
pub fn wrote(what: &str) {
    let n = WRITES.fetch_add(1, Ordering::SeqCst) + 1;
    log::debug!("durable write {n}: {what}");
    if limit() == Some(n) {
        eprintln!("abup: cut after write {n} ({what}) for a fault-injection test");
        std::process::abort();
    }
}
