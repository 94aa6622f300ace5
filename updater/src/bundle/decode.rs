//! Checking and decoding one stored chunk, and making a delta chunk from the base.

use sha2::{Digest, Sha256};
use zstd::zstd_safe::{self, zstd_sys::ZSTD_ErrorCode, DCtx, DParameter};

use super::{extents_len, Compression, Error, Extent, Image, Op, Result, MAX_PATCH_WINDOW};

/// The largest zstd window a patch frame may declare: its reference window and its chunk.
/// A frame asking for more is refused before it is decoded.
pub const PATCH_WINDOW_LOG_MAX: u32 = 24;
const _: () = assert!(MAX_PATCH_WINDOW + (16 << 20) <= 1 << (PATCH_WINDOW_LOG_MAX + 1));

/// Random access to the base a delta reads: the running slot on a device (abup's install
/// reads it with direct I/O), or an image in memory on a build host checking what it built.
pub trait ReadAt {
    /// Fills `buf` from `offset`, or fails (also when the base is shorter).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;

    /// Fills `buf` with `extents`, concatenated in their order. A device overrides it to
    /// read neighbouring extents in one request.
    fn read_extents(&self, extents: &[Extent], buf: &mut [u8]) -> std::io::Result<()> {
        let mut at = 0;
        for e in extents {
            let n = e.len as usize;
            self.read_exact_at(&mut buf[at..at + n], e.offset)?;
            at += n;
        }
        Ok(())
    }
}

impl ReadAt for &[u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// Reads `extents` of `base`, concatenated, into `buf` after its first `from` bytes (which
/// stay; the rest is replaced) and checks them against `expected`. A mismatch is
/// [`Error::BaseMismatch`]: the base is not the one the delta was built against, at least
/// not there.
#[allow(clippy::too_many_arguments)]
pub fn read_base(
    image: &Image,
    k: usize,
    base: &dyn ReadAt,
    extents: &[Extent],
    expected: &[u8; 32],
    buf: &mut Vec<u8>,
    from: usize,
) -> Result<()> {
    let total = usize::try_from(extents_len(extents)).unwrap_or(usize::MAX);
    let end = from.saturating_add(total);
    // Every byte is overwritten by the read: only the part a smaller window left unused
    // is zeroed, not the whole window again.
    buf.truncate(end);
    buf.resize(end, 0);
    base.read_extents(extents, &mut buf[from..])
        .map_err(|source| Error::BaseRead {
            offset: extents.first().map_or(0, |e| e.offset),
            source,
        })?;
    let found: [u8; 32] = Sha256::digest(&buf[from..]).into();
    if &found != expected {
        return Err(Error::BaseMismatch {
            slot_class: image.slot_class.clone(),
            chunk: k,
            expected: *expected,
            found,
        });
    }
    Ok(())
}

/// The image's own earlier bytes at `extents` into `window` (replacing its contents): the
/// front of a patch's reference prefix. They are not hashed on their own: they were checked
/// before they were written, and a wrong read back makes the patch fail its output hash.
fn read_target(
    image: &Image,
    target: Option<&dyn ReadAt>,
    extents: &[Extent],
    window: &mut Vec<u8>,
) -> Result<()> {
    let total = usize::try_from(extents_len(extents)).unwrap_or(usize::MAX);
    window.truncate(total);
    window.resize(total, 0);
    if extents.is_empty() {
        return Ok(());
    }
    let error = |source| Error::TargetRead {
        slot_class: image.slot_class.clone(),
        offset: extents.first().map_or(0, |e| e.offset),
        source,
    };
    let target = target.ok_or_else(|| {
        error(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "the image being made was not given",
        ))
    })?;
    target.read_extents(extents, window).map_err(error)
}

/// The first bytes of a zstd frame (RFC 8878). Skippable and legacy frames are refused.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Decodes chunks, keeping its zstd context between calls so that steady-state decoding does
/// not allocate. One per thread to decode chunks in parallel.
pub struct Decoder {
    dctx: DCtx<'static>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decoder")
    }
}

