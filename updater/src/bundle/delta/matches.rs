//! Finding the new image's bytes in the base by content, wherever they are.
//!
//! Two builds of the same tree rarely put a file at the same offset (`mkfs.ext4 -d` moves
//! almost every file when one changes; SquashFS packs compressed files back to back), so
//! nothing here assumes that new offset N came from base offset N. Two passes:
//!
//! 1. Block-aligned: every 4 KiB block of the base is indexed by a hash of its bytes, and
//!    every aligned block of the new image looked up. Filesystems that allocate in blocks
//!    (ext4, FAT, most of them) keep file data block-aligned, so this finds every unchanged
//!    block of every file, moved or not.
//! 2. Content-defined: in what pass 1 left, both images are cut where a rolling hash of the
//!    last 64 bytes hits a pattern (boundaries that move with the content, not the offset),
//!    the pieces are indexed and looked up, and each hit is grown byte by byte both ways. This
//!    finds data that moved by any number of bytes, as in SquashFS or a raw archive.
//!
//! Every match is checked byte for byte, so a hash collision costs time, never correctness.

use std::collections::HashMap;

/// The unit of pass 1: ext4's usual block size, and a multiple of every smaller one.
pub const BLOCK: usize = 4096;

/// A run of the new image found in the base: `new .. new + len` equals `old .. old + len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    pub new: u64,
    pub old: u64,
    pub len: u64,
}

impl Seg {
    pub fn new_end(&self) -> u64 {
        self.new + self.len
    }

    /// How far the data moved: base offset = new offset - shift.
    pub fn shift(&self) -> i64 {
        self.new as i64 - self.old as i64
    }
}

/// A fast, deterministic 64-bit hash for indexing; collisions are resolved by comparing bytes.
fn hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = bytes.len() as u64 ^ K;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(a)).wrapping_mul(K).rotate_left(29);
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(K).rotate_left(29);
    }
    h ^ (h >> 32)
}

/// All runs of `new` found in `old`, sorted by new offset, not overlapping.
pub fn find(old: &[u8], new: &[u8]) -> Vec<Seg> {
    let mut segs = aligned(old, new);
    let gaps = gaps(&segs, new.len() as u64);
    let mut shifted = content_defined(old, new, &gaps);
    segs.append(&mut shifted);
    segs.sort_by_key(|s| s.new);
    segs
}

/// Pass 1: aligned blocks, merged into runs and grown into the partial blocks around them.
fn aligned(old: &[u8], new: &[u8]) -> Vec<Seg> {
    let mut index: HashMap<u64, u64> = HashMap::with_capacity(old.len() / BLOCK + 1);
    // First occurrence wins, so the result depends only on the bytes.
    for (i, block) in old.chunks_exact(BLOCK).enumerate().rev() {
        index.insert(hash(block), (i * BLOCK) as u64);
    }
    let mut segs: Vec<Seg> = Vec::new();
    let mut at = 0usize;
    while at + BLOCK <= new.len() {
        let block = &new[at..at + BLOCK];
        // Continuing the previous run is cheaper to check and keeps runs long.
        let next_in_run = segs
            .last()
            .filter(|s| s.new_end() == at as u64)
            .map(|s| s.old + s.len)
            .filter(|&o| old.get(o as usize..o as usize + BLOCK) == Some(block));
        let found = next_in_run.or_else(|| {
            index
                .get(&hash(block))
                .copied()
                .filter(|&o| &old[o as usize..o as usize + BLOCK] == block)
        });
        if let Some(o) = found {
            match segs.last_mut() {
                Some(s) if s.new_end() == at as u64 && s.old + s.len == o => s.len += BLOCK as u64,
                _ => segs.push(Seg {
                    new: at as u64,
                    old: o,
                    len: BLOCK as u64,
                }),
            }
        }
        at += BLOCK;
    }
    // A run may go on past its last whole block (a short last block of the image).
    for s in &mut segs {
        grow_forward(old, new, s, new.len() as u64);
    }
    segs
}

/// The parts of `0..len` no run covers.
fn gaps(segs: &[Seg], len: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = 0;
    for s in segs {
        if s.new > at {
            out.push((at, s.new));
        }
        at = at.max(s.new_end());
    }
    if at < len {
        out.push((at, len));
    }
    out
}

fn grow_forward(old: &[u8], new: &[u8], s: &mut Seg, limit: u64) {
    while s.new_end() < limit
        && ((s.old + s.len) as usize) < old.len()
        && new[s.new_end() as usize] == old[(s.old + s.len) as usize]
    {
        s.len += 1;
    }
}

