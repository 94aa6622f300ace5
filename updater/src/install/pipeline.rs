//! Moving the payload onto the disk and checking it there.
//!
//! Chunks are independent zstd frames, so decoding runs on every core while one thread reads
//! the bundle (from a file or the network) and the caller's thread puts the chunks in order
//! into large aligned buffers that a write thread sends to the disk. Runs of zeros are not
//! sent: the device zeros them itself. Written data is synced at checkpoints; after each one
//! a read-back thread reads that region from the disk (O_DIRECT, so the disk, not the page
//! cache) and hands it to the hashing thread, which feeds the image's SHA-256: the read-back
//! of the whole slot overlaps the writing instead of following it. That hash, one sequential
//! pass over the image, is the install's critical path, so the decoders run at a lower
//! priority than it. Memory stays bounded by the channel depths and a fixed set of buffers,
//! whatever the image size.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use sha2::{Digest, Sha256};

use super::progress::{Phase as ProgressPhase, Progress};
use super::sources::Sources;
use super::{CHECKPOINT_BYTES, FIRST_BLOCK};
use crate::bundle::{self, Manifest};
use crate::disk::device::{aligned_buffer, Device};
use crate::source::BundleReader;
use crate::state::StateDir;

/// A slot that does not read back as the bundle says: the next run starts over.
#[derive(Debug, thiserror::Error)]
#[error(
    "slot verification failed: {path} reads back with SHA-256 {found}, the bundle says \
     {expected}; the slot stays out of rotation, run the install again"
)]
pub struct Mismatch {
    pub path: String,
    pub found: String,
    pub expected: String,
}

/// Chunks in flight per stage: enough to keep every decoder busy, few enough that peak
/// memory stays a small multiple of the chunk size.
const DEPTH: usize = 2;

/// Writes and read-backs go to the disk in pieces this large: big enough for full speed,
/// small enough for the memory budget.
const STAGE: usize = 2 * 1024 * 1024;

/// A fixed set of chunk buffers, so memory is bounded by design rather than by how the
/// allocator treats megabytes freed on other threads. `take` waits for a free buffer; it
/// returns `None` once `stop` is set, so no stage waits forever after another failed.
struct Pool<'a> {
    free: Mutex<Receiver<Vec<u8>>>,
    back: SyncSender<Vec<u8>>,
    stop: &'a AtomicBool,
}

