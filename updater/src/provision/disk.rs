//! `abup provision`: a blank disk laid out as the board's `[[partition]]` tables describe,
//! its filesystems created, the bundle's image written into slot A (and the other slots with
//! `--both`) through the install's verified pipeline, the board's boot script and boot files
//! written, and the bootloader environment created with A first and confirmed.
//!
//! The steps run in that order and each is journalled in the state directory (on the
//! partition the board mounts it from) once it is durable, so a run cut at any point is
//! finished by running the same command again: a disk whose partition table is exactly the
//! board's layout is taken for one this command started, and the journal says where it
//! stopped (no journal yet: the filesystems are made again; a slot half written: its own
//! install journal continues it). A disk that holds anything else is refused unless
//! `--force`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use bootcount::{AbupState, RaucGrubState, Scheme, SlotId, State};
use serde::{Deserialize, Serialize};

use super::boot_files::BootFiles;
use super::run;
use crate::board::{Board, Bootloader, GrubEnv};
use crate::bootenv::{Assignment, Location};
use crate::disk::layout::{self, Filesystem, Partition, Placed, Size};
use crate::disk::table;
use crate::install::{self, ProgressMode, Refused};
use crate::source::{Network, Source};
use crate::state::StateDir;

#[derive(Debug, Clone)]
pub struct Options {
    /// A block device, or an image file (created at the layout's size if it does not exist
    /// and the layout has no `rest` partition).
    pub disk: PathBuf,
    pub bundle: Option<Source>,
    /// Every slot gets the image, not only the first.
    pub both: bool,
    /// Overwrite a disk that holds partitions or filesystems.
    pub force: bool,
    pub keyring: Option<PathBuf>,
    pub network: Network,
    pub progress: ProgressMode,
}

/// What the disk holds afterwards: `abup provision`'s one line, or its JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub version: u32,
    pub disk: String,
    pub partitions: usize,
    /// Slot name to the version of the bundle written there.
    pub slots: BTreeMap<String, String>,
    /// The slot the bootloader starts, confirmed.
    pub boots: String,
    /// An earlier run had started (true) or finished (then nothing was written) this disk.
    pub resumed: bool,
    pub already_done: bool,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let slots: Vec<String> = self
            .slots
            .iter()
            .map(|(s, v)| format!("slot {s} holds {v}"))
            .collect();
        write!(
            f,
            "{} {}: {} partitions{}{}; slot {} boots first, confirmed",
            if self.already_done {
                "already provisioned"
            } else {
                "provisioned"
            },
            self.disk,
            self.partitions,
            if slots.is_empty() { "" } else { ", " },
            slots.join(", "),
            self.boots
        )?;
        if self.resumed && !self.already_done {
            write!(f, " (resumed)")?;
        }
        Ok(())
    }
}

/// The steps done so far, in the state directory of the disk being provisioned.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Journal {
    version: u32,
    /// Slots written and recorded, with their bundle's version.
    slots: BTreeMap<String, String>,
    environment: bool,
}

const JOURNAL: &str = "provision.json";

