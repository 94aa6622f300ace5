//! A board's disk layout, the `[[partition]]` tables of board.toml: GPT partitions in disk
//! order, and where each one lands on a disk of a given size. Factory provisioning writes
//! it; the slots' `device` paths name the partitions it makes.

use serde::Deserialize;

/// Bytes per logical block: what the GPT is laid out in. (4Kn disks are not supported yet.)
pub const SECTOR: u64 = 512;

/// Every partition starts on a 1 MiB boundary, as every partitioning tool does: erase blocks,
/// RAID stripes and 4 KiB physical sectors all divide it.
pub const ALIGN: u64 = 1 << 20;

/// LBA 1 holds the header and LBAs 2 to 33 the 128 entries of 128 bytes; the backup copy
/// takes the same at the end of the disk.
const TABLE_SECTORS: u64 = 33;

/// A GPT holds this many entries; more partitions need a larger table than tools expect.
pub const MAX_PARTITIONS: usize = 128;

/// A GPT partition name is at most 36 UTF-16 code units.
const MAX_NAME: usize = 36;

/// Type GUIDs by their short names in board.toml (UEFI and the Discoverable Partitions
/// Specification).
const TYPES: &[(&str, &str)] = &[
    ("esp", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
    ("linux", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
    ("bios-boot", "21686148-6449-6E6F-744E-656564454649"),
    ("swap", "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"),
    ("linux-root-x86-64", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"),
    ("linux-root-arm64", "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"),
];

/// One partition, as board.toml describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The GPT partition name: `/dev/disk/by-partlabel/<name>` on the device.
    pub name: String,
    /// The type GUID, upper case.
    pub type_guid: String,
    pub size: Size,
    /// Created by provisioning; none for slots (their image is written there) and for raw
    /// partitions such as the BIOS boot partition.
    pub filesystem: Option<Filesystem>,
    /// Where the running system mounts it: provisioning puts the bootloader environment,
    /// the boot script and abup's state directory on the partition whose mount point holds
    /// their paths.
    pub mount: Option<String>,
    /// The `[[slot]]` whose device this partition is.
    pub slot: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Bytes(u64),
    /// Whatever the disk has left after the other partitions.
    Rest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filesystem {
    Vfat,
    Ext4,
}

impl Filesystem {
    pub fn name(self) -> &'static str {
        match self {
            Filesystem::Vfat => "vfat",
            Filesystem::Ext4 => "ext4",
        }
    }
}

/// A partition's place on a particular disk, in logical blocks (inclusive, as GPT counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub first_lba: u64,
    pub last_lba: u64,
}

impl Placed {
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }

    pub fn bytes(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR
    }
}

/// `[[partition]]` as written in board.toml.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PartitionSection {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    size: SizeField,
    filesystem: Option<String>,
    mount: Option<String>,
    slot: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeField {
    Bytes(u64),
    Text(String),
}

/// Checks the `[[partition]]` tables against each other and against the board's slot
/// names; the message says which partition and what to change.
pub(crate) fn parse(
    sections: Vec<PartitionSection>,
    slots: &[&str],
) -> Result<Vec<Partition>, String> {
    if sections.len() > MAX_PARTITIONS {
        return Err(format!(
            "{} partitions: a GPT holds at most {MAX_PARTITIONS}",
            sections.len()
        ));
    }
    let mut parts: Vec<Partition> = Vec::new();
    for s in sections {
        let name = s.name;
        let at = |msg: String| format!("partition {name:?}: {msg}");
        if name.is_empty() || name.encode_utf16().count() > MAX_NAME {
            return Err(at(format!(
                "a GPT partition name has 1 to {MAX_NAME} characters"
            )));
        }
        if parts.iter().any(|p| p.name == name) {
            return Err(at("two partitions have this name".into()));
        }
        let type_guid = type_guid(&s.kind).ok_or_else(|| {
            at(format!(
                "type {:?} is neither a GUID nor one of {}",
                s.kind,
                TYPES.iter().map(|t| t.0).collect::<Vec<_>>().join(", ")
            ))
        })?;
        let size = match s.size {
            SizeField::Bytes(n) => Size::Bytes(n),
            SizeField::Text(t) => parse_size(&t).map_err(at)?,
        };
        if size == Size::Bytes(0) {
            return Err(at("size 0: a partition needs at least one sector".into()));
        }
        if let Size::Bytes(n) = size {
            if n % SECTOR != 0 {
                return Err(at(format!(
                    "size {n} is not a whole number of {SECTOR}-byte sectors"
                )));
            }
        }
        if size == Size::Rest && parts.iter().any(|p| p.size == Size::Rest) {
            return Err(at(
                "a second size = \"rest\": only one partition can take what is left".into(),
            ));
        }
        let filesystem = match s.filesystem.as_deref() {
            None => None,
            Some("vfat") => Some(Filesystem::Vfat),
            Some("ext4") => Some(Filesystem::Ext4),
            Some(other) => {
                return Err(at(format!(
                    "filesystem {other:?}: provisioning creates vfat or ext4"
                )))
            }
        };
        if let Some(m) = &s.mount {
            if !m.starts_with('/') {
                return Err(at(format!("mount {m:?} must be an absolute path")));
            }
            if filesystem.is_none() {
                return Err(at(
                    "mount without filesystem: provisioning can only put files on a \
                     filesystem it created"
                        .into(),
                ));
            }
            if parts.iter().any(|p| p.mount.as_deref() == Some(m.as_str())) {
                return Err(at(format!("two partitions are mounted at {m}")));
            }
        }
        if let Some(slot) = &s.slot {
            if !slots.contains(&slot.as_str()) {
                return Err(at(format!(
                    "slot {slot:?} is not one of the board's slots ({})",
                    slots.join(", ")
                )));
            }
            if parts
                .iter()
                .any(|p| p.slot.as_deref() == Some(slot.as_str()))
            {
                return Err(at(format!("slot {slot} already has a partition")));
            }
            if filesystem.is_some() {
                return Err(at(
                    "a slot gets its bundle's image, not a new filesystem: drop filesystem".into(),
                ));
            }
        }
        parts.push(Partition {
            name,
            type_guid,
            size,
            filesystem,
            mount: s.mount,
            slot: s.slot,
        });
    }
    Ok(parts)
}

