//! `abup split-root` on an image file whose ext4 root partition fills the disk, as on a device
//! in the field: every file (content, owner, mode, timestamps) the same afterwards, the table
//! checked by `sgdisk -v` and read back by `sfdisk --json`, the environment by the real
//! `grub-editenv`; refusals that change nothing; cuts at every write of abup's own, inside
//! resize2fs and inside the next run's putting back of the saved blocks, each finished by
//! running the command again; and the saved blocks checked against every block resize2fs
//! really writes.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{abup_with, run_ok, Output, Tmp};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
/// p1, a stand-in for the ESP, then the root partition to the end of the disk.
const DISK_MIB: u64 = 48;
const ROOT_START: u64 = 4 * MIB;

struct Device {
    _t: Tmp,
    board: PathBuf,
    disk: PathBuf,
    work: PathBuf,
    env: [PathBuf; 2],
    /// The disk as the field left it, for each cut run to start from.
    original: Vec<u8>,
    tree: String,
}

/// What the root filesystem holds.
#[derive(Clone, Copy, PartialEq)]
enum Root {
    /// Files spread over the whole filesystem, a third of it used.
    Files,
    /// More than half of it used.
    Full,
    /// A FAT filesystem.
    Vfat,
}

fn tools() -> bool {
    common::is_root()
        && [
            "sgdisk",
            "sfdisk",
            "losetup",
            "mkfs.ext4",
            "resize2fs",
            "e2undo",
            "e2fsck",
            "dumpe2fs",
            "debugfs",
            "grub-editenv",
            "strace",
        ]
        .iter()
        .all(|t| common::have(t))
}

fn device(root: Root) -> Option<Device> {
    if !tools() {
        return None;
    }
    let t = Tmp::new();
    let disk = t.path("disk.img");
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(DISK_MIB * MIB).unwrap();
    drop(f);
    run_ok(
        "sgdisk",
        &[
            "--new=1:2048:8191",
            "--typecode=1:ef00",
            "--change-name=1:esp",
            "--new=2:8192:0",
            "--typecode=2:8304",
            "--change-name=2:rootfs-a",
            disk.to_str().unwrap(),
        ],
    );
    let root_len = table(&disk)[1].1 * 512;
    let dev = Loop::attach(&disk, ROOT_START, root_len);
    if root == Root::Vfat {
        run_ok("mkfs.vfat", &[dev.0.as_str()]);
    } else {
        run_ok("mkfs.ext4", &["-q", "-F", "-b", "4096", dev.0.as_str()]);
        let mnt = t.path("mnt");
        std::fs::create_dir(&mnt).unwrap();
        run_ok("mount", &[dev.0.as_str(), mnt.to_str().unwrap()]);
        fill(&mnt, root);
        common::umount(&mnt);
    }
    drop(dev);
    let board = t.path("board.toml");
    let env = [t.path("esp/grub/abupenv.0"), t.path("esp/grub/abupenv.1")];
    std::fs::create_dir_all(t.path("esp/grub")).unwrap();
    std::fs::write(
        &board,
        format!(
            "[board]\nname = \"field\"\ncompatible = \"field\"\n\n[bootloader]\ntype = \
             \"grub\"\nscheme = \"abup\"\ntries = 3\ngrubenv = [\"{}\", \"{}\"]\n\n\
             [[slot]]\nname = \"A\"\ndevice = \"/dev/disk/by-partlabel/rootfs-a\"\n\n\
             [[slot]]\nname = \"B\"\ndevice = \"/dev/disk/by-partlabel/rootfs-b\"\n",
            env[0].display(),
            env[1].display()
        ),
    )
    .unwrap();
    let tree = if root == Root::Vfat {
        String::new()
    } else {
        tree_hash(&disk, ROOT_START, root_len)
    };
    Some(Device {
        work: t.path("esp/abup-split"),
        original: std::fs::read(&disk).unwrap(),
        _t: t,
        board,
        disk,
        env,
        tree,
    })
}

