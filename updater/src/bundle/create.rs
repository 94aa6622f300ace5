//! Building a bundle.
//!
//! The manifest, which comes first, carries every chunk's stored length and hash, so the
//! payload must exist before the first byte of the bundle can be written. Each image is read
//! once, chunk by chunk; its chunks are compressed in parallel and written, in order, to a
//! scratch file; then header, manifest and signature go to the output, followed by the
//! payload copied from the scratch file. Memory stays at a few chunks per thread whatever the
//! image sizes, and the images may be pipes.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::sync_channel;
use std::sync::Mutex;
use std::thread;

use sha2::{Digest, Sha256};
use zstd::zstd_safe::{self, CCtx, CParameter};

use super::manifest::{
    check_chunk_size, check_image_count, check_slot_class, check_text, check_unique_slot_classes,
};
use super::{
    Chunk, Compression, Error, Image, ImageKind, Manifest, Result, SecretKey, DEFAULT_CHUNK_SIZE,
    DEFAULT_LEVEL, FORMAT_VERSION, HEADER_LEN, MAGIC, MAX_CHUNKS, MAX_IMAGE_SIZE, MAX_MANIFEST_LEN,
    SIGNATURE_LEN,
};

/// One thread reads the images and computes their hashes; past this many compressing
/// threads it is the bottleneck.
const MAX_THREADS: usize = 32;
/// The image bytes of the chunks in flight are bounded to this many bytes, whatever the thread
/// count (their stored bytes, at most a little more each, come on top).
const MAX_IN_FLIGHT_BYTES: usize = 256 << 20;

/// What goes into the manifest besides the images, and how chunks are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    pub compatible: String,
    pub version: String,
    pub security_version: u64,
    /// Seconds since the Unix epoch; the caller picks it (e.g. from `SOURCE_DATE_EPOCH`) so
    /// that builds can be reproducible.
    pub created: u64,
    pub chunk_size: u32,
    pub compression: Compression,
    /// zstd level, in `zstd::compression_level_range()`.
    pub level: i32,
    /// Compression threads; 0 for one per CPU. The output does not depend on it.
    pub threads: usize,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            compatible: String::new(),
            version: String::new(),
            security_version: 0,
            created: 0,
            chunk_size: DEFAULT_CHUNK_SIZE,
            compression: Compression::Zstd,
            level: DEFAULT_LEVEL,
            threads: 0,
        }
    }
}

/// One image to put in the bundle, read to its end.
pub struct ImageSource<'a> {
    pub slot_class: String,
    /// The image: a file, a block device, a pipe. Read once, sequentially.
    pub reader: &'a mut dyn Read,
    /// For a delta image, the base it is built against (the whole image the device's running
    /// slot holds); the new image is then read into memory too.
    pub base: Option<&'a [u8]>,
}

impl fmt::Debug for ImageSource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageSource")
            .field("slot_class", &self.slot_class)
            .finish_non_exhaustive()
    }
}

