//! One install at a time: an exclusive `flock` on `install.lock` in the state directory. The
//! file also names the holder and, once the install knows it, its target slot, so a second
//! install can say who is in the way, `mark-good`/`mark-active` can refuse the slot that is
//! being written, and `abup status` can name the running install's process. Whoever only
//! looks (a shared lock tried without waiting) never waits for an install.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};

use super::StateDir;

const LOCK: &str = "install.lock";
const TARGET: &str = "target ";

/// Held for the whole install; the lock goes with the process, even on `kill -9`.
#[derive(Debug)]
pub struct InstallLock {
    file: Flock<File>,
    what: String,
}

/// A running install, as its lock file names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub pid: Option<u32>,
    /// The slot it writes, once it has chosen one.
    pub target: Option<String>,
}

/// How long an install waits for a lock that is held: whoever only looks at the lock
/// (`abup status`, `mark-good`) holds it shared for microseconds, and must not make an
/// install that starts at that moment fail as busy. A running install holds it for minutes.
const LOOKERS: Duration = Duration::from_millis(200);

/// Another install holds the lock.
#[derive(Debug, thiserror::Error)]
#[error("another install is running ({holder}); wait for it to finish")]
pub struct Busy {
    pub holder: String,
}

impl StateDir {
    /// Takes the install lock; `what` names this install (no credentials: it is shown to
    /// others).
    pub fn lock_install(&self, what: &str) -> Result<InstallLock> {
        let path = self.file(LOCK);
        let mut file = super::open_nofollow(&path, true)
            .with_context(|| format!("opening {}", path.display()))?;
        let start = Instant::now();
        let locked = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Err((f, nix::errno::Errno::EWOULDBLOCK)) if start.elapsed() < LOOKERS => {
                    file = f;
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other,
            }
        };
        let file = match locked {
            Ok(f) => f,
            Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
                let holder = holder(file);
                let holder = holder.lines().next().unwrap_or("").trim();
                return Err(Busy {
                    holder: if holder.is_empty() {
                        "a process that has not named itself yet".into()
                    } else {
                        holder.to_owned()
                    },
                }
                .into());
            }
            Err((_, e)) => return Err(e).with_context(|| format!("locking {}", path.display())),
        };
        let mut lock = InstallLock {
            file,
            what: format!("pid {}: {what}", std::process::id()),
        };
        lock.rewrite(None)?;
        Ok(lock)
    }

    /// The slot a running install is writing, if an install runs and has chosen it.
    pub fn running_install_target(&self) -> Option<String> {
        self.running_install()?.target
    }

    /// The install that holds the lock, if one does; found without waiting.
    pub fn running_install(&self) -> Option<Running> {
        let file = super::open_nofollow(&self.file(LOCK), false).ok()?;
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            // Nobody holds it: no install runs.
            Ok(_) => None,
            Err((file, _)) => {
                let text = holder(file);
                Some(Running {
                    pid: text
                        .lines()
                        .next()
                        .and_then(|l| l.strip_prefix("pid "))
                        .and_then(|l| l.split(':').next())
                        .and_then(|n| n.parse().ok()),
                    target: text
                        .lines()
                        .find_map(|l| l.strip_prefix(TARGET).map(str::to_owned)),
                })
            }
        }
    }
}

impl InstallLock {
    /// Names the slot this install writes, for `running_install_target`.
    pub fn set_target(&mut self, target: &str) -> Result<()> {
        self.rewrite(Some(target))
    }

    fn rewrite(&mut self, target: Option<&str>) -> Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        writeln!(self.file, "{}", self.what)?;
        if let Some(t) = target {
            writeln!(self.file, "{TARGET}{t}")?;
        }
        Ok(())
    }
}

fn holder(mut file: File) -> String {
    let mut text = String::new();
    let _ = (&mut file).take(4096).read_to_string(&mut text);
    text
}