/// Lays out `opts.disk` for `board` and fills it; `board_dir` holds the board's files (its
/// boot script parts, boot files, and for a U-Boot board `fw_env.config` and the default
/// environment).
pub fn provision(board: &Board, board_dir: &Path, opts: &Options) -> Result<Summary> {
    if board.layout.is_empty() {
        bail!(
            "board {} has no [[partition]] layout: describe its disk in board.toml \
             (board-configs/README.md)",
            board.name
        );
    }
    let disk_name = opts.disk.display().to_string();
    let boot_files = BootFiles::gather(board, board_dir)?;
    let placed = prepare_table(board, opts)?;
    let root = tempfile::Builder::new()
        .prefix("abup-provision.")
        .tempdir()
        .context("creating a directory to mount the new filesystems on")?;
    let attached = attach_all(&opts.disk, &board.layout, &placed)?;
    let (mounts, journal) = mount_or_make(board, &attached, root.path(), opts.force)?;
    let target = on_disk(board, &attached, root.path(), &mounts)?;
    let state = StateDir::open(&target)?;
    let resumed = journal.is_some();
    let mut journal = match journal {
        Some(j) => j,
        None => {
            let j = Journal {
                version: 1,
                ..Journal::default()
            };
            save(&state, &j)?;
            j
        }
    };
    let already_done = journal.environment;
    if !already_done {
        if let Some(bundle) = &opts.bundle {
            let slots: Vec<SlotId> = target
                .slots
                .ids()
                .take(if opts.both { usize::MAX } else { 1 })
                .collect();
            for slot in slots {
                let name = target.slots.name(slot).to_owned();
                if journal.slots.contains_key(&name) {
                    continue;
                }
                let done = install::provision_slot(
                    &target,
                    &state,
                    &install::Options {
                        source: bundle.clone(),
                        keyring: opts.keyring.clone(),
                        target: Some(name.clone()),
                        network: opts.network.clone(),
                        progress: opts.progress,
                        fallback: None,
                        max_download: None,
                        dry_run: false,
                    },
                    slot,
                )?;
                journal.slots.insert(name, done.version);
                save(&state, &journal)?;
            }
        }
        boot_files.write(|p| map_path(p, root.path(), &mounts))?;
        create_environment(
            &target,
            board_dir,
            root.path(),
            &mounts,
            &boot_files.defaults,
        )?;
        for m in &mounts {
            m.copy_staged()?;
        }
        journal.environment = true;
        save(&state, &journal)?;
    }
    drop(state);
    for m in mounts.into_iter().rev() {
        m.unmount()?;
    }
    drop(attached);
    Ok(Summary {
        version: 1,
        disk: disk_name,
        partitions: board.layout.len(),
        slots: journal.slots,
        boots: board.slots.name(SlotId(0)).to_owned(),
        resumed,
        already_done,
    })
}

fn save(state: &StateDir, journal: &Journal) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(journal).context("encoding the provisioning journal")?;
    state.replace(JOURNAL, &bytes)
}

/// Opens (or creates) the disk, refuses one that holds something else, and writes the table
/// unless it is already exactly the layout. Returns where the partitions are.
fn prepare_table(board: &Board, opts: &Options) -> Result<Vec<Placed>> {
    let path = &opts.disk;
    let name = path.display();
    if !path.exists() {
        if board.layout.iter().any(|p| p.size == Size::Rest) {
            bail!(
                "{name} does not exist; the layout has a \"rest\" partition, so create the image \
                 at the size it should have first (truncate -s SIZE {name}), or give a block \
                 device"
            );
        }
        let file = File::create(path).with_context(|| format!("creating {name}"))?;
        file.set_len(layout::min_disk_size(&board.layout))
            .with_context(|| format!("sizing {name}"))?;
    }
    let block = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
    let disk = OpenOptions::new()
        .read(true)
        .write(true)
        // A block device is claimed: open fails while it is mounted or in use.
        .custom_flags(if block {
            nix::fcntl::OFlag::O_EXCL.bits()
        } else {
            0
        })
        .open(path)
        .with_context(|| format!("opening {name} (is it mounted or in use?)"))?;
    let size = table::size(&disk)?;
    let placed = layout::place(&board.layout, size).map_err(|e| {
        Refused(format!(
            "{name} cannot hold board {}'s layout: {e}",
            board.name
        ))
    })?;
    if table::read(&disk).as_deref() == Some(&expected(&board.layout, &placed)[..]) && !opts.force {
        log::info!("{name} already has the board's partition table: continuing");
        return Ok(placed);
    }
    if !opts.force {
        let found = signatures(path);
        if !found.is_empty() {
            return Err(Refused(format!(
                "{name} holds {}; abup provision writes only blank disks: check that it is the \
                 right disk, then add --force to overwrite it",
                found.join(" and ")
            ))
            .into());
        }
    }
    table::write(&disk, &board.layout, &placed)?;
    Ok(placed)
}

/// The table entries the layout makes, as [`table::read`] returns them.
fn expected(parts: &[Partition], placed: &[Placed]) -> Vec<table::Entry> {
    parts
        .iter()
        .zip(placed)
        .map(|(p, at)| table::Entry {
            name: p.name.clone(),
            type_guid: p.type_guid.clone(),
            first_lba: at.first_lba,
            last_lba: at.last_lba,
        })
        .collect()
}