/// Builds a bundle of `images`, signed with `key`, and writes it to `out`. The payload is
/// staged in `scratch` from its current position (an unnamed temporary file next to the
/// output is a good choice; it grows to the payload's size). The same images, options and key
/// always give the same bytes, whatever the thread count. Returns the manifest written.
pub fn create<S, W>(
    opts: &CreateOptions,
    images: &mut [ImageSource<'_>],
    key: &SecretKey,
    scratch: &mut S,
    out: &mut W,
) -> Result<Manifest>
where
    S: Read + Write + Seek + ?Sized,
    W: Write + ?Sized,
{
    // Everything that can be checked before reading gigabytes is checked first.
    check_text("compatible", &opts.compatible)?;
    check_text("version", &opts.version)?;
    check_chunk_size(0, u64::from(opts.chunk_size))?;
    let levels = zstd::compression_level_range();
    if opts.compression == Compression::Zstd && !levels.contains(&opts.level) {
        return Err(Error::Level {
            level: opts.level,
            min: *levels.start(),
            max: *levels.end(),
        });
    }
    check_image_count(images.len())?;
    for (i, source) in images.iter().enumerate() {
        check_slot_class(i, &source.slot_class)?;
    }
    check_unique_slot_classes(images.iter().map(|s| s.slot_class.as_str()))?;

    let scratch_err = |source| Error::Scratch { source };
    let start = scratch.stream_position().map_err(scratch_err)?;
    let mut chunker = Chunker::new(opts)?;
    let mut manifest_images = Vec::with_capacity(images.len());
    for (i, source) in images.iter_mut().enumerate() {
        let image = match source.base {
            None => chunker.image(i, source, &mut *scratch)?,
            Some(base) => delta_image(opts, i, source, base, &mut *scratch)?,
        };
        chunker.total_chunks += if source.base.is_some() {
            image.chunks.len()
        } else {
            0
        };
        if chunker.total_chunks > MAX_CHUNKS {
            return Err(Error::TooManyChunks {
                count: chunker.total_chunks as u64,
            });
        }
        manifest_images.push(image);
    }
    let manifest = Manifest {
        compatible: opts.compatible.clone(),
        version: opts.version.clone(),
        security_version: opts.security_version,
        created: opts.created,
        images: manifest_images,
    };
    let front_len = write_front(&manifest, key, out)?;
    scratch.seek(SeekFrom::Start(start)).map_err(scratch_err)?;
    copy_exact(scratch, out, manifest.payload_len())?;
    out.flush().map_err(|source| Error::Write { source })?;
    log::debug!(
        "bundle: {} images, {} chunks, front {front_len} bytes, payload {} bytes",
        manifest.images.len(),
        manifest.chunk_count(),
        manifest.payload_len()
    );
    Ok(manifest)
}

/// Image `i` as a delta against `base`: both in memory, see [`super::delta`].
fn delta_image<S: Write + ?Sized>(
    opts: &CreateOptions,
    i: usize,
    source: &mut ImageSource<'_>,
    base: &[u8],
    scratch: &mut S,
) -> Result<Image> {
    let read_err = |e| Error::ImageRead {
        slot_class: source.slot_class.clone(),
        source: e,
    };
    let mut new = Vec::new();
    (&mut *source.reader)
        .take(MAX_IMAGE_SIZE + 1)
        .read_to_end(&mut new)
        .map_err(read_err)?;
    if new.is_empty() || new.len() as u64 > MAX_IMAGE_SIZE {
        return Err(Error::ImageSize {
            image: i,
            size: new.len() as u64,
        });
    }
    let params = super::delta::Params {
        chunk_size: opts.chunk_size,
        level: opts.level,
        threads: opts.threads,
    };
    let (image, stored) = super::delta::build(&source.slot_class, base, &new, &params)?;
    for bytes in &stored {
        scratch
            .write_all(bytes)
            .map_err(|source| Error::Scratch { source })?;
    }
    Ok(image)
}

/// Writes the front of a bundle for `manifest`: header, canonical manifest JSON, key id and
/// signature, after checking the manifest with [`Manifest::validate`]. The payload, the stored
/// chunks the manifest describes in order, must follow it. Returns the front's length, which
/// is the payload's offset. [`create`] uses it; so can a build that stores chunks elsewhere.
pub fn write_front<W: Write + ?Sized>(
    manifest: &Manifest,
    key: &SecretKey,
    out: &mut W,
) -> Result<u64> {
    manifest.validate()?;
    let json = manifest.to_canonical_json();
    // The limits on chunk count and text lengths keep the manifest well within its limit.
    let len = u32::try_from(json.len())
        .ok()
        .filter(|&n| n as usize <= MAX_MANIFEST_LEN)
        .ok_or(Error::ManifestLength {
            len: json.len() as u64,
        })?;
    let mut signed = Vec::with_capacity(HEADER_LEN + json.len());
    signed.extend_from_slice(MAGIC);
    signed.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    signed.extend_from_slice(&0u16.to_le_bytes());
    signed.extend_from_slice(&len.to_le_bytes());
    signed.extend_from_slice(&json);
    let signature = key.sign(&signed);
    let write_err = |source| Error::Write { source };
    out.write_all(&signed).map_err(write_err)?;
    out.write_all(&key.public_key().key_id())
        .map_err(write_err)?;
    out.write_all(&signature).map_err(write_err)?;
    Ok((signed.len() + SIGNATURE_LEN) as u64)
}

fn copy_exact<S, W>(from: &mut S, to: &mut W, len: u64) -> Result<()>
where
    S: Read + ?Sized,
    W: Write + ?Sized,
{
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match from.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(Error::Scratch {
                    source: ErrorKind::UnexpectedEof.into(),
                })
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(source) => return Err(Error::Scratch { source }),
        };
        to.write_all(&buf[..n])
            .map_err(|source| Error::Write { source })?;
        left -= n as u64;
    }
    Ok(())
}