/// Files of every kind, owner and mode, with set timestamps; most of them written after a
/// filler took the front of the filesystem, so the shrink has data to move.
fn fill(mnt: &Path, root: Root) {
    let filler = mnt.join("filler");
    let free = nix::sys::statvfs::statvfs(mnt).unwrap();
    let free = free.blocks_available() as u64 * free.fragment_size() as u64;
    let filler_len = if root == Root::Full {
        free * 7 / 10
    } else {
        free / 2
    };
    write_random(&filler, filler_len, 1);
    let mut seed = 2;
    for d in 0..6 {
        let dir = mnt.join(format!("dir{d}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..12 {
            let p = dir.join(format!("file{f}"));
            write_random(&p, 1000 + seed * 7919 % 150_000, seed);
            std::os::unix::fs::chown(&p, Some(1000 + f), Some(100 + d)).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600 + f * 8)).unwrap();
            seed += 1;
        }
        std::os::unix::fs::symlink(format!("file{d}"), dir.join("link")).unwrap();
    }
    run_ok(
        "touch",
        &[
            "-h",
            "-d",
            "2001-02-03 04:05:06.789",
            mnt.join("dir0/link").to_str().unwrap(),
        ],
    );
    run_ok(
        "touch",
        &[
            "-d",
            "1999-12-31 23:59:59",
            mnt.join("dir1/file3").to_str().unwrap(),
        ],
    );
    if root != Root::Full {
        std::fs::remove_file(&filler).unwrap();
    }
}

fn write_random(path: &Path, len: u64, seed: u64) {
    std::fs::write(path, common::fixture::image(len as usize, seed)).unwrap();
}

/// A loop device over a range of the disk, detached when dropped.
struct Loop(String);

impl Loop {
    fn attach(disk: &Path, offset: u64, len: u64) -> Loop {
        let dev = run_ok(
            "losetup",
            &[
                "--find",
                "--show",
                "--offset",
                &offset.to_string(),
                "--sizelimit",
                &len.to_string(),
                disk.to_str().unwrap(),
            ],
        );
        Loop(dev.trim().to_owned())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// Every file's path, kind, size, mode, owner, timestamps, link target and content, hashed:
/// the filesystem in `len` bytes of the disk from `offset`, mounted read-only.
fn tree_hash(disk: &Path, offset: u64, len: u64) -> String {
    let dev = Loop::attach(disk, offset, len);
    let mnt = tempfile::tempdir().unwrap();
    let m = mnt.path().to_str().unwrap();
    run_ok("mount", &["-o", "ro,noload", dev.0.as_str(), m]);
    let mut h = Sha256::new();
    let mut stack = vec![mnt.path().to_path_buf()];
    let mut entries = Vec::new();
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p.clone());
            }
            entries.push((p, md));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (p, md) in &entries {
        let rel = p.strip_prefix(mnt.path()).unwrap();
        h.update(format!(
            "{} {:o} {} {} {} {}.{} {}.{}\n",
            rel.display(),
            md.mode(),
            md.uid(),
            md.gid(),
            md.size(),
            md.mtime(),
            md.mtime_nsec(),
            md.ctime(),
            md.ctime_nsec()
        ));
        if md.is_file() {
            h.update(std::fs::read(p).unwrap());
        } else if md.file_type().is_symlink() {
            h.update(
                std::fs::read_link(p)
                    .unwrap()
                    .as_os_str()
                    .as_encoded_bytes(),
            );
        }
    }
    common::umount(Path::new(m));
    assert!(entries.len() > 70, "only {} entries", entries.len());
    format!("{:x}", h.finalize())
}

