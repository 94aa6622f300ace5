//! Slot devices are claimed (issue 12, point 6): abup refuses a target block device that
//! something else holds, whether or not `/proc/self/mountinfo` shows it, refuses to guess when
//! `/proc` is not mounted, and an install whose journal lost its held-back first block starts
//! over instead of failing on every run.
//!
//! `a_mounted_target_is_refused` in install.rs covers a mount this process can see; these are
//! the holders it cannot see.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::fixture::{image, Fixture};
use common::Output;

const SLOT: u64 = 3 << 20;

/// A loop device over a file or another device, detached when dropped.
struct Loop(String);

impl Loop {
    fn over(backing: &Path) -> Loop {
        let dev = common::run_ok("losetup", &["-f", "--show", backing.to_str().unwrap()]);
        Loop(dev.trim().to_owned())
    }

    fn path(&self) -> &Path {
        Path::new(&self.0)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// Slot B of `f` on a loop device over its file; the board names the device.
fn slot_b_on_loop(f: &Fixture) -> Loop {
    let dev = Loop::over(&f.t.path("slot-b"));
    f.set_slot_device("B", Path::new(&dev.0));
    dev
}

/// An install into a held slot B: refused as in use, nothing written to the environment or
/// the slot. Then, once `release` has let go of it, the same install goes through, so the
/// refusal was the holder's doing.
fn refused_while_held(f: &Fixture, dev: &Loop, release: impl FnOnce()) {
    let img = image(300_000, 31);
    let b = f.bundle("b.abup", &img, "2.0", 0);
    let (env, slot) = (f.env(), f.slot("B"));
    let out = f.abup(&["install", b.to_str().unwrap()]);
    out.assert_refused(&[&format!("slot device {} is in use", dev.0), "release it"]);
    assert_eq!(f.env(), env, "the environment is untouched");
    assert_eq!(f.slot("B"), slot, "the slot is untouched");
    assert_eq!(f.status()["next_boot"], "A");

    release();
    f.abup(&["install", b.to_str().unwrap()]).success();
    assert_eq!(f.status()["next_boot"], "B");
    assert_eq!(&f.slot("B")[..img.len()], img);
}

#[test]
fn a_target_under_another_loop_device_is_refused() {
    if !(common::is_root() && common::have("losetup")) {
        return;
    }
    let f = Fixture::new(SLOT, "");
    let dev = slot_b_on_loop(&f);
    // A loop device over slot B's device: whatever uses it (a mounted image, a VM disk)
    // reads slot B, and nothing in mountinfo names slot B.
    let mut upper = Some(Loop::over(dev.path()));
    refused_while_held(&f, &dev, || drop(upper.take()));
}

#[test]
fn a_target_mounted_in_another_mount_namespace_is_refused() {
    if !(common::is_root()
        && common::have("losetup")
        && common::have("mkfs.ext4")
        && common::have("unshare"))
    {
        return;
    }
    let f = Fixture::new(SLOT, "");
    // Initialised in full now, so the mounted filesystem does not write in the background
    // while the test compares the slot's bytes.
    assert!(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .arg(f.t.path("slot-b"))
        .status()
        .unwrap()
        .success());
    let dev = slot_b_on_loop(&f);
    let mnt = f.t.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // Mounted where this process's mountinfo cannot see it (a container, a service with a
    // private /mnt): only the kernel's claim on the device says it is in use.
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount \"$1\" \"$2\" && echo mounted && exec sleep 600")
        .args(["sh", &dev.0, mnt.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut holder = Some(common::Holder(child));
    assert_eq!(line, "mounted\n", "the mount in the other namespace failed");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(mnt.to_str().unwrap()),
        "the mount is visible here: {mountinfo}"
    );
    refused_while_held(&f, &dev, || drop(holder.take()));
}

#[test]
fn a_target_another_program_opened_exclusively_is_refused() {
    if !(common::is_root() && common::have("losetup")) {
        return;
    }
    let f = Fixture::new(SLOT, "");
    let dev = slot_b_on_loop(&f);
    // What a partitioning tool, mkfs or another updater does while it works on the device.
    let claim = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_EXCL.bits())
        .open(dev.path())
        .unwrap();
    refused_while_held(&f, &dev, || drop(claim));
}

#[test]
fn without_proc_the_target_is_not_assumed_free() {
    if !(common::is_root() && common::have("losetup") && common::have("unshare")) {
        return;
    }
    let f = Fixture::new(SLOT, "");
    let dev = slot_b_on_loop(&f);
    let img = image(300_000, 32);
    let b = f.bundle("b.abup", &img, "2.0", 0);
    let (env, slot) = (f.env(), f.slot("B"));
    // An initramfs that has not mounted /proc yet. The booted slot comes from
    // ABUP_PROC_CMDLINE, a file, so only the "is it in use" check misses /proc.
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("umount -l /proc && exec \"$@\"")
        .args(["sh", env!("CARGO_BIN_EXE_abup"), "install"])
        .arg(&b)
        .env("ABUP_CONFIG", &f.board)
        .env("ABUP_PROC_CMDLINE", &f.cmdline)
        .output()
        .unwrap();
    let out = Output::from(out);
    out.assert_refused(&[
        &format!("cannot tell whether {} is mounted", dev.0),
        "mount /proc first",
    ]);
    assert_eq!(f.env(), env, "the environment is untouched");
    assert_eq!(f.slot("B"), slot, "the slot is untouched");
    // With /proc, the same install goes through.
    f.abup(&["install", b.to_str().unwrap()]).success();
    assert_eq!(&f.slot("B")[..img.len()], img);
}

#[test]
fn a_journal_without_its_held_back_block_starts_over() {
    let f = Fixture::new(SLOT, "");
    let img = image(1_000_000, 33);
    let b = f.bundle("b.abup", &img, "2.0", 0);
    let writes = f.install_writes(&b);
    // The first checkpoint: the journal written after the held-back block and a slot write.
    let held = writes
        .iter()
        .position(|w| w.ends_with("install-first-block.0"))
        .unwrap_or_else(|| panic!("no held-back block in {writes:#?}"));
    let slot_b = f.t.path("slot-b").display().to_string();
    let slot_write = held
        + writes[held..]
            .iter()
            .position(|w| w.starts_with(&slot_b))
            .unwrap_or_else(|| panic!("no slot write after the held block in {writes:#?}"));
    let checkpoint = slot_write
        + writes[slot_write..]
            .iter()
            .position(|w| w.ends_with("install.json"))
            .unwrap_or_else(|| panic!("no checkpoint in {writes:#?}"));
    let n = checkpoint + 1;
    eprintln!("cutting after write {n} of {writes:#?}");

    let out = f.abup_env(
        &["install", b.to_str().unwrap()],
        &[("ABUP_CUT_AFTER_WRITES", &n.to_string())],
    );
    assert_eq!(out.code, None, "not cut: {}", out.stderr_text());
    let journal: serde_json::Value =
        serde_json::from_slice(&common::read(&f.state.join("install.json"))).unwrap();
    assert!(
        journal["phase"]["write"]["next_chunk"].as_u64() > Some(0),
        "{journal}"
    );
    let held_file = f.state.join("install-first-block.0");
    std::fs::remove_file(&held_file).unwrap();

    let out = f.abup(&["install", b.to_str().unwrap()]);
    out.success();
    assert!(
        !out.stdout_text().contains("resumed"),
        "{}",
        out.stdout_text()
    );
    assert!(
        out.stderr_text().contains("starting the install over"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(&f.slot("B")[..img.len()], img, "slot B holds the image");
    let s = f.status();
    assert_eq!(s["next_boot"], "B", "{s}");
    assert_eq!(s["last_install"]["outcome"], "success", "{s}");
    assert!(!f.state.join("install.json").exists());
    assert!(!held_file.exists());
}
