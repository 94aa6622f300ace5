//! The split-root board (`board-configs/qemu-x86_64-grub-split`): a disk as a single-root
//! device in the field has it (the ESP and one ext4 root partition filling the rest), and the
//! busybox initramfs that converts it with `abup split-root` on its first boot, built from
//! the scripts abup ships (`updater/dist/initramfs`).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use abup::disk::layout::Placed;
use anyhow::{ensure, Context, Result};

use crate::artifacts::{self, Arch};
use crate::board::Board;
use crate::factory::Layout;
use crate::image::Loop;
use crate::{rootfs, run};

const MIB: u64 = 1024 * 1024;
/// The ESP holds the kernel, the initramfs, the bundle the scenario installs, abup's state
/// and the split's undo file.
pub const ESP_MIB: u64 = 96;
/// The root partition: after the split two slots (96 MiB and the rest), each holds a slot
/// image and A the user's files too.
pub const ROOT_MIB: u64 = 192;
/// Where the ESP starts and the root partition starts, in bytes.
pub const ESP_START: u64 = MIB;
pub const ROOT_START: u64 = ESP_START + ESP_MIB * MIB;
/// The whole disk: the partitions and a MiB for the backup GPT.
pub const DISK_BYTES: u64 = ROOT_START + ROOT_MIB * MIB + MIB;

/// The bundle the scenario installs into slot B, on the ESP, as the guest sees it.
pub const BUNDLE_V2: &str = "/boot/efi/bundles/v2.abup";

/// What the initramfs prints when the split starts and when it is done.
pub const SPLITTING: &str = "abup-split-root: splitting";
/// abup's log line as resize2fs starts.
pub const SHRINKING: &str = "abup: info: shrinking";
pub const SPLIT: &str = "split /dev/nvme0n1: slot A";

/// The factory-fresh disk of a single-root device for `board` (the split board) in a new
/// directory, with what a template keeps there (`images/`, `keyring/`, the release key):
/// returns the directory, the disk and the board's compatible string.
pub fn build(board: Board) -> Result<(tempfile::TempDir, PathBuf, Layout, String)> {
    let dir = tempfile::Builder::new().prefix("abup-qemu-").tempdir()?;
    let d = dir.path();
    let (secret, public) = crate::device::release_key(d)?;
    let config = board.config_dir();
    let board_cfg = abup::board::Board::load(&config.join("board.toml"))?;
    let images = d.join("images");
    fs::create_dir_all(&images)?;
    let v1 = rootfs::image_path(&images, "1.0");
    let v2 = rootfs::image_path(&images, "2.0");
    for (version, image) in [("1.0", &v1), ("2.0", &v2)] {
        let slot = rootfs::SlotImage {
            version,
            defect: None,
        };
        rootfs::build(board, slot, &public, image)?;
    }
    let bundle = d.join("v2.abup");
    crate::device::create_bundle(&secret, &board_cfg.compatible, &v2, "2.0", None, &bundle)?;
    let mut script = String::new();
    for part in &board_cfg.script {
        let path = config.join(part);
        script.push_str(
            &fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
        );
    }
    let grub_cfg = d.join("grub.cfg");
    fs::write(&grub_cfg, script)?;
    let efi = d.join("BOOTX64.EFI");
    crate::factory::grub_mkimage("x86_64-efi", "/grub", &[], &efi)?;
    let initrd = d.join("initrd.img");
    initramfs(&config, &initrd)?;
    let kernel = artifacts::kernel(Arch::X86_64)?;
    let disk_path = d.join("disk.img");
    disk(
        &disk_path,
        &[
            ("/EFI/BOOT/BOOTX64.EFI", efi),
            ("/grub/grub.cfg", grub_cfg),
            ("/vmlinuz", kernel.image),
            ("/initrd.img", initrd),
            (BUNDLE_V2.trim_start_matches("/boot/efi"), bundle),
        ],
        &v1,
        8 * MIB,
    )?;
    // Where the partitions are once the split is done.
    let layout = Layout::new(board_cfg.layout, DISK_BYTES)?;
    Ok((dir, disk_path, layout, board_cfg.compatible))
}

