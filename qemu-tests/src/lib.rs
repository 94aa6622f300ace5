//! Boots abup's QEMU boards from both slots, the way devices in the field run: real
//! firmware (SeaBIOS, OVMF, U-Boot), real GRUB, Debian's kernels, abup inside the guest, and
//! power cuts by killing QEMU. `tests/boot.rs` holds the scenarios; this library builds the
//! disks with `abup provision` ([`factory`], [`device`], [`image`], [`rootfs`]) from Debian
//! packages ([`artifacts`]) and drives each power-on over its serial console ([`vm`]).

pub mod artifacts;
pub mod board;
pub mod device;
pub mod factory;
pub mod image;
pub mod rootfs;
pub mod split;
pub mod vm;

use std::process::Command;

use anyhow::{bail, Context, Result};

/// Runs a host tool, failing with its stderr when it fails.
pub fn run(command: &mut Command) -> Result<()> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
