//! `abup split-root`: a device with one ext4 root partition and no spare slot gets two, from
//! its initramfs, before the root filesystem is mounted. The root filesystem is shrunk in
//! place to the first half of its partition (slot A, the same filesystem in the same place),
//! the partition table gives that half to the root partition and the freed half to a new
//! partition (slot B), and the bootloader environment is created with A first and confirmed.
//!
//! Power can fail at any instant, and resize2fs is not crash-safe by itself: a shrink moves
//! blocks and rewrites metadata in place. So every step is recorded in the work directory (on
//! another filesystem, e.g. the ESP) before and after it runs, and before resize2fs runs, the
//! blocks it is going to change are saved there with their old contents ([`backup`]). A run
//! that finds the shrink started writes them back, which gives the old filesystem, and
//! shrinks again. The partition table changes only after the shrink is complete, and both
//! tables are bootable: the old one holds the shrunk filesystem in a partition larger than
//! it, the new one in a partition of its size. The environment, last, is what makes the
//! bootloader treat the disk as split (board READMEs: until then it boots the kernel from
//! outside the root filesystem).
//!
//! The steps are files in the work directory, each created once and never rewritten (the
//! work directory is often FAT, where a rename over an existing file is not atomic): the plan
//! (`split-root.json`), then one marker per finished step. The next run starts after the last
//! marker.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::board::Board;
use crate::bootenv::Location;
use crate::disk::layout::SECTOR;
use crate::install::Refused;

mod backup;

use super::run;

use backup::Backup;

const MIB: u64 = 1024 * 1024;
const PLAN: &str = "split-root.json";
const BACKUP: &str = "split-root.backup";

/// The steps after the plan, in order; each is done when its marker file exists.
const STEPS: [Step; 3] = [Step::Shrunk, Step::Table, Step::Done];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    /// The plan is written; the shrink may have started.
    Planned,
    /// The filesystem has slot A's size; the backup is no longer needed.
    Shrunk,
    /// The partition table holds slots A and B.
    Table,
    /// The environment holds the factory state: the split is finished.
    Done,
}

impl Step {
    fn marker(self) -> &'static str {
        match self {
            Step::Planned => PLAN,
            Step::Shrunk => "split-root.shrunk",
            Step::Table => "split-root.table",
            Step::Done => "split-root.done",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// The disk, when it is not slot A's: an image file or a block device.
    pub disk: Option<PathBuf>,
    /// The root partition's number on `disk` (1-based).
    pub partition: Option<u32>,
    /// Holds the plan, the step markers and the backup; on another filesystem than the
    /// root partition's, with room for the backup.
    pub work_dir: PathBuf,
    /// The new partition's GPT name.
    pub name: Option<String>,
    /// The board file's directory (U-Boot's `initial-env` is there).
    pub board_dir: PathBuf,
}

/// What the split decided, written before anything else and read by every later run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Plan {
    version: u32,
    /// The disk's GPT GUID: a plan is never applied to another disk.
    disk_guid: String,
    partition: u32,
    first_lba: u64,
    /// The root partition's end before the split.
    old_last_lba: u64,
    /// Slot A's end; slot B starts at the next 1 MiB boundary.
    a_last_lba: u64,
    b_partition: u32,
    b_first_lba: u64,
    b_last_lba: u64,
    b_name: String,
    block_size: u64,
    old_blocks: u64,
    new_blocks: u64,
}

/// `abup split-root`'s one line, or its JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub version: u32,
    pub disk: String,
    /// Slot A's partition number and size in bytes.
    pub slot_a: (u32, u64),
    pub slot_b: (u32, u64),
    /// An earlier run had started the split.
    pub resumed: bool,
    /// An earlier run had finished it; nothing was written.
    pub already_done: bool,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b / MIB;
        write!(
            f,
            "{} {}: slot A is partition {} ({} MiB), slot B partition {} ({} MiB); slot A boots, \
             confirmed",
            if self.already_done {
                "already split"
            } else {
                "split"
            },
            self.disk,
            self.slot_a.0,
            mib(self.slot_a.1),
            self.slot_b.0,
            mib(self.slot_b.1)
        )?;
        if self.resumed && !self.already_done {
            write!(f, " (resumed)")?;
        }
        Ok(())
    }
}

