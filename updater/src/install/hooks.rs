//! The board's pre-install and post-install executables.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

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
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs `cmd` with its standard output and error relayed to abup's standard error through a
/// pipe abup reads. Were they abup's own, a hook that writes after abup's reader went away (an
/// agent that stopped reading) would die of SIGPIPE and fail the install half way; abup drops
/// what nobody reads and the install goes on.
fn status_relayed(mut cmd: Command) -> std::io::Result<ExitStatus> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    cmd.stdout(write.try_clone()?).stderr(write);
    let mut child = cmd.spawn()?;
    // The command keeps its copies of the pipe's writing end until it is dropped; the relay
    // ends when the child's are closed too.
    drop(cmd);
    let relay = std::thread::spawn(move || {
        let mut from = std::fs::File::from(read);
        let mut buf = [0u8; 8192];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            let _ = std::io::stderr().write_all(&buf[..n]);
        }
    });
    let status = child.wait()?;
    // A daemon the command started may keep the pipe open: its output is then relayed while
    // abup runs, but abup does not wait for it.
    let start = Instant::now();
    while !relay.is_finished() && start.elapsed() < RELAY_DRAIN {
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(status)
}

/// How long abup waits for the last output of a hook that has exited.
const RELAY_DRAIN: Duration = Duration::from_secs(1);

/// Runs `hook` (`which` is "pre-install" or "post-install"); a failure aborts the install.
/// Its standard input is `/dev/null`; its standard output and error go to abup's standard
/// error.
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
    let status = status_relayed(cmd)
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
        let mut mount = quiet("mount");
        mount.arg(device).arg(dir);
        let status = status_relayed(mount).context("running mount")?;
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
        let mut umount = quiet("umount");
        umount.arg(&self.dir);
        match status_relayed(umount) {
            Ok(s) if s.success() => {
                let _ = std::fs::remove_dir(&self.dir);
            }
            other => log::warn!("cannot unmount {}: {other:?}", self.dir.display()),
        }
    }
}