impl<'a> Pool<'a> {
    fn new(buffers: usize, stop: &'a AtomicBool) -> Pool<'a> {
        let (back, free) = sync_channel(buffers);
        for _ in 0..buffers {
            let _ = back.try_send(Vec::new());
        }
        Pool {
            free: Mutex::new(free),
            back,
            stop,
        }
    }

    fn take(&self) -> Option<Vec<u8>> {
        let free = self.free.lock().ok()?;
        loop {
            match free.recv_timeout(Duration::from_millis(50)) {
                Ok(buf) => return Some(buf),
                Err(RecvTimeoutError::Timeout) if !self.stop.load(Ordering::Relaxed) => {}
                Err(_) => return None,
            }
        }
    }

    fn give(&self, mut buf: Vec<u8>) {
        buf.clear();
        let _ = self.back.try_send(buf);
    }
}

/// Stored chunks: one being read, the channel's, one per decoder.
fn stored_buffers() -> usize {
    DEPTH + decoders()
}

/// Decoded chunks: one per decoder, the channel's, and one being written.
fn decoded_buffers() -> usize {
    DEPTH + decoders() + 1
}

/// How much lower decoder threads run than the rest of the install (see [`decode_loop`]).
const DECODER_NICE: i32 = 5;

fn decoders() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

/// Writes every chunk from `start` on, in order, and checks every image against its SHA-256
/// by reading it back from the disk. Each chunk's stored bytes are checked against the
/// manifest before they are decoded, and the decoded length against the chunk's; the first
/// [`FIRST_BLOCK`] bytes of each image go to the state directory instead of the disk.
/// `reader` stands at chunk `read_from` (`start`, or an earlier chunk when the download had
/// to start over): the chunks before `start` are only read and checked, never written, since
/// earlier runs wrote them and the read-back checks what they left.
/// `checkpoint(image, next_chunk)` is called once the data before that point is synced.
///
/// Returns each image's first block exactly as it was hashed: read from the state directory
/// once, with its length checked, so the bytes the caller writes at offset 0 are the bytes
/// the image's SHA-256 vouched for, whatever happens to the file afterwards.
#[allow(clippy::too_many_arguments)]
pub fn write_payload(
    bundle: &bundle::Verified,
    sources: &Sources,
    devices: &[Device],
    mut reader: BundleReader,
    (read_from, start): ((usize, usize), (usize, usize)),
    state: &StateDir,
    mut checkpoint: impl FnMut(usize, usize) -> Result<()>,
    progress: &mut Progress,
) -> Result<Vec<Vec<u8>>> {
    let (manifest, payload_offset) = (&bundle.manifest, bundle.payload_offset);
    let refs: Vec<bundle::ChunkRef> = manifest
        .chunks()
        .filter(|c| (c.image, c.index) >= start)
        .collect();
    let work: Vec<(usize, usize)> = refs.iter().map(|c| (c.image, c.index)).collect();
    let written_before: Vec<bundle::ChunkRef> = manifest
        .chunks()
        .filter(|c| (c.image, c.index) >= read_from && (c.image, c.index) < start)
        .collect();
    // What earlier runs wrote is read back like the rest: never trust bytes unverified.
    let on_disk = |i: usize| -> u64 {
        if i < start.0 {
            manifest.images[i].size
        } else if i == start.0 {
            manifest.images[i].chunk_range(start.1).start
        } else {
            0
        }
    };
    let mut done: u64 = (0..manifest.images.len()).map(on_disk).sum();
    sources
        .written
        .reset((0..manifest.images.len()).map(on_disk).collect());
    progress.written(done);
    progress.read_back(0);
    progress.phase(ProgressPhase::Write);
    // How far the reader thread has read the bundle, for the progress reports.
    let downloaded = AtomicU64::new(reader.position());

    let (stored_tx, stored_rx) = sync_channel::<(usize, Result<Vec<u8>>)>(DEPTH);
    let (decoded_tx, decoded_rx) = sync_channel::<(usize, Result<Vec<u8>>)>(DEPTH);
    let (verify_tx, verify_rx) = sync_channel::<(usize, u64)>(manifest.images.len() + 64);
    // When a stage stops (an error), the channel ends it held go with it, so the stages
    // blocked on them wake up with an error instead of waiting forever: the decoders share the
    // only handle on the stored chunks, the writer owns the only one on decoded chunks.
    let stored_rx = Arc::new(Mutex::new(stored_rx));
    let verified = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let (stored_pool, decoded_pool) = (
        Pool::new(stored_buffers(), &stop),
        Pool::new(decoded_buffers(), &stop),
    );

    std::thread::scope(|scope| -> Result<Vec<Vec<u8>>> {
        let decoded_rx = decoded_rx;
        let (work, refs) = (&work, &refs);
        let (verified, downloaded) = (&verified, &downloaded);
        let (stored_pool, decoded_pool) = (&stored_pool, &decoded_pool);
        let written_before = &written_before;
        scope.spawn(move || {
            let mut buf = Vec::new();
            for chunk in written_before {
                let checked = bundle::read_stored(&mut reader, chunk, payload_offset, &mut buf)
                    .and_then(|()| {
                        let image = &manifest.images[chunk.image];
                        match image.chunks[chunk.index].op.stores() {
                            true => bundle::check_stored(image, chunk.index, &buf),
                            false => Ok(()),
                        }
                    })
                    .with_context(|| {
                        format!(
                            "reading chunk {} of the {} image again",
                            chunk.index, manifest.images[chunk.image].slot_class
                        )
                    });
                if let Err(e) = checked {
                    let _ = stored_tx.send((0, Err(e)));
                    return;
                }
            }
            drop(buf);
            for (seq, chunk) in refs.iter().enumerate() {
                let Some(mut buf) = stored_pool.take() else {
                    return;
                };
                buf.reserve_exact(chunk.stored as usize);
                let r = bundle::read_stored(&mut reader, chunk, payload_offset, &mut buf)
                    .with_context(|| {
                        format!(
                            "reading chunk {} of the {} image",
                            chunk.index, manifest.images[chunk.image].slot_class
                        )
                    })
                    .map(|()| buf);
                // Nothing may follow the payload: such a bundle was not made by abup bundle
                // create, and its surplus is reported in place of the last chunk.
                let r = r.and_then(|buf| {
                    if seq + 1 == work.len() {
                        let offset = reader.position();
                        if reader.read(&mut [0u8; 1])? > 0 {
                            return Err(bundle::Error::TrailingData { offset }.into());
                        }
                    }
                    Ok(buf)
                });
                downloaded.store(reader.position(), Ordering::Relaxed);
                let failed = r.is_err();
                if stored_tx.send((seq, r)).is_err() || failed {
                    return;
                }
            }
        });
        for _ in 0..decoders() {
            let (rx, tx) = (stored_rx.clone(), decoded_tx.clone());
            scope.spawn(move || {
                decode_loop(manifest, sources, work, &rx, tx, stored_pool, decoded_pool)
            });
        }
        drop(decoded_tx);
        drop(stored_rx);
        // Dropped when the read-back ends, which wakes the progress loop below at once.
        let (finished_tx, finished) = sync_channel::<()>(0);
        let verifier = scope.spawn(move || {
            let _finished = finished_tx;
            verify_loop(manifest, devices, state, verify_rx, verified)
        });
        for i in 0..manifest.images.len() {
            if on_disk(i) > 0 {
                let _ = verify_tx.send((i, on_disk(i)));
            }
        }

        let written = write_in_order(
            manifest,
            devices,
            work,
            sources,
            state,
            &decoded_rx,
            decoded_pool,
            &verify_tx,
            &mut checkpoint,
            &mut |n| {
                done += n;
                progress.written(done);
                progress.read_back(verified.load(Ordering::Relaxed));
                progress.downloaded(downloaded.load(Ordering::Relaxed));
                progress.tick();
            },
        );
        drop(verify_tx);
        // Whatever happened, no stage may wait for a buffer or the target any more.
        stop.store(true, Ordering::Relaxed);
        sources.written.stop();
        if written.is_ok() {
            progress.downloaded(downloaded.load(Ordering::Relaxed));
            progress.read_back(verified.load(Ordering::Relaxed));
            progress.phase(ProgressPhase::ReadBack);
            while let Err(RecvTimeoutError::Timeout) =
                finished.recv_timeout(Duration::from_millis(100))
            {
                progress.read_back(verified.load(Ordering::Relaxed));
                progress.tick();
            }
            progress.read_back(verified.load(Ordering::Relaxed));
            progress.tick();
        }
        let checked = verifier
            .join()
            .map_err(|_| anyhow!("the read-back thread failed"))?;
        written.and(checked)
    })
}

/// The caller's thread: chunks in order (the reader and decoders run ahead by at most a few),
/// staged into large aligned writes that a thread of their own sends to the disk, synced at
/// checkpoints, which are then journalled and handed to the verifier.
#[allow(clippy::too_many_arguments)]
fn write_in_order(
    manifest: &Manifest,
    devices: &[Device],
    work: &[(usize, usize)],
    sources: &Sources,
    state: &StateDir,
    decoded_rx: &Receiver<(usize, Result<Vec<u8>>)>,
    pool: &Pool<'_>,
    verify_tx: &SyncSender<(usize, u64)>,
    checkpoint: &mut impl FnMut(usize, usize) -> Result<()>,
    advance: &mut impl FnMut(u64),
) -> Result<()> {
    let (ops_tx, ops_rx) = sync_channel::<Op>(1);
    let (free_tx, free_rx) = sync_channel::<memmap2::MmapMut>(STAGE_BUFFERS);
    for _ in 0..STAGE_BUFFERS {
        let _ = free_tx.try_send(aligned_buffer(STAGE)?);
    }
    std::thread::scope(|scope| {
        scope.spawn(move || write_ops(devices, sources, ops_rx, free_tx));
        let mut stage = Stage {
            ops: ops_tx,
            free: free_rx,
            buf: None,
            image: 0,
            start: 0,
            len: 0,
            zeros: 0,
        };
        let mut pending: BTreeMap<usize, Result<Vec<u8>>> = BTreeMap::new();
        let mut since_sync: u64 = 0;
        let written = (|| -> Result<()> {
            for (seq, &(i, k)) in work.iter().enumerate() {
                // A patch that reads back its image's bytes still staged here would wait for them
                // forever: they go to the disk (the write thread tells the decoders how far the
                // disk holds the image) before the writer waits for that chunk. Decided by the
                // manifest alone, so a run's writes are the same every time.
                let reads_to = manifest.images[i].chunks[k]
                    .op
                    .target_extents()
                    .iter()
                    .map(|e| e.offset + e.len)
                    .max();
                if reads_to.is_some_and(|end| end > stage.sent(i)) {
                    stage.send()?;
                }
                let data = loop {
                    if let Some(d) = pending.remove(&seq) {
                        break d?;
                    }
                    let (s, d) = decoded_rx.recv().map_err(|_| {
                        anyhow!("the bundle reader stopped before chunk {k} of image {i}")
                    })?;
                    pending.insert(s, d);
                };
                let image = &manifest.images[i];
                let range = image.chunk_range(k);
                if range.start < FIRST_BLOCK {
                    // Held back: durable in the state directory before the journal can claim it.
                    // The write thread is idle here (an image's first chunk follows a checkpoint),
                    // so the order of durable writes is the same in every run.
                    let held = (FIRST_BLOCK - range.start).min(data.len() as u64) as usize;
                    state.hold_block(i, &data[..held])?;
                    stage.push(i, range.start + held as u64, &data[held..])?;
                } else if image.chunks[k].op == bundle::Op::Zero || is_zero(&data) {
                    // A full image's free space arrives as data chunks of zeros: the device zeros
                    // them itself, as it does a delta's zero chunks, and the read-back checks them
                    // all the same.
                    stage.push_zeros(i, range.start, data.len() as u64)?;
                } else {
                    stage.push(i, range.start, &data)?;
                }
                since_sync += data.len() as u64;
                advance(data.len() as u64);
                pool.give(data);
                let image_done = k + 1 == image.chunks.len();
                if since_sync >= CHECKPOINT_BYTES.min(image.size / 8) || image_done {
                    stage.send()?;
                    stage.wait()?;
                    devices[i].sync()?;
                    since_sync = 0;
                    if image_done {
                        checkpoint(i + 1, 0)?;
                    } else {
                        checkpoint(i, k + 1)?;
                    }
                    // The verifier stops early on a mismatch; its error is the one that matters.
                    let _ = verify_tx.send((i, range.end));
                }
            }
            Ok(())
        })();
        // A failed write also stops what waited for it (a patch reading the image back):
        // the write's error is the one that says what happened.
        written.or_else(|e| stage.wait().and(Err(e)))
    })
}

/// Whether `data` holds only zeros. Data that does not is usually told by its first bytes;
/// a block at a time, the OR of its bytes compiles to vector instructions.
fn is_zero(data: &[u8]) -> bool {
    data.chunks(4096)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Stage buffers: one being filled while the write thread writes the other, so the disk is
/// seldom kept waiting by the copying, nor the copying by the disk. A third was no faster.
const STAGE_BUFFERS: usize = 2;

/// What the write thread does, in order.
enum Op {
    /// `len` bytes of `buf` at `at` of image `image`'s device.
    Write {
        image: usize,
        at: u64,
        buf: memmap2::MmapMut,
        len: usize,
    },
    /// A run of zeros: zeroed by the device where it can, else written.
    Zero { image: usize, at: u64, len: u64 },
    /// Everything before is done: the result (the first error, if any) goes back.
    Done(SyncSender<Result<()>>),
}

/// The write thread: performs the ops in order and tells the decoders how far each image is
/// on its device. After an error it only hands buffers back, and reports the error at the
/// next [`Op::Done`].
fn write_ops(
    devices: &[Device],
    sources: &Sources,
    ops: Receiver<Op>,
    free: SyncSender<memmap2::MmapMut>,
) {
    let mut failed: Option<anyhow::Error> = None;
    for op in ops {
        let (image, end, result) = match op {
            Op::Write {
                image,
                at,
                buf,
                len,
            } => {
                let r = match failed {
                    None => devices[image].write_aligned(at, &buf[..len]),
                    Some(_) => Ok(()),
                };
                let _ = free.try_send(buf);
                (image, at + len as u64, r)
            }
            Op::Zero { image, at, len } => {
                let r = match failed {
                    None => devices[image].zero_out(at, len),
                    Some(_) => Ok(()),
                };
                (image, at + len, r)
            }
            Op::Done(reply) => {
                let _ = reply.send(failed.take().map_or(Ok(()), Err));
                continue;
            }
        };
        match result {
            Ok(()) if failed.is_none() => {
                if sources.targets.get(image).is_some_and(Option::is_some) {
                    sources.written.advance(image, end);
                }
            }
            Ok(()) => {}
            Err(e) => {
                // Nothing waits for bytes that will not come.
                sources.written.stop();
                failed = Some(e);
            }
        }
    }
}

/// Contiguous chunk data gathered into one aligned buffer, sent to the write thread in
/// [`STAGE`] pieces; or a run of zero chunks, which the device zeros itself without being sent
/// them (on a root filesystem image, often more than a third of the slot).
struct Stage {
    ops: SyncSender<Op>,
    free: Receiver<memmap2::MmapMut>,
    buf: Option<memmap2::MmapMut>,
    image: usize,
    start: u64,
    len: usize,
    zeros: u64,
}

impl Stage {
    fn push(&mut self, image: usize, mut at: u64, mut data: &[u8]) -> Result<()> {
        if self.zeros > 0 || image != self.image {
            self.send()?;
        }
        self.image = image;
        while !data.is_empty() {
            if self.len > 0 && at != self.start + self.len as u64 {
                self.send()?;
            }
            if self.len == 0 {
                self.start = at;
            }
            let buf = match &mut self.buf {
                Some(b) => b,
                None => {
                    let b = self
                        .free
                        .recv()
                        .map_err(|_| anyhow!("the write thread stopped"))?;
                    self.buf.insert(b)
                }
            };
            let n = data.len().min(STAGE - self.len);
            buf[self.len..self.len + n].copy_from_slice(&data[..n]);
            self.len += n;
            at += n as u64;
            data = &data[n..];
            if self.len == STAGE {
                self.send()?;
            }
        }
        Ok(())
    }

    fn push_zeros(&mut self, image: usize, at: u64, len: u64) -> Result<()> {
        if self.len > 0 || image != self.image || (self.zeros > 0 && at != self.start + self.zeros)
        {
            self.send()?;
        }
        self.image = image;
        if self.zeros == 0 {
            self.start = at;
        }
        self.zeros += len;
        Ok(())
    }

    /// Hands what is staged to the write thread.
    fn send(&mut self) -> Result<()> {
        let op = if self.len > 0 {
            let buf = self.buf.take().ok_or_else(|| anyhow!("no stage buffer"))?;
            let op = Op::Write {
                image: self.image,
                at: self.start,
                buf,
                len: self.len,
            };
            self.start += self.len as u64;
            self.len = 0;
            op
        } else if self.zeros > 0 {
            let op = Op::Zero {
                image: self.image,
                at: self.start,
                len: self.zeros,
            };
            self.start += self.zeros;
            self.zeros = 0;
            op
        } else {
            return Ok(());
        };
        self.ops
            .send(op)
            .map_err(|_| anyhow!("the write thread stopped"))
    }

    /// Waits until the write thread has done everything it was sent; its first error.
    fn wait(&mut self) -> Result<()> {
        let (tx, rx) = sync_channel(1);
        self.ops
            .send(Op::Done(tx))
            .map_err(|_| anyhow!("the write thread stopped"))?;
        rx.recv().map_err(|_| anyhow!("the write thread stopped"))?
    }

    /// How far image `image` has been sent to the write thread: what is still staged is not.
    fn sent(&self, image: usize) -> u64 {
        if image == self.image {
            self.start
        } else {
            0
        }
    }
}

type Jobs<'a> = &'a Mutex<Receiver<(usize, Result<Vec<u8>>)>>;

/// Takes stored chunks (or the reader's error, in its place in the order) and passes them on
/// made (decoded, or rebuilt from the base for a delta), until the reader is done or
/// something failed. A delta's patch window is this thread's own buffer, at most
/// [`bundle::MAX_PATCH_WINDOW`].
fn decode_loop(
    manifest: &Manifest,
    sources: &Sources,
    work: &[(usize, usize)],
    rx: Jobs<'_>,
    tx: SyncSender<(usize, Result<Vec<u8>>)>,
    stored_pool: &Pool<'_>,
    decoded_pool: &Pool<'_>,
) {
    let mut decoder = match bundle::Decoder::new() {
        Ok(d) => d,
        Err(e) => {
            let _ = tx.send((0, Err(e.into())));
            return;
        }
    };
    let mut window = Vec::new();
    // The install's pace is set by the read-back's SHA-256, one sequential hash of the whole
    // image at about 2 GB/s that only one core can compute; decoding has slack, so it yields
    // (on Linux the nice value is the thread's). Measured in bench/install: a 1 GiB install
    // took 10% less.
    if let Err(e) = rustix::process::nice(DECODER_NICE) {
        log::debug!("decoder thread keeps its priority: {e}");
    }
    loop {
        // The output buffer is taken while the job queue is held, so buffers go to chunks in
        // order: the oldest chunk always has one and the writer can always move on.
        let (seq, stored, mut out) = {
            let Ok(jobs) = rx.lock() else { return };
            let Ok((seq, stored)) = jobs.recv() else {
                return;
            };
            let Some(out) = decoded_pool.take() else {
                return;
            };
            (seq, stored, out)
        };
        let (i, k) = work[seq];
        let result = stored.and_then(|stored| {
            let r = sources
                .make(
                    &mut decoder,
                    manifest,
                    (i, k),
                    &stored,
                    &mut window,
                    &mut out,
                )
                .map(|()| out);
            stored_pool.give(stored);
            r
        });
        let failed = result.is_err();
        if tx.send((seq, result)).is_err() || failed {
            return;
        }
    }
}

/// Read-back buffers: one being read while the other is hashed, so the disk and the hash each
/// run at their own speed (on a 1 GiB image each takes about half a second here, and in turn
/// they took the sum). A third was no faster and cost the memory budget 2 MiB.
const READ_BUFFERS: usize = 2;

/// Reads each image back from the disk as far as the writer has synced it, in order, into
/// the image's SHA-256; the held-back first block, read once from the state directory, stands
/// in for the zeros still on the disk. At each image's end the digest must be the manifest's.
/// One thread reads while this one hashes what it read before.
/// Returns the held-back blocks that were hashed.
fn verify_loop(
    manifest: &Manifest,
    devices: &[Device],
    state: &StateDir,
    ranges: Receiver<(usize, u64)>,
    verified: &AtomicU64,
) -> Result<Vec<Vec<u8>>> {
    let (free_tx, free_rx) = sync_channel::<memmap2::MmapMut>(READ_BUFFERS);
    for _ in 0..READ_BUFFERS {
        let _ = free_tx.try_send(aligned_buffer(STAGE)?);
    }
    // Each piece of an image as it was read, in order; an empty piece (no buffer) says the
    // writer has synced the image that far and there was nothing more to read.
    let (read_tx, read_rx) =
        sync_channel::<Result<(usize, Option<(memmap2::MmapMut, usize)>)>>(READ_BUFFERS);
    std::thread::scope(|scope| {
        // Dropped with this closure, even on an error, so a reader waiting for a buffer wakes.
        let free_tx = free_tx;
        scope.spawn(move || {
            let mut upto: Vec<u64> = manifest
                .images
                .iter()
                .map(|image| FIRST_BLOCK.min(image.size))
                .collect();
            for (i, end) in ranges {
                if upto[i] >= end {
                    if read_tx.send(Ok((i, None))).is_err() {
                        return;
                    }
                    continue;
                }
                while upto[i] < end {
                    let Ok(mut buf) = free_rx.recv() else { return };
                    let n = ((end - upto[i]) as usize).min(STAGE);
                    let piece = devices[i]
                        .read_aligned(upto[i], &mut buf[..n])
                        .map(|()| (i, Some((buf, n))));
                    let failed = piece.is_err();
                    if read_tx.send(piece).is_err() || failed {
                        return;
                    }
                    upto[i] += n as u64;
                }
            }
        });
        let mut hashers: Vec<(Sha256, u64)> =
            manifest.images.iter().map(|_| (Sha256::new(), 0)).collect();
        let mut held: Vec<Vec<u8>> = vec![Vec::new(); manifest.images.len()];
        for piece in read_rx {
            let (i, read) = piece?;
            let image = &manifest.images[i];
            let (hasher, upto) = &mut hashers[i];
            let before = *upto;
            if *upto == 0 {
                held[i] = state.held_block(i, FIRST_BLOCK.min(image.size) as usize)?;
                hasher.update(&held[i]);
                *upto = held[i].len() as u64;
                verified.fetch_add(*upto, Ordering::Relaxed);
            }
            if let Some((buf, n)) = read {
                hasher.update(&buf[..n]);
                *upto += n as u64;
                verified.fetch_add(n as u64, Ordering::Relaxed);
                let _ = free_tx.try_send(buf);
            }
            if *upto == image.size && before < image.size {
                check_digest(image, &devices[i], std::mem::take(hasher))?;
            }
        }
        if let Some(i) =
            (0..manifest.images.len()).find(|&i| hashers[i].1 < manifest.images[i].size)
        {
            return Err(anyhow!(
                "the {} image was not read back completely",
                manifest.images[i].slot_class
            ));
        }
        Ok(held)
    })
}

fn check_digest(image: &bundle::Image, device: &Device, hasher: Sha256) -> Result<()> {
    let digest: [u8; 32] = hasher.finalize().into();
    if digest != image.sha256 {
        return Err(Mismatch {
            path: device.path.display().to_string(),
            found: super::hex(&digest),
            expected: super::hex(&image.sha256),
        }
        .into());
    }
    Ok(())
}

/// Reads every image back from the disk, whole (its first block included), and checks it
/// against the manifest's SHA-256: what a resumed install does before trusting a journal that
/// says the slot was already verified.
pub fn verify_written(
    manifest: &Manifest,
    devices: &[Device],
    progress: &mut Progress,
) -> Result<()> {
    let total: u64 = manifest.images.iter().map(|i| i.size).sum();
    progress.written(total);
    progress.read_back(0);
    progress.phase(ProgressPhase::ReadBack);
    let mut buf = aligned_buffer(STAGE)?;
    let mut done = 0;
    for (image, device) in manifest.images.iter().zip(devices) {
        device.drop_cache();
        let mut hasher = Sha256::new();
        let mut at = 0;
        while at < image.size {
            let n = ((image.size - at) as usize).min(STAGE);
            device.read_aligned(at, &mut buf[..n])?;
            hasher.update(&buf[..n]);
            at += n as u64;
            done += n as u64;
            progress.read_back(done);
            progress.tick();
        }
        check_digest(image, device, hasher)?;
    }
    Ok(())
}
