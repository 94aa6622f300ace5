//! The shrink's backup: the blocks resize2fs is going to change, with their contents before
//! the shrink, made durable in the work directory before resize2fs writes anything.
//!
//! resize2fs never overwrites a block the old filesystem uses for data: it copies the data
//! of the freed half into blocks that are free in the old filesystem, then rewrites metadata
//! (superblock, group descriptors, bitmaps, inode tables, extent and directory blocks) in
//! place. So putting the changed metadata blocks back gives the old filesystem, whatever
//! part of the shrink reached the disk, in whatever order the kernel wrote it back.
//!
//! Which blocks those are is found by running the same shrink first on a copy of the
//! filesystem's metadata (`e2image -r`, a sparse file with the data blocks left out) and
//! comparing it before and after: resize2fs decides from metadata alone, so it makes the same
//! changes to the device. resize2fs's own undo file (`-z`) records the same blocks, but its
//! writes and the device's go through separate caches and reach the disk in no fixed order,
//! and it also saves every block the moved data lands in.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"ABUPSPLB";
const VERSION: u32 = 1;

/// Blocks of a filesystem and what they held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub block_size: u64,
    pub blocks: Vec<u64>,
    data: Vec<u8>,
}

impl Backup {
    /// Reads `blocks` from the filesystem device `dev`.
    pub fn read(dev: &File, block_size: u64, blocks: Vec<u64>) -> Result<Backup> {
        let len = usize::try_from(block_size).context("block size")?;
        let mut data = vec![0; len * blocks.len()];
        for (chunk, &b) in data.chunks_mut(len).zip(&blocks) {
            dev.read_exact_at(chunk, b * block_size)
                .with_context(|| format!("reading block {b} of the root filesystem"))?;
        }
        Ok(Backup {
            block_size,
            blocks,
            data,
        })
    }

    /// The file's bytes: magic, version, block size, count, the block numbers, their
    /// contents, and a SHA-256 over everything before it (little endian throughout).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.blocks.len() * 8 + self.data.len() + 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.block_size as u32).to_le_bytes());
        out.extend_from_slice(&(self.blocks.len() as u64).to_le_bytes());
        for b in &self.blocks {
            out.extend_from_slice(&b.to_le_bytes());
        }
        out.extend_from_slice(&self.data);
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        out
    }

    /// The backup in `bytes`, or `None` when they are not a whole one: a file a cut left
    /// torn or empty is no backup, and the shrink it would have protected never started.
    pub fn decode(bytes: &[u8]) -> Option<Backup> {
        let (body, sum) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
        if Sha256::digest(body).as_slice() != sum {
            return None;
        }
        let rest = body.strip_prefix(MAGIC)?;
        let (version, rest) = rest.split_first_chunk::<4>()?;
        let (block_size, rest) = rest.split_first_chunk::<4>()?;
        let (count, rest) = rest.split_first_chunk::<8>()?;
        if u32::from_le_bytes(*version) != VERSION {
            return None;
        }
        let block_size = u64::from(u32::from_le_bytes(*block_size));
        let count = usize::try_from(u64::from_le_bytes(*count)).ok()?;
        let (list, data) = rest.split_at_checked(count.checked_mul(8)?)?;
        if block_size == 0 || data.len() as u64 != (count as u64).checked_mul(block_size)? {
            return None;
        }
        let blocks = list
            .chunks_exact(8)
            .filter_map(|c| c.try_into().ok().map(u64::from_le_bytes))
            .collect();
        Some(Backup {
            block_size,
            blocks,
            data: data.to_vec(),
        })
    }

    /// Writes every block back and syncs. Running it again (after a cut) writes the same.
    pub fn restore(&self, dev: &File) -> Result<()> {
        let len = self.block_size as usize;
        for (chunk, &b) in self.data.chunks(len).zip(&self.blocks) {
            let offset = b * self.block_size;
            crate::failpoint::unsynced_write(dev, offset, len);
            dev.write_all_at(chunk, offset)
                .with_context(|| format!("writing block {b} back to the root filesystem"))?;
            crate::failpoint::wrote(&format!("root filesystem block {b}"));
        }
        dev.sync_all().context("syncing the root filesystem")?;
        crate::failpoint::synced(dev);
        Ok(())
    }

    pub fn bytes(&self) -> u64 {
        self.data.len() as u64
    }
}

/// The blocks of the filesystem on `dev` (of `old_blocks` blocks) that a shrink to
/// `new_blocks` writes and the old filesystem uses: resize2fs run on a metadata image of it
/// (`e2image -r`, sparse, in a temporary directory) with e2fsprogs' test I/O manager logging
/// every write, less the blocks dumpe2fs lists as free.
pub fn changed_blocks(
    dev: &Path,
    block_size: u64,
    old_blocks: u64,
    new_blocks: u64,
) -> Result<Vec<u64>> {
    let tmp = tempfile::Builder::new()
        .prefix("abup-split-root.")
        .tempdir()
        .context("creating a temporary directory for the shrink's dry run")?;
    let image = tmp.path().join("metadata.e2i");
    let log = tmp.path().join("writes.log");
    super::run(Command::new("e2image").arg("-r").arg(dev).arg(&image))
        .context("copying the root filesystem's metadata (e2image -r)")?;
    super::run(
        Command::new("resize2fs")
            .arg("-f")
            .arg(&image)
            .arg(new_blocks.to_string())
            // Writes, block size changes, discards and zeroouts.
            .env("TEST_IO_FLAGS", "0x146")
            .env("TEST_IO_LOGFILE", &log),
    )
    .context("shrinking a copy of the root filesystem's metadata")?;
    let text = std::fs::read_to_string(&log).context(
        "this resize2fs does not report its writes (TEST_IO_FLAGS: e2fsprogs built without \
         CONFIG_TESTIO_DEBUG, which Debian's has); split-root needs it to know what to save",
    )?;
    let free = free_blocks(&super::run(Command::new("dumpe2fs").arg(dev))?);
    let written = written_blocks(&text, block_size, old_blocks);
    Ok(written.into_iter().filter(|b| !free.contains(b)).collect())
}

