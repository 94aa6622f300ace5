//! One install at a time: an exclusive `flock` on `install.lock` in the state directory. The
//! file also names the holder and, once the install knows it, its target slot, so a second
//! install can say who is in the way and `mark-good`/`mark-active` can refuse the slot that is
//! being written.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

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
        let file = super::open_nofollow(&path, true)
            .with_context(|| format!("opening {}", path.display()))?;
        let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
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
        let file = super::open_nofollow(&self.file(LOCK), false).ok()?;
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            // Nobody holds it: no install runs.
            Ok(_) => None,
            Err((file, _)) => holder(file)
                .lines()
                .find_map(|l| l.strip_prefix(TARGET).map(str::to_owned)),
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
