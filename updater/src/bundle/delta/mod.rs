//! Building a delta image: the new image's chunks as operations on the base (the image the
//! device's running slot holds), on a build host with both images in memory.
//!
//! Each chunk of the new image becomes the cheapest operation that makes it exactly:
//!
//! - `zero` when it is all zeros;
//! - `copy` when every byte of it is found in the base ([`matches`]: by content, anywhere);
//! - otherwise `patch`, a zstd frame compressed with a window of base bytes as its reference
//!   prefix, or `data` (a plain frame) when no window helps.
//!
//! The window is where the art is. It holds the base bytes the chunk's found parts came from,
//! and for the parts not found, their old version: for an ext4 image, the old version of each
//! file the chunk holds ([`ext4`]: a file is paired with the file of the same path in the base,
//! or of the same path with its numbers changed, so a kernel module under a new kernel version
//! directory diffs against its old self); otherwise the base bytes near where the neighbouring
//! found data came from. Windows are at most [`MAX_PATCH_WINDOW`], which bounds a device's
//! memory.
//!
//! Every chunk is independent, so chunks are built on all cores and the result does not depend
//! on the thread count. Before it returns, the build applies its own delta to the base and
//! checks every chunk against the new image.

pub mod ext4;
mod matches;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use zstd::zstd_safe::{self, CCtx, CParameter};

use super::{
    extents_len, Base, Chunk, Compression, Decoder, Error, Extent, Image, ImageKind, Op, Result,
    MAX_OP_EXTENTS, MAX_PATCH_WINDOW, PATCH_WINDOW_LOG_MAX,
};
use matches::{Seg, BLOCK};

/// How a delta is built.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub chunk_size: u32,
    /// zstd level of `data` and `patch` frames.
    pub level: i32,
    /// Threads; 0 for one per CPU. The output does not depend on it.
    pub threads: usize,
}

/// Base bytes around an unmatched part that are worth putting in its window: edits move data
/// by up to about this much. Measured on bench/delta's pairs, 256 KiB made deltas 0.2% smaller
/// than 64 KiB but windows 17% larger, and a device reads and hashes every window byte.
const MARGIN: u64 = 64 << 10;

/// The zstd level that decides whether a window's guessed parts pay: fast, and it ranks
/// windows as level 19 does.
const PROBE_LEVEL: i32 = 3;

/// Bytes of patch a smaller window may cost and still be chosen: a few matches found by
/// chance in guessed base bytes are not worth reading them on every device.
const PROBE_SLACK: usize = 64;

/// Bytes a patch must save by referring to the new image's earlier bytes before it does:
/// a device reads up to [`MAX_PATCH_WINDOW`] of its own slot back for it.
const TARGET_MIN_GAIN: usize = 4096;

/// The new image's earlier bytes are chosen for a patch's window in pieces this large.
const TARGET_PIECE: u64 = 1 << 20;

/// Where the old version of each changed file of an ext4 image is: for every 4 KiB block of
/// the new image that holds file data, the base file it pairs with and the block's offset in
/// its file.
struct Pairs {
    old_files: Vec<ext4::FileMap>,
    by_block: HashMap<u64, (usize, u64)>,
}

impl Pairs {
    /// `None` unless both images are ext4 filesystems this abup can read.
    fn new(old: &[u8], new: &[u8]) -> Option<Pairs> {
        let old_files = ext4::files(old)?;
        let new_files = ext4::files(new)?;
        let mut by_path: HashMap<&str, usize> = HashMap::new();
        let mut by_shape: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, f) in old_files.iter().enumerate() {
            by_path.insert(&f.path, i);
            by_shape.entry(shape(&f.path)).or_default().push(i);
        }
        let mut by_block = HashMap::new();
        for f in &new_files {
            let counterpart = by_path.get(f.path.as_str()).copied().or_else(|| {
                // Same path but for its numbers (versions): the closest in size.
                by_shape.get(&shape(&f.path)).and_then(|c| {
                    c.iter()
                        .copied()
                        .min_by_key(|&i| (old_files[i].size.abs_diff(f.size), i))
                })
            });
            let Some(old) = counterpart else { continue };
            // Every 4 KiB block the extent touches (filesystem blocks may be smaller).
            for e in &f.extents {
                let bs = BLOCK as u64;
                for block in e.offset / bs..(e.offset + e.len).div_ceil(bs) {
                    let at = (block * bs).max(e.offset) - e.offset;
                    by_block.entry(block).or_insert((old, e.logical + at));
                }
            }
        }
        log::debug!(
            "ext4: {} files in the new image, {} in the base, {} blocks paired",
            new_files.len(),
            old_files.len(),
            by_block.len()
        );
        Some(Pairs {
            old_files,
            by_block,
        })
    }

    /// The base ranges holding `file`'s bytes `lo .. hi` (file offsets).
    fn old_ranges(&self, file: usize, lo: u64, hi: u64, out: &mut Vec<(u64, u64)>) {
        for e in &self.old_files[file].extents {
            let (s, t) = (e.logical.max(lo), (e.logical + e.len).min(hi));
            if s < t {
                out.push((e.offset + (s - e.logical), e.offset + (t - e.logical)));
            }
        }
    }
}