/// The filesystem blocks (of `block_size`, below `limit`) that the test I/O manager's log
/// says were written to. Its block numbers count in the channel's block size at the time,
/// which `set_blksize` lines change (the superblock is written at 1024).
fn written_blocks(log: &str, block_size: u64, limit: u64) -> BTreeSet<u64> {
    let mut unit = block_size;
    let mut blocks = BTreeSet::new();
    for line in log.lines() {
        let Some(call) = line.strip_prefix("Test_io: ") else {
            continue;
        };
        let Some((name, rest)) = call.split_once('(') else {
            continue;
        };
        let args: Vec<i64> = rest
            .split(')')
            .next()
            .unwrap_or("")
            .split(", ")
            .filter_map(|a| a.trim().parse().ok())
            .collect();
        let (start, len) = match (name, &args[..]) {
            ("set_blksize", &[size]) => {
                unit = size.unsigned_abs();
                continue;
            }
            ("write_byte", &[offset, size]) => (offset.unsigned_abs(), size.unsigned_abs()),
            ("write_blk" | "write_blk64" | "discard" | "zeroout", &[block, count]) => {
                let len = if count < 0 {
                    count.unsigned_abs()
                } else {
                    count.unsigned_abs().saturating_mul(unit)
                };
                (block.unsigned_abs().saturating_mul(unit), len)
            }
            _ => continue,
        };
        if len == 0 || block_size == 0 || start / block_size >= limit {
            continue;
        }
        let last = (start.saturating_add(len - 1) / block_size).min(limit - 1);
        blocks.extend(start / block_size..=last);
    }
    blocks
}

/// The blocks dumpe2fs lists as free, group by group (after the header, whose "Free
/// blocks:" is a count).
fn free_blocks(dumpe2fs: &str) -> BTreeSet<u64> {
    let mut free = BTreeSet::new();
    let groups = dumpe2fs.find("\nGroup 0:").unwrap_or(dumpe2fs.len());
    for line in dumpe2fs[groups..].lines() {
        let Some(list) = line.trim().strip_prefix("Free blocks: ") else {
            continue;
        };
        for range in list.split(", ") {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(a), Ok(b)) = (a.trim().parse::<u64>(), b.trim().parse::<u64>()) {
                free.extend(a..=b.min(a.saturating_add(1 << 32)));
            }
        }
    }
    free
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A log as Debian's e2fsprogs 1.47 writes it: the superblock at 1024 bytes, a partial
    /// superblock write in bytes, a run of blocks, a write in bytes, a read (not counted).
    #[test]
    fn a_test_io_log_names_the_blocks_written() {
        let log = "Test_io: set_blksize(1024) returned OK\n\
            Test_io: write_blk64(1, 1) returned OK\n\
            Test_io: set_blksize(4096) returned OK\n\
            Test_io: write_byte(5000, 2) returned OK\n\
            Test_io: write_blk64(10, 3) returned OK\n\
            Test_io: write_blk(20, -4096) returned OK\n\
            Test_io: read_blk64(30, 1) returned OK\n";
        let got: Vec<u64> = written_blocks(log, 4096, 1000).into_iter().collect();
        assert_eq!(got, [0, 1, 10, 11, 12, 20]);
        let dump =
            "Free blocks:              99\nGroup 0: (Blocks 0-32767)\n  Free blocks: 5-7, 9\n";
        assert_eq!(
            free_blocks(dump).into_iter().collect::<Vec<_>>(),
            [5, 6, 7, 9]
        );
    }

    proptest! {
        /// What is written is read back, and no damage to a backup file is taken for one:
        /// any change of a byte, and any truncation, makes it no backup.
        #[test]
        fn a_backup_survives_its_file_and_damage_is_seen(
            blocks in proptest::collection::vec(0u64..1 << 40, 0..8),
            seed in any::<u8>(),
            flip in any::<prop::sample::Index>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let block_size = 1024;
            let data: Vec<u8> = (0..blocks.len() * 1024).map(|i| (i as u8) ^ seed).collect();
            let b = Backup { block_size, blocks, data };
            let bytes = b.encode();
            prop_assert_eq!(Backup::decode(&bytes), Some(b));
            let mut damaged = bytes.clone();
            damaged[flip.index(bytes.len())] ^= 1;
            prop_assert_eq!(Backup::decode(&damaged), None);
            prop_assert_eq!(Backup::decode(&bytes[..cut.index(bytes.len())]), None);
        }

        /// Arbitrary log text never panics the parsers, and no block is past the limit.
        #[test]
        fn arbitrary_logs_parse(text in "(Test_io: (write_blk64|write_byte|set_blksize|discard)\\([-0-9]{1,6}(, [-0-9]{1,6})?\\) returned OK\n){0,8}") {
            prop_assert!(written_blocks(&text, 4096, 100).iter().all(|&b| b < 100));
            let _ = free_blocks(&text);
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn arbitrary_bytes_are_no_backup(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Backup::decode(&bytes);
        }
    }
}
