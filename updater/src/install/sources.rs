//! Chunk sources: where each chunk of the target comes from. The bundle stream carries the
//! stored bytes of `data` and `patch` chunks; a delta's `copy` and `patch` chunks also read
//! the running slot (the base), read-only, every read checked against its hash; `zero`
//! chunks come from nowhere. When a base read does not match and the install was given a
//! fallback (the full bundle of the same release), the chunk is fetched from it instead:
//! only the fallback chunks that cover it, each checked against the fallback's own signed
//! manifest. A patch may also refer to its image's own earlier bytes: those are read back
//! from the target slot once the writer has put them there.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::bundle::{self, Decoder, Extent, Image, Manifest, ReadAt};
use crate::disk::device::SlotReader;
use crate::source::BundleReader;

/// The full bundle an install falls back to for chunks it cannot rebuild from the base.
pub struct Fallback {
    /// The fallback's reader and a decoder for its chunks: fetches run one at a time.
    reader: Mutex<(BundleReader, Decoder)>,
    verified: bundle::Verified,
    /// For each image of the install, the fallback's image with the same content.
    images: Vec<Option<usize>>,
    /// Bytes fetched so far, and the most that may be.
    fetched: AtomicU64,
    max: Option<u64>,
    describe: String,
}

impl std::fmt::Debug for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fallback")
            .field("source", &self.describe)
            .finish_non_exhaustive()
    }
}

/// Past `--max-download`: the install stops rather than download more than it was allowed.
#[derive(Debug, thiserror::Error)]
#[error(
    "the fallback {fallback} would need {needed} bytes, more than the {max} that --max-download \
     allows; nothing was activated: raise --max-download, or install the full bundle"
)]
pub struct OverBudget {
    pub fallback: String,
    pub needed: u64,
    pub max: u64,
}

impl Fallback {
    /// A verified full bundle; `manifest` is the install's. Each delta image must have its
    /// twin in the fallback: same slot class, same size and SHA-256 (the same release).
    pub fn new(
        reader: BundleReader,
        verified: bundle::Verified,
        manifest: &Manifest,
        max: Option<u64>,
        describe: String,
    ) -> Result<Fallback> {
        bundle::check_installable(&verified.manifest)?;
        let mut images = Vec::new();
        for image in &manifest.images {
            if image.kind.base().is_none() {
                images.push(None);
                continue;
            }
            let twin = verified.manifest.images.iter().position(|f| {
                f.slot_class == image.slot_class
                    && f.size == image.size
                    && f.sha256 == image.sha256
                    && f.kind.base().is_none()
            });
            match twin {
                Some(j) => images.push(Some(j)),
                None => anyhow::bail!(
                    "the fallback {describe} has no full {} image with SHA-256 {}: it is not the \
                     full bundle of this release ({})",
                    image.slot_class,
                    super::hex(&image.sha256),
                    manifest.version
                ),
            }
        }
        Ok(Fallback {
            reader: Mutex::new((reader, Decoder::new()?)),
            verified,
            images,
            fetched: AtomicU64::new(0),
            max,
            describe,
        })
    }

    /// The fallback chunks that cover `range` of image `i`, and their stored bytes.
    fn covering(&self, i: usize, range: &Range<u64>) -> Option<(usize, Range<usize>, u64)> {
        let j = self.images.get(i).copied().flatten()?;
        let img = &self.verified.manifest.images[j];
        let cs = u64::from(img.chunk_size);
        let chunks = (range.start / cs) as usize..range.end.div_ceil(cs) as usize;
        let stored = img.chunks[chunks.clone()]
            .iter()
            .map(|c| u64::from(c.stored))
            .sum();
        Some((j, chunks, stored))
    }

    /// Bytes it would fetch to make `range` of image `i`.
    pub fn cost(&self, i: usize, range: &Range<u64>) -> u64 {
        self.covering(i, range).map_or(0, |(_, _, n)| n)
    }

    /// Fails with [`OverBudget`] if `bytes` more would pass `--max-download`.
    pub fn check_budget(&self, bytes: u64) -> Result<()> {
        let needed = self.fetched.load(Ordering::Relaxed) + bytes;
        match self.max {
            Some(max) if needed > max => Err(OverBudget {
                fallback: self.describe.clone(),
                needed,
                max,
            }
            .into()),
            _ => Ok(()),
        }
    }