/// A path with every run of digits replaced, so versioned names pair up:
/// `/usr/lib/modules/6.1.0-18-amd64/x.ko` with `/usr/lib/modules/6.1.0-21-amd64/x.ko`.
fn shape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_digits = false;
    for c in path.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

/// Builds image `slot_class` as a delta from `old` to `new`. Returns the image and each
/// chunk's stored bytes (empty for operations that store nothing), in order.
pub fn build(
    slot_class: &str,
    old: &[u8],
    new: &[u8],
    params: &Params,
) -> Result<(Image, Vec<Vec<u8>>)> {
    if new.is_empty() || old.is_empty() {
        let size = if new.is_empty() { 0 } else { old.len() } as u64;
        return Err(if new.is_empty() {
            Error::ImageSize { image: 0, size }
        } else {
            Error::BaseSize { image: 0, size }
        });
    }
    let started = std::time::Instant::now();
    let segs = matches::find(old, new);
    log::info!(
        "delta {slot_class}: {} bytes of {} found in the base in {:.1} s",
        segs.iter().map(|s| s.len).sum::<u64>(),
        new.len(),
        started.elapsed().as_secs_f64()
    );
    let pairs = Pairs::new(old, new);
    let mut image = Image {
        slot_class: slot_class.to_string(),
        size: new.len() as u64,
        sha256: Sha256::digest(new).into(),
        kind: ImageKind::Delta(Base {
            size: old.len() as u64,
            sha256: Sha256::digest(old).into(),
        }),
        compression: Compression::Zstd,
        chunk_size: params.chunk_size,
        chunks: Vec::new(),
    };
    let count = new.len().div_ceil(params.chunk_size as usize);
    let threads = match params.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .clamp(1, 64);
    let next = AtomicUsize::new(0);
    let done: Mutex<BTreeMap<usize, Result<Built>>> = Mutex::new(BTreeMap::new());
    let ctx = Ctx {
        old,
        new,
        segs: &segs,
        pairs: pairs.as_ref(),
        image: &image,
        level: params.level,
    };
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= count {
                    break;
                }
                let r = ctx.chunk(k);
                let failed = r.is_err();
                if let Ok(mut done) = done.lock() {
                    done.insert(k, r);
                }
                if failed {
                    next.store(count, Ordering::Relaxed);
                }
            });
        }
    });
    let mut stored = Vec::with_capacity(count);
    let done = done.into_inner().unwrap_or_default();
    for (_, r) in done {
        let (chunk, bytes) = r?;
        image.chunks.push(chunk);
        stored.push(bytes);
    }
    if image.chunks.len() != count {
        return Err(Error::Zstd {
            message: "a delta worker stopped".into(),
        });
    }
    let count = |name: &str| image.chunks.iter().filter(|c| c.op.name() == name).count();
    log::info!(
        "delta {slot_class}: {} copy, {} patch, {} data, {} zero chunks, {} bytes stored, in {:.1} s",
        count("copy"),
        count("patch"),
        count("data"),
        count("zero"),
        stored.iter().map(Vec::len).sum::<usize>(),
        started.elapsed().as_secs_f64()
    );
    self_check(&image, old, new, &stored)?;
    Ok((image, stored))
}

/// A chunk's operation and its stored bytes.
type Built = (Chunk, Vec<u8>);

/// What every chunk's build reads.
struct Ctx<'a> {
    old: &'a [u8],
    new: &'a [u8],
    segs: &'a [Seg],
    pairs: Option<&'a Pairs>,
    image: &'a Image,
    level: i32,
}