/// The used partitions: (start sector, sectors, type, name), as sfdisk reads them.
fn table(disk: &Path) -> Vec<(u64, u64, String, String)> {
    let json: serde_json::Value =
        serde_json::from_str(&run_ok("sfdisk", &["--json", disk.to_str().unwrap()])).unwrap();
    json["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap(),
                p["size"].as_u64().unwrap(),
                p["type"].as_str().unwrap().to_owned(),
                p["name"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

impl Device {
    fn split(&self, extra: &[&str], env: &[(&str, &OsStr)]) -> Output {
        let mut args = vec![
            "--config",
            self.board.to_str().unwrap(),
            "split-root",
            "--disk",
            self.disk.to_str().unwrap(),
            "--partition",
            "2",
            "--work-dir",
            self.work.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = abup_with(&args, env);
        common::reboot(&self.disk);
        out
    }

    /// Back to the field's disk, with no work directory and no environment.
    fn reset(&self) {
        std::fs::write(&self.disk, &self.original).unwrap();
        let _ = std::fs::remove_dir_all(&self.work);
        for e in &self.env {
            let _ = std::fs::remove_file(e);
        }
    }

    fn assert_unchanged(&self) {
        assert!(
            std::fs::read(&self.disk).unwrap() == self.original,
            "a refused split changed the disk"
        );
        assert!(!self.env[0].exists() && !self.env[1].exists());
        assert!(!self.work.join("split-root.json").exists());
    }

    /// Split as it should be: A the same filesystem in the first half, fsck-clean and of
    /// its partition's size, every file the same; B the rest, same type; both tables valid;
    /// the environment in the factory state.
    fn assert_split(&self) {
        let v = run_ok("sgdisk", &["-v", self.disk.to_str().unwrap()]);
        assert!(v.contains("No problems found"), "{v}");
        let parts = table(&self.disk);
        assert_eq!(parts.len(), 3, "{parts:?}");
        let old_len = (DISK_MIB * MIB - ROOT_START) / 512 - 33;
        let (a, b) = (&parts[1], &parts[2]);
        assert_eq!(a.0 * 512, ROOT_START);
        assert_eq!(b.0 * 512 % MIB, 0, "B is not 1 MiB aligned");
        assert_eq!(a.0 + a.1, b.0, "A does not end where B starts");
        assert_eq!(
            b.0 + b.1,
            a.0 + old_len,
            "B does not end where the root partition did"
        );
        assert!(b.1 >= a.1 && a.1 * 512 >= 20 * MIB, "{parts:?}");
        assert_eq!(a.2, b.2, "B has another type");
        assert_eq!((a.3.as_str(), b.3.as_str()), ("rootfs-a", "rootfs-b"));
        let dev = Loop::attach(&self.disk, ROOT_START, a.1 * 512);
        let fsck = Command::new("e2fsck")
            .args(["-f", "-n", &dev.0])
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "{}",
            String::from_utf8_lossy(&fsck.stdout)
        );
        let header = run_ok("dumpe2fs", &["-h", &dev.0]);
        let field = |k: &str| -> u64 {
            header
                .lines()
                .find_map(|l| l.strip_prefix(k)?.trim().parse().ok())
                .unwrap()
        };
        assert_eq!(field("Block count:") * field("Block size:"), a.1 * 512);
        drop(dev);
        assert_eq!(
            tree_hash(&self.disk, ROOT_START, a.1 * 512),
            self.tree,
            "a file changed"
        );
        for e in &self.env {
            let vars = run_ok("grub-editenv", &[e.to_str().unwrap(), "list"]);
            for want in [
                "BOOT_ORDER=A B",
                "BOOT_A_LEFT=3",
                "BOOT_B_LEFT=0",
                "BOOT_GOOD=A",
            ] {
                assert!(vars.lines().any(|l| l == want), "{want} not in {vars}");
            }
        }
        assert!(self.work.join("split-root.done").exists());
        assert!(!self.work.join("split-root.backup").exists());
    }
}

#[test]
fn splits_a_lone_root_partition_keeping_every_file() {
    let Some(d) = device(Root::Files) else {
        return;
    };
    let out = d.split(&[], &[]);
    out.success();
    let line = out.stdout_text();
    assert!(
        line.starts_with("split ")
            && line.contains("slot A is partition 2")
            && line.contains("slot B partition 3"),
        "{line}"
    );
    d.assert_split();

    // Done: the same command changes nothing and says so.
    let before = std::fs::read(&d.disk).unwrap();
    let env_before = std::fs::read(&d.env[0]).unwrap();
    let again = d.split(&["--json"], &[]);
    again.success();
    let json: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(json["already_done"], true);
    assert_eq!(json["slot_b"][0], 3);
    assert!(
        std::fs::read(&d.disk).unwrap() == before,
        "a finished split was written again"
    );
    assert_eq!(std::fs::read(&d.env[0]).unwrap(), env_before);
}

#[test]
fn refuses_a_root_it_cannot_split_changing_nothing() {
    let Some(d) = device(Root::Vfat) else {
        return;
    };
    d.split(&[], &[])
        .assert_refused_with(4, &["partition 2 of", "holds vfat, not ext4"]);
    d.assert_unchanged();

    let Some(d) = device(Root::Full) else {
        return;
    };
    d.split(&[], &[])
        .assert_refused_with(4, &["free at least", "MiB (delete files)"]);
    d.assert_unchanged();

    // An inode in use cleared: e2fsck finds errors.
    let Some(d) = device(Root::Files) else {
        return;
    };
    let root_len = table(&d.disk)[1].1 * 512;
    {
        let dev = Loop::attach(&d.disk, ROOT_START, root_len);
        run_ok("debugfs", &["-w", "-R", "clri /dir2/file4", &dev.0]);
        let fsck = Command::new("e2fsck")
            .args(["-f", "-n", &dev.0])
            .output()
            .unwrap();
        assert!(!fsck.status.success(), "clri did not damage the filesystem");
    }
    let damaged = std::fs::read(&d.disk).unwrap();
    let out = d.split(&[], &[]);
    out.assert_refused_with(4, &["has errors", "repair it with e2fsck -f"]);
    assert!(
        std::fs::read(&d.disk).unwrap() == damaged,
        "a refused split changed the disk"
    );
}

/// Cuts after each of abup's own writes (plan, step markers, undo file removal, partition
/// table, environment), then the same command again: every time, the split it finishes is
/// exact and no file changed.
#[test]
fn a_cut_after_any_write_of_abup_is_finished_by_running_split_root_again() {
    common::require_fault_injection();
    let Some(d) = device(Root::Files) else {
        return;
    };
    let full = d.split(&["-vv"], &[]);
    full.success();
    let writes = common::durable_writes(&full).len();
    assert!(
        writes >= 6,
        "only {writes} writes: {:?}",
        common::durable_writes(&full)
    );
    for n in 1..=writes {
        d.reset();
        let cut = d.split(
            &[],
            &[("ABUP_CUT_AFTER_WRITES", OsStr::new(&n.to_string()))],
        );
        assert_eq!(cut.code, None, "run {n} was not cut: {}", cut.stderr_text());
        d.split(&[], &[]).success();
        d.assert_split();
    }
}

/// Plan and backup of `d`'s split, as a run killed at resize2fs's first write leaves them:
/// the shrink's new size and the blocks saved (docs/split-root.md gives the format).
fn backup_of(d: &Device) -> (u64, Vec<u64>) {
    d.reset();
    let first = d.split(&[], &[("ABUP_CUT_TOOL", OsStr::new("resize2fs:1"))]);
    assert_eq!(first.code, None, "{}", first.stderr_text());
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.work.join("split-root.json")).unwrap()).unwrap();
    let backup = std::fs::read(d.work.join("split-root.backup")).unwrap();
    assert_eq!(&backup[..8], b"ABUPSPLB");
    let count = u64::from_le_bytes(backup[16..24].try_into().unwrap()) as usize;
    let blocks = backup[24..24 + 8 * count]
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    d.reset();
    (plan["new_blocks"].as_u64().unwrap(), blocks)
}

/// resize2fs of the field's filesystem to `new_blocks` on a copy of `d`'s disk, as split-root
/// runs it, under `tool` (strace counting its writes, or nothing) with `extra` arguments.
fn resize_copy(d: &Device, new_blocks: u64, wrapper: &[&str], extra: &[&str]) -> PathBuf {
    let copy = d.work.with_extension("copy.img");
    std::fs::write(&copy, &d.original).unwrap();
    let root_len = table(&copy)[1].1 * 512;
    let dev = Loop::attach(&copy, ROOT_START, root_len);
    let blocks = new_blocks.to_string();
    let mut args: Vec<&str> = wrapper.to_vec();
    args.extend_from_slice(&["resize2fs", "-f"]);
    args.extend_from_slice(extra);
    args.extend_from_slice(&[&dev.0, &blocks]);
    run_ok(args[0], &args[1..]);
    drop(dev);
    copy
}

/// The blocks free in the field's filesystem, from dumpe2fs's group summaries.
fn free_blocks(d: &Device) -> std::collections::HashSet<u64> {
    let root_len = table(&d.disk)[1].1 * 512;
    let dev = Loop::attach(&d.disk, ROOT_START, root_len);
    let text = run_ok("dumpe2fs", &[&dev.0]);
    let mut free = std::collections::HashSet::new();
    // After the header (whose "Free blocks:" is a count), each group lists its free ranges.
    let groups = text.find("\nGroup 0:").unwrap();
    for line in text[groups..].lines() {
        let Some(list) = line.trim().strip_prefix("Free blocks: ") else {
            continue;
        };
        for range in list.split(", ").filter(|r| !r.is_empty()) {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            free.extend(a.parse::<u64>().unwrap()..=b.parse::<u64>().unwrap());
        }
    }
    free
}

/// What the whole design rests on: every block resize2fs really writes in the split is one
/// split-root saved, one the old filesystem does not use (where moved data lands), or one
/// written with what it already held. The blocks written come from resize2fs's own undo
/// file, on a copy of the disk.
#[test]
fn the_saved_blocks_cover_every_used_block_resize2fs_writes() {
    let Some(d) = device(Root::Files) else {
        return;
    };
    let (new_blocks, saved) = backup_of(&d);
    assert!(saved.len() > 3, "only {} blocks saved", saved.len());
    let saved: std::collections::HashSet<u64> = saved.into_iter().collect();
    let free = free_blocks(&d);
    let undo = d.work.with_extension("e2undo");
    let _ = std::fs::remove_file(&undo);
    let shrunk = resize_copy(&d, new_blocks, &[], &["-z", undo.to_str().unwrap()]);
    let after = std::fs::read(&shrunk).unwrap();
    let copy = d.work.with_extension("listed.img");
    std::fs::write(&copy, &d.original).unwrap();
    let root_len = table(&copy)[1].1 * 512;
    let dev = Loop::attach(&copy, ROOT_START, root_len);
    let out = Command::new("e2undo")
        .args(["-f", "-n", "-v", undo.to_str().unwrap(), &dev.0])
        .output()
        .unwrap();
    drop(dev);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut written = 0;
    for line in text
        .lines()
        .filter(|l| l.starts_with("Replayed block of size"))
    {
        // "Replayed block of size 65536 from 7911 to 2": bytes, undo block, filesystem block.
        let words: Vec<&str> = line.split_whitespace().collect();
        let size: u64 = words[4].parse().unwrap();
        let first: u64 = words[8].parse().unwrap();
        for b in first..first + size / 4096 {
            written += 1;
            let at = (ROOT_START + b * 4096) as usize;
            let same = d.original[at..at + 4096] == after[at..at + 4096];
            assert!(
                saved.contains(&b) || free.contains(&b) || same,
                "resize2fs changes block {b}, which the old filesystem uses, and it was not saved"
            );
        }
    }
    assert!(written > saved.len(), "{written} blocks written: {text}");
    let _ = std::fs::remove_file(&undo);
    let _ = std::fs::remove_file(&copy);
    let _ = std::fs::remove_file(&shrunk);
}

/// Cuts inside resize2fs: at its first writes, at evenly spaced ones and at each of its last
/// (the superblock and group descriptors go last); and inside the next run's putting back of
/// the saved blocks; then runs to the end. Every time the old filesystem comes back, is
/// shrunk again, and no file changes. resize2fs writes in large runs (a few dozen writes
/// here): up to 64, every one is cut at; beyond, 35 of them unless `ABUP_SPLIT_EVERY_CUT=1`.
#[test]
fn a_cut_inside_the_shrink_or_its_undo_is_finished_by_running_split_root_again() {
    common::require_fault_injection();
    let Some(d) = device(Root::Files) else {
        return;
    };
    let (new_blocks, saved) = backup_of(&d);
    let counts = d.work.with_extension("strace");
    let counted = counts.to_str().unwrap();
    let copy = resize_copy(
        &d,
        new_blocks,
        &[
            "strace",
            "-f",
            "-c",
            "-o",
            counted,
            "-e",
            "trace=pwrite64,pwritev,pwritev2",
        ],
        &[],
    );
    std::fs::remove_file(copy).unwrap();
    let total: u64 = std::fs::read_to_string(&counts)
        .unwrap()
        .lines()
        .filter(|l| l.contains("pwrite"))
        .map(|l| l.split_whitespace().nth(3).unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(
        total > 10,
        "resize2fs wrote only {total} times: nothing to move?"
    );
    let mut points: Vec<u64> = if total <= 64 || std::env::var_os("ABUP_SPLIT_EVERY_CUT").is_some()
    {
        (1..=total).collect()
    } else {
        let mut p: Vec<u64> = (1..=3).chain((1..24).map(|k| total * k / 24)).collect();
        p.extend(total - 8..=total);
        p
    };
    points.sort_unstable();
    points.dedup();
    for (i, n) in points.iter().enumerate() {
        d.reset();
        let tool = format!("resize2fs:{n}");
        let cut = d.split(&[], &[("ABUP_CUT_TOOL", OsStr::new(&tool))]);
        assert_eq!(cut.code, None, "{tool} was not cut: {}", cut.stderr_text());
        if i % 4 == 3 {
            // The run that puts the saved blocks back is cut too, after one of them.
            let k = (1 + i * 7 % saved.len()).to_string();
            let cut = d.split(&[], &[("ABUP_CUT_AFTER_WRITES", OsStr::new(&k))]);
            assert_eq!(
                cut.code,
                None,
                "{tool}, then after write {k}: {}",
                cut.stderr_text()
            );
        }
        let again = d.split(&[], &[]);
        assert_eq!(again.code, Some(0), "after {tool}: {}", again.stderr_text());
        d.assert_split();
    }
}

/// What a FAT work directory can lose in a power cut, beyond a cut write: a plan whose
/// directory entry was written but not its contents (as QEMU power cuts showed), and a step
/// marker lost while the undo file's removal made it. The next run plans again, or sees the
/// shrink done, and finishes.
#[test]
fn a_plan_or_marker_that_fat_lost_is_recovered() {
    common::require_fault_injection();
    let Some(d) = device(Root::Files) else {
        return;
    };
    let full = d.split(&["-vv"], &[]);
    full.success();
    let writes = common::durable_writes(&full);
    let removal = writes
        .iter()
        .position(|w| w.starts_with("remove ") && w.ends_with("split-root.backup"))
        .unwrap_or_else(|| panic!("no backup removal in {writes:?}"));

    // The plan was created empty; the shrink was never started.
    d.reset();
    std::fs::create_dir_all(&d.work).unwrap();
    std::fs::write(d.work.join("split-root.json"), b"").unwrap();
    d.split(&[], &[]).success();
    d.assert_split();

    // The shrink is done and its backup removed, but its marker is gone.
    d.reset();
    let n = (removal + 1).to_string();
    let cut = d.split(&[], &[("ABUP_CUT_AFTER_WRITES", OsStr::new(&n))]);
    assert_eq!(cut.code, None, "{}", cut.stderr_text());
    std::fs::remove_file(d.work.join("split-root.shrunk")).unwrap();
    d.split(&[], &[]).success();
    d.assert_split();
}

/// The initramfs scripts abup ships parse as POSIX sh (dash, Debian's /bin/sh, which is
/// stricter than busybox's ash), and are executable. All of them also run in the QEMU split
/// scenario (qemu-tests), in a busybox initramfs and in one Debian's mkinitramfs builds.
#[test]
fn the_shipped_initramfs_scripts_parse_as_posix_sh() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/initramfs");
    let scripts = [
        "abup-split-root",
        "busybox-init",
        "initramfs-tools/hooks/abup-split-root",
        "initramfs-tools/scripts/local-premount/abup-split-root",
    ];
    for s in scripts {
        let path = dir.join(s);
        let out = Command::new("dash").arg("-n").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "{s}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert!(mode & 0o111 != 0, "{s} is not executable");
    }
}

/// The partition table has two copies, written one after the other: a cut between them
/// leaves the new primary with the old backup, or (a disk that writes out of order) the old
/// primary with the new backup. Either way the root filesystem, already shrunk, is whole in
/// the table a reader picks, and the next run writes both copies and finishes.
#[test]
fn a_cut_between_the_two_partition_tables_is_finished_by_running_split_root_again() {
    common::require_fault_injection();
    let Some(d) = device(Root::Files) else {
        return;
    };
    let full = d.split(&["-vv"], &[]);
    full.success();
    let split = std::fs::read(&d.disk).unwrap();
    let writes = common::durable_writes(&full);
    let table_write = writes
        .iter()
        .position(|w| w == "the partition table")
        .unwrap_or_else(|| panic!("no partition table write in {writes:?}"));
    let len = split.len();
    // The primary: protective MBR, header and entries (LBA 0-33); the backup: the last 33.
    let primary = 0..34 * 512;
    let backup = len - 33 * 512..len;
    for (torn, new_part) in [("new primary", &primary), ("new backup", &backup)] {
        d.reset();
        let cut = d.split(
            &[],
            &[(
                "ABUP_CUT_AFTER_WRITES",
                OsStr::new(&table_write.to_string()),
            )],
        );
        assert_eq!(cut.code, None, "{}", cut.stderr_text());
        let mut disk = std::fs::read(&d.disk).unwrap();
        disk[new_part.clone()].copy_from_slice(&split[new_part.clone()]);
        std::fs::write(&d.disk, &disk).unwrap();
        let parts = table(&d.disk);
        let fsck = {
            let dev = Loop::attach(&d.disk, ROOT_START, parts[1].1 * 512);
            Command::new("e2fsck")
                .args(["-f", "-n", &dev.0])
                .output()
                .unwrap()
        };
        assert!(
            fsck.status.success(),
            "{torn}: the root partition does not hold a whole filesystem"
        );
        d.split(&[], &[]).success();
        d.assert_split();
    }
}