/// The busybox initramfs (gzip'd newc cpio) at `out`: busybox, abup and the e2fsprogs tools
/// split-root runs with their libraries, the FAT modules, the board's configuration and
/// abup's shipped `busybox-init` and `abup-split-root` scripts.
pub fn initramfs(config: &Path, out: &Path) -> Result<()> {
    let work = tempfile::tempdir()?;
    let root = work.path();
    for dir in [
        "bin", "sbin", "usr/bin", "proc", "sys", "dev", "run", "etc/abup",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    rootfs::busybox(Arch::X86_64, root, true)?;
    // The e2fsprogs tools replace busybox's applets of the same name, if any.
    let abup = artifacts::abup()?;
    let stripped = root.join("usr/bin/abup");
    run(Command::new("objcopy")
        .arg("--strip-all")
        .arg(&abup)
        .arg(&stripped))?;
    let mut binaries = vec![stripped];
    for tool in ["resize2fs", "e2fsck", "e2image", "dumpe2fs"] {
        let dest = root.join("sbin").join(tool);
        let _ = fs::remove_file(&dest);
        fs::copy(Path::new("/usr/sbin").join(tool), &dest)?;
        binaries.push(dest);
    }
    for binary in &binaries {
        for lib in artifacts::guest_libraries(binary)? {
            let dest = root.join(lib.strip_prefix("/")?);
            if dest.exists() {
                continue;
            }
            if let Some(dir) = dest.parent() {
                fs::create_dir_all(dir)?;
            }
            fs::copy(&lib, &dest)?;
        }
    }
    rootfs::fat_modules(Arch::X86_64, root)?;
    fs::copy(config.join("board.toml"), root.join("etc/abup/board.toml"))?;
    fs::copy(
        config.join("split-root.conf"),
        root.join("etc/abup/split-root.conf"),
    )?;
    let dist = artifacts::workspace().join("updater/dist/initramfs");
    fs::copy(dist.join("busybox-init"), root.join("init"))?;
    fs::copy(
        dist.join("abup-split-root"),
        root.join("bin/abup-split-root"),
    )?;
    let cpio = format!(
        "cd {} && find . | {} cpio -o -H newc | gzip -1 > {}",
        root.display(),
        artifacts::busybox(Arch::X86_64)?.display(),
        out.display()
    );
    run(Command::new("sh").arg("-c").arg(cpio))
}

/// The field device's disk at `disk`: the ESP with `esp_files` (path on the ESP, source), and
/// the root partition holding `root_image` grown to fill it, with `user_files` (bytes each)
/// written after the growth so that some of them lie in the half the split frees.
pub fn disk(
    disk: &Path,
    esp_files: &[(&str, PathBuf)],
    root_image: &Path,
    user_files: u64,
) -> Result<()> {
    let _ = fs::remove_file(disk);
    fs::File::create(disk)?.set_len(DISK_BYTES)?;
    run(Command::new("sgdisk")
        .arg(format!(
            "--new=1:{}:{}",
            ESP_START / 512,
            ROOT_START / 512 - 1
        ))
        .args(["--typecode=1:ef00", "--change-name=1:esp"])
        .arg(format!("--new=2:{}:0", ROOT_START / 512))
        .args(["--typecode=2:8300", "--change-name=2:rootfs-a"])
        .arg(disk))?;

    let esp = Loop::attach(disk, range(ESP_START, ESP_MIB * MIB))?;
    run(Command::new("mkfs.vfat")
        .args(["-n", "ESP"])
        .arg(&esp.device))?;
    let staged = tempfile::tempdir()?;
    for (dest, src) in esp_files {
        let to = staged.path().join(dest.trim_start_matches('/'));
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::copy(src, &to).with_context(|| format!("copying {}", src.display()))?;
    }
    let mut mcopy = Command::new("mcopy");
    mcopy.args(["-s", "-i"]).arg(&esp.device);
    for entry in fs::read_dir(staged.path())? {
        mcopy.arg(entry?.path());
    }
    run(mcopy.arg("::/"))?;
    drop(esp);

    let root_len = DISK_BYTES - MIB - ROOT_START - 33 * 512;
    let root = Loop::attach(disk, range(ROOT_START, root_len))?;
    // The slot image's files in a filesystem of the partition's size with 4 KiB blocks, as
    // an installer makes a root filesystem (a slot image is small: 1 KiB blocks).
    let image = Loop::attach(root_image, range(0, fs::metadata(root_image)?.len()))?;
    let tree = tempfile::tempdir()?;
    run(Command::new("mount")
        .args(["-o", "ro"])
        .arg(&image.device)
        .arg(tree.path()))?;
    let made = run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(tree.path())
        .arg(&root.device));
    run(Command::new("umount").arg(tree.path()))?;
    made?;
    let mnt = tempfile::tempdir()?;
    run(Command::new("mount").arg(&root.device).arg(mnt.path()))?;
    let written = (|| -> Result<()> {
        // Top-level directories spread over the block groups (ext4's Orlov allocator).
        let mut random = fs::File::open("/dev/urandom")?;
        for d in 0..8 {
            let dir = mnt.path().join(format!("home/user{d}"));
            fs::create_dir_all(&dir)?;
            for f in 0..4 {
                let mut file = fs::File::create(dir.join(format!("file{f}")))?;
                std::io::copy(&mut (&mut random).take(user_files / 32), &mut file)?;
            }
        }
        Ok(())
    })();
    run(Command::new("umount").arg(mnt.path()))?;
    written
}