pub fn split_root(board: &Board, opts: &Options) -> Result<Summary> {
    if board.slots.len() != 2 {
        bail!(
            "board {} has {} slots; split-root makes exactly two",
            board.name,
            board.slots.len()
        );
    }
    let (disk_path, number) = locate(board, opts)?;
    let work = &opts.work_dir;
    std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let disk = open_disk(&disk_path)?;
    let done = last_step(work);
    let (plan, resumed) = match read_plan(work, &disk, &disk_path)? {
        Some(plan) => (plan, true),
        None => {
            if done.is_some_and(|d| d > Step::Planned) {
                bail!(
                    "the split plan {} is damaged, but the split went past the shrink: keep \
                     the work directory, and compare the partition table with its step markers",
                    work.join(PLAN).display()
                );
            }
            let plan = make_plan(board, opts, &disk, &disk_path, number)?;
            let bytes = serde_json::to_vec_pretty(&plan).context("encoding the split plan")?;
            create_once(&work.join(PLAN), &bytes)?;
            (plan, false)
        }
    };
    let summary = Summary {
        version: 1,
        disk: disk_path.display().to_string(),
        slot_a: (
            plan.partition,
            (plan.a_last_lba + 1 - plan.first_lba) * SECTOR,
        ),
        slot_b: (
            plan.b_partition,
            (plan.b_last_lba + 1 - plan.b_first_lba) * SECTOR,
        ),
        resumed,
        already_done: done == Some(Step::Done),
    };
    let done = done.unwrap_or(Step::Planned);
    if done < Step::Shrunk {
        let fs = FsDevice::attach(
            &disk_path,
            plan.partition,
            plan.first_lba,
            plan.old_last_lba,
        )?;
        shrink(&fs.path, &plan, work, resumed)?;
        create_once(&work.join(Step::Shrunk.marker()), b"")?;
    }
    // Not needed once the shrink is recorded; a run cut right after that left it.
    remove_backup(work)?;
    if done < Step::Table {
        crate::disk::table::split(
            &disk,
            &crate::disk::table::Split {
                number: plan.partition,
                a_last_lba: plan.a_last_lba,
                b_number: plan.b_partition,
                b_first_lba: plan.b_first_lba,
                b_last_lba: plan.b_last_lba,
                b_name: plan.b_name.clone(),
            },
        )?;
        create_once(&work.join(Step::Table.marker()), b"")?;
    }
    if done < Step::Done {
        create_environment(board, &opts.board_dir)?;
        create_once(&work.join(Step::Done.marker()), b"")?;
        reread_partitions(&disk, &disk_path);
    }
    Ok(summary)
}

