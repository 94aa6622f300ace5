//! GPT disk images built as plain files, without mounting anything: `sgdisk` for the table,
//! `mkfs.vfat -C` and `mcopy` for the boot partition, `mkfs.ext4 -d` for the slots, and the
//! partitions copied in at their offsets.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};

use crate::run;

const MIB: u64 = 1024 * 1024;
const SECTOR: u64 = 512;

/// A partition of the test disks: GPT name, type code, size.
#[derive(Debug, Clone, Copy)]
pub struct Part {
    pub name: &'static str,
    pub type_code: &'static str,
    pub size_mib: u64,
}

/// The layout every QEMU board uses (the board READMEs describe it): p1 `boot` FAT, p2 and
/// p3 the slots, p4 `data` for what outlives updates (abup's state, test bundles), p5 the
/// BIOS boot partition GRUB's core image lives in under SeaBIOS.
pub const LAYOUT: [Part; 5] = [
    Part {
        name: "boot",
        type_code: "ef00",
        size_mib: 32,
    },
    Part {
        name: "rootfs-a",
        type_code: "8300",
        size_mib: 64,
    },
    Part {
        name: "rootfs-b",
        type_code: "8300",
        size_mib: 64,
    },
    Part {
        name: "data",
        type_code: "8300",
        size_mib: 64,
    },
    Part {
        name: "bios-grub",
        type_code: "ef02",
        size_mib: 1,
    },
];

/// Byte offset and size of partition `number` (1-based) of `LAYOUT`.
pub fn part_range(number: usize) -> (u64, u64) {
    let mut start = MIB;
    for part in &LAYOUT[..number - 1] {
        start += part.size_mib * MIB;
    }
    (start, LAYOUT[number - 1].size_mib * MIB)
}

/// Creates `disk` with `LAYOUT`'s partition table and nothing in the partitions.
pub fn create_disk(disk: &Path) -> Result<()> {
    let total = part_range(LAYOUT.len()).0 + LAYOUT[LAYOUT.len() - 1].size_mib * MIB + MIB;
    let file = File::create(disk).with_context(|| format!("creating {}", disk.display()))?;
    file.set_len(total)?;
    let mut sgdisk = Command::new("sgdisk");
    sgdisk.arg("--clear");
    for (i, part) in LAYOUT.iter().enumerate() {
        let (start, size) = part_range(i + 1);
        let n = i + 1;
        sgdisk
            .arg(format!(
                "--new={n}:{}:{}",
                start / SECTOR,
                (start + size) / SECTOR - 1
            ))
            .arg(format!("--typecode={n}:{}", part.type_code))
            .arg(format!("--change-name={n}:{}", part.name));
    }
    run(sgdisk.arg(disk))
}

/// Copies the file `image` into partition `number` of `disk`.
pub fn write_part(disk: &Path, number: usize, image: &Path) -> Result<()> {
    let (start, size) = part_range(number);
    let mut src = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let len = src.metadata()?.len();
    ensure!(
        len <= size,
        "{} ({len} bytes) does not fit partition {number} ({size} bytes)",
        image.display()
    );
    let mut dst = OpenOptions::new().write(true).open(disk)?;
    dst.seek(SeekFrom::Start(start))?;
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n])?;
    }
    dst.sync_all()?;
    Ok(())
}

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

/// A FAT file system of `size_mib` holding `files` as (path in the file system, source).
pub fn fat(image: &Path, size_mib: u64, files: &[(&str, &Path)]) -> Result<()> {
    let _ = fs::remove_file(image);
    run(Command::new("mkfs.vfat")
        .args(["-C", "-n", "BOOT"])
        .arg(image)
        .arg((size_mib * 1024).to_string()))?;
    for (dest, src) in files {
        let mut dir = String::new();
        let parts: Vec<&str> = dest.split('/').filter(|s| !s.is_empty()).collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            dir.push('/');
            dir.push_str(part);
            // An existing directory is fine; mmd then fails and is ignored.
            let _ = Command::new("mmd")
                .arg("-i")
                .arg(image)
                .arg(format!("::{dir}"))
                .output();
        }
        run(Command::new("mcopy")
            .args(["-o", "-i"])
            .arg(image)
            .arg(src)
            .arg(format!("::{dest}")))?;
    }
    Ok(())
}

/// `mtools`' name for partition `number` of `disk`.
pub fn mtools_part(disk: &Path, number: usize) -> String {
    format!("{}@@{}", disk.display(), part_range(number).0)
}

/// Copies `path` out of the FAT partition `number` of `disk`.
pub fn fat_get(disk: &Path, number: usize, path: &str, out: &Path) -> Result<()> {
    run(Command::new("mcopy")
        .args(["-o", "-n", "-i"])
        .arg(mtools_part(disk, number))
        .arg(format!("::{path}"))
        .arg(out))
}

/// Copies `src` into the FAT partition `number` of `disk` as `path`, in place.
pub fn fat_put(disk: &Path, number: usize, src: &Path, path: &str) -> Result<()> {
    run(Command::new("mcopy")
        .args(["-o", "-n", "-i"])
        .arg(mtools_part(disk, number))
        .arg(src)
        .arg(format!("::{path}")))
}

/// Makes `disk` boot GRUB under SeaBIOS, as `grub-install --target=i386-pc` would, without
/// needing a block device: `core` (from `grub-mkimage -O i386-pc`) goes into the BIOS boot
/// partition `part`, the first 440 bytes of GRUB's `boot.img` into the MBR (the protective
/// partition table after them stays), and the two sector numbers `grub-bios-setup` patches
/// point boot.img at core.img's first sector and core.img's first sector at the rest.
pub fn install_bios_grub(disk: &Path, part: usize, boot_img: &Path, core: &Path) -> Result<()> {
    let (start, size) = part_range(part);
    let mut boot = fs::read(boot_img).with_context(|| format!("reading {}", boot_img.display()))?;
    let mut core_img = fs::read(core).with_context(|| format!("reading {}", core.display()))?;
    ensure!(
        boot.len() == 512,
        "{} is not one sector",
        boot_img.display()
    );
    ensure!(
        core_img.len() as u64 <= size && core_img.len() >= 512,
        "GRUB core image of {} bytes does not fit the BIOS boot partition",
        core_img.len()
    );
    let core_sector = start / SECTOR;
    // boot.img: GRUB_BOOT_MACHINE_KERNEL_SECTOR, the LBA of core.img.
    boot[0x5c..0x64].copy_from_slice(&core_sector.to_le_bytes());
    // core.img's first sector (diskboot.img) ends in a block list; its first entry's start
    // is the LBA of the rest of core.img (its length grub-mkimage already filled in).
    core_img[0x1f4..0x1fc].copy_from_slice(&(core_sector + 1).to_le_bytes());
    let mut file = OpenOptions::new().write(true).open(disk)?;
    file.write_all(&boot[..440])?;
    file.seek(SeekFrom::Start(start))?;
    file.write_all(&core_img)?;
    file.sync_all()?;
    Ok(())
}
