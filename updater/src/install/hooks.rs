//! The board's pre-install and post-install executables.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// What a hook is told, as environment variables (documented in docs/hooks.md).
#[derive(Debug, Clone)]
pub struct HookEnv {
    pub target_slot: String,
    pub target_device: String,
    pub booted_slot: String,
    pub bundle_version: String,
    pub bundle_compatible: String,
    pub bundle_security_version: u64,
    pub state_dir: String,
    /// Where the target's root filesystem is mounted (post-install, when the board asks).
    pub target_mount: Option<String>,
}

/// A command with nothing to read and nowhere to write but abup's standard error: abup's
/// standard input may be the bundle itself (`abup install -`) or a terminal, and its standard
/// output may be the `--progress=json` stream an OTA agent parses line by line.
fn quiet(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null()).stdout(std::io::stderr());
    cmd
}

/// Runs `hook` (`which` is "pre-install" or "post-install"); a failure aborts the install.
/// Its standard input is `/dev/null` and its standard output goes to abup's standard error.
pub fn run(which: &str, hook: &Path, env: &HookEnv) -> Result<()> {
    log::info!("running {which} hook {}", hook.display());
    let mut cmd = quiet(hook);
    cmd.env("ABUP_HOOK", which)
        .env("ABUP_TARGET_SLOT", &env.target_slot)
        .env("ABUP_TARGET_DEVICE", &env.target_device)
        .env("ABUP_BOOTED_SLOT", &env.booted_slot)
        .env("ABUP_BUNDLE_VERSION", &env.bundle_version)
        .env("ABUP_BUNDLE_COMPATIBLE", &env.bundle_compatible)
        .env(
            "ABUP_BUNDLE_SECURITY_VERSION",
            env.bundle_security_version.to_string(),
        )
        .env("ABUP_STATE_DIR", &env.state_dir);
    if let Some(m) = &env.target_mount {
        cmd.env("ABUP_TARGET_MOUNT", m);
    }
    let status = cmd
        .status()
        .with_context(|| format!("running the {which} hook {}", hook.display()))?;
    if !status.success() {
        return Err(super::HookFailed(format!(
            "the {which} hook {} failed ({status}); the new slot was not activated",
            hook.display()
        ))
        .into());
    }
    Ok(())
}

/// Mounts `device` (a block device or an image file) at `dir` for the post-install hook, and
/// unmounts it when dropped. mount(8) detects the filesystem and sets up a loop device for a
/// file, which a bare mount(2) would not.
#[derive(Debug)]
pub struct Mounted {
    dir: std::path::PathBuf,
}

impl Mounted {
    pub fn new(device: &Path, dir: &Path) -> Result<Mounted> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let status = quiet("mount")
            .arg(device)
            .arg(dir)
            .status()
            .context("running mount")?;
        if !status.success() {
            bail!(
                "cannot mount {} at {} for the post-install hook ({status})",
                device.display(),
                dir.display()
            );
        }
        Ok(Mounted {
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        match quiet("umount").arg(&self.dir).status() {
            Ok(s) if s.success() => {
                let _ = std::fs::remove_dir(&self.dir);
            }
            other => log::warn!("cannot unmount {}: {other:?}", self.dir.display()),
        }
    }
}
