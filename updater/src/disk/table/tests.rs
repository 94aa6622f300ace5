//! The table written for a board's layout, checked by the reference tools: `sgdisk -v` finds
//! nothing to repair, and `sfdisk --json` reads back every partition as laid out.

use std::fs::OpenOptions;

use super::*;
use crate::disk::layout::{self, Size};
use crate::test_tools::{have, run};

const MIB: u64 = 1 << 20;

/// The QEMU boards' layout, ending in a partition that takes the rest.
fn qemu_layout() -> Vec<Partition> {
    let p = |name: &str, guid: &str, size| Partition {
        name: name.into(),
        type_guid: guid.into(),
        size,
        filesystem: None,
        mount: None,
        slot: None,
    };
    vec![
        p(
            "boot",
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            Size::Bytes(32 * MIB),
        ),
        p(
            "rootfs-a",
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            Size::Bytes(64 * MIB),
        ),
        p(
            "rootfs-b",
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            Size::Bytes(64 * MIB),
        ),
        p(
            "bios-grub",
            "21686148-6449-6E6F-744E-656564454649",
            Size::Bytes(MIB),
        ),
        p("data", "0FC63DAF-8483-4772-8E79-3D69D8477DE4", Size::Rest),
    ]
}

#[test]
fn sgdisk_and_sfdisk_read_the_table_as_laid_out() {
    if !have(&["sgdisk", "sfdisk"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let disk = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    // Not a whole number of MiB: the backup table goes at the very end regardless.
    disk.set_len(300 * MIB + 7 * 512).unwrap();
    let parts = qemu_layout();
    let placed = layout::place(&parts, size(&disk).unwrap()).unwrap();
    write(&disk, &parts, &placed).unwrap();

    let path = path.to_str().unwrap();
    let verify = run("sgdisk", &["-v", path]);
    assert!(verify.contains("No problems found"), "{verify}");
    let json: serde_json::Value = serde_json::from_str(&run("sfdisk", &["--json", path])).unwrap();
    let table = &json["partitiontable"];
    assert_eq!(table["label"], "gpt");
    assert_eq!(table["sectorsize"], 512);
    let found = table["partitions"].as_array().unwrap();
    assert_eq!(found.len(), parts.len());
    for (i, ((p, at), f)) in parts.iter().zip(&placed).zip(found).enumerate() {
        assert_eq!(f["node"], format!("{path}{}", i + 1));
        assert_eq!(f["name"], p.name);
        assert_eq!(f["type"], p.type_guid);
        assert_eq!(f["start"], at.first_lba);
        assert_eq!(f["size"], at.last_lba + 1 - at.first_lba);
    }
    assert_eq!(
        found[0]["start"], 2048,
        "the first partition starts at 1 MiB"
    );
    // The rest partition ends where the usable space does: 33 blocks of backup table after it.
    assert_eq!(table["lastlba"], placed[4].last_lba);
}
