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

use common::fixture::{first_block_and_last_checkpoint, image, Fixture};
use common::Output;

const SLOT: u64 = 2 << 20;

fn image_v2() -> Vec<u8> {
    image(900_000, 21)
}

/// A device with B bootable, the v2 bundle, and the names of an install's durable writes.
fn device() -> (Fixture, std::path::PathBuf, Vec<String>) {
    let f = Fixture::new(SLOT, "").with_b_bootable();
    let b = f.bundle("b.abup", &image_v2(), "2.0", 1);
    let writes = f.install_writes(&b);
    (f, b, writes)
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
    let (_, last_checkpoint) = first_block_and_last_checkpoint(&writes);
    let out = f.install_paused(&b, last_checkpoint + 1, || {
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
    let (first_block, _) = first_block_and_last_checkpoint(&writes);
    let out = f.install_paused(&b, first_block + 1, || corrupt(&f, 1500));
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
