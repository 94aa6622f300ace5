//! `abup status` finds the booted slot from `root=` on real block devices: by path and by
//! filesystem LABEL and UUID, ignoring a tag both slots carry, and refuses to guess when
//! nothing matches.
//!
//! The slots are loop devices over the partitions of a GPT image (one loop device per
//! partition, at its offset): the kernels these tests run on in CI have no partition-table
//! support, so `losetup -P` makes no partition nodes and PARTLABEL/PARTUUID cannot resolve
//! here; the QEMU boots check those on a real kernel.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::process::Command;

use common::{abup_with, have, is_root, Tmp};

/// A loop device, detached on drop even when the test fails.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn root_parameter_finds_the_slot_among_block_devices() {
    if !(is_root() && have("sgdisk") && have("losetup") && have("mkfs.ext4")) {
        return;
    }
    let t = Tmp::new();
    let img = t.path("disk.img");
    sh(&format!(
        "truncate -s 12M {0} && sgdisk -n1:2048:+4M -c1:rootfs-a -n2:0:+4M -c2:rootfs-b {0} >/dev/null",
        img.display()
    ));
    let part = |start: u64| {
        Loop(sh(&format!(
            "losetup -f --show -o {} --sizelimit {} {}",
            start * 512,
            4 << 20,
            img.display()
        )))
    };
    let (la, lb) = (part(2048), part(10240));
    sh(&format!(
        "mkfs.ext4 -q -L root-a -U 11111111-2222-3333-4444-555555555555 {}",
        la.0
    ));
    sh(&format!(
        "mkfs.ext4 -q -L root-b -U 66666666-7777-8888-9999-000000000000 {}",
        lb.0
    ));
    let board = t.path("board.toml");
    std::fs::write(
        &board,
        format!(
            "[board]\nname = \"t\"\ncompatible = \"t\"\n[bootloader]\ntype = \"grub\"\n\
             grubenv = [{:?}, {:?}]\n[[slot]]\nname = \"A\"\ndevice = \"{}\"\n\
             [[slot]]\nname = \"B\"\ndevice = \"{}\"\n",
            t.path("abupenv.0"),
            t.path("abupenv.1"),
            la.0,
            lb.0
        ),
    )
    .unwrap();
    common::abup(&[
        "env",
        "--grub",
        t.path("abupenv.0").to_str().unwrap(),
        "--grub",
        t.path("abupenv.1").to_str().unwrap(),
        "create",
    ])
    .success();
    let cmdline = t.path("cmdline");
    let run = |line: &str, args: &[&str]| {
        std::fs::write(&cmdline, line).unwrap();
        abup_with(
            args,
            &[
                ("ABUP_CONFIG", board.as_os_str()),
                ("ABUP_PROC_CMDLINE", cmdline.as_os_str()),
            ],
        )
    };
    let booted = |line: &str| {
        let out = run(line, &["status", "--json"]);
        out.success();
        let v: serde_json::Value = serde_json::from_str(&out.stdout_text()).unwrap();
        (
            v["booted"].as_str().map(String::from),
            v["booted_from"].as_str().map(String::from),
        )
    };
    let b = |s: &str, from: &str| (Some(s.to_owned()), Some(from.to_owned()));
    assert_eq!(booted(&format!("ro root={} quiet", lb.0)), b("B", "root="));
    assert_eq!(booted(&format!("root={}", la.0)), b("A", "root="));
    assert_eq!(booted("root=LABEL=root-b"), b("B", "root="));
    assert_eq!(
        booted("root=UUID=11111111-2222-3333-4444-555555555555"),
        b("A", "root=")
    );
    // abup.slot= wins over root=.
    assert_eq!(booted("root=LABEL=root-a abup.slot=B"), b("B", "abup.slot"));
    // Nothing matches (and / is not a slot here): unknown, with a warning, not a guess.
    assert_eq!(booted("root=LABEL=other"), (None, None));
    // Both slots hold copies of one image: the shared label identifies neither.
    sh(&format!("e2label {} root-a", lb.0));
    assert_eq!(booted("root=LABEL=root-a"), (None, None));
    // A mark command refuses to act on an unknown booted slot.
    let out = run("root=LABEL=other", &["mark-good"]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr_text()
            .contains("cannot tell which slot is booted"),
        "{}",
        out.stderr_text()
    );
}