    /// Bytes fetched so far.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// Makes `range` of image `i` into `out` from the fallback's chunks, each checked against
    /// the fallback's manifest before it is decoded.
    fn make(&self, i: usize, range: &Range<u64>, out: &mut Vec<u8>) -> Result<()> {
        let (j, chunks, stored) = self
            .covering(i, range)
            .context("the fallback has no such image")?;
        self.check_budget(stored)?;
        let img: &Image = &self.verified.manifest.images[j];
        let mut guard = self
            .reader
            .lock()
            .map_err(|_| anyhow::anyhow!("a fallback fetch failed"))?;
        let (reader, decoder) = &mut *guard;
        let (mut raw, mut data) = (Vec::new(), Vec::new());
        out.clear();
        for c in chunks {
            let at = self.verified.payload_offset + self.verified.manifest.chunk_offset(j, c);
            raw.resize(img.chunks[c].stored as usize, 0);
            reader.read_range(at, &mut raw).with_context(|| {
                format!("fetching chunk {c} from the fallback {}", self.describe)
            })?;
            self.fetched.fetch_add(raw.len() as u64, Ordering::Relaxed);
            decoder.decode(img, c, &raw, &mut data)?;
            let chunk = img.chunk_range(c);
            let from = range.start.max(chunk.start) - chunk.start;
            let to = range.end.min(chunk.end) - chunk.start;
            out.extend_from_slice(&data[from as usize..to as usize]);
        }
        Ok(())
    }
}

/// How far each image's target slot holds what this install wrote. Decoders run ahead of
/// the writer, so a patch that reads its image's earlier bytes waits here for them.
#[derive(Debug, Default)]
pub struct Written {
    ends: Mutex<Vec<u64>>,
    moved: Condvar,
    stopped: AtomicBool,
}

impl Written {
    /// Each image's end of what is on the target already (a resumed install's earlier runs).
    pub fn reset(&self, ends: Vec<u64>) {
        if let Ok(mut e) = self.ends.lock() {
            *e = ends;
        }
        self.stopped.store(false, Ordering::Relaxed);
    }

    /// Image `i` is on its target up to `end` (or further, as known before).
    pub fn advance(&self, i: usize, end: u64) {
        if let Ok(mut e) = self.ends.lock() {
            if let Some(at) = e.get_mut(i) {
                *at = (*at).max(end);
            }
        }
        self.moved.notify_all();
    }

    /// The writer stopped: nobody waits any more.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.moved.notify_all();
    }

    fn wait(&self, i: usize, end: u64) -> std::io::Result<()> {
        let mut ends = self
            .ends
            .lock()
            .map_err(|_| std::io::Error::other("the writer failed"))?;
        loop {
            if ends.get(i).is_some_and(|&at| at >= end) {
                return Ok(());
            }
            if self.stopped.load(Ordering::Relaxed) {
                return Err(std::io::Error::other("the install stopped"));
            }
            ends = self
                .moved
                .wait_timeout(ends, Duration::from_millis(50))
                .map_err(|_| std::io::Error::other("the writer failed"))?
                .0;
        }
    }
}

/// Image `image`'s target slot as far as the writer got: a read waits until its bytes are
/// there, then reads them from the disk.
struct SoFar<'a> {
    device: &'a SlotReader,
    written: &'a Written,
    image: usize,
}

impl ReadAt for SoFar<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.written.wait(self.image, offset + buf.len() as u64)?;
        self.device.read_exact_at(buf, offset)
    }

    fn read_extents(&self, extents: &[Extent], buf: &mut [u8]) -> std::io::Result<()> {
        let end = extents.iter().map(|e| e.offset + e.len).max().unwrap_or(0);
        self.written.wait(self.image, end)?;
        self.device.read_extents(extents, buf)
    }
}

/// Everything the install's decoders make chunks from, besides the bundle stream.
#[derive(Debug, Default)]
pub struct Sources {
    /// Per image: the running slot's device for a delta image, opened read-only.
    pub bases: Vec<Option<SlotReader>>,
    /// Per image: its target slot read back (direct I/O), for a delta whose patches refer to
    /// the image's own earlier bytes.
    pub targets: Vec<Option<SlotReader>>,
    pub written: Written,
    pub fallback: Option<Fallback>,
}

impl Sources {
    /// Chunk `k` of image `i` into `out`, from `stored` (its bytes in the bundle stream) and
    /// the base, or from the fallback if the base does not match there.
    pub fn make(
        &self,
        decoder: &mut Decoder,
        manifest: &Manifest,
        (i, k): (usize, usize),
        stored: &[u8],
        window: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let image = &manifest.images[i];
        let base = self
            .bases
            .get(i)
            .and_then(Option::as_ref)
            .map(|f| f as &dyn ReadAt);
        let target = self
            .targets
            .get(i)
            .and_then(Option::as_ref)
            .map(|device| SoFar {
                device,
                written: &self.written,
                image: i,
            });
        let target = target.as_ref().map(|t| t as &dyn ReadAt);
        match decoder.make(image, k, stored, base, target, window, out) {
            Err(bundle::Error::BaseMismatch { .. }) if self.fallback.is_some() => {
                let fallback = self.fallback.as_ref().context("no fallback")?;
                log::info!(
                    "chunk {k} of the {} image does not match the base; fetching it from the fallback",
                    image.slot_class
                );
                fallback.make(i, &image.chunk_range(k), out)
            }
            r => Ok(r?),
        }
    }
}
