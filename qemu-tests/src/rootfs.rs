//! The guests' root file systems: Debian's static busybox, the board's kernel at
//! `/boot/vmlinuz`, abup with the board configuration and keyring, and an init that reports
//! on the console what booted and what `abup status --json` says.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::artifacts::{self, Arch};
use crate::board::Board;
use crate::image;

/// Size of a slot's file system: the image a bundle carries. The test build of abup alone
/// is about 15 MB stripped, beside the kernel, busybox and libraries: 40 MiB stopped
/// holding them all; the slots are 64 MiB.
pub const SLOT_FS_MIB: u64 = 48;

/// What goes into one slot image.
#[derive(Debug, Clone, Copy)]
pub struct SlotImage<'a> {
    /// Printed at boot as `version=`; tells the tests which image is running.
    pub version: &'a str,
    /// What is broken in it, for the updates that must fall back.
    pub defect: Option<Defect>,
}

/// The ways the tests' broken updates fail to boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    /// No init (no busybox applets): the kernel panics.
    NoInit,
    /// No `/boot/vmlinuz`: the bootloader cannot load a kernel and resets.
    NoKernel,
}

impl Defect {
    /// What the console shows when a slot with this defect fails.
    pub fn console(self) -> &'static str {
        match self {
            Defect::NoInit => "Kernel panic",
            // The board scripts' message (board-configs/qemu-*/grub.cfg, boot.cmd).
            Defect::NoKernel => "has no usable kernel",
        }
    }
}

/// Lines the guest prints, for the tests to wait on.
pub const BOOTED: &str = "ABUP-BOOTED ";
pub const STATUS: &str = "ABUP-STATUS ";
pub const READY: &str = "ABUP-READY";
/// The file on the data partition that makes the test health check fail, so the boot-success
/// service does not confirm the slot.
pub const UNHEALTHY: &str = "/data/abup-test/unhealthy";

/// Builds `slot` for `board` as an ext4 image `out`; `keyring` is the public key the guest's
/// abup trusts.
pub fn build(board: Board, slot: SlotImage<'_>, keyring: &Path, out: &Path) -> Result<()> {
    let work = tempfile::tempdir()?;
    let root = work.path();
    for dir in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc/init.d",
        "etc/abup/keyring",
        "etc/abup/health.d",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "data",
        "boot",
        "root",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    fs::create_dir_all(root.join(board.boot_mount().trim_start_matches('/')))?;
    // As on Debian: lock files (fw_setenv's, which abup takes too) live on the /run tmpfs.
    fs::create_dir_all(root.join("var"))?;
    symlink("/run/lock", root.join("var/lock"))?;

    // No /sbin/init and no /bin/sh for a slot without init, the kernel's last resort: it
    // panics.
    busybox(board.arch(), root, slot.defect != Some(Defect::NoInit))?;

    let kernel = artifacts::kernel(board.arch())?;
    if slot.defect != Some(Defect::NoKernel) {
        fs::copy(&kernel.image, root.join("boot/vmlinuz"))?;
    }
    fat_modules(board.arch(), root)?;

    let config = board.config_dir();
    fs::copy(config.join("board.toml"), root.join("etc/abup/board.toml"))?;
    if config.join("fw_env.config").exists() {
        fs::copy(config.join("fw_env.config"), root.join("etc/fw_env.config"))?;
    }
    fs::copy(keyring, root.join("etc/abup/keyring/release.pem"))?;
    if board.guest_runs_abup() {
        let abup = artifacts::abup()?;
        // The test build of abup (dependencies unoptimized) is too big for a slot's file
        // system with its symbols; nothing in the guest reads them.
        crate::run(
            Command::new("objcopy")
                .arg("--strip-all")
                .arg(&abup)
                .arg(root.join("usr/bin/abup")),
        )?;
        for lib in artifacts::guest_libraries(&abup)? {
            let dest = root.join(lib.strip_prefix("/")?);
            if let Some(dir) = dest.parent() {
                fs::create_dir_all(dir)?;
            }
            fs::copy(&lib, &dest)?;
        }
        let dist = artifacts::workspace().join("updater/dist");
        fs::copy(
            dist.join("abup-mark-good.init"),
            root.join("etc/init.d/S90abup-mark-good"),
        )?;
    }
    fs::write(
        root.join("etc/abup-test-version"),
        format!("{}\n", slot.version),
    )?;
    write_exec(
        &root.join("etc/abup/health.d/10-test"),
        &format!(
            "#!/bin/sh\n# The tests' health check: fails while {UNHEALTHY} exists.\n\
             [ ! -e {UNHEALTHY} ]\n"
        ),
    )?;
    fs::write(
        root.join("etc/inittab"),
        "::sysinit:/etc/init.d/rcS\n::respawn:-/bin/sh\n::ctrlaltdel:/sbin/reboot\n",
    )?;
    write_exec(&root.join("etc/init.d/rcS"), &rcs(board))?;
    fs::write(root.join("etc/profile"), "export PS1='# '\n")?;
    image::ext4(root, out, SLOT_FS_MIB)
}