impl Ctx<'_> {
    fn chunk(&self, k: usize) -> Result<Built> {
        let range = self.image.chunk_range(k);
        let data = &self.new[range.start as usize..range.end as usize];
        if data.iter().all(|&b| b == 0) {
            return Ok((op_chunk(Op::Zero), Vec::new()));
        }
        let found = self.found(range.start, range.end);
        let found_len: u64 = found.iter().map(|e| e.len).sum();
        if found_len == data.len() as u64 && found.len() <= MAX_OP_EXTENTS {
            let sha256 = Sha256::digest(data).into();
            return Ok((
                op_chunk(Op::Copy {
                    extents: found,
                    sha256,
                }),
                Vec::new(),
            ));
        }
        let window = self.window(range.start, range.end, &found);
        if window.is_empty() {
            let plain = compress(data, None, self.level)?;
            return Ok((Chunk::describe(&plain), plain));
        }
        let window = self.narrowest(data, window, &found)?;
        let base_prefix = self.prefix(&window);
        let (target, prefix) = self.with_target(data, range.start, base_prefix)?;
        let patched = compress(data, Some(&prefix), self.level)?;
        // A chunk partly found in the base is always cheaper as a patch (its found parts
        // cost a few bytes each), so the plain frame, which costs as much time again, is
        // only tried for chunks that were not found at all.
        if found_len * 8 < data.len() as u64 {
            let plain = compress(data, None, self.level)?;
            if plain.len() <= patched.len() {
                return Ok((Chunk::describe(&plain), plain));
            }
        }
        let chunk = Chunk {
            op: Op::Patch {
                base_sha256: Sha256::digest(&prefix[extents_len(&target) as usize..]).into(),
                extents: window,
                target_extents: target,
                out_sha256: Sha256::digest(data).into(),
            },
            ..Chunk::describe(&patched)
        };
        Ok((chunk, patched))
    }

    /// The base bytes of `window`, concatenated.
    fn prefix(&self, window: &[Extent]) -> Vec<u8> {
        let mut prefix = Vec::with_capacity(extents_len(window) as usize);
        append(&mut prefix, self.old, window);
        prefix
    }

    /// `window`, or only the found parts of it when the rest does not pay. The rest is where
    /// the old version of the data probably is; when the data changed beyond diffing (a
    /// compressed file, a new build), it buys nothing, and a device reads and hashes every
    /// byte of a window. A quick probe at [`PROBE_LEVEL`] decides.
    fn narrowest(&self, data: &[u8], window: Vec<Extent>, found: &[Extent]) -> Result<Vec<Extent>> {
        let narrow = fit(
            found.iter().map(|e| (e.offset, e.offset + e.len)).collect(),
            self.old.len() as u64,
        );
        if narrow.is_empty() || extents_len(&narrow) == extents_len(&window) {
            return Ok(window);
        }
        let probe = |w: &[Extent]| -> Result<usize> {
            Ok(compress(data, Some(&self.prefix(w)), PROBE_LEVEL)?.len())
        };
        if probe(&narrow)? <= probe(&window)? + PROBE_SLACK {
            Ok(narrow)
        } else {
            Ok(window)
        }
    }

    /// The reference prefix of a patch of the chunk at `start`: `base_prefix`, with in front
    /// of it the pieces of the new image before the chunk that pay for being read back: data
    /// repeated within a few MiB of the new image that the base does not have (two builds of
    /// one thing, a file and its copy in an archive). A level-3 probe with everything the
    /// window has room for must save [`TARGET_MIN_GAIN`] bytes; then each [`TARGET_PIECE`]
    /// is probed alone and kept if it saves that much, so a device reads back only what
    /// helps. Never the first chunk: a device holds its first block back until it activates.
    /// The bytes just before the chunk are allowed although a device's decoder then waits
    /// for its writer: on bench/delta's SquashFS pair, leaving out the last 2 MiB cost 0.3%.
    fn with_target(
        &self,
        data: &[u8],
        start: u64,
        base_prefix: Vec<u8>,
    ) -> Result<(Vec<Extent>, Vec<u8>)> {
        let first = u64::from(self.image.chunk_size);
        let room = MAX_PATCH_WINDOW.saturating_sub(base_prefix.len() as u64);
        let from = start.saturating_sub(room).max(first);
        if from >= start {
            return Ok((Vec::new(), base_prefix));
        }
        let with = |target: &[Extent]| -> Vec<u8> {
            let mut prefix = Vec::with_capacity(extents_len(target) as usize + base_prefix.len());
            append(&mut prefix, self.new, target);
            prefix.extend_from_slice(&base_prefix);
            prefix
        };
        let pays = |target: &[Extent], without: usize| -> Result<bool> {
            Ok(
                compress(data, Some(&with(target)), PROBE_LEVEL)?.len() + TARGET_MIN_GAIN
                    <= without,
            )
        };
        let without = compress(data, Some(&base_prefix), PROBE_LEVEL)?.len();
        let all = Extent {
            offset: from,
            len: start - from,
        };
        if !pays(&[all], without)? {
            return Ok((Vec::new(), base_prefix));
        }
        let mut kept: Vec<Extent> = Vec::new();
        for offset in (from..start).step_by(TARGET_PIECE as usize) {
            let piece = Extent {
                offset,
                len: TARGET_PIECE.min(start - offset),
            };
            if !pays(&[piece], without)? {
                continue;
            }
            match kept.last_mut() {
                Some(last) if last.offset + last.len == offset => last.len += piece.len,
                _ => kept.push(piece),
            }
        }
        if kept.is_empty() {
            return Ok((Vec::new(), base_prefix));
        }
        let prefix = with(&kept);
        Ok((kept, prefix))
    }

    /// The base extents that hold `start .. end` of the new image, in order, as far as the
    /// matches cover it (coalesced; not necessarily all of it).
    fn found(&self, start: u64, end: u64) -> Vec<Extent> {
        let first = self.segs.partition_point(|s| s.new_end() <= start);
        let mut out: Vec<Extent> = Vec::new();
        for s in &self.segs[first..] {
            if s.new >= end {
                break;
            }
            let (a, b) = (s.new.max(start), s.new_end().min(end));
            let e = Extent {
                offset: s.old + (a - s.new),
                len: b - a,
            };
            match out.last_mut() {
                Some(last) if last.offset + last.len == e.offset => last.len += e.len,
                _ => out.push(e),
            }
        }
        out
    }

    /// The parts of `start .. end` that no match covers.
    fn missing(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let first = self.segs.partition_point(|s| s.new_end() <= start);
        let mut out = Vec::new();
        let mut at = start;
        for s in &self.segs[first..] {
            if s.new >= end {
                break;
            }
            if s.new > at {
                out.push((at, s.new));
            }
            at = at.max(s.new_end());
        }
        if at < end {
            out.push((at, end));
        }
        out
    }

    /// The base bytes a patch of `start .. end` refers to, at most [`MAX_PATCH_WINDOW`] and
    /// [`MAX_OP_EXTENTS`] extents, sorted by offset.
    fn window(&self, start: u64, end: u64, found: &[Extent]) -> Vec<Extent> {
        // In order of worth: what was found (each costs the patch a few bytes), the old
        // versions of the files the rest belongs to, then the base near where the
        // neighbouring data came from.
        let mut wanted: Vec<(u64, u64)> =
            found.iter().map(|e| (e.offset, e.offset + e.len)).collect();
        let missing = self.missing(start, end);
        let mut unpaired = Vec::new();
        if let Some(pairs) = self.pairs {
            for &(a, b) in &missing {
                let mut files: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
                let mut block = a / BLOCK as u64;
                while block * (BLOCK as u64) < b {
                    match pairs.by_block.get(&block) {
                        Some(&(file, at)) => {
                            let r = files.entry(file).or_insert((at, at));
                            r.0 = r.0.min(at);
                            r.1 = r.1.max(at + BLOCK as u64);
                        }
                        None => unpaired.push(block),
                    }
                    block += 1;
                }
                for (file, (lo, hi)) in files {
                    pairs.old_ranges(file, lo.saturating_sub(MARGIN), hi + MARGIN, &mut wanted);
                }
            }
        }
        if self.pairs.is_none() || !unpaired.is_empty() {
            for &(a, b) in &missing {
                for shift in self.neighbour_shifts(a, b) {
                    let lo = (a as i64 - shift - MARGIN as i64).max(0) as u64;
                    let hi = (b as i64 - shift + MARGIN as i64).max(0) as u64;
                    let hi = hi.min(self.old.len() as u64);
                    if lo < hi {
                        wanted.push((lo, hi));
                    }
                }
            }
        }
        fit(wanted, self.old.len() as u64)
    }

    /// The shifts of the nearest matches before and after `a .. b` in the new image.
    fn neighbour_shifts(&self, a: u64, b: u64) -> Vec<i64> {
        let i = self.segs.partition_point(|s| s.new_end() <= a);
        let mut out = Vec::new();
        if i > 0 {
            out.push(self.segs[i - 1].shift());
        }
        if let Some(s) = self.segs[i..].iter().find(|s| s.new >= b) {
            out.push(s.shift());
        }
        out.dedup();
        out
    }
}

