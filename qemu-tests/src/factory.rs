//! A board's disk as the factory makes it: `abup provision` from the board's shipped
//! configuration, so every CI boot proves provisioning too. The files a factory builds for
//! the board (GRUB's EFI image, U-Boot's default environment) are put beside a copy of its
//! board.toml; what provisioning leaves to the bootloader's own installer (GRUB's core image
//! for BIOS) is done afterwards, as `grub-install` would.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use abup::disk::layout::{self, Partition, Placed};
use anyhow::{ensure, Context, Result};

use crate::artifacts;
use crate::board::Board;
use crate::{image, run};

/// The GRUB modules in both of the grub board's images (UEFI and BIOS).
const GRUB_MODULES: [&str; 16] = [
    "part_gpt",
    "part_msdos",
    "fat",
    "ext2",
    "normal",
    "configfile",
    "linux",
    "loadenv",
    "echo",
    "test",
    "reboot",
    "halt",
    "sleep",
    "serial",
    "terminal",
    "search",
];

/// A slot's first image and the keyring that checks its signature.
#[derive(Debug, Clone, Copy)]
pub struct FirstImage<'a> {
    pub bundle: &'a Path,
    pub keyring: &'a Path,
}

/// Where the board's partitions are on its disk, as its board.toml lays them out.
#[derive(Debug, Clone)]
pub struct Layout {
    parts: Vec<(Partition, Placed)>,
}

impl Layout {
    /// `parts` placed on a disk of `size` bytes, as `abup provision` places them.
    pub fn new(parts: Vec<Partition>, size: u64) -> Result<Layout> {
        let placed = layout::place(&parts, size)?;
        Ok(Layout {
            parts: parts.into_iter().zip(placed).collect(),
        })
    }

    /// The partition mounted at `mount` on the running system.
    pub fn mounted_at(&self, mount: &str) -> Result<Placed> {
        self.find(&format!("mounted at {mount}"), |p| {
            p.mount.as_deref() == Some(mount)
        })
    }

    /// The partition of slot `name`.
    pub fn slot(&self, name: &str) -> Result<Placed> {
        self.find(&format!("of slot {name}"), |p| {
            p.slot.as_deref() == Some(name)
        })
    }

    /// The partition of `kind`, a type's short name in board.toml (`bios-boot`).
    pub fn of_type(&self, kind: &str) -> Result<Placed> {
        let guid = layout::type_guid(kind).with_context(|| format!("no partition type {kind}"))?;
        self.find(&format!("of type {kind}"), |p| p.type_guid == guid)
    }

    fn find(&self, what: &str, pick: impl Fn(&Partition) -> bool) -> Result<Placed> {
        self.parts
            .iter()
            .find(|(p, _)| pick(p))
            .map(|(_, at)| *at)
            .with_context(|| format!("the board's layout has no partition {what}"))
    }
}

/// A provisioned disk image.
#[derive(Debug)]
pub struct Disk {
    pub path: PathBuf,
    pub layout: Layout,
}

/// Provisions `dir/disk.img` for `board` with `abup provision`, slot A from `first` (left
/// empty without one). `dir` gets a copy of `board-configs/` (a board.toml names its script
/// parts as `../grub/...`) with the factory's files beside the board's board.toml.
pub fn provision(board: Board, dir: &Path, first: Option<FirstImage<'_>>) -> Result<Disk> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "abup provision makes the test disks and needs root (loop devices, mount): run the \
         QEMU tests as root, as CI does"
    );
    let configs = dir.join("board-configs");
    let _ = fs::remove_dir_all(&configs);
    run(Command::new("cp")
        .arg("-r")
        .arg(artifacts::workspace().join("board-configs"))
        .arg(&configs))?;
    let board_dir = configs.join(board.config_name());
    let board_toml = board_dir.join("board.toml");
    if board.is_grub() {
        grub_mkimage("x86_64-efi", "/grub", &[], &board_dir.join("BOOTX64.EFI"))?;
    } else {
        let defaults = artifacts::u_boot(board.arch())?.join("u-boot-initial-env");
        fs::copy(&defaults, board_dir.join("u-boot-initial-env"))
            .with_context(|| format!("copying {}", defaults.display()))?;
    }

    let disk = dir.join("disk.img");
    let _ = fs::remove_file(&disk);
    let mut provision = Command::new(artifacts::abup()?);
    provision
        .arg("--config")
        .arg(&board_toml)
        .args(["provision", "--progress", "none", "--disk"])
        .arg(&disk);
    if let Some(first) = first {
        provision
            .arg("--keyring")
            .arg(first.keyring)
            .arg(first.bundle);
    }
    run(&mut provision)?;

    let size = fs::metadata(&disk)
        .with_context(|| format!("reading {}", disk.display()))?
        .len();
    let layout = Layout::new(abup::board::Board::load(&board_toml)?.layout, size)?;
    if board.is_grub() {
        let core = dir.join("core.img");
        grub_mkimage("i386-pc", "(hd0,gpt1)/grub", &["biosdisk"], &core)?;
        let boot_img = Path::new("/usr/lib/grub/i386-pc/boot.img");
        image::install_bios_grub(&disk, layout.of_type("bios-boot")?, boot_img, &core)?;
    }
    Ok(Disk { path: disk, layout })
}

/// `grub-mkimage` for `format` with the boards' modules and `extra`.
pub(crate) fn grub_mkimage(format: &str, prefix: &str, extra: &[&str], out: &Path) -> Result<()> {
    run(Command::new("grub-mkimage")
        .args(["-O", format, "-p", prefix, "-o"])
        .arg(out)
        .args(extra)
        .args(GRUB_MODULES))
}