/// What libblkid recognises on the whole disk: a partition table, a filesystem.
fn signatures(path: &Path) -> Vec<String> {
    let probe = || -> Option<Vec<String>> {
        let prober = blkid::prober::Prober::new_from_filename(path).ok()?;
        prober.enable_superblocks(true).ok()?;
        prober.enable_partitions(true).ok()?;
        prober.do_safe_probe().ok()?;
        let values = prober.get_values_map().ok()?;
        let mut found = Vec::new();
        if let Some(pt) = values.get("PTTYPE") {
            found.push(format!("a partition table ({pt})"));
        }
        if let Some(fs) = values.get("TYPE") {
            found.push(format!("a filesystem ({fs})"));
        }
        Some(found)
    };
    probe().unwrap_or_default()
}

/// A partition made visible as a loop device over its range of the disk: the same for an
/// image file and a block device, and no wait for the kernel to re-read the table.
#[derive(Debug)]
pub(super) struct Attached(pub(super) PathBuf);

impl Drop for Attached {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("losetup").arg("-d").arg(&self.0)) {
            log::warn!("{e:#}");
        }
    }
}

/// One loop device per partition that gets a filesystem or an image; `None` for the rest.
fn attach_all(
    disk: &Path,
    parts: &[Partition],
    placed: &[Placed],
) -> Result<Vec<Option<Attached>>> {
    let mut attached = Vec::new();
    for (p, at) in parts.iter().zip(placed) {
        if p.filesystem.is_none() && p.slot.is_none() {
            attached.push(None);
            continue;
        }
        let dev = attach(disk, at.offset(), at.bytes())
            .with_context(|| format!("attaching partition {} of {}", p.name, disk.display()))?;
        attached.push(Some(dev));
    }
    Ok(attached)
}

/// A loop device over `len` bytes of `disk` from `offset`.
pub(super) fn attach(disk: &Path, offset: u64, len: u64) -> Result<Attached> {
    let dev = run(Command::new("losetup")
        .args(["--find", "--show", "--offset"])
        .arg(offset.to_string())
        .arg("--sizelimit")
        .arg(len.to_string())
        .arg(disk))?;
    Ok(Attached(PathBuf::from(dev.trim())))
}

/// A partition's filesystem under the temporary root, where the running system mounts it.
/// ext4 is mounted; a FAT filesystem (which not every kernel a factory host runs can mount)
/// is a staging directory whose files are copied in with mtools when they are complete.
#[derive(Debug)]
struct Mounted {
    dir: PathBuf,
    /// The running system's mount point, e.g. /data.
    at: String,
    active: bool,
    /// The FAT filesystem's device, for a staging directory.
    fat: Option<PathBuf>,
}

impl Mounted {
    fn unmount(mut self) -> Result<()> {
        if !self.active {
            return Ok(());
        }
        self.active = false;
        run(Command::new("umount").arg(&self.dir)).map(|_| ())
    }

    /// Copies a staging directory's files into its FAT filesystem, replacing what is there.
    fn copy_staged(&self) -> Result<()> {
        let Some(dev) = &self.fat else {
            return Ok(());
        };
        let entries = std::fs::read_dir(&self.dir)
            .with_context(|| format!("reading {}", self.dir.display()))?;
        let mut cmd = Command::new("mcopy");
        cmd.args(["-s", "-o", "-i"]).arg(dev);
        let mut any = false;
        for e in entries {
            cmd.arg(e?.path());
            any = true;
        }
        if any {
            run(cmd.arg("::/"))
                .with_context(|| format!("copying files into the FAT filesystem at {}", self.at))?;
            File::open(dev)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", dev.display()))?;
        }
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.active {
            let _ = Command::new("umount").arg(&self.dir).status();
        }
    }
}