/// A chunk as stored, and the hash of those bytes.
#[derive(Default)]
struct Stored {
    bytes: Vec<u8>,
    sha256: [u8; 32],
}

/// Cuts images into chunks and compresses them. This thread reads the image and feeds its
/// hash, in order; the chunks go to one compressing thread per context as each becomes free,
/// so a thread that drew chunks of zeros does not wait for one that drew data, and the reading
/// overlaps the compression. The stored chunks come back in any order and are written to the
/// scratch file in image order.
struct Chunker {
    chunk_size: u32,
    compression: Compression,
    /// One zstd context per thread (none when not compressing; hashing still runs in
    /// `threads` threads).
    contexts: Vec<Option<CCtx<'static>>>,
    /// Chunk buffers, image bytes and stored bytes, for the chunks in flight.
    free: Vec<(Vec<u8>, Stored)>,
    /// Chunks of the images done so far, against `MAX_CHUNKS`.
    total_chunks: usize,
}

/// A chunk to store: its place in the image, its bytes, and the buffer for what is stored.
type Job = (usize, Vec<u8>, Stored);

impl Chunker {
    fn new(opts: &CreateOptions) -> Result<Chunker> {
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        let by_memory = (MAX_IN_FLIGHT_BYTES / 2 / opts.chunk_size as usize).max(1);
        let threads = match opts.threads {
            0 => cpus,
            n => n,
        }
        .clamp(1, MAX_THREADS.min(by_memory));
        let mut contexts = Vec::with_capacity(threads);
        for _ in 0..threads {
            contexts.push(match opts.compression {
                Compression::Zstd => Some(compressor(opts.level)?),
                Compression::None => None,
            });
        }
        // Two chunks per thread: one being stored, one read and waiting for it.
        let in_flight = threads * 2;
        Ok(Chunker {
            chunk_size: opts.chunk_size,
            compression: opts.compression,
            contexts,
            free: (0..in_flight)
                .map(|_| (Vec::new(), Stored::default()))
                .collect(),
            total_chunks: 0,
        })
    }