/// The wanted ranges in order of worth, cut to the window budget, then sorted and merged
/// (small gaps closed) into at most [`MAX_OP_EXTENTS`] extents.
fn fit(wanted: Vec<(u64, u64)>, base_len: u64) -> Vec<Extent> {
    let mut taken: Vec<(u64, u64)> = Vec::new();
    let mut budget = MAX_PATCH_WINDOW;
    for (lo, hi) in wanted {
        let hi = hi.min(base_len);
        if lo >= hi || budget == 0 {
            continue;
        }
        // Only the parts not already taken count against the budget.
        let mut parts = vec![(lo, hi)];
        for &(s, t) in &taken {
            parts = parts
                .into_iter()
                .flat_map(|(a, b)| {
                    if t <= a || s >= b {
                        vec![(a, b)]
                    } else {
                        [(a, s.max(a)), (t.min(b), b)]
                            .into_iter()
                            .filter(|(x, y)| x < y)
                            .collect()
                    }
                })
                .collect();
        }
        for (a, b) in parts {
            let n = (b - a).min(budget);
            if n > 0 {
                taken.push((a, a + n));
                budget -= n;
            }
        }
    }
    taken.sort_unstable();
    let mut merged: Vec<Extent> = Vec::new();
    for (a, b) in taken {
        match merged.last_mut() {
            Some(last) if last.offset + last.len >= a => {
                last.len = last.len.max(b - last.offset);
            }
            _ => merged.push(Extent {
                offset: a,
                len: b - a,
            }),
        }
    }
    // Merging can only shrink the window; too many extents: keep the largest.
    if merged.len() > MAX_OP_EXTENTS {
        merged.sort_by_key(|e| std::cmp::Reverse(e.len));
        merged.truncate(MAX_OP_EXTENTS);
        merged.sort_by_key(|e| e.offset);
    }
    merged
}