impl Decoder {
    pub fn new() -> Result<Decoder> {
        let dctx = DCtx::try_create().ok_or_else(|| Error::Zstd {
            message: "cannot allocate a decompression context".into(),
        })?;
        Ok(Decoder { dctx })
    }

    /// Checks `stored`, the stored bytes of chunk `k` of `image`, against the chunk's hash,
    /// then decodes it into `out`. On success `out` holds exactly the chunk's
    /// [`Image::chunk_len`] bytes; on error it is empty. Decoding never writes more than that
    /// length, whatever the frame claims, and never allocates once `out` has held a chunk as
    /// large.
    pub fn decode(
        &mut self,
        image: &Image,
        k: usize,
        stored: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let result = self.decode_inner(image, k, stored, out);
        if result.is_err() {
            out.clear();
        }
        result
    }

    /// Makes chunk `k` of `image`, whatever its operation: decodes stored bytes (checked
    /// first, as [`Decoder::decode`] does), writes zeros, or reads the base (each base read
    /// checked against its hash before it is used; a patch's output checked too). `target`
    /// is the image as made so far, for patches that refer to its earlier bytes: the caller
    /// makes sure those are there. `window` holds a patch's reference bytes, at most
    /// [`MAX_PATCH_WINDOW`]; keep it between calls. On error `out` is empty.
    #[allow(clippy::too_many_arguments)]
    pub fn make(
        &mut self,
        image: &Image,
        k: usize,
        stored: &[u8],
        base: Option<&dyn ReadAt>,
        target: Option<&dyn ReadAt>,
        window: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let Some(chunk) = image.chunks.get(k) else {
            return self.decode(image, k, stored, out);
        };
        let result = match (&chunk.op, base) {
            (Op::Data, _) => return self.decode(image, k, stored, out),
            (Op::Zero, _) => {
                out.clear();
                out.resize(image.chunk_len(k) as usize, 0);
                Ok(())
            }
            (Op::Copy { .. } | Op::Patch { .. }, None) => Err(Error::NoBase {
                slot_class: image.slot_class.clone(),
            }),
            (Op::Copy { extents, sha256 }, Some(base)) => {
                read_base(image, k, base, extents, sha256, out, 0)
            }
            (
                Op::Patch {
                    extents,
                    target_extents,
                    base_sha256,
                    out_sha256,
                },
                Some(base),
            ) => check_stored(image, k, stored)
                .and_then(|()| read_target(image, target, target_extents, window))
                .and_then(|()| {
                    let from = window.len();
                    read_base(image, k, base, extents, base_sha256, window, from)
                })
                .and_then(|()| self.patch(image, k, stored, window, out, out_sha256)),
        };
        if result.is_err() {
            out.clear();
        }
        result
    }

    /// A patch: the stored frame checked, then decoded against the window as its prefix, and
    /// the result checked against the chunk's output hash.
    fn patch(
        &mut self,
        image: &Image,
        k: usize,
        stored: &[u8],
        window: &[u8],
        out: &mut Vec<u8>,
        out_sha256: &[u8; 32],
    ) -> Result<()> {
        let decode_error = |message: String| decode_error(image, k, message);
        let zstd_error = |code| decode_error(zstd_safe::get_error_name(code).into());
        // The prefix is borrowed for one frame, so the context lives as long as the window
        // does: one per patch, a small allocation beside the frame's work.
        let mut dctx = DCtx::try_create().ok_or_else(|| Error::Zstd {
            message: "cannot allocate a decompression context".into(),
        })?;
        dctx.set_parameter(DParameter::WindowLogMax(PATCH_WINDOW_LOG_MAX))
            .map_err(zstd_error)?;
        dctx.ref_prefix(window).map_err(zstd_error)?;
        frame(&mut dctx, image, k, stored, out)?;
        let found: [u8; 32] = Sha256::digest(&out[..]).into();
        if &found != out_sha256 {
            return Err(Error::PatchOutput {
                slot_class: image.slot_class.clone(),
                chunk: k,
            });
        }
        Ok(())
    }