    /// Reads image `i` to its end, writes its stored chunks to `scratch`, and describes it.
    fn image<S: Write + ?Sized>(
        &mut self,
        i: usize,
        source: &mut ImageSource<'_>,
        scratch: &mut S,
    ) -> Result<Image> {
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut chunks = Vec::new();
        let chunk_size = self.chunk_size as usize;
        let in_flight = self.free.len();
        // Both channels hold every chunk in flight, so neither side ever waits to send.
        let (job_tx, job_rx) = sync_channel::<Job>(in_flight);
        let (done_tx, done_rx) = sync_channel::<(Job, thread::Result<Result<()>>)>(in_flight);
        let job_rx = Mutex::new(job_rx);
        let free = &mut self.free;
        let total_chunks = &mut self.total_chunks;
        thread::scope(|s| -> Result<()> {
            for ctx in &mut self.contexts {
                let (job_rx, done_tx) = (&job_rx, done_tx.clone());
                s.spawn(move || loop {
                    let job = match job_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok((seq, input, mut out)) = job else {
                        return;
                    };
                    // A panic comes back too, to be raised again on the reading thread, which
                    // waits for every chunk.
                    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        store(ctx.as_mut(), &input, &mut out)
                    }));
                    if done_tx.send(((seq, input, out), r)).is_err() {
                        return;
                    }
                });
            }
            drop(done_tx);
            // Moved in here so that it is dropped on every way out of this closure, an error
            // or a panic included: the threads waiting for a job then end, and the scope can
            // join them.
            let job_tx = job_tx;
            let mut pending = BTreeMap::new();
            let (mut sent, mut at_end) = (0usize, false);
            while !at_end || chunks.len() < sent {
                if !at_end {
                    if let Some((mut buf, out)) = free.pop() {
                        buf.clear();
                        buf.reserve_exact(chunk_size);
                        (&mut *source.reader)
                            .take(chunk_size as u64)
                            .read_to_end(&mut buf)
                            .map_err(|e| Error::ImageRead {
                                slot_class: source.slot_class.clone(),
                                source: e,
                            })?;
                        at_end = buf.len() < chunk_size;
                        if buf.is_empty() {
                            free.push((buf, out));
                            continue;
                        }
                        size += buf.len() as u64;
                        if size > MAX_IMAGE_SIZE {
                            return Err(Error::ImageSize { image: i, size });
                        }
                        *total_chunks += 1;
                        if *total_chunks > MAX_CHUNKS {
                            return Err(Error::TooManyChunks {
                                count: *total_chunks as u64,
                            });
                        }
                        hasher.update(&buf);
                        job_tx.send((sent, buf, out)).map_err(|_| stopped())?;
                        sent += 1;
                        continue;
                    }
                }
                let ((seq, input, out), r) = done_rx.recv().map_err(|_| stopped())?;
                let r = r.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                pending.insert(seq, (input, out, r));
                // In image order, errors included: the first bad chunk is the one reported.
                while let Some((input, out, r)) = pending.remove(&chunks.len()) {
                    r?;
                    scratch
                        .write_all(&out.bytes)
                        .map_err(|source| Error::Scratch { source })?;
                    chunks.push(Chunk {
                        op: super::Op::Data,
                        // At most the zstd bound of a chunk, which fits (checked by `validate`).
                        stored: u32::try_from(out.bytes.len()).unwrap_or(u32::MAX),
                        sha256: out.sha256,
                    });
                    free.push((input, out));
                }
            }
            Ok(())
        })?;
        if size == 0 {
            return Err(Error::ImageSize { image: i, size });
        }
        Ok(Image {
            slot_class: source.slot_class.clone(),
            size,
            sha256: hasher.finalize().into(),
            kind: ImageKind::Full,
            compression: self.compression,
            chunk_size: self.chunk_size,
            chunks,
        })
    }
}

/// A compressing thread went away without an answer (it cannot: panics come back).
fn stopped() -> Error {
    Error::Zstd {
        message: "a compression thread stopped".into(),
    }
}

fn compressor(level: i32) -> Result<CCtx<'static>> {
    let zstd_err = |code| Error::Zstd {
        message: zstd_safe::get_error_name(code).to_string(),
    };
    let mut ctx = CCtx::try_create().ok_or_else(|| Error::Zstd {
        message: "cannot allocate a compression context".into(),
    })?;
    // Spelled out although they are zstd's defaults: the format relies on them (one frame
    // with its content size; no checksum, the manifest's hashes cover it; no worker threads
    // inside zstd, whose output could depend on them).
    for p in [
        CParameter::CompressionLevel(level),
        CParameter::ContentSizeFlag(true),
        CParameter::ChecksumFlag(false),
        CParameter::NbWorkers(0),
    ] {
        ctx.set_parameter(p).map_err(zstd_err)?;
    }
    Ok(ctx)
}

fn store(ctx: Option<&mut CCtx<'static>>, input: &[u8], out: &mut Stored) -> Result<()> {
    out.bytes.clear();
    match ctx {
        Some(ctx) => {
            out.bytes.reserve(zstd_safe::compress_bound(input.len()));
            ctx.compress2(&mut out.bytes, input)
                .map_err(|code| Error::Zstd {
                    message: zstd_safe::get_error_name(code).to_string(),
                })?;
        }
        None => out.bytes.extend_from_slice(input),
    }
    out.sha256 = Sha256::digest(&out.bytes).into();
    Ok(())
}

#[cfg(test)]
mod tests;