/// Appends the bytes of `image` at `extents` to `out`, in order.
fn append(out: &mut Vec<u8>, image: &[u8], extents: &[Extent]) {
    for e in extents {
        out.extend_from_slice(&image[e.offset as usize..(e.offset + e.len) as usize]);
    }
}

fn op_chunk(op: Op) -> Chunk {
    Chunk {
        op,
        stored: 0,
        sha256: [0; 32],
    }
}

/// One zstd frame of `data`, with `prefix` as its reference when given. The parameters are
/// spelled out because the format and the device rely on them: content size on, no checksum
/// (the manifest's hashes cover it), no worker threads (output independent of them), and a
/// window that reaches back over the whole prefix, never beyond what a device accepts.
fn compress(data: &[u8], prefix: Option<&[u8]>, level: i32) -> Result<Vec<u8>> {
    let zstd_err = |code| Error::Zstd {
        message: zstd_safe::get_error_name(code).to_string(),
    };
    let mut ctx = CCtx::try_create().ok_or_else(|| Error::Zstd {
        message: "cannot allocate a compression context".into(),
    })?;
    let mut params = vec![
        CParameter::CompressionLevel(level),
        CParameter::ContentSizeFlag(true),
        CParameter::ChecksumFlag(false),
        CParameter::NbWorkers(0),
    ];
    if let Some(p) = prefix {
        let reach = (p.len() + data.len()).next_power_of_two().trailing_zeros();
        params.push(CParameter::WindowLog(reach.clamp(17, PATCH_WINDOW_LOG_MAX)));
        params.push(CParameter::EnableLongDistanceMatching(true));
    }
    for p in params {
        ctx.set_parameter(p).map_err(zstd_err)?;
    }
    if let Some(p) = prefix {
        ctx.ref_prefix(p).map_err(zstd_err)?;
    }
    let mut out = Vec::with_capacity(zstd_safe::compress_bound(data.len()));
    ctx.compress2(&mut out, data).map_err(zstd_err)?;
    Ok(out)
}

/// Applies the delta to the base, as a device would, and compares every chunk with the new
/// image: a builder bug must fail the build, not a device.
fn self_check(image: &Image, old: &[u8], new: &[u8], stored: &[Vec<u8>]) -> Result<()> {
    let mut decoder = Decoder::new()?;
    let (mut window, mut out) = (Vec::new(), Vec::new());
    for (k, bytes) in stored.iter().enumerate() {
        decoder.make(
            image,
            k,
            bytes,
            Some(&old),
            Some(&new),
            &mut window,
            &mut out,
        )?;
        let r = image.chunk_range(k);
        if out[..] != new[r.start as usize..r.end as usize] {
            return Err(Error::Zstd {
                message: format!("delta chunk {k} does not rebuild the new image"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