/// The partitions that have a mount point, mounted under `root` as the running system mounts
/// them (outer ones first), with the journal of the run that made them; without one (none
/// started, or it was cut before its journal), the filesystems are made first. `force` makes
/// them again whatever they hold.
fn mount_or_make(
    board: &Board,
    attached: &[Option<Attached>],
    root: &Path,
    force: bool,
) -> Result<(Vec<Mounted>, Option<Journal>)> {
    if !force {
        // Read-only first, without replaying the ext4 journal: a disk this command finished
        // is left exactly as it was. Anything else is mounted for writing and read again.
        for read_only in [true, false] {
            let Ok(mounts) = mount_all(board, attached, root, read_only) else {
                continue;
            };
            let journal = map_path(&board.install.state_dir, root, &mounts)
                .ok()
                .and_then(|d| std::fs::read(d.join(JOURNAL)).ok())
                .and_then(|bytes| serde_json::from_slice::<Journal>(&bytes).ok());
            match journal {
                Some(j) if j.environment || !read_only => return Ok((mounts, Some(j))),
                _ => {
                    for m in mounts.into_iter().rev() {
                        m.unmount()?;
                    }
                }
            }
        }
    }
    for (p, dev) in board.layout.iter().zip(attached) {
        if let (Some(fs), Some(dev)) = (p.filesystem, dev) {
            make_filesystem(fs, &p.name, &dev.0)?;
        }
    }
    Ok((mount_all(board, attached, root, false)?, None))
}

fn mount_all(
    board: &Board,
    attached: &[Option<Attached>],
    root: &Path,
    read_only: bool,
) -> Result<Vec<Mounted>> {
    let mut order: Vec<(&Partition, &Attached)> = board
        .layout
        .iter()
        .zip(attached)
        .filter_map(|(p, a)| Some((p, a.as_ref()?)))
        .filter(|(p, _)| p.mount.is_some())
        .collect();
    order.sort_by_key(|(p, _)| p.mount.as_deref().map_or(0, |m| m.matches('/').count()));
    let mut mounts = Vec::new();
    for (p, dev) in order {
        let (Some(at), Some(fs)) = (&p.mount, p.filesystem) else {
            continue;
        };
        let dir = root.join(at.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if fs == Filesystem::Vfat {
            mounts.push(Mounted {
                dir,
                at: at.clone(),
                active: false,
                fat: Some(dev.0.clone()),
            });
            continue;
        }
        run(Command::new("mount")
            .args(["-t", fs.name()])
            .args(if read_only {
                &["-o", "ro,noload"][..]
            } else {
                &[]
            })
            .arg(&dev.0)
            .arg(&dir))
        .with_context(|| format!("mounting partition {}", p.name))?;
        mounts.push(Mounted {
            dir,
            at: at.clone(),
            active: true,
            fat: None,
        });
    }
    Ok(mounts)
}

fn make_filesystem(fs: Filesystem, name: &str, dev: &Path) -> Result<()> {
    let mut cmd = match fs {
        Filesystem::Vfat => {
            // FAT labels: 11 characters, upper case, no spaces.
            let label: String = name
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .take(11)
                .collect::<String>()
                .to_ascii_uppercase();
            let mut c = Command::new("mkfs.vfat");
            c.arg("-n").arg(label);
            c
        }
        Filesystem::Ext4 => {
            let mut c = Command::new("mkfs.ext4");
            c.args(["-q", "-F", "-L"])
                .arg(name.chars().take(16).collect::<String>());
            c
        }
    };
    run(cmd.arg(dev))
        .with_context(|| format!("creating the {} filesystem of partition {name}", fs.name()))?;
    Ok(())
}

/// Where `path` of the running system is while the disk's filesystems are mounted under
/// `root`: on the partition mounted at its longest prefix.
fn map_path(path: &Path, root: &Path, mounts: &[Mounted]) -> Result<PathBuf> {
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.at))
        .max_by_key(|m| m.at.len())
        .and_then(|m| path.strip_prefix(&m.at).ok().map(|rest| m.dir.join(rest)))
        .filter(|p| p.starts_with(root))
        .with_context(|| {
            format!(
                "{} is on none of the partitions provisioning creates: give the partition that \
                 holds it a mount = \"...\" in board.toml",
                path.display()
            )
        })
}

