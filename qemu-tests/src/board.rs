//! The QEMU boards CI boots: how each is started and where its pieces live.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use crate::artifacts::{self, Arch};

/// A board as QEMU emulates it. The two GRUB boards share one board configuration and one
/// disk image layout; only the firmware differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Board {
    /// SeaBIOS, GRUB from the `bios_grub` partition.
    GrubBios,
    /// OVMF, GRUB as `EFI/BOOT/BOOTX64.EFI`.
    GrubUefi,
    /// arm64 `virt`, U-Boot with its redundant environment on FAT.
    UbootArm64,
    /// i440fx with the 32-bit U-Boot, environment as on arm64.
    UbootX86,
    /// OVMF and GRUB like `GrubUefi`, on a single-root disk that `abup split-root` converts
    /// from the initramfs on its first boot (`crate::split`).
    GrubUefiSplit,
}

/// Boots a slot may take before the bootloader gives up on it (`tries` in every QEMU board).
pub const TRIES: usize = 3;

impl Board {
    /// The directory under `board-configs/`.
    pub fn config_name(self) -> &'static str {
        match self {
            Board::GrubBios | Board::GrubUefi => "qemu-x86_64-grub",
            Board::UbootArm64 => "qemu-arm64-uboot",
            Board::UbootX86 => "qemu-x86-uboot",
            Board::GrubUefiSplit => "qemu-x86_64-grub-split",
        }
    }

    /// A short name for logs and work directories.
    pub fn name(self) -> &'static str {
        match self {
            Board::GrubBios => "grub-bios",
            Board::GrubUefi => "grub-uefi",
            Board::UbootArm64 => "uboot-arm64",
            Board::UbootX86 => "uboot-x86",
            Board::GrubUefiSplit => "grub-uefi-split",
        }
    }

    pub fn config_dir(self) -> PathBuf {
        artifacts::workspace()
            .join("board-configs")
            .join(self.config_name())
    }

    pub fn arch(self) -> Arch {
        match self {
            Board::UbootArm64 => Arch::Arm64,
            _ => Arch::X86_64,
        }
    }

    pub fn is_grub(self) -> bool {
        matches!(
            self,
            Board::GrubBios | Board::GrubUefi | Board::GrubUefiSplit
        )
    }

    /// Whether abup runs inside the guest. Only the x86_64 Rust target exists here, so the
    /// arm64 guest's part (install, mark-good, status) is done from the host against its disk.
    pub fn guest_runs_abup(self) -> bool {
        self.arch() == Arch::X86_64
    }

    /// Where Linux mounts the FAT boot partition (the board's README and board.toml say so).
    pub fn boot_mount(self) -> &'static str {
        if self.is_grub() {
            "/boot/efi"
        } else {
            "/boot/firmware"
        }
    }

    /// The console line the bootloader prints just before it saves the counted try; a power
    /// cut aimed at the save waits for it.
    pub fn env_save_marker(self) -> &'static str {
        if self.is_grub() {
            "abup: counting a try"
        } else {
            "Saving Environment to FAT"
        }
    }

    /// What the console prints once the save has finished: GRUB's next line after
    /// `save_env`, U-Boot's "OK" after "Saving Environment to FAT...". A power cut after the
    /// save marker and before this one came while the bootloader was saving.
    pub fn env_saved_marker(self) -> &'static str {
        if self.is_grub() {
            "abup: booting slot"
        } else {
            "OK"
        }
    }

    /// What the console shows once the bootloader has started a kernel.
    pub fn kernel_started_marker(self) -> &'static str {
        if self.is_grub() {
            "Booting `abup slot"
        } else {
            "Starting kernel"
        }
    }

    /// QEMU for one power-on of `disk`. `dir` holds per-device firmware state (OVMF vars).
    pub fn qemu(self, disk: &Path, dir: &Path) -> Result<Command> {
        let mut qemu = match self {
            Board::UbootArm64 => {
                let mut c = Command::new("qemu-system-aarch64");
                c.args(["-M", "virt", "-cpu", "cortex-a57", "-bios"])
                    .arg(artifacts::u_boot(Arch::Arm64)?.join("u-boot.bin"));
                c
            }
            Board::UbootX86 => {
                let mut c = Command::new("qemu-system-x86_64");
                c.arg("-bios")
                    .arg(artifacts::u_boot(Arch::X86_64)?.join("u-boot.rom"));
                c
            }
            Board::GrubBios => Command::new("qemu-system-x86_64"),
            Board::GrubUefi | Board::GrubUefiSplit => {
                let vars = dir.join("OVMF_VARS_4M.fd");
                if !vars.exists() {
                    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)?;
                }
                let mut c = Command::new("qemu-system-x86_64");
                c.args(["-machine", "q35", "-drive"])
                    .arg("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd")
                    .arg("-drive")
                    .arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()));
                c
            }
        };
        // Software emulation always: /dev/kvm opens here but nested KVM fails.
        qemu.args(["-accel", "tcg", "-smp", "1", "-m", "256"])
            .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
            .args(["-no-reboot", "-nodefaults"])
            .arg("-drive")
            .arg(format!(
                "if=none,id=disk,format=raw,file={}",
                disk.display()
            ))
            .args(["-device", "nvme,drive=disk,serial=abup0"]);
        Ok(qemu)
    }
}
