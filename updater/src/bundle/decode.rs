//! Checking and decoding one stored chunk.

use sha2::{Digest, Sha256};
use zstd::zstd_safe::{self, zstd_sys::ZSTD_ErrorCode, DCtx};

use super::{Compression, Error, Image, Result};

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

    fn decode_inner(
        &mut self,
        image: &Image,
        k: usize,
        stored: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let decode_error = |message: String| Error::ChunkDecode {
            slot_class: image.slot_class.clone(),
            chunk: k,
            message,
        };
        let chunk = image
            .chunks
            .get(k)
            .ok_or_else(|| decode_error(format!("the image has {} chunks", image.chunks.len())))?;
        let found: [u8; 32] = Sha256::digest(stored).into();
        if found != chunk.sha256 {
            return Err(Error::ChunkHash {
                slot_class: image.slot_class.clone(),
                chunk: k,
                expected: chunk.sha256,
                found,
            });
        }
        let len = image.chunk_len(k);
        let expected = u64::from(len);
        let wrong_length = |found: Option<u64>| Error::ChunkLength {
            slot_class: image.slot_class.clone(),
            chunk: k,
            expected,
            found,
        };
        let len = usize::try_from(len).map_err(|_| wrong_length(None))?;
        match image.compression {
            Compression::None => {
                if stored.len() != len {
                    return Err(wrong_length(Some(stored.len() as u64)));
                }
                out.clear();
                out.extend_from_slice(stored);
            }
            Compression::Zstd => {
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
                match self.dctx.decompress(&mut out[..], stored) {
                    Ok(n) if n == len => {}
                    Ok(n) => return Err(wrong_length(Some(n as u64))),
                    Err(code)
                        if code == error_code(ZSTD_ErrorCode::ZSTD_error_dstSize_tooSmall) =>
                    {
                        return Err(wrong_length(None))
                    }
                    Err(code) => return Err(decode_error(zstd_safe::get_error_name(code).into())),
                }
            }
        }
        Ok(())
    }
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