/// Content-defined pieces: a cut after a byte where the gear hash of the bytes before it has
/// its top `MASK_BITS` bits zero, pieces kept between `MIN_PIECE` and `MAX_PIECE`.
const MASK_BITS: u32 = 11;
const MIN_PIECE: usize = 512;
const MAX_PIECE: usize = 16 << 10;

/// The gear table: 256 fixed pseudo-random words (splitmix64 of the byte), so cuts depend
/// only on the content.
fn gear() -> [u64; 256] {
    let mut table = [0u64; 256];
    for (i, g) in table.iter_mut().enumerate() {
        let mut z = (i as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        *g = z ^ (z >> 31);
    }
    table
}

/// Where `bytes` is cut into content-defined pieces: the end offset of each piece.
fn cuts(bytes: &[u8], table: &[u64; 256]) -> Vec<usize> {
    let mask = !0u64 << (64 - MASK_BITS);
    let mut out = Vec::with_capacity(bytes.len() / 2048 + 1);
    let mut start = 0;
    let mut h = 0u64;
    for (i, &b) in bytes.iter().enumerate() {
        h = (h << 1).wrapping_add(table[b as usize]);
        let n = i + 1 - start;
        if (n >= MIN_PIECE && h & mask == 0) || n >= MAX_PIECE {
            out.push(i + 1);
            start = i + 1;
            h = 0;
        }
    }
    if start < bytes.len() {
        out.push(bytes.len());
    }
    out
}

/// Pass 2, within the gaps pass 1 left: pieces of the new image found anywhere in the base,
/// grown both ways as far as the bytes agree, within their gap.
fn content_defined(old: &[u8], new: &[u8], gaps: &[(u64, u64)]) -> Vec<Seg> {
    if gaps.is_empty() {
        return Vec::new();
    }
    let table = gear();
    let mut index: HashMap<u64, u64> = HashMap::new();
    let mut start = 0;
    for end in cuts(old, &table) {
        index.entry(hash(&old[start..end])).or_insert(start as u64);
        start = end;
    }
    let mut out = Vec::new();
    for &(gs, ge) in gaps {
        let gap = &new[gs as usize..ge as usize];
        let mut start = 0usize;
        let mut covered_to = gs;
        for end in cuts(gap, &table) {
            let piece = &gap[start..end];
            let at = gs + start as u64;
            start = end;
            if at < covered_to || piece.len() < MIN_PIECE {
                continue;
            }
            let Some(&o) = index.get(&hash(piece)) else {
                continue;
            };
            if old.get(o as usize..o as usize + piece.len()) != Some(piece) {
                continue;
            }
            let mut s = Seg {
                new: at,
                old: o,
                len: piece.len() as u64,
            };
            while s.new > covered_to
                && s.old > 0
                && new[s.new as usize - 1] == old[s.old as usize - 1]
            {
                s.new -= 1;
                s.old -= 1;
                s.len += 1;
            }
            grow_forward(old, new, &mut s, ge);
            covered_to = s.new_end();
            out.push(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::noise;
    use super::*;

    fn check(old: &[u8], new: &[u8], segs: &[Seg]) {
        let mut at = 0;
        for s in segs {
            assert!(s.new >= at, "overlap at {s:?}");
            assert_eq!(
                &new[s.new as usize..s.new_end() as usize],
                &old[s.old as usize..(s.old + s.len) as usize]
            );
            at = s.new_end();
        }
    }

    #[test]
    fn finds_moved_blocks_and_unaligned_shifts() {
        let old = noise(1 << 20, 7);
        // Blocks moved to other aligned places, then the same data shifted by 1,000 bytes.
        let mut new = Vec::new();
        new.extend_from_slice(&old[512 << 10..768 << 10]);
        new.extend_from_slice(&noise(1000, 9));
        new.extend_from_slice(&old[0..256 << 10]);
        let segs = find(&old, &new);
        check(&old, &new, &segs);
        let found: u64 = segs.iter().map(|s| s.len).sum();
        // All but the 1,000 new bytes; pass 2 may miss a piece's worth at each edge.
        assert!(found >= (512 << 10) - 2 * MAX_PIECE as u64, "found {found}");
        assert_eq!(
            segs[0],
            Seg {
                new: 0,
                old: 512 << 10,
                len: 256 << 10
            }
        );
    }

    #[test]
    fn nothing_in_common_finds_nothing() {
        let segs = find(&noise(300_000, 1), &noise(300_001, 2));
        assert!(segs.is_empty(), "{segs:?}");
    }
}
