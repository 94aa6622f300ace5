//! Cut points for fault-injection tests. Every write that reaches the disk (a slot chunk, the
//! bootloader environment, a state file) is counted here, and `-vv` logs each write with its
//! number, which is how tests find out how many there are.
//!
//! Builds with the `fault-injection` feature (test builds: `abup`'s dev-dependency on itself
//! turns it on; never a release) obey two switches. With `ABUP_CUT_AFTER_WRITES=N` in the
//! environment the process stops right after its N-th write, as a power cut would stop it, so
//! tests can check what every prefix of an install leaves behind. `ABUP_PAUSE_AFTER_WRITES=N`
//! stops the process (SIGSTOP) after its N-th write instead, so a test can change the disk
//! behind abup's back before it goes on (SIGCONT). Other builds ignore both.
//!
//! A power cut also loses what was written but not yet synced: the page cache, the disk's
//! volatile write cache. So while a cut is armed, every slot write that is not followed by a
//! sync of its device is remembered with the bytes it overwrote, and the cut puts those bytes
//! back before the process dies: the worst a cut can do, and what makes a missing sync before
//! a journal checkpoint visible to the tests. Environment and state files are synced before
//! their write is counted, so they have nothing pending.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

static WRITES: AtomicU64 = AtomicU64::new(0);

/// Slot writes not yet synced, oldest first: the file, where, and the bytes it held before.
static UNSYNCED: Mutex<Vec<Unsynced>> = Mutex::new(Vec::new());

#[derive(Debug)]
struct Unsynced {
    file: File,
    id: (u64, u64),
    offset: u64,
    before: Vec<u8>,
}

fn number(var: &str) -> Option<u64> {
    std::env::var(var).ok().and_then(|v| v.parse().ok())
}

fn limit() -> Option<u64> {
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    *LIMIT.get_or_init(|| number("ABUP_CUT_AFTER_WRITES").filter(|_| ARMED))
}

fn pause() -> Option<u64> {
    static PAUSE: OnceLock<Option<u64>> = OnceLock::new();
    *PAUSE.get_or_init(|| number("ABUP_PAUSE_AFTER_WRITES").filter(|_| ARMED))
}

/// Whether this build obeys the switches at all.
const ARMED: bool = cfg!(feature = "fault-injection");

fn identity(file: &File) -> Option<(u64, u64)> {
    file.metadata().ok().map(|m| (m.dev(), m.ino()))
}

/// Called before `len` bytes at `offset` of `file` are overwritten without a sync: remembers
/// what they held, so that a cut can lose the write. Does nothing unless a cut is armed.
pub fn unsynced_write(file: &File, offset: u64, len: usize) {
    if limit().is_none() {
        return;
    }
    let (Some(id), Ok(copy)) = (identity(file), file.try_clone()) else {
        return;
    };
    let mut before = vec![0; len];
    let n = read_up_to(file, offset, &mut before);
    before.truncate(n);
    if let Ok(mut pending) = UNSYNCED.lock() {
        pending.push(Unsynced {
            file: copy,
            id,
            offset,
            before,
        });
    }
}

/// Everything written to `file` so far is durable.
pub fn synced(file: &File) {
    if limit().is_none() {
        return;
    }
    let id = identity(file);
    if let Ok(mut pending) = UNSYNCED.lock() {
        pending.retain(|p| Some(p.id) != id);
    }
}

fn read_up_to(file: &File, offset: u64, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

/// Records one durable write; stops the process if it is the one a test cuts or pauses after.
pub fn wrote(what: &str) {
    let n = WRITES.fetch_add(1, Ordering::SeqCst) + 1;
    log::debug!("durable write {n}: {what}");
    if pause() == Some(n) {
        eprintln!("abup: paused after write {n} ({what}) for a test");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
    }
    if limit() == Some(n) {
        let lost = lose_unsynced();
        eprintln!(
            "abup: cut after write {n} ({what}) for a fault-injection test; \
             {lost} unsynced bytes lost"
        );
        std::process::abort();
    }
}

/// Puts back what every unsynced write overwrote, newest first, and makes that durable.
fn lose_unsynced() -> usize {
    let Ok(mut pending) = UNSYNCED.lock() else {
        return 0;
    };
    let mut lost = 0;
    while let Some(p) = pending.pop() {
        if p.file.write_all_at(&p.before, p.offset).is_ok() {
            lost += p.before.len();
        }
        let _ = p.file.sync_data();
    }
    lost
}

/// The external tool `name` (resize2fs), as a command to run. With
/// `ABUP_CUT_TOOL=<name>:N` armed, it runs under strace, which kills it (SIGKILL) as it
/// starts its N-th write to a file or device, so tests can cut inside the tool's own writes:
/// everything it wrote before is in the kernel, nothing after. Then [`tool_exited`] cuts abup.
pub fn tool(name: &str) -> std::process::Command {
    match tool_cut(name) {
        Some(n) => {
            let mut cmd = std::process::Command::new("strace");
            cmd.args([
                "-f",
                "-qq",
                "-o",
                "/dev/null",
                "-e",
                "trace=pwrite64,pwritev,pwritev2",
            ])
            .arg("-e")
            .arg(format!(
                "inject=pwrite64,pwritev,pwritev2:signal=KILL:when={n}"
            ))
            .arg(name);
            cmd
        }
        None => std::process::Command::new(name),
    }
}

fn tool_cut(name: &str) -> Option<u64> {
    if !ARMED {
        return None;
    }
    let spec = std::env::var("ABUP_CUT_TOOL").ok()?;
    let (tool, n) = spec.split_once(':')?;
    (tool == name).then(|| n.parse().ok()).flatten()
}

/// After a tool run by [`tool`]: a tool the armed cut killed takes abup down with it.
pub fn tool_exited(name: &str, status: &std::process::ExitStatus) {
    use std::os::unix::process::ExitStatusExt;
    if let (Some(n), Some(9)) = (tool_cut(name), status.signal()) {
        eprintln!("abup: cut in {name} at its write {n} for a fault-injection test");
        std::process::abort();
    }
}
