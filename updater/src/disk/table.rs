//! A board's layout written as a GPT (with the `gpt` crate): the protective MBR, the primary
//! header and entries at the front, the backup copy at the end, CRCs over both.

use std::fs::File;

use anyhow::{Context, Result};
use gpt::disk::LogicalBlockSize;
use gpt::partition_types::{OperatingSystem, Type};

use super::layout::{Partition, Placed, SECTOR};

/// Writes a new partition table for `parts` at `placed` over whatever `disk` held there,
/// and syncs it. A cut leaves a table that is whole, torn (the primary or the backup
/// invalid, which every GPT reader repairs from the other) or the old one: provisioning
/// writes it again when it runs again.
pub fn write(disk: &File, parts: &[Partition], placed: &[Placed]) -> Result<()> {
    let blocks = size(disk)? / SECTOR;
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(
        u32::try_from(blocks.saturating_sub(1)).unwrap_or(u32::MAX),
    );
    let mut device = disk;
    mbr.overwrite_lba0(&mut device)
        .context("writing the protective MBR")?;
    let mut table = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .create_from_device(device, None)
        .context("creating the GPT headers")?;
    for (i, (p, at)) in parts.iter().zip(placed).enumerate() {
        let guid = uuid::Uuid::parse_str(&p.type_guid)
            .with_context(|| format!("partition {}: type {}", p.name, p.type_guid))?;
        let kind = Type {
            guid,
            os: OperatingSystem::None,
        };
        table
            .add_partition_at(
                &p.name,
                (i + 1) as u32,
                at.first_lba,
                at.last_lba + 1 - at.first_lba,
                kind,
                0,
            )
            .with_context(|| format!("adding partition {} to the GPT", p.name))?;
    }
    write_synced(&mut table, disk)
}

/// One used entry of a partition table, as provisioning compares it with a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// Upper case.
    pub type_guid: String,
    pub first_lba: u64,
    pub last_lba: u64,
}

/// The disk's GPT entries in order, if it has a valid GPT.
pub fn read(disk: &File) -> Option<Vec<Entry>> {
    Some(read_numbered(disk)?.into_iter().map(|(_, e)| e).collect())
}

/// The used entries of a partition table with their numbers (1-based).
pub fn read_numbered(disk: &File) -> Option<Vec<(u32, Entry)>> {
    let table = open(disk, false).ok()?;
    Some(
        table
            .partitions()
            .iter()
            .filter(|(_, p)| p.is_used())
            .map(|(n, p)| {
                (
                    *n,
                    Entry {
                        name: p.name.clone(),
                        type_guid: p.part_type_guid.guid.to_string().to_ascii_uppercase(),
                        first_lba: p.first_lba,
                        last_lba: p.last_lba,
                    },
                )
            })
            .collect(),
    )
}

/// The disk's GUID, upper case.
pub fn disk_guid(disk: &File) -> Result<String> {
    let table = open(disk, false).context("reading the GPT")?;
    Ok(table.guid().to_string().to_ascii_uppercase())
}

fn open(disk: &File, writable: bool) -> Result<gpt::GptDisk<&File>, gpt::GptError> {
    gpt::GptConfig::new()
        .writable(writable)
        .logical_block_size(LogicalBlockSize::Lb512)
        .open_from_device(disk)
}

/// How split-root changes a table: partition `number` ends at `a_last_lba`, and partition
/// `b_number` (of the same type) covers the rest.
#[derive(Debug, Clone)]
pub struct Split {
    pub number: u32,
    pub a_last_lba: u64,
    pub b_number: u32,
    pub b_first_lba: u64,
    pub b_last_lba: u64,
    pub b_name: String,
}

/// Applies `split` and writes both tables, then syncs. Running it again on a table it
/// already changed writes the same table: every other entry, GUID and attribute is kept,
/// and partition B keeps the GUID a cut run gave it.
pub fn split(disk: &File, split: &Split) -> Result<()> {
    let mut table = open(disk, true).context("reading the GPT to split the root partition")?;
    let mut parts = table.partitions().clone();
    let a = parts
        .get_mut(&split.number)
        .filter(|p| p.is_used())
        .with_context(|| format!("the GPT has no partition {}", split.number))?;
    a.last_lba = split.a_last_lba;
    let kind = a.part_type_guid.clone();
    let b = parts
        .entry(split.b_number)
        .or_insert_with(gpt::partition::Partition::zero);
    if !b.is_used() {
        b.part_guid = uuid::Uuid::new_v4();
    }
    b.part_type_guid = kind;
    b.first_lba = split.b_first_lba;
    b.last_lba = split.b_last_lba;
    b.flags = 0;
    b.name = split.b_name.clone();
    table
        .update_partitions(parts)
        .context("changing the GPT's entries")?;
    write_synced(&mut table, disk)
}

/// Both tables, then a sync: one durable write for the fault-injection tests.
fn write_synced(table: &mut gpt::GptDisk<&File>, disk: &File) -> Result<()> {
    table
        .write_inplace()
        .context("writing the GPT (primary and backup)")?;
    disk.sync_all().context("syncing the partition table")?;
    crate::failpoint::wrote("the partition table");
    Ok(())
}

/// A disk image's or a block device's size: its end, as seeking there finds it.
pub fn size(disk: &File) -> Result<u64> {
    use std::io::Seek;
    let mut d = disk;
    d.seek(std::io::SeekFrom::End(0))
        .context("finding the disk's size")
}

#[cfg(test)]
mod tests;