/// The files of the root filesystem in `len` bytes of `disk` from `offset`: every path,
/// kind, mode, owner, size, timestamp and content, hashed, with the filesystem mounted
/// read-only.
pub fn tree_hash(disk: &Path, offset: u64, len: u64) -> Result<String> {
    let dev = Loop::attach(disk, range(offset, len))?;
    let mnt = tempfile::tempdir()?;
    run(Command::new("mount")
        .args(["-o", "ro,noload"])
        .arg(&dev.device)
        .arg(mnt.path()))?;
    let script = "find . -xdev -path ./lost+found -prune -o -print0 | sort -z | \
        xargs -0 stat -c '%n %F %a %u %g %s %Y %Z' | sha256sum; \
        find . -xdev -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum";
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(mnt.path())
        .output()
        .context("hashing the root filesystem")?;
    run(Command::new("umount").arg(mnt.path()))?;
    ensure!(out.status.success(), "hashing the root filesystem failed");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The used partitions of `disk` as (start, size) in bytes, read by sfdisk.
pub fn partitions(disk: &Path) -> Result<Vec<(u64, u64)>> {
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(disk)
        .output()
        .context("running sfdisk")?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    json["partitiontable"]["partitions"]
        .as_array()
        .context("sfdisk printed no partitions")?
        .iter()
        .map(|p| {
            Ok((
                p["start"].as_u64().context("start")? * 512,
                p["size"].as_u64().context("size")? * 512,
            ))
        })
        .collect()
}

/// `len` bytes of a disk from `offset`, as a partition.
fn range(offset: u64, len: u64) -> Placed {
    Placed {
        first_lba: offset / 512,
        last_lba: (offset + len) / 512 - 1,
    }
}

/// The initramfs Debian's `mkinitramfs` makes with abup's initramfs-tools hook and
/// local-premount script (`updater/dist/initramfs/initramfs-tools`), for the kernel the
/// guests boot, at `out`. mkinitramfs reads the kernel's modules from
/// `/lib/modules/<version>` and its configuration from `/boot`: the Debian package
/// qemu-tests unpacked is put there for the run (a bind mount, a copy), as installing it
/// would, and taken away after. abup, its script and the board's configuration come from
/// the paths the hook takes from `ABUP_BIN`, `ABUP_SHARE` and `ABUP_ETC`.
pub fn debian_initramfs(config: &Path, out: &Path) -> Result<()> {
    let kernel = artifacts::kernel(Arch::X86_64)?;
    let version = kernel
        .modules
        .file_name()
        .context("the kernel's modules directory has no release name")?
        .to_string_lossy()
        .into_owned();
    let modules = Path::new("/lib/modules").join(&version);
    fs::create_dir_all(&modules)?;
    run(Command::new("mount")
        .arg("--bind")
        .arg(&kernel.modules)
        .arg(&modules))?;
    let boot_config = Path::new("/boot").join(format!("config-{version}"));
    let made = (|| -> Result<()> {
        run(Command::new("depmod").args(["-a", &version]))?;
        let unpacked = kernel
            .image
            .parent()
            .context("the kernel image has no directory")?;
        fs::create_dir_all("/boot")?;
        fs::copy(unpacked.join(format!("config-{version}")), &boot_config)?;
        let work = tempfile::tempdir()?;
        let w = work.path();
        let conf = w.join("conf");
        run(Command::new("cp")
            .arg("-r")
            .arg("/etc/initramfs-tools")
            .arg(&conf))?;
        // Only the modules hooks ask for (vfat): the kernel has NVMe and ext4 built in.
        let settings = fs::read_to_string(conf.join("initramfs.conf"))?;
        let settings: String = settings
            .lines()
            .map(|l| {
                if l.starts_with("MODULES=") {
                    "MODULES=list"
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        fs::write(conf.join("initramfs.conf"), settings + "\n")?;
        let dist = artifacts::workspace().join("updater/dist/initramfs");
        for (from, to) in [
            (
                "initramfs-tools/hooks/abup-split-root",
                "hooks/abup-split-root",
            ),
            (
                "initramfs-tools/scripts/local-premount/abup-split-root",
                "scripts/local-premount/abup-split-root",
            ),
        ] {
            fs::create_dir_all(conf.join(to).parent().context("no parent")?)?;
            run(Command::new("cp")
                .arg("-p")
                .arg(dist.join(from))
                .arg(conf.join(to)))?;
        }
        let (share, etc) = (w.join("share"), w.join("etc"));
        fs::create_dir_all(&share)?;
        fs::create_dir_all(&etc)?;
        fs::copy(dist.join("abup-split-root"), share.join("abup-split-root"))?;
        fs::copy(config.join("board.toml"), etc.join("board.toml"))?;
        fs::copy(config.join("split-root.conf"), etc.join("split-root.conf"))?;
        let abup = w.join("abup");
        run(Command::new("objcopy")
            .arg("--strip-all")
            .arg(artifacts::abup()?)
            .arg(&abup))?;
        run(Command::new("mkinitramfs")
            .arg("-d")
            .arg(&conf)
            .arg("-o")
            .arg(out)
            .arg(&version)
            .env("ABUP_BIN", &abup)
            .env("ABUP_SHARE", &share)
            .env("ABUP_ETC", &etc))
    })();
    let _ = fs::remove_file(&boot_config);
    run(Command::new("umount").arg(&modules))?;
    let _ = fs::remove_dir(&modules);
    made
}

/// Replaces `path` on the ESP of `disk` with `src`.
pub fn put_on_esp(disk: &Path, src: &Path, path: &str) -> Result<()> {
    crate::image::fat_put(disk, range(ESP_START, ESP_MIB * MIB), src, path)
}
