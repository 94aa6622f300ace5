//! The state directory: what abup remembers across reboots and interruptions (the install
//! journal and its held-back first blocks, what each slot holds, the security floor, how the
//! last install ended, the install lock, what a running install is doing, the history).
//! [`StateDir`] is its one owner.
//!
//! Whoever can write here can steer abup (resume an install that never happened, lower the
//! security floor), so the directory is held to what only root can change: it lives outside
//! both slots (a slot switch must not reset it, an install must not overwrite it), it is
//! created 0700, and abup refuses one that is owned by anyone but root (or the user abup runs
//! as) or writable by group or others. Inside it no symbolic link is followed, files are created 0600 under unique
//! temporary names and renamed into place, and every read is bounded while it reads.

pub mod activity;
pub mod floor;
pub mod history;
pub mod journal;
mod lock;
pub mod records;

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::board::Board;

pub use lock::{Busy, InstallLock, Running};

/// State files are a few hundred bytes; anything larger is not ours. (The held-back first
/// blocks have their own, exact limit.)
pub const MAX_STATE_FILE: u64 = 64 * 1024;

/// The state directory of a board, checked.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// The board's state directory, created (0700) if it does not exist yet, after the checks
    /// in the module documentation.
    pub fn open(board: &Board) -> Result<StateDir> {
        let path = &board.install.state_dir;
        if std::fs::symlink_metadata(path).is_err() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .with_context(|| format!("creating the state directory {}", path.display()))?;
        }
        Self::checked(board)
    }

    /// The board's state directory if it exists (for commands that only read it), checked.
    pub fn existing(board: &Board) -> Result<Option<StateDir>> {
        if std::fs::symlink_metadata(&board.install.state_dir).is_err() {
            return Ok(None);
        }
        Self::checked(board).map(Some)
    }

    fn checked(board: &Board) -> Result<StateDir> {
        let path = &board.install.state_dir;
        let meta = std::fs::symlink_metadata(path)
            .with_context(|| format!("reading the state directory {}", path.display()))?;
        let refuse = |why: String| -> Result<StateDir> {
            bail!(
                "state directory {} {why}; abup keeps its journal and security floor there and \
                 uses it only when nobody but root can change it",
                path.display()
            )
        };
        if meta.file_type().is_symlink() {
            return refuse("is a symbolic link; point state-dir at the real directory".into());
        }
        if !meta.is_dir() {
            return refuse("is not a directory".into());
        }
        // Root, or the user abup runs as (who could do anything abup does anyway): a
        // monitoring agent that runs `abup status` as another user still trusts root's.
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != 0 && meta.uid() != me {
            return refuse(format!(
                "is owned by uid {}, not by root; chown it to root",
                meta.uid()
            ));
        }
        if meta.mode() & 0o022 != 0 {
            return refuse(format!(
                "is writable by group or others (mode {:o}); chmod go-w it",
                meta.mode() & 0o7777
            ));
        }
        for slot in board.slots.ids() {
            let devices = std::iter::once(board.device(slot))
                .chain(board.classes[slot.0].values().map(PathBuf::as_path));
            for device in devices {
                let on_slot = std::fs::metadata(device)
                    .is_ok_and(|d| d.file_type().is_block_device() && d.rdev() == meta.dev());
                if on_slot {
                    return refuse(format!(
                        "is on slot {}'s device {}: switching slots would lose it and an \
                         install would overwrite it; set state-dir to a directory on the data \
                         partition",
                        board.slots.name(slot),
                        device.display()
                    ));
                }
            }
        }
        Ok(StateDir { path: path.clone() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The content of state file `name`, `None` if it does not exist. Refused when it is not a
    /// regular file (a symbolic link is not followed) or holds more than `limit` bytes.
    pub fn read(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let path = self.file(name);
        let file = match open_nofollow(&path, false) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let meta = file
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?;
        if !meta.is_file() {
            bail!(
                "{} is not a regular file; abup will not read it",
                path.display()
            );
        }
        read_limited(file, &path, limit, "not a file abup wrote").map(Some)
    }

    /// Replaces state file `name` with `bytes`, durably and atomically (see [`replace`]).
    pub fn replace(&self, name: &str, bytes: &[u8]) -> Result<()> {
        replace(&self.file(name), bytes)
    }

    /// Removes state file `name`, durably; nothing to do if it does not exist.
    pub fn remove(&self, name: &str) -> Result<()> {
        let path = self.file(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&path)?;
                crate::failpoint::wrote(&format!("remove {}", path.display()));
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }

    /// A JSON state file, parsed strictly by `T` (which names its version and refuses unknown
    /// fields); `None` if it does not exist.
    pub fn read_json<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let Some(bytes) = self.read(name, MAX_STATE_FILE)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).with_context(|| {
            format!(
                "{} is damaged: not the JSON this abup writes",
                self.file(name).display()
            )
        })
    }

    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(value)?;
        bytes.push(b'\n');
        self.replace(name, &bytes)
    }

    /// A directory `name` in the state directory (0700), for the post-install hook's mount.
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let path = self.file(name);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!("{} is not a directory", path.display()),
            Err(_) => DirBuilder::new()
                .mode(0o700)
                .create(&path)
                .with_context(|| format!("creating {}", path.display()))?,
        }
        Ok(path)
    }
}

