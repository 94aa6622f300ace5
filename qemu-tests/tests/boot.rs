#![allow(clippy::unwrap_used)] // test code: a panic is a failed test
//! Every scenario on every QEMU board: real firmware and bootloaders boot Debian's kernel from
//! both slots while abup updates, confirms, falls back and survives power cuts.
//!
//! Each power-on is its own QEMU run; the console of a scenario goes to
//! `target/qemu-tests/<board>-<scenario>/console.log`. Run one scenario alone with
//! `cargo test -p qemu-tests --test boot grub_bios::update -- --exact` and watch it with
//! `tail -f` on that log. Random cut points come from `ABUP_QEMU_SEED` (printed when unset).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use qemu_tests::board::{Board, TRIES};
use qemu_tests::device::{
    Aim, Boot, Device, BOOT_TIMEOUT, BUNDLES, BUNDLE_NO_KERNEL, BUNDLE_PANIC, BUNDLE_V2,
    INSTALL_TIMEOUT,
};
use qemu_tests::rootfs::Defect;
use qemu_tests::split;
use serde_json::Value;

/// A small deterministic generator, so a failing cut point can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn new(scenario: &str) -> Rng {
        let seed = std::env::var("ABUP_QEMU_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("{scenario}: ABUP_QEMU_SEED={seed}");
        Rng(seed | 1)
    }

    /// A number in `lo..hi`.
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + (hi - lo) * (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn slot<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["slots"]
        .as_array()
        .and_then(|slots| slots.iter().find(|s| s["name"] == name))
        .unwrap_or(&Value::Null)
}

/// What `abup status --json` must say about the running system.
fn check_status(status: &Value, booted: &str, next: &str) -> Result<()> {
    ensure!(
        status["booted"] == booted && status["next_boot"] == next,
        "abup status: expected booted {booted}, next boot {next}; got {status}"
    );
    Ok(())
}

fn install(dev: &Device, boot: &mut Boot, bundle: &str) -> Result<()> {
    let (out, code) = dev.abup(
        boot,
        &format!("install --progress none {}", dev.bundle(bundle)),
    )?;
    ensure!(code == 0, "abup install exited {code}:\n{out}");
    Ok(())
}

/// The update path with every interruption a device meets: first boot of A; QEMU killed
/// during the install's write and during its read-back check (each time A boots and B is not
/// active); the same install resumes and completes; QEMU killed twice while the bootloader
/// saves its counted try; B boots, its boot-success service confirms it, it stays with its
/// tries restored. Then `mark-active other` puts A, still bootable, first, and an install
/// into A is cut while it writes: the next boot must be B, not the half-written A, so the
/// install took A out of rotation before writing it; the install resumes and A boots it.
/// Every cut is retried from the same disk until the console shows it landed where aimed.
fn update(board: Board) -> Result<()> {
    let mut rng = Rng::new(&format!("{} update", board.name()));
    let mut rng = move |lo, hi| rng.range(lo, hi);
    let mut dev = Device::new(board, "update")?;
    let v2 = dev.bundle(BUNDLE_V2);
    dev.save_disk()?;
    let mut boot = dev.boot()?;
    ensure!(
        boot.slot == "A" && boot.version == "1.0",
        "factory boot: {boot:?}"
    );
    check_status(&boot.status, "A", "A")?;
    ensure!(
        slot(&boot.status, "A")["confirmed"] == true,
        "{}",
        boot.status
    );

    for aim in [Aim::Write, Aim::ReadBack] {
        dev.cut_install(&mut boot, &[], &v2, aim, &mut rng)?;
        dev.save_disk()?;
        boot = dev.boot()?;
        ensure!(
            boot.slot == "A" && boot.version == "1.0",
            "after a cut: {boot:?}"
        );
        check_status(&boot.status, "A", "A")?;
        ensure!(slot(&boot.status, "B")["good"] == false, "{}", boot.status);
    }
    let (out, code) = dev.abup(&mut boot, &format!("install --progress none {v2}"))?;
    ensure!(code == 0, "the resumed install exited {code}:\n{out}");
    ensure!(
        out.contains("(resumed)"),
        "the install did not resume:\n{out}"
    );
    let status = dev.status(&mut boot)?;
    check_status(&status, "A", "B")?;
    ensure!(status["last_install"]["outcome"] == "success", "{status}");
    ensure!(slot(&status, "B")["tries_left"] == TRIES, "{status}");
    dev.shutdown(&mut boot)?;

    // B has TRIES tries; two cuts use at most two of them.
    for _ in 0..2 {
        dev.cut_env_save(&mut rng)?;
    }

    let status = dev.boot_expecting("B", "2.0")?;
    check_status(&status, "B", "B")?;
    let b = slot(&status, "B");
    ensure!(
        b["confirmed"] == true,
        "the service did not confirm B: {status}"
    );
    ensure!(b["bundle"]["version"] == "2.0", "{status}");
    ensure!(
        slot(&status, "A")["good"] == true,
        "A must stay a fallback: {status}"
    );

    dev.save_disk()?;
    let mut boot = dev.boot()?;
    ensure!(
        boot.slot == "B" && boot.version == "2.0",
        "B must stay: {boot:?}"
    );
    ensure!(
        slot(&boot.status, "B")["tries_left"] == TRIES,
        "B stays, tries restored: {}",
        boot.status
    );
    let (out, code) = dev.abup(&mut boot, "mark-active other")?;
    ensure!(code == 0, "mark-active other exited {code}: {out}");
    check_status(&dev.status(&mut boot)?, "B", "A")?;

    // A is first and bootable; an install into it must take it out of rotation first.
    dev.cut_install(&mut boot, &["mark-active other"], &v2, Aim::Write, &mut rng)?;
    let mut boot = dev.boot()?;
    ensure!(
        boot.slot == "B" && boot.version == "2.0",
        "a cut while A was written must boot B: {boot:?}"
    );
    check_status(&boot.status, "B", "B")?;
    ensure!(slot(&boot.status, "A")["good"] == false, "{}", boot.status);
    let (out, code) = dev.abup(&mut boot, &format!("install --progress none {v2}"))?;
    ensure!(code == 0, "the install into A exited {code}:\n{out}");
    check_status(&dev.status(&mut boot)?, "B", "A")?;
    dev.shutdown(&mut boot)?;
    let status = dev.boot_expecting("A", "2.0")?;
    check_status(&status, "A", "A")?;
    Ok(())
}