    fn decode_inner(
        &mut self,
        image: &Image,
        k: usize,
        stored: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let decode_error = |message: String| decode_error(image, k, message);
        let chunk = image
            .chunks
            .get(k)
            .ok_or_else(|| decode_error(format!("the image has {} chunks", image.chunks.len())))?;
        if chunk.op != Op::Data {
            return Err(decode_error(format!(
                "it is a {} operation, not data",
                chunk.op.name()
            )));
        }
        check_stored(image, k, stored)?;
        match image.compression {
            Compression::None => {
                let len = image.chunk_len(k) as usize;
                if stored.len() != len {
                    return Err(Error::ChunkLength {
                        slot_class: image.slot_class.clone(),
                        chunk: k,
                        expected: len as u64,
                        found: Some(stored.len() as u64),
                    });
                }
                out.clear();
                out.extend_from_slice(stored);
                Ok(())
            }
            Compression::Zstd => frame(&mut self.dctx, image, k, stored, out),
        }
    }
}

/// Decodes `stored`, which must be exactly one zstd frame, into exactly chunk `k`'s length,
/// with `dctx` (the decoder's own, or one holding a patch's reference). The stored bytes'
/// hash has been checked.
fn frame(
    dctx: &mut DCtx<'_>,
    image: &Image,
    k: usize,
    stored: &[u8],
    out: &mut Vec<u8>,
) -> Result<()> {
    let decode_error = |message: String| decode_error(image, k, message);
    let len = image.chunk_len(k);
    let expected = u64::from(len);
    let wrong_length = |found: Option<u64>| Error::ChunkLength {
        slot_class: image.slot_class.clone(),
        chunk: k,
        expected,
        found,
    };
    let len = usize::try_from(len).map_err(|_| wrong_length(None))?;
    if !stored.starts_with(&ZSTD_MAGIC) {
        return Err(decode_error("it is not a zstd frame".into()));
    }
    // One frame and nothing else: zstd would otherwise decode concatenated frames.
    match zstd_safe::find_frame_compressed_size(stored) {
        Ok(n) if n == stored.len() => {}
        Ok(n) => {
            return Err(decode_error(format!(
                "its zstd frame ends at byte {n} of {}",
                stored.len()
            )))
        }
        Err(code) => return Err(decode_error(zstd_safe::get_error_name(code).into())),
    }
    if let Ok(Some(declared)) = zstd_safe::get_frame_content_size(stored) {
        if declared != expected {
            return Err(wrong_length(Some(declared)));
        }
    }
    // Grow only: a reused buffer of the same length is written over, not zeroed.
    out.resize(len, 0);
    match dctx.decompress(&mut out[..], stored) {
        Ok(n) if n == len => Ok(()),
        Ok(n) => Err(wrong_length(Some(n as u64))),
        Err(code) if code == error_code(ZSTD_ErrorCode::ZSTD_error_dstSize_tooSmall) => {
            Err(wrong_length(None))
        }
        Err(code) => Err(decode_error(zstd_safe::get_error_name(code).into())),
    }
}

fn decode_error(image: &Image, k: usize, message: String) -> Error {
    Error::ChunkDecode {
        slot_class: image.slot_class.clone(),
        chunk: k,
        message,
    }
}

/// The stored bytes of chunk `k` against the manifest's hash, before anything decodes them.
pub fn check_stored(image: &Image, k: usize, stored: &[u8]) -> Result<()> {
    let expected = image.chunks.get(k).map_or([0; 32], |c| c.sha256);
    let found: [u8; 32] = Sha256::digest(stored).into();
    if found != expected {
        return Err(Error::ChunkHash {
            slot_class: image.slot_class.clone(),
            chunk: k,
            expected,
            found,
        });
    }
    Ok(())
}

/// zstd returns errors as `(size_t)-code` (zstd_errors.h); this is that value for `code`.
fn error_code(code: ZSTD_ErrorCode) -> usize {
    0usize.wrapping_sub(code as usize)
}

/// [`Decoder::decode`] with a fresh decoder: for one-off use. Loops should keep a [`Decoder`].
pub fn decode_chunk(image: &Image, k: usize, stored: &[u8], out: &mut Vec<u8>) -> Result<()> {
    Decoder::new()?.decode(image, k, stored, out)
}

#[cfg(test)]
mod tests;