fn rcs(board: Board) -> String {
    let boot = board.boot_mount();
    // The split board has no data partition; what the tests keep there lives in memory.
    let data = if board == Board::GrubUefiSplit {
        "mount -t tmpfs tmpfs /data"
    } else {
        "mount -t ext4 /dev/nvme0n1p4 /data"
    };
    format!(
        r#"#!/bin/sh
# Test guest start-up: mount what abup needs, run the boot-success service, report.
export PATH=/usr/bin:/bin:/usr/sbin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mkdir -p /run/lock
mount -t tmpfs tmpfs /tmp
for m in fat vfat nls_cp437 nls_ascii; do insmod /lib/modules/$(uname -r)/$m.ko; done
mount -t vfat -o iocharset=ascii /dev/nvme0n1p1 {boot}
{data}
mkdir -p /data/abup-test
slot=$(sed -n 's/.*abup\.slot=\([^ ]*\).*/\1/p' /proc/cmdline)
echo "{BOOTED}slot=$slot version=$(cat /etc/abup-test-version)"
if [ -x /usr/bin/abup ]; then
  /etc/init.d/S90abup-mark-good start
  echo "{STATUS}$(abup status --json)"
fi
echo "{READY}"
"#
    )
}

/// Debian's static busybox for `arch` as `root`/bin/busybox, with a link for each of its
/// applets unless `applets` is false. `busybox --list-full` names busybox itself, which must
/// not be linked onto itself; the list comes from the x86_64 build (which the host can run),
/// which has the same applets.
pub fn busybox(arch: Arch, root: &Path, applets: bool) -> Result<()> {
    fs::create_dir_all(root.join("bin"))?;
    fs::copy(artifacts::busybox(arch)?, root.join("bin/busybox"))?;
    if !applets {
        return Ok(());
    }
    let list = Command::new(artifacts::busybox(Arch::X86_64)?)
        .arg("--list-full")
        .output()
        .context("listing busybox applets")?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = root.join(applet);
        if applet.ends_with("/busybox") || link.exists() {
            continue;
        }
        if let Some(dir) = link.parent() {
            fs::create_dir_all(dir)?;
        }
        symlink("/bin/busybox", &link)?;
    }
    Ok(())
}

/// The kernel modules a guest loads to mount its FAT partition, into `root`'s
/// `lib/modules/<release>/` (flat: the guests load them by path with insmod).
pub fn fat_modules(arch: Arch, root: &Path) -> Result<()> {
    let kernel = artifacts::kernel(arch)?;
    let release = kernel
        .modules
        .file_name()
        .context("the kernel's modules directory has no release name")?;
    let modules = root.join("lib/modules").join(release);
    fs::create_dir_all(&modules)?;
    for module in [
        "fs/fat/fat.ko",
        "fs/fat/vfat.ko",
        "fs/nls/nls_cp437.ko",
        "fs/nls/nls_ascii.ko",
    ] {
        let name = module.rsplit('/').next().unwrap_or(module);
        fs::copy(
            kernel.modules.join("kernel").join(module),
            modules.join(name),
        )?;
    }
    Ok(())
}

fn write_exec(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The path of a slot image in `dir` for `version`.
pub fn image_path(dir: &Path, version: &str) -> PathBuf {
    dir.join(format!("rootfs-{version}.ext4"))
}