/// Updates that must not stick: one whose kernel panics (no init), one without a kernel for
/// the bootloader to load, and one whose health check fails. Each boots `TRIES` times, then
/// the bootloader returns to A by itself.
fn fallback(board: Board) -> Result<()> {
    let mut dev = Device::new(board, "fallback")?;
    let mut boot = dev.boot()?;
    for (bundle, defect) in [
        (BUNDLE_PANIC, Defect::NoInit),
        (BUNDLE_NO_KERNEL, Defect::NoKernel),
    ] {
        install(&dev, &mut boot, bundle)?;
        dev.shutdown(&mut boot)?;
        for _ in 0..TRIES {
            let slot = dev.boot_fails(defect)?;
            ensure!(
                slot == "B",
                "the broken slot B ({defect:?}) should boot, not {slot}"
            );
        }
        boot = dev.boot()?;
        ensure!(
            boot.slot == "A" && boot.version == "1.0",
            "after B failed ({defect:?}): {boot:?}"
        );
        check_status(&boot.status, "A", "A")?;
        ensure!(slot(&boot.status, "B")["good"] == false, "{}", boot.status);
    }

    install(&dev, &mut boot, BUNDLE_V2)?;
    dev.set_unhealthy(&mut boot)?;
    dev.shutdown(&mut boot)?;
    for left in (0..TRIES).rev() {
        let status = dev.boot_expecting("B", "2.0")?;
        let b = slot(&status, "B");
        ensure!(
            b["confirmed"] == false && b["tries_left"] == left,
            "B unconfirmed with {left} tries left expected: {status}"
        );
    }
    let status = dev.boot_expecting("A", "1.0")?;
    check_status(&status, "A", "A")?;
    ensure!(slot(&status, "B")["good"] == false, "{status}");
    Ok(())
}

/// Slot B's device in the x86 guests (their board.toml).
const SLOT_B_DEVICE: &str = "/dev/nvme0n1p3";
const MIB: u64 = 1 << 20;

/// SHA-256 of a file on the host, hex.
fn sha256(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum").arg(path).output()?;
    ensure!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_string)
        .with_context(|| format!("sha256sum {} printed nothing", path.display()))
}

