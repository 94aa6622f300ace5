//! The read-back after an install's writes can fail: the disk is changed behind abup's back
//! after abup wrote it and before abup read it back (abup is paused there with
//! `ABUP_PAUSE_AFTER_WRITES`), and the install must fail without activating the target.
//!
//! Documented outcome (README, "Installs"): a slot whose read-back does not match the
//! bundle's SHA-256 clears the journal, so the next run writes the slot again from the start;
//! a first block that does not read back as written keeps the journal, so the next run reads
//! the whole slot back again and rewrites the first block.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fixture::{image, Fixture};
use common::{durable_writes, Output};

const SLOT: u64 = 2 << 20;

fn image_v2() -> Vec<u8> {
    image(900_000, 21)
}

/// A device with B bootable, the v2 bundle, and the names of an install's durable writes.
fn device() -> (Fixture, std::path::PathBuf, Vec<String>) {
    let f = Fixture::new(SLOT, "").with_b_bootable();
    let b = f.bundle("b.abup", &image_v2(), "2.0", 1);
    let clean = f.save();
    let out = f.abup(&["-vv", "install", b.to_str().unwrap()]);
    out.success();
    let writes = durable_writes(&out);
    f.restore(&clean);
    (f, b, writes)
}

/// `abup install BUNDLE`, stopped after its durable write number `pause` (1-based) while
/// `tamper` runs.
fn install_tampered(f: &Fixture, bundle: &Path, pause: usize, tamper: impl FnOnce()) -> Output {
    let (out, err) = (f.t.path("stdout"), f.t.path("stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_abup"))
        .args(["install", bundle.to_str().unwrap()])
        .env("ABUP_CONFIG", &f.board)
        .env("ABUP_PROC_CMDLINE", &f.cmdline)
        .env("ABUP_PAUSE_AFTER_WRITES", pause.to_string())
        // Files, not pipes: a stopped child must not wait for a reader.
        .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
        .spawn()
        .unwrap();
    let pid = child.id();
    let stat = format!("/proc/{pid}/stat");
    let start = Instant::now();
    loop {
        let s = std::fs::read_to_string(&stat).unwrap_or_default();
        // The state follows the command name in parentheses.
        if s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('T')
        {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "abup ended ({status}) before pausing: {}",
                std::fs::read_to_string(&err).unwrap()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "abup never paused"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    tamper();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    Output {
        code: status.code(),
        stdout: std::fs::read(&out).unwrap(),
        stderr: std::fs::read(&err).unwrap(),
    }
}

/// Flips one byte of slot B, as a bad medium or someone else's write would.
fn corrupt(f: &Fixture, offset: u64) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(f.t.path("slot-b"))
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    file.write_all_at(&[byte[0] ^ 0x5a], offset).unwrap();
}

/// The install failed without activating anything: A boots next, B is out of rotation.
fn check_refused(f: &Fixture, out: &Output, slot_a: &[u8], word: &str) {
    let err = out.stderr_text();
    assert_eq!(out.code, Some(1), "{err}");
    assert!(err.contains(word), "the error should say {word:?}: {err}");
    let s = f.status();
    assert_eq!(s["next_boot"], "A", "{s}");
    assert_eq!(s["slots"][1]["good"], false, "{s}");
    assert_eq!(s["slots"][1]["bundle"], serde_json::Value::Null, "{s}");
    assert_eq!(s["last_install"]["outcome"], "failed", "{s}");
    assert_eq!(f.slot("A"), slot_a, "the running slot was written");
}

fn check_installed(f: &Fixture) {
    let img = image_v2();
    assert_eq!(&f.slot("B")[..img.len()], &img[..]);
    let s = f.status();
    assert_eq!(s["next_boot"], "B", "{s}");
}

#[test]
fn a_slot_changed_before_its_read_back_fails_the_install_and_starts_over() {
    let (f, b, writes) = device();
    let slot_a = f.slot("A");
    // The last checkpoint of the payload: its region is synced and journalled, and not yet
    // handed to the read-back.
    let first_block = writes
        .iter()
        .rposition(|w| w.ends_with("slot-b at 0"))
        .unwrap();
    let last_checkpoint = writes[..first_block]
        .iter()
        .rposition(|w| w.ends_with("install.json"))
        .unwrap();
    let out = install_tampered(&f, &b, last_checkpoint + 1, || {
        corrupt(&f, image_v2().len() as u64 - 100)
    });
    check_refused(&f, &out, &slot_a, "slot verification failed");
    assert!(
        !f.state.join("install.json").exists(),
        "a mismatch clears the journal"
    );

    let again = f.abup(&["install", b.to_str().unwrap()]);
    again.success();
    assert!(!again.stdout_text().contains("(resumed)"), "starts over");
    check_installed(&f);
}

#[test]
fn a_first_block_changed_before_its_read_back_fails_the_install_and_resumes() {
    let (f, b, writes) = device();
    let slot_a = f.slot("A");
    let first_block = writes
        .iter()
        .rposition(|w| w.ends_with("slot-b at 0"))
        .unwrap();
    let out = install_tampered(&f, &b, first_block + 1, || corrupt(&f, 1500));
    check_refused(&f, &out, &slot_a, "did not read back as written");
    assert!(
        f.state.join("install.json").exists(),
        "the journal is kept: the rest of the slot was verified"
    );

    let again = f.abup(&["install", b.to_str().unwrap()]);
    again.success();
    assert!(again.stdout_text().contains("(resumed)"), "resumes");
    check_installed(&f);
}
