//! Pieces of the test disks that `abup provision` does not make: ext4 slot images
//! (`mkfs.ext4 -d`, without mounting anything), files copied in and out of the FAT boot
//! partition (mtools) and into the data partition (mounted), GRUB's BIOS boot code, and loop
//! devices over partitions. Partitions are where the board's layout puts them
//! ([`crate::factory::Layout`]).

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use abup::disk::layout::{Placed, SECTOR};
use anyhow::{bail, ensure, Context, Result};

use crate::run;

/// An ext4 file system of `size_mib` holding the tree `dir`.
pub fn ext4(dir: &Path, image: &Path, size_mib: u64) -> Result<()> {
    let _ = fs::remove_file(image);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg("-d")
        .arg(dir)
        .arg(image)
        .arg(format!("{size_mib}M"))
        .env("E2FSPROGS_FAKE_TIME", "1700000000"))
}

/// `mtools`' name for the FAT filesystem in `part` of `disk`.
fn mtools_part(disk: &Path, part: Placed) -> String {
    format!("{}@@{}", disk.display(), part.offset())
}

/// Copies `path` out of the FAT filesystem in `part` of `disk`.
pub fn fat_get(disk: &Path, part: Placed, path: &str, out: &Path) -> Result<()> {
    run(Command::new("mcopy")
        .args(["-o", "-n", "-i"])
        .arg(mtools_part(disk, part))
        .arg(format!("::{path}"))
        .arg(out))
}

/// Copies `src` into the FAT filesystem in `part` of `disk` as `path`, in place.
pub fn fat_put(disk: &Path, part: Placed, src: &Path, path: &str) -> Result<()> {
    run(Command::new("mcopy")
        .args(["-o", "-n", "-i"])
        .arg(mtools_part(disk, part))
        .arg(src)
        .arg(format!("::{path}")))
}

/// Copies `files` (source, path inside the filesystem) into the ext4 filesystem in `part` of
/// `disk`. The filesystem is the one provisioning made, holding abup's state directory, so it
/// is added to rather than made anew: mounted (as root) through a loop device, which keeps
/// its error reporting simple (`debugfs -w` exits 0 when a command fails) and writes the
/// files as the device's own kernel would.
pub fn ext4_put(disk: &Path, part: Placed, files: &[(&Path, PathBuf)]) -> Result<()> {
    let dev = Loop::attach(disk, part)?;
    let dir = tempfile::Builder::new().prefix("abup-ext4.").tempdir()?;
    run(Command::new("mount")
        .args(["-t", "ext4"])
        .arg(&dev.device)
        .arg(dir.path()))?;
    let copied = files.iter().try_for_each(|(src, path)| {
        let to = dir.path().join(path);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(src, &to).map(drop).with_context(|| {
            format!(
                "copying {} to {} on {}",
                src.display(),
                path.display(),
                disk.display()
            )
        })
    });
    let unmounted = run(Command::new("umount").arg(dir.path()));
    copied.and(unmounted)
}

/// Makes `disk` boot GRUB under SeaBIOS, as `grub-install --target=i386-pc` would, without
/// needing a block device: `core` (from `grub-mkimage -O i386-pc`) goes into the BIOS boot
/// partition `part`, the first 440 bytes of GRUB's `boot.img` into the MBR (the protective
/// partition table after them stays), and the two sector numbers `grub-bios-setup` patches
/// point boot.img at core.img's first sector and core.img's first sector at the rest.
pub fn install_bios_grub(disk: &Path, part: Placed, boot_img: &Path, core: &Path) -> Result<()> {
    let mut boot = fs::read(boot_img).with_context(|| format!("reading {}", boot_img.display()))?;
    let mut core_img = fs::read(core).with_context(|| format!("reading {}", core.display()))?;
    ensure!(
        boot.len() == 512,
        "{} is not one sector",
        boot_img.display()
    );
    ensure!(
        core_img.len() as u64 <= part.bytes() && core_img.len() >= 512,
        "GRUB core image of {} bytes does not fit the BIOS boot partition",
        core_img.len()
    );
    let core_sector = part.offset() / SECTOR;
    // boot.img: GRUB_BOOT_MACHINE_KERNEL_SECTOR, the LBA of core.img.
    boot[0x5c..0x64].copy_from_slice(&core_sector.to_le_bytes());
    // core.img's first sector (diskboot.img) ends in a block list; its first entry's start
    // is the LBA of the rest of core.img (its length grub-mkimage already filled in).
    core_img[0x1f4..0x1fc].copy_from_slice(&(core_sector + 1).to_le_bytes());
    let mut file = OpenOptions::new().write(true).open(disk)?;
    file.write_all(&boot[..440])?;
    file.seek(SeekFrom::Start(part.offset()))?;
    file.write_all(&core_img)?;
    file.sync_all()?;
    Ok(())
}

/// A loop device over one partition of a disk image, detached when dropped.
#[derive(Debug)]
pub struct Loop {
    pub device: String,
}

impl Loop {
    pub fn attach(disk: &Path, part: Placed) -> Result<Loop> {
        let out = Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(format!("--offset={}", part.offset()))
            .arg(format!("--sizelimit={}", part.bytes()))
            .arg(disk)
            .output()?;
        if !out.status.success() {
            bail!("losetup: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(Loop {
            device: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}