/// Opens `path` without following a symbolic link in its last component and without
/// blocking (a FIFO must not hang abup), for reading or, with `write`, for writing (created
/// 0600 if missing).
pub(crate) fn open_nofollow(path: &Path, write: bool) -> std::io::Result<File> {
    let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
    OpenOptions::new()
        .read(true)
        .write(write)
        .create(write)
        .truncate(false)
        .mode(0o600)
        .custom_flags(flags.bits())
        .open(path)
}

/// Reads `file` (opened from `path`) whole, refusing it when it holds more than `limit` bytes;
/// the limit holds while reading, so a file that grows meanwhile cannot defeat it.
/// `too_large` ends that error's message.
pub(crate) fn read_limited(
    file: File,
    path: &Path,
    limit: u64,
    too_large: &str,
) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > limit {
        bail!(
            "{} is larger than {limit} bytes: {too_large}",
            path.display()
        );
    }
    Ok(bytes)
}

/// Replaces `path` with `bytes`: a new file under a unique name next to it (created
/// exclusively, 0600), synced, renamed over `path`, and the directory synced, so a cut leaves
/// the old file or the new one, never a mix, and nobody can have prepared the temporary file.
pub fn replace(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_with(path, |f| f.write_all(bytes))
}

/// [`replace`] with the new content written by `write`, for content streamed from elsewhere
/// (a file copied) rather than held in memory.
pub fn replace_with(
    path: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<()> {
    rename_over(path, write, true)
}

/// Replaces `path` with `bytes` by renaming a new file over it, without syncing anything: a
/// process killed at any point leaves the old file or the new one, a power cut may leave
/// either or none. For reports that are rewritten often and trusted for nothing
/// ([`activity`]); everything abup decides from goes through [`replace`].
pub fn replace_unsynced(path: &Path, bytes: &[u8]) -> Result<()> {
    rename_over(path, |f| f.write_all(bytes), false)
}

/// Writes a new file under a unique name next to `path` (created exclusively, 0600) and
/// renames it over `path`; `durable` syncs the file before and the directory after.
fn rename_over(
    path: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
    durable: bool,
) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map_or("state".into(), |n| n.to_string_lossy());
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    write(tmp.as_file_mut())
        .and_then(|()| match durable {
            true => tmp.as_file().sync_all(),
            false => Ok(()),
        })
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(path)
        .with_context(|| format!("renaming a temporary file to {}", path.display()))?;
    if durable {
        sync_dir(path)?;
        crate::failpoint::wrote(&path.display().to_string());
    }
    Ok(())
}

fn sync_dir(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing directory {}", dir.display()))?;
    }
    Ok(())
}

/// Seconds since the epoch, for the records.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `source` as it may be stored or shown: a URL without its user name and password, and
/// without its query string and fragment (where download tokens travel). Anything else (a
/// file, `-`) unchanged.
pub fn redact(source: &str) -> String {
    let Some((scheme, rest)) = source.split_once("://") else {
        return source.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let path = tail.split(['?', '#']).next().unwrap_or("");
    let mut out = format!("{scheme}://");
    if host.len() < authority.len() {
        out.push_str("***@");
    }
    out.push_str(host);
    out.push_str(path);
    if path.len() < tail.len() {
        out.push_str("?***");
    }
    out
}

/// A state directory in a new temporary directory, for unit tests.
#[cfg(test)]
pub(crate) fn temporary() -> (tempfile::TempDir, StateDir) {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir {
        path: dir.path().to_owned(),
    };
    (dir, state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_tokens_never_leave_a_url() {
        for (url, shown) in [
            ("/data/update.abup", "/data/update.abup"),
            ("-", "-"),
            ("https://h/u.abup", "https://h/u.abup"),
            (
                "https://user:pw@h:8443/a/u.abup",
                "https://***@h:8443/a/u.abup",
            ),
            ("https://h/u.abup?token=s3cret&x=1", "https://h/u.abup?***"),
            ("http://u@h/u.abup#frag", "http://***@h/u.abup?***"),
            ("https://h?sig=1", "https://h?***"),
            ("https://a@b@h/p", "https://***@h/p"),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
    }
}
