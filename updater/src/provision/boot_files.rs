//! What provisioning writes beside the bootloader environment: the board's boot script
//! (compiled with mkimage for U-Boot), the files its `[[boot-file]]` tables name, and for
//! U-Boot the default environment that the saved one must carry. All of it is read, compiled
//! or checked before the disk is touched, so a factory station that lacks a file, or mkimage,
//! learns it while the disk is still blank.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::board::{Board, Bootloader};
use crate::bootenv::Assignment;
use crate::install::Refused;

/// A boot script is a few kilobytes of text; a part larger than this is not one.
pub const MAX_SCRIPT_PART_SIZE: u64 = 1 << 20;

/// The board's files, read and checked, ready to be written onto the disk.
#[derive(Debug)]
pub struct BootFiles {
    /// The script's path on the running system and its bytes as the bootloader reads them.
    script: Option<(PathBuf, Vec<u8>)>,
    /// U-Boot's default variables in the order of the file; empty for GRUB.
    pub defaults: Vec<Assignment>,
    /// Each boot file's source, found from the board's directory, and its destination.
    files: Vec<(PathBuf, PathBuf)>,
}

impl BootFiles {
    /// Reads the script parts and U-Boot's defaults from `board_dir` (the board file's
    /// directory), compiles a U-Boot script, and checks that every boot file is there. A
    /// missing file is [`Refused`]: nothing was written, and the message names it.
    pub fn gather(board: &Board, board_dir: &Path) -> Result<BootFiles> {
        let script = match &board.script_path {
            Some(target) => {
                let mut text = Vec::new();
                for part in &board.script {
                    text.extend(read_input(
                        &board_dir.join(part),
                        MAX_SCRIPT_PART_SIZE,
                        "boot script part",
                        "script = [...] in board.toml names it relative to board.toml",
                    )?);
                }
                let bytes = match &target.mkimage_arch {
                    Some(arch) => compile(&text, arch)?,
                    None => text,
                };
                Some((target.path.clone(), bytes))
            }
            None => None,
        };
        let defaults = defaults(board, board_dir)?;
        let mut files = Vec::new();
        for f in &board.boot_files {
            let source = board_dir.join(&f.source);
            match std::fs::metadata(&source) {
                Ok(m) if m.is_file() => files.push((source, f.destination.clone())),
                Ok(_) => {
                    return Err(Refused(format!(
                        "boot-file source {} is not a file; nothing was written",
                        source.display()
                    ))
                    .into())
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(missing(
                        "boot-file source",
                        &source,
                        "put it beside board.toml, or fix [[boot-file]] source",
                    ))
                }
                Err(e) => return Err(e).with_context(|| format!("reading {}", source.display())),
            }
        }
        Ok(BootFiles {
            script,
            defaults,
            files,
        })
    }

    /// Writes the boot files and the script where `map` says a path of the running system
    /// is now. Each file is replaced whole (synced, renamed), so a run cut here leaves old or
    /// new files, and running again writes them all again.
    pub fn write(&self, map: impl Fn(&Path) -> Result<PathBuf>) -> Result<()> {
        for (source, destination) in &self.files {
            let to = prepare(&map, destination)?;
            let mut from = File::open(source)
                .with_context(|| format!("opening boot-file source {}", source.display()))?;
            crate::state::replace_with(&to, |f| std::io::copy(&mut from, f).map(drop))
                .with_context(|| {
                    format!("copying {} to {}", source.display(), destination.display())
                })?;
        }
        if let Some((path, bytes)) = &self.script {
            crate::state::replace(&prepare(&map, path)?, bytes)
                .with_context(|| format!("writing the boot script {}", path.display()))?;
        }
        Ok(())
    }
}

/// Where `path` is now, its directory created.
fn prepare(map: impl Fn(&Path) -> Result<PathBuf>, path: &Path) -> Result<PathBuf> {
    let to = map(path)?;
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(to)
}

fn missing(what: &str, path: &Path, hint: &str) -> anyhow::Error {
    Refused(format!(
        "{what} {} is missing: {hint}; nothing was written",
        path.display()
    ))
    .into()
}

/// A file of the board, at most `limit` bytes (checked while reading).
fn read_input(path: &Path, limit: u64, what: &str, hint: &str) -> Result<Vec<u8>> {
    let file = match File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(missing(what, path, hint))
        }
        r => r.with_context(|| format!("opening {what} {}", path.display()))?,
    };
    crate::state::read_limited(file, path, limit, "check that it is the right file")
}