/// The type GUID (upper case) of `kind`: one of the short names board.toml accepts, or a GUID.
pub fn type_guid(kind: &str) -> Option<String> {
    if let Some((_, guid)) = TYPES.iter().find(|(name, _)| *name == kind) {
        return Some((*guid).to_owned());
    }
    let groups: Vec<&str> = kind.split('-').collect();
    let shape = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]);
    let hex = kind.chars().all(|c| c == '-' || c.is_ascii_hexdigit());
    (shape && hex).then(|| kind.to_ascii_uppercase())
}

/// "rest", or a byte count as [`parse_bytes`] reads it.
fn parse_size(text: &str) -> Result<Size, String> {
    if text == "rest" {
        return Ok(Size::Rest);
    }
    parse_bytes(text).map(Size::Bytes).ok_or_else(|| {
        format!("size {text:?} is not a number of bytes, or one with KiB, MiB, GiB or TiB")
    })
}

/// A byte count: digits, optionally followed by a power of 1024 (K or KiB, M or MiB, G or
/// GiB, T or TiB). Board files and command-line options read sizes the same way.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let shift = match &text[digits.len()..] {
        "" => 0,
        "K" | "k" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error(
        "the disk has {disk} bytes; the layout needs at least {needed} (partitions aligned to \
         1 MiB, and the GPT's backup at the end)"
    )]
    TooSmall { disk: u64, needed: u64 },
}

fn align_up(lba: u64) -> u64 {
    let per = ALIGN / SECTOR;
    lba.div_ceil(per) * per
}

/// The last block a partition may use on a disk of `blocks` blocks: the backup entries and
/// header follow it.
fn last_usable(blocks: u64) -> Option<u64> {
    blocks.checked_sub(TABLE_SECTORS + 1)
}

/// Where each partition of `parts` goes on a disk of `disk` bytes, in order, each starting
/// on a 1 MiB boundary; a `rest` partition (at least 1 MiB) ends where the usable space does,
/// or on a 1 MiB boundary before the partitions after it.
pub fn place(parts: &[Partition], disk: u64) -> Result<Vec<Placed>, PlaceError> {
    let blocks = disk / SECTOR;
    let too_small = || PlaceError::TooSmall {
        disk,
        needed: min_disk_size(parts),
    };
    let last = last_usable(blocks).ok_or_else(too_small)?;
    // What the partitions after each one need, so that a `rest` partition leaves them room.
    let fixed_after: Vec<u64> = (0..parts.len())
        .map(|i| {
            parts[i + 1..]
                .iter()
                .map(|p| match p.size {
                    Size::Bytes(n) => align_up(n / SECTOR),
                    Size::Rest => 0,
                })
                .sum()
        })
        .collect();
    let mut placed = Vec::with_capacity(parts.len());
    let mut next = ALIGN / SECTOR;
    for (i, p) in parts.iter().enumerate() {
        let first = align_up(next);
        let len = match p.size {
            Size::Bytes(n) => n / SECTOR,
            Size::Rest => {
                let per = ALIGN / SECTOR;
                let end = match fixed_after[i] {
                    0 => Some(last + 1),
                    after => (last + 1).checked_sub(after).map(|e| e / per * per),
                };
                end.and_then(|e| e.checked_sub(first))
                    .filter(|&n| n >= per)
                    .ok_or_else(too_small)?
            }
        };
        let last_lba = first + len - 1;
        if last_lba > last {
            return Err(too_small());
        }
        placed.push(Placed {
            first_lba: first,
            last_lba,
        });
        next = last_lba + 1;
    }
    Ok(placed)
}

/// The smallest disk the layout fits, a `rest` partition getting 1 MiB.
pub fn min_disk_size(parts: &[Partition]) -> u64 {
    let mut next = ALIGN / SECTOR;
    for p in parts {
        let len = match p.size {
            Size::Bytes(n) => n / SECTOR,
            Size::Rest => ALIGN / SECTOR,
        };
        next = align_up(next) + len;
    }
    (next + TABLE_SECTORS) * SECTOR
}

#[cfg(test)]
mod tests;