/// A delta update, rebuilt in the guest from the running slot. A delta of 2.0 built against
/// another base (2.0 itself) is refused before anything is written, in one line naming the
/// base it needs and the SHA-256 the running slot holds (the factory image's, so slot A is
/// still byte for byte what the factory wrote); A still runs, confirmed, B is not next, and A
/// boots again. The delta against exactly the factory image of slot A installs; B boots it,
/// its boot-success service confirms it, and B holds exactly the 2.0 image.
fn delta(board: Board) -> Result<()> {
    let mut dev = Device::new(board, "delta")?;
    let (v1, v2) = (dev.image("1.0"), dev.image("2.0"));
    let (v1_sha, v2_sha) = (sha256(&v1)?, sha256(&v2)?);
    let v2_len = std::fs::metadata(&v2)?.len();
    let started = Instant::now();
    let right = dev.add_bundle("v2-delta.abup", &v2, "2.0", Some(&v1))?;
    dev.add_bundle("v2-delta-from-v2.abup", &v2, "2.0", Some(&v2))?;
    eprintln!(
        "{}: both deltas built in {:.1} s; against the factory image {} bytes, the full \
         bundle {}",
        board.name(),
        started.elapsed().as_secs_f64(),
        std::fs::metadata(&right)?.len(),
        std::fs::metadata(dev.bundle_on_host(BUNDLE_V2))?.len()
    );
    let right = format!("{BUNDLES}/v2-delta.abup");
    let wrong = format!("{BUNDLES}/v2-delta-from-v2.abup");

    let mut boot = dev.boot()?;
    ensure!(
        boot.slot == "A" && boot.version == "1.0",
        "factory boot: {boot:?}"
    );
    // Its output goes to a file whose lines come back marked, so that nothing else on the
    // console (the shell's banner, a typed line echoed twice) is counted.
    let (_, code) = boot.vm.shell(
        &format!("abup install --progress none {wrong} >/tmp/refused 2>&1"),
        INSTALL_TIMEOUT,
    )?;
    let out = boot
        .vm
        .shell_ok("sed 's/^/=| /' /tmp/refused", Duration::from_secs(30))?;
    let lines: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("=| "))
        .map(str::trim)
        .collect();
    let needs = format!("needs base SHA-256 {v2_sha}");
    ensure!(
        code == 4 && lines.len() == 1 && lines[0].contains(&needs),
        "a delta for base {v2_sha} must be refused with exit status 4 in one line; it exited \
         {code}:\n{out}"
    );
    ensure!(
        lines[0].contains(&format!("which holds SHA-256 {v1_sha}")),
        "abup must read the running slot A as the factory wrote it (the 1.0 image, SHA-256 \
         {v1_sha}): {}",
        lines[0]
    );
    let status = dev.status(&mut boot)?;
    check_status(&status, "A", "A")?;
    ensure!(slot(&status, "A")["confirmed"] == true, "{status}");
    ensure!(slot(&status, "B")["good"] == false, "{status}");
    dev.shutdown(&mut boot)?;
    let mut boot = dev.boot()?;
    ensure!(
        boot.slot == "A" && boot.version == "1.0",
        "after the refused delta: {boot:?}"
    );
    check_status(&boot.status, "A", "A")?;

    install(&dev, &mut boot, &right)?;
    let status = dev.status(&mut boot)?;
    check_status(&status, "A", "B")?;
    ensure!(status["last_install"]["outcome"] == "success", "{status}");
    dev.shutdown(&mut boot)?;

    let mut boot = dev.boot()?;
    ensure!(
        boot.slot == "B" && boot.version == "2.0",
        "after the delta install: {boot:?}"
    );
    check_status(&boot.status, "B", "B")?;
    let b = slot(&boot.status, "B");
    ensure!(
        b["confirmed"] == true,
        "the service did not confirm B: {}",
        boot.status
    );
    ensure!(b["bundle"]["version"] == "2.0", "{}", boot.status);
    ensure!(
        slot(&boot.status, "A")["good"] == true,
        "A must stay a fallback: {}",
        boot.status
    );
    // Read past the page cache: the mounted ext4 changes its journal superblock there (the
    // kernel sets the journal's checksum features in memory and, read-only, never writes
    // them), so only a direct read shows the slot as it is on the disk.
    ensure!(v2_len % MIB == 0, "the 2.0 image is {v2_len} bytes");
    let out = boot.vm.shell_ok(
        &format!(
            "dd if={SLOT_B_DEVICE} bs=1M count={} iflag=direct 2>/dev/null | sha256sum",
            v2_len / MIB
        ),
        Duration::from_secs(120),
    )?;
    ensure!(
        out.contains(&v2_sha),
        "slot B must hold exactly the 2.0 image (SHA-256 {v2_sha} over {v2_len} bytes): {out}"
    );
    dev.shutdown(&mut boot)
}

macro_rules! board_tests {
    ($($module:ident => $board:expr $(; also $($extra:ident)+)?),* $(,)?) => {$(
        mod $module {
            use super::*;
            #[test]
            fn update() -> Result<()> { super::update($board) }
            #[test]
            fn fallback() -> Result<()> { super::fallback($board) }
            $($(
                #[test]
                fn $extra() -> Result<()> { super::$extra($board) }
            )+)?
        }
    )*};
}