/// `mkimage -T script`: the legacy image U-Boot's `source` command runs.
fn compile(text: &[u8], arch: &str) -> Result<Vec<u8>> {
    let dir = tempfile::Builder::new()
        .prefix("abup-script.")
        .tempdir()
        .context("creating a directory to compile the boot script in")?;
    let (cmd, scr) = (dir.path().join("boot.cmd"), dir.path().join("boot.scr"));
    std::fs::write(&cmd, text).with_context(|| format!("writing {}", cmd.display()))?;
    super::run(
        Command::new("mkimage")
            .args(["-A", arch, "-T", "script", "-C", "none", "-d"])
            .arg(&cmd)
            .arg(&scr),
    )
    .context("compiling the boot script with mkimage (install u-boot-tools)")?;
    std::fs::read(&scr).with_context(|| format!("reading {}", scr.display()))
}

/// U-Boot's default variables from the board's `initial-env` (relative to `board_dir`), in
/// the order of the file: what every environment abup creates for a U-Boot board starts
/// with, because U-Boot replaces its built-in environment with a saved one. Empty for GRUB.
pub fn defaults(board: &Board, board_dir: &Path) -> Result<Vec<Assignment>> {
    let defaults = match &board.bootloader {
        Bootloader::UBoot {
            initial_env: Some(name),
            ..
        } => {
            let path = board_dir.join(name);
            let bytes = read_input(
                &path,
                u_boot_env::MAX_ENV_SIZE as u64,
                "U-Boot's default environment (initial-env)",
                "copy u-boot-initial-env from the board's U-Boot build beside board.toml",
            )?;
            parse_initial_env(&bytes, &path)?
        }
        Bootloader::UBoot {
            initial_env: None, ..
        } => {
            log::warn!(
                "board {} names no initial-env: its environment gets the slot variables \
                 only, and U-Boot, which replaces its built-in environment with a saved \
                 one, loses its defaults",
                board.name
            );
            Vec::new()
        }
        Bootloader::Grub { .. } => Vec::new(),
    };
    Ok(defaults)
}

/// `name=value` lines as a U-Boot build writes `u-boot-initial-env` and `mkenvimage` reads
/// them: empty lines and lines starting with `#` are skipped, and a line ending in `\` goes on
/// in the next, with a newline in the value.
fn parse_initial_env(bytes: &[u8], path: &Path) -> Result<Vec<Assignment>> {
    let text = std::str::from_utf8(bytes)
        .with_context(|| format!("{} is not UTF-8 text", path.display()))?;
    let mut vars = Vec::new();
    let mut entry = String::new();
    for (i, line) in text.split('\n').enumerate() {
        if entry.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            entry.push_str(head);
            entry.push('\n');
            continue;
        }
        entry.push_str(line);
        let full = std::mem::take(&mut entry);
        match full.split_once('=') {
            Some((name, value)) if !name.is_empty() => {
                vars.push((name.to_owned(), Some(value.to_owned())))
            }
            _ => bail!(
                "{} line {}: {full:?} is not name=value, as in the u-boot-initial-env a U-Boot \
                 build writes",
                path.display(),
                i + 1
            ),
        }
    }
    if !entry.is_empty() {
        bail!(
            "{} ends in a line continued with \\: complete the last variable",
            path.display()
        );
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Assignment>> {
        parse_initial_env(text.as_bytes(), Path::new("u-boot-initial-env"))
    }

    #[test]
    fn initial_env_is_read_as_mkenvimage_reads_it() {
        let vars = parse("arch=arm\n\n# a comment\nbootcmd=a; \\\nb\nempty=\nx=1=2\n").unwrap();
        let pairs: Vec<(&str, &str)> = vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref().unwrap_or("-")))
            .collect();
        assert_eq!(
            pairs,
            [
                ("arch", "arm"),
                ("bootcmd", "a; \nb"),
                ("empty", ""),
                ("x", "1=2")
            ]
        );
    }

    #[test]
    fn a_malformed_initial_env_names_the_line() {
        let e = parse("a=1\nnot a variable\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("not a variable"), "{e}");
        assert!(parse("=1\n").unwrap_err().to_string().contains("line 1"));
        assert!(parse("a=1\\")
            .unwrap_err()
            .to_string()
            .contains("continued"));
        assert!(parse_initial_env(b"a=\xff\n", Path::new("e"))
            .unwrap_err()
            .to_string()
            .contains("UTF-8"));
    }
}
