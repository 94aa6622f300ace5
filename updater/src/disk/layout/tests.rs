use proptest::prelude::*;

use super::*;

fn section(name: &str, kind: &str, size: &str) -> PartitionSection {
    PartitionSection {
        name: name.into(),
        kind: kind.into(),
        size: SizeField::Text(size.into()),
        filesystem: None,
        mount: None,
        slot: None,
    }
}

fn err(sections: Vec<PartitionSection>) -> String {
    parse(sections, &["A", "B"]).unwrap_err()
}

#[test]
fn short_type_names_sizes_and_guids() {
    let mut boot = section("boot", "esp", "32MiB");
    boot.filesystem = Some("vfat".into());
    boot.mount = Some("/boot/efi".into());
    let mut a = section("rootfs-a", "linux", "1GiB");
    a.slot = Some("A".into());
    let mut custom = section("x", "0fc63daf-8483-4772-8e79-3d69d8477de4", "rest");
    custom.size = SizeField::Bytes(4096);
    let parts = parse(vec![boot, a, custom], &["A", "B"]).unwrap();
    assert_eq!(parts[0].type_guid, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    assert_eq!(parts[0].size, Size::Bytes(32 << 20));
    assert_eq!(parts[0].filesystem, Some(Filesystem::Vfat));
    assert_eq!(parts[1].size, Size::Bytes(1 << 30));
    assert_eq!(parts[1].slot.as_deref(), Some("A"));
    assert_eq!(parts[2].type_guid, "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
    assert_eq!(parts[2].size, Size::Bytes(4096));
    assert_eq!(
        parse(vec![section("r", "linux", "rest")], &[]).unwrap()[0].size,
        Size::Rest
    );
}

#[test]
fn each_mistake_is_named() {
    for (sections, words) in [
        (
            vec![section("a", "linux", "1MB")],
            "size \"1MB\" is not a number",
        ),
        (vec![section("a", "linux", "MiB")], "not a number"),
        (
            vec![section("a", "linux", "99999999999TiB")],
            "not a number",
        ),
        (vec![section("a", "linux", "0")], "size 0"),
        (vec![section("a", "linux", "1000")], "sectors"),
        (vec![section("a", "ntfs", "1MiB")], "neither a GUID"),
        (
            vec![section("a", "0FC63DAF-8483-4772-8E79-3D69D8477DEZ", "1MiB")],
            "neither a GUID",
        ),
        (vec![section("", "linux", "1MiB")], "1 to 36 characters"),
        (
            vec![section(&"n".repeat(37), "linux", "1MiB")],
            "1 to 36 characters",
        ),
        (
            vec![section("a", "linux", "1MiB"), section("a", "linux", "1MiB")],
            "two partitions have this name",
        ),
        (
            vec![section("a", "linux", "rest"), section("b", "linux", "rest")],
            "second size = \"rest\"",
        ),
    ] {
        let e = err(sections);
        assert!(e.contains(words), "{words:?} not in {e:?}");
    }
    let mut s = section("a", "linux", "1MiB");
    s.filesystem = Some("btrfs".into());
    assert!(err(vec![s]).contains("vfat or ext4"));
    let mut s = section("a", "linux", "1MiB");
    s.mount = Some("/data".into());
    assert!(err(vec![s]).contains("mount without filesystem"));
    let mut s = section("a", "linux", "1MiB");
    s.filesystem = Some("ext4".into());
    s.mount = Some("data".into());
    assert!(err(vec![s]).contains("absolute path"));
    let mut s = section("a", "linux", "1MiB");
    s.slot = Some("C".into());
    assert!(err(vec![s]).contains("not one of the board's slots (A, B)"));
    let mut s = section("a", "linux", "1MiB");
    s.slot = Some("A".into());
    s.filesystem = Some("ext4".into());
    assert!(err(vec![s]).contains("drop filesystem"));
    let (mut s, mut t) = (section("a", "linux", "1MiB"), section("b", "linux", "1MiB"));
    s.slot = Some("A".into());
    t.slot = Some("A".into());
    assert!(err(vec![s, t]).contains("already has a partition"));
    let many = (0..129)
        .map(|i| section(&i.to_string(), "linux", "1MiB"))
        .collect();
    assert!(err(many).contains("at most 128"));
}

fn part(size: Size) -> Partition {
    Partition {
        name: "p".into(),
        type_guid: TYPES[1].1.into(),
        size,
        filesystem: None,
        mount: None,
        slot: None,
    }
}

const MIB: u64 = 1 << 20;

#[test]
fn a_rest_partition_in_the_middle_leaves_room_for_the_ones_after_it() {
    let parts = [
        part(Size::Bytes(32 * MIB)),
        part(Size::Rest),
        part(Size::Bytes(MIB)),
    ];
    let disk = 100 * MIB;
    let p = place(&parts, disk).unwrap();
    assert_eq!(p[0].offset(), MIB);
    assert_eq!(p[0].bytes(), 32 * MIB);
    assert_eq!(p[1].offset(), 33 * MIB);
    assert_eq!(p[2].bytes(), MIB);
    assert_eq!(p[2].offset(), p[1].offset() + p[1].bytes());
    assert!(p[2].offset() + p[2].bytes() <= disk - 33 * SECTOR);
    // The rest takes all but the alignment slack before the backup table.
    assert!(p[1].bytes() >= disk - 36 * MIB);
}

#[test]
fn a_disk_too_small_is_refused_with_the_size_it_needs() {
    let parts = [part(Size::Bytes(64 * MIB)), part(Size::Rest)];
    let need = min_disk_size(&parts);
    assert!(place(&parts, need).is_ok());
    let e = place(&parts, need - SECTOR).unwrap_err().to_string();
    assert!(e.contains(&format!("at least {need}")), "{e}");
    assert!(place(&parts, 0).is_err());
}

proptest! {
    /// On any disk, every partition starts on a 1 MiB boundary, has exactly its size (a
    /// `rest` one at least 1 MiB), follows the one before without overlap and ends before
    /// the backup table; or the disk is smaller than `min_disk_size` says a layout needs.
    #[test]
    fn placed_partitions_are_aligned_exact_and_inside_the_disk(
        sizes in prop::collection::vec(prop_oneof![
            (1u64..5000).prop_map(|n| Size::Bytes(n * SECTOR)),
            (1u64..64).prop_map(|n| Size::Bytes(n * MIB)),
        ], 1..8),
        rest_at in prop::option::of(0usize..8),
        disk in (1u64..1024).prop_map(|n| n * MIB / 2 + 7),
    ) {
        let mut parts: Vec<Partition> = sizes.into_iter().map(part).collect();
        if let Some(i) = rest_at.filter(|&i| i < parts.len()) {
            parts[i].size = Size::Rest;
        }
        match place(&parts, disk) {
            Err(_) => prop_assert!(disk < min_disk_size(&parts) + MIB),
            Ok(placed) => {
                prop_assert!(disk >= min_disk_size(&parts));
                let mut end = 0;
                for (p, at) in parts.iter().zip(&placed) {
                    prop_assert_eq!(at.offset() % MIB, 0);
                    prop_assert!(at.offset() >= end.max(MIB));
                    match p.size {
                        Size::Bytes(n) => prop_assert_eq!(at.bytes(), n),
                        Size::Rest => prop_assert!(at.bytes() >= MIB),
                    }
                    end = at.offset() + at.bytes();
                }
                prop_assert!(end <= (disk / SECTOR - 33) * SECTOR);
            }
        }
    }
}
