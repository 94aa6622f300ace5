//! Which slot is running. Everything that writes a slot depends on getting this right, so the
//! sources are tried from the most to the least explicit, and a source that names something
//! that is not a slot is an error rather than a guess.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use bootcount::SlotId;

use crate::board::Board;

/// The kernel command line; `ABUP_PROC_CMDLINE` names another file (tests, initramfs tools).
pub fn cmdline_path() -> PathBuf {
    std::env::var_os("ABUP_PROC_CMDLINE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/proc/cmdline"))
}

/// The longest kernel command line read. The kernel's own limit is 2 to 4 KiB
/// (`COMMAND_LINE_SIZE`), a bootconfig adds at most 32 KiB; a longer file is not a command line.
pub const MAX_CMDLINE_LEN: u64 = 64 * 1024;

/// Reads the kernel command line from [`cmdline_path`], at most [`MAX_CMDLINE_LEN`] bytes (the
/// limit holds while reading, so `/dev/zero` or a growing file cannot exhaust memory). Bytes
/// that are not UTF-8 become U+FFFD: they cannot be part of `abup.slot=` or a slot device's
/// path, and must not stop abup from reading the rest.
pub fn read_cmdline() -> Result<String, Error> {
    let path = cmdline_path();
    let read_err = |source| Error::Cmdline {
        path: path.clone(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .map_err(read_err)?
        .take(MAX_CMDLINE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_CMDLINE_LEN {
        return Err(Error::CmdlineTooLong { path });
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// How the booted slot was found, for `abup status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `abup.slot=` on the kernel command line, set by the board's boot script.
    Cmdline,
    /// `root=` on the kernel command line matched a slot's device.
    Root,
    /// The device mounted at `/` is a slot's device.
    Mount,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Cmdline => "abup.slot",
            Method::Root => "root=",
            Method::Mount => "/",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the kernel command line from {path}: {source}")]
    Cmdline {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the kernel command line {path} is larger than {MAX_CMDLINE_LEN} bytes: it is not a kernel command line (check ABUP_PROC_CMDLINE)")]
    CmdlineTooLong { path: PathBuf },
    #[error("the kernel command line says abup.slot={0}, but the board has no slot of that name")]
    UnknownSlot(String),
    #[error(
        "cannot tell which slot is booted: no abup.slot= on the kernel command line, and neither \
         root= nor the device of / is one of the board's slot devices ({devices}); check the \
         slot devices in the board configuration"
    )]
    Unknown { devices: String },
}

/// Finds the booted slot from the kernel command line, then `root=`, then the device of `/`.
pub fn detect(board: &Board, cmdline: &str) -> Result<(SlotId, Method), Error> {
    let params = parse_cmdline(cmdline);
    if let Some(name) = param(&params, "abup.slot") {
        return board
            .slots
            .find(name)
            .map(|s| (s, Method::Cmdline))
            .ok_or_else(|| Error::UnknownSlot(name.to_owned()));
    }
    if let Some(root) = param(&params, "root") {
        if let Some(s) = match_root(board, root) {
            return Ok((s, Method::Root));
        }
    }
    if let Some(s) = std::fs::metadata("/")
        .ok()
        .and_then(|m| slot_with_rdev(board, m.dev()))
    {
        return Ok((s, Method::Mount));
    }
    Err(Error::Unknown {
        devices: board
            .devices
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The last value of `key=` (the kernel, too, lets a later parameter override an earlier one).
fn param<'a>(params: &'a [(String, Option<String>)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.as_deref())
}

/// Splits a command line the way the kernel does: on spaces, with double quotes grouping, up
/// to `--` (what follows belongs to init).
pub fn parse_cmdline(cmdline: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_quotes = false;
    let mut words = Vec::new();
    for c in cmdline.chars() {
        match c {
            '"' => in_quotes = !in_quotes,
            c if c.is_whitespace() && !in_quotes => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    for w in words {
        if w == "--" {
            break;
        }
        match w.split_once('=') {
            Some((k, v)) => out.push((k.to_owned(), Some(v.to_owned()))),
            None => out.push((w, None)),
        }
    }
    out
}

/// `root=` as a path (`/dev/nvme0n1p2`) or a tag (`PARTLABEL=`, `PARTUUID=`, `UUID=`,
/// `LABEL=`). Filesystem tags only count when exactly one slot carries them: both slots of a
/// board often hold copies of one image, with the same filesystem UUID and label.
fn match_root(board: &Board, root: &str) -> Option<SlotId> {
    if root.starts_with('/') {
        let rdev = block_rdev(Path::new(root))?;
        return slot_with_rdev(board, rdev);
    }
    let (tag, value) = root.split_once('=')?;
    let key = match tag {
        "PARTLABEL" => "PART_ENTRY_NAME",
        "PARTUUID" => "PART_ENTRY_UUID",
        "UUID" => "UUID",
        "LABEL" => "LABEL",
        _ => return None,
    };
    let matching: Vec<SlotId> = board
        .slots
        .ids()
        .filter(|&s| {
            probe(board.device(s))
                .and_then(|values| values.into_iter().find(|(k, _)| k == key))
                .is_some_and(|(_, v)| v.eq_ignore_ascii_case(value))
        })
        .collect();
    match matching.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// The identifiers libblkid finds on a device: partition-table entry and filesystem.
fn probe(device: &Path) -> Option<Vec<(String, String)>> {
    let prober = blkid::prober::Prober::new_from_filename(device).ok()?;
    prober.enable_superblocks(true).ok()?;
    prober.enable_partitions(true).ok()?;
    prober
        .set_partitions_flags(blkid::PartitionsFlags::ENTRY_DETAILS)
        .ok()?;
    prober.do_safe_probe().ok()?;
    Some(prober.get_values_map().ok()?.into_iter().collect())
}

fn block_rdev(path: &Path) -> Option<u64> {
    let m = std::fs::metadata(path).ok()?;
    m.file_type().is_block_device().then(|| m.rdev())
}

fn slot_with_rdev(board: &Board, rdev: u64) -> Option<SlotId> {
    board
        .slots
        .ids()
        .find(|&s| block_rdev(board.device(s)) == Some(rdev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_parsing_follows_the_kernel() {
        let p = parse_cmdline(
            "BOOT_IMAGE=/vmlinuz root=PARTLABEL=rootfs-a ro quiet \"abup.slot=B\" x=\"a b\" -- abup.slot=A\n",
        );
        assert_eq!(param(&p, "abup.slot"), Some("B"));
        assert_eq!(param(&p, "x"), Some("a b"));
        assert_eq!(param(&p, "root"), Some("PARTLABEL=rootfs-a"));
        assert_eq!(param(&p, "ro"), None);
        let p = parse_cmdline("abup.slot=A abup.slot=B");
        assert_eq!(param(&p, "abup.slot"), Some("B"), "the last one wins");
    }
}
