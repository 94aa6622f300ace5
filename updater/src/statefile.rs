//! Files abup keeps across reboots and interruptions (the install journal, what each slot
//! holds, the security version floor) are replaced atomically: a cut leaves the old file or
//! the new one, never a mix.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// State files are a few hundred bytes; anything larger is not ours.
pub const MAX_SIZE: u64 = 1024 * 1024;

/// Writes `bytes` to a temporary file next to `path`, syncs it, renames it over `path` and
/// syncs the directory, so the new content is durable and complete before it is visible.
pub fn replace(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".new");
    let tmp = Path::new(&tmp_name);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    sync_dir(path)?;
    crate::failpoint::wrote(&path.display().to_string());
    Ok(())
}

/// Removes a state file, durably.
pub fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            sync_dir(path)?;
            crate::failpoint::wrote(&format!("remove {}", path.display()));
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

fn sync_dir(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing directory {}", dir.display()))?;
    }
    Ok(())
}

/// Reads a JSON state file; `None` when it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut text = String::new();
    file.take(MAX_SIZE + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    if text.len() as u64 > MAX_SIZE {
        bail!(
            "{} is larger than {MAX_SIZE} bytes: not an abup state file",
            path.display()
        );
    }
    let value = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is damaged ({}); remove it to start over",
            path.display(),
            "not the JSON abup writes"
        )
    })?;
    Ok(Some(value))
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    replace(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        assert_eq!(read_json::<Vec<u32>>(&p).unwrap(), None);
        write_json(&p, &vec![1u32, 2]).unwrap();
        assert_eq!(read_json::<Vec<u32>>(&p).unwrap(), Some(vec![1, 2]));
        assert!(!dir.path().join("s.json.new").exists());
        std::fs::write(&p, "{").unwrap();
        let e = read_json::<Vec<u32>>(&p).unwrap_err();
        assert!(format!("{e:#}").contains("remove it to start over"));
        remove(&p).unwrap();
        remove(&p).unwrap();
        assert!(!p.exists());
    }
}
