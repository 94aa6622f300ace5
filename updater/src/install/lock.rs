//! One install at a time: an exclusive `flock` on a file in the state directory, which also
//! names the holder, so a second install can say who is in the way.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};

/// Held for the whole install; the lock goes with the process, even on `kill -9`.
#[derive(Debug)]
pub struct InstallLock {
    _file: Flock<File>,
}

/// Another install holds the lock.
#[derive(Debug, thiserror::Error)]
#[error("another install is running ({holder}); wait for it to finish")]
pub struct Busy {
    pub holder: String,
}

impl InstallLock {
    pub fn acquire(state_dir: &Path, what: &str) -> Result<InstallLock> {
        let path = state_dir.join("install.lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
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
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        writeln!(file, "pid {}: {what}", std::process::id())?;
        Ok(InstallLock { _file: file })
    }
}