/// The disk and the root partition's number: as given, or slot A's device as sysfs knows it.
fn locate(board: &Board, opts: &Options) -> Result<(PathBuf, u32)> {
    if let Some(disk) = &opts.disk {
        let number = opts
            .partition
            .context("--disk needs --partition N: the number of the root partition on it")?;
        return Ok((disk.clone(), number));
    }
    let slot_a = board.device(bootcount::SlotId(0));
    let real = std::fs::canonicalize(slot_a).with_context(|| {
        format!(
            "slot A's device {} does not exist (give --disk and --partition)",
            slot_a.display()
        )
    })?;
    let name = real
        .file_name()
        .and_then(|n| n.to_str())
        .context("slot A's device has no name")?;
    let sys = std::fs::canonicalize(Path::new("/sys/class/block").join(name))
        .with_context(|| format!("{} is not a block device sysfs knows", real.display()))?;
    let number = std::fs::read_to_string(sys.join("partition"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .with_context(|| {
            format!(
                "{} is not a partition: split-root splits a root partition",
                real.display()
            )
        })?;
    let parent = sys
        .parent()
        .and_then(|p| p.file_name())
        .context("slot A's partition has no disk in sysfs")?;
    if let Some(n) = opts.partition.filter(|n| *n != number) {
        bail!(
            "slot A's device {} is partition {number}, not {n}",
            slot_a.display()
        );
    }
    Ok((Path::new("/dev").join(parent), number))
}

fn open_disk(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// The last step whose marker exists: `None` when no plan was written.
fn last_step(work: &Path) -> Option<Step> {
    if !work.join(PLAN).exists() {
        return None;
    }
    Some(
        STEPS
            .iter()
            .rev()
            .find(|s| work.join(s.marker()).exists())
            .copied()
            .unwrap_or(Step::Planned),
    )
}

/// The plan of a split that was started, if one was and its plan can be read.
///
/// A plan that is empty or cut short is a FAT filesystem's doing after a power cut during
/// its creation (its directory entry made it to the disk, its contents not): that run
/// cannot have started the shrink, which waits for the plan to be written, so a new plan is
/// made (see `make_plan` for a backup a later run may have left).
fn read_plan(work: &Path, disk: &File, disk_path: &Path) -> Result<Option<Plan>> {
    let path = work.join(PLAN);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let plan: Plan = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => {
            log::warn!(
                "{} is damaged ({e}): a cut run was writing it; planning again",
                path.display()
            );
            return Ok(None);
        }
    };
    let guid = crate::disk::table::disk_guid(disk)?;
    if guid != plan.disk_guid {
        bail!(
            "{} belongs to the split of another disk (GUID {}, {} has {guid}): give the work \
             directory of this disk's split",
            path.display(),
            plan.disk_guid,
            disk_path.display()
        );
    }
    Ok(Some(plan))
}

/// Checks everything that can make the split impossible, changing nothing.
fn make_plan(
    board: &Board,
    opts: &Options,
    disk: &File,
    disk_path: &Path,
    number: u32,
) -> Result<Plan> {
    let refuse = |msg: String| -> anyhow::Error { Refused(msg).into() };
    let name = disk_path.display();
    let table = crate::disk::table::read_numbered(disk)
        .ok_or_else(|| refuse(format!("{name} has no GPT partition table")))?;
    let root = table
        .iter()
        .find(|(n, _)| *n == number)
        .map(|(_, e)| e)
        .ok_or_else(|| refuse(format!("{name} has no partition {number}")))?;
    let b_partition = (1..=128)
        .find(|n| table.iter().all(|(m, _)| m != n))
        .ok_or_else(|| refuse(format!("{name}'s partition table has no free entry")))?;
    let fs = FsDevice::attach(disk_path, number, root.first_lba, root.last_lba)?;
    if let Some(saved) = read_backup(&opts.work_dir)? {
        // Left by a shrink whose plan a FAT work directory lost (see `read_plan`).
        log::warn!("a backup without a plan: putting back the blocks it saved");
        saved.restore(&open_rw(&fs.path)?)?;
        remove_backup(&opts.work_dir)?;
    }
    let kind = filesystem_type(&fs.path);
    if kind.as_deref() != Some("ext4") {
        return Err(refuse(format!(
            "partition {number} of {name} holds {}, not ext4: split-root shrinks ext4 only",
            kind.unwrap_or_else(|| "no filesystem abup recognises".into())
        )));
    }
    let check = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&fs.path)
        .output()
        .context("running e2fsck")?;
    if !check.status.success() {
        return Err(refuse(format!(
            "the ext4 filesystem on partition {number} of {name} has errors (e2fsck -fn exit \
             {}): repair it with e2fsck -f, then run split-root again",
            check.status.code().unwrap_or(-1)
        )));
    }
    let header = run(Command::new("dumpe2fs").arg("-h").arg(&fs.path))?;
    let field = |key: &str| -> Result<u64> {
        header
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
            .with_context(|| format!("dumpe2fs -h printed no {key}"))
    };
    let block_size = field("Block size:")?;
    let old_blocks = field("Block count:")?;
    let min = run(Command::new("resize2fs").arg("-P").arg(&fs.path))?;
    let min_blocks: u64 = min
        .lines()
        .find_map(|l| l.split(':').nth(1)?.trim().parse().ok())
        .context("resize2fs -P printed no minimum size")?;

    let start = root.first_lba * SECTOR;
    let end = (root.last_lba + 1) * SECTOR;
    // Slot B starts on a 1 MiB boundary in the second half, so it is at least as large as A.
    let b_start = (start + (end - start) / 2) / MIB * MIB;
    let a_bytes = b_start.saturating_sub(start);
    let new_blocks = (a_bytes / block_size).min(old_blocks);
    if b_start <= start || end - b_start < MIB {
        return Err(refuse(format!(
            "partition {number} of {name} is too small to split into two slots"
        )));
    }
    if min_blocks > new_blocks {
        let need = (min_blocks - new_blocks) * block_size;
        return Err(refuse(format!(
            "the filesystem on partition {number} of {name} needs at least {} MiB and slot A \
             can have {} MiB: free at least {} MiB (delete files), then run split-root again",
            (min_blocks * block_size).div_ceil(MIB),
            a_bytes / MIB,
            need.div_ceil(MIB)
        )));
    }
    let b_name = match &opts.name {
        Some(n) => n.clone(),
        None => board
            .layout
            .iter()
            .find(|p| p.slot.as_deref() == Some(board.slots.name(bootcount::SlotId(1))))
            .map_or_else(|| "rootfs-b".to_owned(), |p| p.name.clone()),
    };
    Ok(Plan {
        version: 1,
        disk_guid: crate::disk::table::disk_guid(disk)?,
        partition: number,
        first_lba: root.first_lba,
        old_last_lba: root.last_lba,
        a_last_lba: b_start / SECTOR - 1,
        b_partition,
        b_first_lba: b_start / SECTOR,
        b_last_lba: root.last_lba,
        b_name,
        block_size,
        old_blocks,
        new_blocks,
    })
}

/// What libblkid says the partition holds.
fn filesystem_type(dev: &Path) -> Option<String> {
    let prober = blkid::prober::Prober::new_from_filename(dev).ok()?;
    prober.enable_superblocks(true).ok()?;
    prober.do_safe_probe().ok()?;
    prober.get_values_map().ok()?.get("TYPE").cloned()
}

/// Free bytes in the work directory.
fn room(work: &Path) -> Result<u64> {
    let st = nix::sys::statvfs::statvfs(work)
        .with_context(|| format!("reading the free space of {}", work.display()))?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// The root filesystem as a device: its partition node on a block device, a loop device over
/// its range of an image file. Always the partition's range before the split, whatever
/// table the kernel read, so a shrink can be undone and done again.
struct FsDevice {
    path: PathBuf,
    _loop: Option<super::disk::Attached>,
}

impl FsDevice {
    /// Partition `number` of `disk`, from `first_lba` to `last_lba` (its end before the split).
    fn attach(disk: &Path, number: u32, first_lba: u64, last_lba: u64) -> Result<FsDevice> {
        let block = std::fs::metadata(disk).is_ok_and(|m| m.file_type().is_block_device());
        let offset = first_lba * SECTOR;
        let len = (last_lba + 1 - first_lba) * SECTOR;
        if block {
            if let Some(path) = partition_node(disk, number) {
                // Claimed: open fails while the root filesystem is mounted.
                OpenOptions::new()
                    .read(true)
                    .custom_flags(nix::fcntl::OFlag::O_EXCL.bits())
                    .open(&path)
                    .with_context(|| {
                        format!(
                            "{} is in use: split-root runs before the root filesystem is \
                             mounted (from the initramfs)",
                            path.display()
                        )
                    })?;
                return Ok(FsDevice { path, _loop: None });
            }
        }
        let attached = super::disk::attach(disk, offset, len)
            .with_context(|| format!("attaching partition {number} of {}", disk.display()))?;
        Ok(FsDevice {
            path: attached.0.clone(),
            _loop: Some(attached),
        })
    }
}

/// `/dev/<name>` of partition `number` of the block device `disk`, as sysfs lists it.
fn partition_node(disk: &Path, number: u32) -> Option<PathBuf> {
    let real = std::fs::canonicalize(disk).ok()?;
    let name = real.file_name()?.to_str()?.to_owned();
    let dir = Path::new("/sys/class/block").join(&name);
    std::fs::read_dir(&dir).ok()?.flatten().find_map(|e| {
        let n: u32 = std::fs::read_to_string(e.path().join("partition"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        (n == number).then(|| Path::new("/dev").join(e.file_name()))
    })
}

/// Shrinks the filesystem to slot A's size, the blocks it changes saved first; a run that
/// finds the shrink started first puts them back.
fn shrink(dev: &Path, plan: &Plan, work: &Path, resumed: bool) -> Result<()> {
    let device = open_rw(dev)?;
    let saved = match read_backup(work)? {
        Some(saved) => {
            log::info!(
                "a shrink was cut; putting back the {} blocks it changes",
                saved.blocks.len()
            );
            saved.restore(&device)?;
            check(dev, plan, false)?;
            saved
        }
        None => {
            // No backup: resize2fs never ran (or its marker was lost after the backup's
            // removal, and the shrink is complete).
            if resumed && check(dev, plan, true)? {
                return Ok(());
            }
            if plan.new_blocks == plan.old_blocks {
                return Ok(());
            }
            let blocks =
                backup::changed_blocks(dev, plan.block_size, plan.old_blocks, plan.new_blocks)?;
            let saved = Backup::read(&device, plan.block_size, blocks)?;
            let free = room(work)?;
            if free < saved.bytes() + MIB {
                forget_plan(work)?;
                return Err(Refused(format!(
                    "the work directory {} has {} MiB free and the shrink's backup needs {} MiB: \
                     give a work directory with more room",
                    work.display(),
                    free / MIB,
                    (saved.bytes() + MIB).div_ceil(MIB)
                ))
                .into());
            }
            create_once(&work.join(BACKUP), &saved.encode())?;
            saved
        }
    };
    log::info!(
        "shrinking {} from {} to {} blocks of {} bytes ({} blocks saved)",
        dev.display(),
        plan.old_blocks,
        plan.new_blocks,
        plan.block_size,
        saved.blocks.len()
    );
    let mut cmd = crate::failpoint::tool("resize2fs");
    // -f: resize2fs wants an e2fsck -f newer than the last mount; the e2fsck -fn just
    // before (plan, check) is that check, without writing.
    cmd.arg("-f").arg(dev).arg(plan.new_blocks.to_string());
    let out = cmd.output().context("running resize2fs")?;
    crate::failpoint::tool_exited("resize2fs", &out.status);
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        saved
            .restore(&device)
            .context("putting the filesystem back after resize2fs failed")?;
        check(dev, plan, false)?;
        remove_backup(work)?;
        forget_plan(work)?;
        return Err(Refused(format!(
            "resize2fs could not shrink the filesystem ({why}); it is back as it was"
        ))
        .into());
    }
    device
        .sync_all()
        .with_context(|| format!("syncing {}", dev.display()))?;
    Ok(())
}

fn open_rw(dev: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .with_context(|| format!("opening {}", dev.display()))
}

/// A refused split leaves no plan, so the next run checks everything again.
fn forget_plan(work: &Path) -> Result<()> {
    let plan = work.join(PLAN);
    std::fs::remove_file(&plan).with_context(|| format!("removing {}", plan.display()))?;
    sync_dir(work)
}

/// Checks that the filesystem is whole and the old one, or with `may_be_shrunk` the
/// shrunk one (then returns true).
fn check(dev: &Path, plan: &Plan, may_be_shrunk: bool) -> Result<bool> {
    let header = run(Command::new("dumpe2fs").arg("-h").arg(dev))?;
    let blocks: Option<u64> = header
        .lines()
        .find_map(|l| l.strip_prefix("Block count:")?.trim().parse().ok());
    let fsck = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(dev)
        .output()
        .context("running e2fsck")?;
    let shrunk = may_be_shrunk && blocks == Some(plan.new_blocks);
    if !(blocks == Some(plan.old_blocks) || shrunk) || !fsck.status.success() {
        bail!(
            "the root filesystem on {} is not whole after a cut shrink ({} blocks, e2fsck -fn \
             exit {}); keep the work directory and repair it with e2fsck -f",
            dev.display(),
            blocks.map_or("unknown".into(), |b| b.to_string()),
            fsck.status.code().unwrap_or(-1)
        );
    }
    Ok(shrunk)
}

/// The backup in the work directory, if a whole one is there.
fn read_backup(work: &Path) -> Result<Option<Backup>> {
    let path = work.join(BACKUP);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let b = Backup::decode(&bytes);
            if b.is_none() {
                log::warn!("{} is torn: a cut run was writing it", path.display());
            }
            Ok(b)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn remove_backup(work: &Path) -> Result<()> {
    let path = work.join(BACKUP);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            sync_dir(work)?;
            crate::failpoint::wrote(&format!("remove {}", path.display()));
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Creates `path` with `bytes` as the state directory writes its files (a temporary name,
/// synced, renamed to a name nothing holds yet, which FAT does safely too), then syncs the
/// whole filesystem, which FAT needs.
fn create_once(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::state::replace(path, bytes)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// The directory, and the whole filesystem it is on: on FAT a directory's fsync does not
/// cover the allocation table a new file's clusters are in.
fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    d.sync_all()
        .with_context(|| format!("syncing {}", dir.display()))?;
    nix::unistd::syncfs(&d).with_context(|| format!("syncing the filesystem of {}", dir.display()))
}

/// The factory state (A first, confirmed) after U-Boot's defaults, replacing what a cut run
/// left half made.
fn create_environment(board: &Board, board_dir: &Path) -> Result<()> {
    let mut vars = super::boot_files::defaults(board, board_dir)?;
    vars.extend(super::disk::factory_state(board).encode());
    super::recreate_env(&Location::of_board(board), &vars)
}

/// Asks the kernel to read the new table (a block device with nothing mounted from it);
/// failing that, the next boot reads it.
fn reread_partitions(disk: &File, path: &Path) {
    let block = disk
        .metadata()
        .is_ok_and(|m| m.file_type().is_block_device());
    if !block {
        return;
    }
    if let Err(e) = run(Command::new("blockdev").arg("--rereadpt").arg(path)) {
        // The work directory's partition is usually still mounted from the same disk; the
        // initramfs script asks again once it is not.
        log::info!("the kernel keeps the old partition table for now: {e:#}");
    }
}