/// The board as it looks from here: slots on their loop devices, the state directory and the
/// environment on the mounted filesystems.
fn on_disk(
    board: &Board,
    attached: &[Option<Attached>],
    root: &Path,
    mounts: &[Mounted],
) -> Result<Board> {
    let mut b = board.clone();
    for (i, slot) in board.slots.names().iter().enumerate() {
        let dev = board
            .layout
            .iter()
            .zip(attached)
            .find(|(p, _)| p.slot.as_deref() == Some(slot.as_str()))
            .and_then(|(_, a)| a.as_ref())
            .with_context(|| format!("slot {slot} has no partition in the board's layout"))?;
        b.devices[i] = dev.0.clone();
        b.classes[i].clear();
    }
    let state_dir = &board.install.state_dir;
    if let Some(m) = mounts
        .iter()
        .filter(|m| state_dir.starts_with(&m.at))
        .max_by_key(|m| m.at.len())
        .filter(|m| m.fat.is_some())
    {
        bail!(
            "the state directory {} is on the FAT partition mounted at {}: abup keeps its \
             journal and records there and needs it on an ext4 partition",
            state_dir.display(),
            m.at
        );
    }
    b.install.state_dir = map_path(state_dir, root, mounts)?;
    if let Bootloader::Grub { env } = &board.bootloader {
        let env = match env {
            GrubEnv::Pair([a, c]) => {
                GrubEnv::Pair([map_path(a, root, mounts)?, map_path(c, root, mounts)?])
            }
            GrubEnv::Single(a) => GrubEnv::Single(map_path(a, root, mounts)?),
        };
        b.bootloader = Bootloader::Grub { env };
    }
    Ok(b)
}

/// The factory state: the first slot first in the boot order, confirmed, with its tries.
pub(super) fn factory_state(board: &Board) -> State {
    match board.scheme {
        Scheme::Abup => State::Abup(AbupState::factory(&board.slots)),
        Scheme::RaucGrub => {
            let n = board.slots.len();
            let order: Vec<SlotId> = board.slots.ids().collect();
            let ok: Vec<bool> = (0..n).map(|i| i == 0).collect();
            State::RaucGrub(RaucGrubState::new(
                &board.slots,
                &order,
                &ok,
                &vec![false; n],
            ))
        }
    }
}

/// Creates the environment with `defaults` (U-Boot's) and the factory state, replacing what a
/// cut run left half made. A U-Boot board's environment is where the `fw_env.config` beside
/// its board.toml says, on the mounted filesystems.
fn create_environment(
    target: &Board,
    board_dir: &Path,
    root: &Path,
    mounts: &[Mounted],
    defaults: &[Assignment],
) -> Result<()> {
    let mut vars = defaults.to_vec();
    vars.extend(factory_state(target).encode());
    let location = match &target.bootloader {
        Bootloader::Grub { .. } => Location::of_board(target),
        Bootloader::UBoot { config, .. } => {
            let name = config
                .file_name()
                .context("the board's fw-env-config has no file name")?;
            let shipped = board_dir.join(name);
            let text = std::fs::read_to_string(&shipped).with_context(|| {
                format!(
                    "reading {} (the board's U-Boot environment configuration)",
                    shipped.display()
                )
            })?;
            let mut mapped = String::new();
            for line in text.lines() {
                let trimmed = line.trim_start();
                match trimmed.split_whitespace().next() {
                    Some(path) if path.starts_with('/') => {
                        let on = map_path(Path::new(path), root, mounts)?;
                        if let Some(dir) = on.parent() {
                            std::fs::create_dir_all(dir)?;
                        }
                        // An environment kept in a file: the file, as large as the copy's
                        // offset and size say, for the environment code to fill.
                        let numbers: Vec<u64> = trimmed
                            .split_whitespace()
                            .skip(1)
                            .take(2)
                            .filter_map(parse_number)
                            .collect();
                        if let (&[offset, size], false) = (&numbers[..], on.exists()) {
                            File::create(&on)
                                .and_then(|f| f.set_len(offset + size))
                                .with_context(|| format!("creating {}", on.display()))?;
                        }
                        mapped.push_str(&line.replacen(path, &on.display().to_string(), 1));
                    }
                    _ => mapped.push_str(line),
                }
                mapped.push('\n');
            }
            let config = root.join("fw_env.config");
            std::fs::write(&config, mapped)
                .with_context(|| format!("writing {}", config.display()))?;
            Location::UBoot {
                config,
                lock_file: Some(root.join("fw_env.lock")),
            }
        }
    };
    super::recreate_env(&location, &vars)
}

/// A number as fw_env.config writes them: hexadecimal with 0x, else decimal.
fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}