// A delta differs from a full install only in what abup in the guest reads (the running
// slot); the bootloader sees the same activation. So it runs on one board of each bootloader
// that runs abup in the guest, not on all four.
board_tests! {
    grub_bios => Board::GrubBios,
    grub_uefi => Board::GrubUefi; also delta,
    uboot_x86 => Board::UbootX86; also delta,
    uboot_arm64 => Board::UbootArm64,
}

/// Cuts of the split scenario: `ABUP_QEMU_SPLIT_CUTS`, at least 5.
fn split_cuts() -> usize {
    std::env::var("ABUP_QEMU_SPLIT_CUTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5)
        .max(5)
}

/// A device in the field with one root partition converted by `abup split-root` from its
/// initramfs on the first boot: QEMU is killed at random points of the split (every other
/// cut at a random point of the shrink itself, after resize2fs started), and every next
/// power-on comes up on slot A with the split finished, both tables valid and every file of
/// the root filesystem unchanged. Then, from the factory disk again, an uncut first boot
/// splits, a bundle is installed into the new slot B in that same boot, B boots and its
/// boot-success service confirms it.
#[test]
fn grub_uefi_split() -> Result<()> {
    let board = Board::GrubUefiSplit;
    let mut rng = Rng::new("grub-uefi-split");
    let mut dev = Device::new(board, "split")?;
    let root_len = split::partitions(&dev.disk)?[1].1;
    let tree = split::tree_hash(&dev.disk, split::ROOT_START, root_len)?;
    dev.save_disk()?;
    // Where to aim: cuts come up to this long after the split started; a cut that finds the
    // split already done narrows the window and does not count.
    let mut window: f64 = 30.0;
    let (mut cuts, mut tries) = (0, 0);
    while cuts < split_cuts() {
        tries += 1;
        ensure!(
            tries <= 4 * split_cuts(),
            "only {cuts} cuts landed in a split"
        );
        dev.restore_disk()?;
        let mut vm = dev.power_on()?;
        vm.expect(split::SPLITTING, BOOT_TIMEOUT)?;
        // resize2fs takes about a second here: cuts aimed at it come within 0.8 s of its start.
        let (aim, within) = if cuts % 2 == 1 {
            vm.expect(split::SHRINKING, BOOT_TIMEOUT)?;
            ("the shrink", window.min(0.8))
        } else {
            ("the split", window)
        };
        let after = rng.range(0.0, within);
        match vm.expect(split::SPLIT, Duration::from_secs_f64(after)) {
            Ok(_) => {
                vm.kill();
                window = (after * 0.8).max(0.5);
                eprintln!("the split was done before {after:.1} s; aiming within {window:.1} s");
                continue;
            }
            Err(_) => vm.kill(),
        }
        cuts += 1;
        eprintln!("cut {cuts}: QEMU killed {after:.1} s into {aim}");
        let mut boot = dev.boot()?;
        ensure!(
            boot.slot == "A" && boot.version == "1.0",
            "after cut {cuts}: {boot:?}"
        );
        check_status(&boot.status, "A", "A")?;
        ensure!(
            slot(&boot.status, "A")["confirmed"] == true,
            "{}",
            boot.status
        );
        dev.shutdown(&mut boot)?;
        let parts = split::partitions(&dev.disk)?;
        ensure!(parts.len() == 3, "after cut {cuts} the disk has {parts:?}");
        let sgdisk = Command::new("sgdisk").arg("-v").arg(&dev.disk).output()?;
        ensure!(
            String::from_utf8_lossy(&sgdisk.stdout).contains("No problems found"),
            "sgdisk -v after cut {cuts}: {}",
            String::from_utf8_lossy(&sgdisk.stdout)
        );
        ensure!(
            split::tree_hash(&dev.disk, parts[1].0, parts[1].1)? == tree,
            "after cut {cuts}, a file of the root filesystem changed"
        );
    }

    // The uncut split runs in the initramfs Debian's mkinitramfs makes with abup's
    // initramfs-tools hook, in place of the busybox one.
    dev.restore_disk()?;
    let debian = dev.disk.with_file_name("initrd-debian.img");
    split::debian_initramfs(&board.config_dir(), &debian)?;
    split::put_on_esp(&dev.disk, &debian, "/initrd.img")?;
    let mut boot = dev.boot()?;
    ensure!(
        boot.slot == "A" && boot.version == "1.0",
        "first boot with Debian's initramfs: {boot:?}"
    );
    let (out, code) = dev.abup(
        &mut boot,
        &format!("install --progress none {}", split::BUNDLE_V2),
    )?;
    ensure!(
        code == 0,
        "abup install into the new slot B exited {code}:\n{out}"
    );
    dev.shutdown(&mut boot)?;
    let status = dev.boot_expecting("B", "2.0")?;
    ensure!(slot(&status, "B")["confirmed"] == true, "{status}");
    Ok(())
}
