//! The manifest: what a bundle holds, the rules a manifest must meet, and its one canonical
//! JSON spelling.
//!
//! Parsing goes through "wire" structs whose fields are all optional and which remember the
//! first unknown field, so that the checks run in a fixed order: an image's `kind` and a chunk's
//! `op` are looked at before anything else in their object. A bundle that uses a kind or an
//! operation added later (deltas) then fails with "update abup", not with a complaint about a
//! field that the newer kind brings along.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::hex;
use super::{
    Error, Result, MAX_CHUNKS, MAX_CHUNK_SIZE, MAX_EXTENTS, MAX_IMAGES, MAX_IMAGE_SIZE,
    MAX_OP_EXTENTS, MAX_PATCH_WINDOW, MAX_SLOT_CLASS_LEN, MAX_STORED_LEN, MAX_TEXT_LEN,
    MIN_CHUNK_SIZE,
};

/// What a bundle holds and how to check it; signed, and parsed only once the signature holds
/// (except by [`super::read_unverified`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The boards the bundle is for; an install compares it with the board's `compatible`.
    pub compatible: String,
    /// The version shown to people. Never compared: rollback protection uses
    /// `security_version`.
    pub version: String,
    /// Monotonic anti-rollback counter: a device refuses bundles below its recorded value.
    pub security_version: u64,
    /// When the bundle was built, in seconds since the Unix epoch.
    pub created: u64,
    /// 1 to [`MAX_IMAGES`] images, each for a different slot class, in payload order.
    pub images: Vec<Image>,
}

/// One slot image and how its bytes are stored in the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Which slot of the pair receives the image, e.g. `rootfs`.
    pub slot_class: String,
    /// Bytes of the final slot image.
    pub size: u64,
    /// SHA-256 of the final slot image, checked after it is written.
    pub sha256: [u8; 32],
    pub kind: ImageKind,
    pub compression: Compression,
    /// Uncompressed bytes per chunk (the last chunk may be shorter).
    pub chunk_size: u32,
    /// One entry per chunk, in image order: `ceil(size / chunk_size)` of them.
    pub chunks: Vec<Chunk>,
}

/// How an image is made from its chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// Every chunk carries its bytes; nothing is read from the running slot.
    Full,
    /// Chunks may be rebuilt from the image the running slot holds (the base), which the
    /// bundle names so that a device holding something else can say what it needs.
    Delta(Base),
}

/// The image a delta was built against: the first `size` bytes of the running slot, whose
/// SHA-256 is `sha256`. A device never needs the whole base to match, only the extents each
/// operation reads, which carry their own hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Base {
    pub size: u64,
    pub sha256: [u8; 32],
}

impl ImageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageKind::Full => "full",
            ImageKind::Delta(_) => "delta",
        }
    }

    pub fn base(self) -> Option<Base> {
        match self {
            ImageKind::Full => None,
            ImageKind::Delta(base) => Some(base),
        }
    }
}

/// How each chunk's bytes are stored in the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Each chunk is one zstd frame.
    Zstd,
    /// Each chunk is stored as is.
    None,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::None => "none",
        }
    }

    /// The compression named `name` in a manifest (or on a command line), if it is one.
    pub fn from_name(name: &str) -> Option<Compression> {
        match name {
            "zstd" => Some(Compression::Zstd),
            "none" => Some(Compression::None),
            _ => None,
        }
    }

    /// The fewest bytes a chunk of `len` uncompressed bytes may be stored in.
    pub fn min_stored_len(self, len: u32) -> u32 {
        match self {
            Compression::Zstd => 1,
            Compression::None => len,
        }
    }

    /// The most bytes a chunk of `len` uncompressed bytes may be stored in: for zstd, the
    /// library's worst case for one frame (`ZSTD_COMPRESSBOUND`), so a well-formed frame
    /// always fits and a reader never buffers more. `len` is at most [`MAX_CHUNK_SIZE`].
    pub fn max_stored_len(self, len: u32) -> u32 {
        match self {
            Compression::Zstd => {
                let small = if len < 128 << 10 {
                    ((128 << 10) - len) >> 11
                } else {
                    0
                };
                len + (len >> 8) + small
            }
            Compression::None => len,
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The operation that makes one chunk of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub op: Op,
    /// Bytes the chunk takes in the payload (0 for operations that store nothing).
    pub stored: u32,
    /// SHA-256 of the stored bytes, so a chunk is authenticated before it is decompressed;
    /// all zeros for operations that store nothing.
    pub sha256: [u8; 32],
}

/// Where a chunk's bytes come from. Everything but `Data` exists only in delta images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The stored bytes, decoded with the image's compression.
    Data,
    /// Zeros: nothing stored, nothing read.
    Zero,
    /// The base's bytes at `extents`, in order; `sha256` is their SHA-256, and so the
    /// chunk's.
    Copy {
        extents: Vec<Extent>,
        sha256: [u8; 32],
    },
    /// The stored zstd frame, decoded with a reference prefix of at most
    /// [`MAX_PATCH_WINDOW`]: the image's own bytes at `target_extents` (written before this
    /// chunk, never in the first chunk), then the base's bytes at `extents`. `base_sha256`
    /// covers the base bytes before they are used, `out_sha256` the decoded chunk before it
    /// is written (and so whatever was read back from the target).
    Patch {
        extents: Vec<Extent>,
        target_extents: Vec<Extent>,
        base_sha256: [u8; 32],
        out_sha256: [u8; 32],
    },
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Data => "data",
            Op::Zero => "zero",
            Op::Copy { .. } => "copy",
            Op::Patch { .. } => "patch",
        }
    }

    /// The base extents the operation reads, if any.
    pub fn extents(&self) -> &[Extent] {
        match self {
            Op::Copy { extents, .. } | Op::Patch { extents, .. } => extents,
            Op::Data | Op::Zero => &[],
        }
    }

    /// The SHA-256 the base bytes at [`Op::extents`] must have.
    pub fn base_sha256(&self) -> Option<&[u8; 32]> {
        match self {
            Op::Copy { sha256, .. } => Some(sha256),
            Op::Patch { base_sha256, .. } => Some(base_sha256),
            Op::Data | Op::Zero => None,
        }
    }

    /// The extents of the image's own earlier bytes the operation reads, if any.
    pub fn target_extents(&self) -> &[Extent] {
        match self {
            Op::Patch { target_extents, .. } => target_extents,
            _ => &[],
        }
    }

    /// Whether the payload holds bytes for this operation.
    pub fn stores(&self) -> bool {
        matches!(self, Op::Data | Op::Patch { .. })
    }
}

/// Bytes `offset .. offset + len` of the base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
}

/// Bytes an operation reads from the base.
pub fn extents_len(extents: &[Extent]) -> u64 {
    extents.iter().fold(0u64, |n, e| n.saturating_add(e.len))
}

/// A chunk's place in the bundle, from [`Manifest::chunks`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRef {
    /// Index into [`Manifest::images`].
    pub image: usize,
    /// Index into that image's [`Image::chunks`].
    pub index: usize,
    /// Where the stored chunk starts, relative to the start of the payload.
    pub offset: u64,
    /// Bytes the chunk takes in the payload.
    pub stored: u32,
    /// The image bytes the chunk decodes to.
    pub range: Range<u64>,
}

impl Chunk {
    /// The manifest entry for a chunk stored as `stored`. A slice longer than any chunk may
    /// be gets `stored: u32::MAX`, which validation refuses.
    pub fn describe(stored: &[u8]) -> Chunk {
        Chunk {
            op: Op::Data,
            stored: u32::try_from(stored.len()).unwrap_or(u32::MAX),
            sha256: Sha256::digest(stored).into(),
        }
    }
}

impl Image {
    /// The image bytes chunk `k` covers: `k * chunk_size .. min((k + 1) * chunk_size, size)`.
    /// Empty for a `k` past the last chunk.
    /// Whether a patch of this image reads the image's own earlier bytes.
    pub fn reads_target(&self) -> bool {
        self.chunks
            .iter()
            .any(|c| !c.op.target_extents().is_empty())
    }

    pub fn chunk_range(&self, k: usize) -> Range<u64> {
        let chunk_size = u64::from(self.chunk_size);
        let start = u64::try_from(k)
            .unwrap_or(u64::MAX)
            .saturating_mul(chunk_size)
            .min(self.size);
        start..start.saturating_add(chunk_size).min(self.size)
    }

    /// Uncompressed bytes of chunk `k`.
    pub fn chunk_len(&self, k: usize) -> u32 {
        let r = self.chunk_range(k);
        // At most chunk_size, a u32, by construction of the range.
        u32::try_from(r.end - r.start).unwrap_or(self.chunk_size)
    }

    /// Bytes the image's chunks take in the payload.
    pub fn payload_len(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.stored)).sum()
    }

    /// How many chunks an image of this size and chunk size has.
    fn expected_chunks(&self) -> u64 {
        self.size.div_ceil(u64::from(self.chunk_size.max(1)))
    }
}

impl Manifest {
    /// Bytes of the whole payload.
    pub fn payload_len(&self) -> u64 {
        self.images.iter().map(Image::payload_len).sum()
    }

    /// Where chunk `k` of image `image` starts, relative to the start of the payload (the sum
    /// of the stored lengths before it). Takes time in the number of chunks before it: to walk
    /// the payload use [`Manifest::chunks`].
    pub fn chunk_offset(&self, image: usize, k: usize) -> u64 {
        let before: u64 = self.images.iter().take(image).map(Image::payload_len).sum();
        let within: u64 = self.images.get(image).map_or(0, |img| {
            img.chunks.iter().take(k).map(|c| u64::from(c.stored)).sum()
        });
        before + within
    }

    /// Every chunk of every image, in payload order, with its offset in the payload and the
    /// image bytes it covers.
    pub fn chunks(&self) -> impl Iterator<Item = ChunkRef> + '_ {
        let mut offset = 0u64;
        self.images
            .iter()
            .enumerate()
            .flat_map(|(i, img)| {
                img.chunks
                    .iter()
                    .enumerate()
                    .map(move |(k, c)| (i, img, k, c))
            })
            .map(move |(i, img, k, c)| {
                let r = ChunkRef {
                    image: i,
                    index: k,
                    offset,
                    stored: c.stored,
                    range: img.chunk_range(k),
                };
                offset += u64::from(c.stored);
                r
            })
    }

    /// Chunks over all images.
    pub fn chunk_count(&self) -> usize {
        self.images.iter().map(|i| i.chunks.len()).sum()
    }

    /// Parses and validates manifest bytes. Robust against any input (it is fuzzed), but only
    /// authenticated bytes should be trusted: see [`super::read_verified`].
    pub fn parse(bytes: &[u8]) -> Result<Manifest> {
        let manifest = WireManifest::from_json(bytes)?.into_manifest()?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The canonical JSON of the manifest: compact, fields in the documented order, hashes in
    /// lowercase hex. What [`super::create`] signs; the same manifest always gives the same
    /// bytes.
    pub fn to_canonical_json(&self) -> Vec<u8> {
        let out = OutManifest {
            compatible: &self.compatible,
            version: &self.version,
            security_version: self.security_version,
            created: self.created,
            images: self
                .images
                .iter()
                .map(|img| OutImage {
                    slot_class: &img.slot_class,
                    size: img.size,
                    sha256: hex::encode(&img.sha256),
                    kind: img.kind.as_str(),
                    base_size: img.kind.base().map(|b| b.size),
                    base_sha256: img.kind.base().map(|b| hex::encode(&b.sha256)),
                    compression: img.compression.as_str(),
                    chunk_size: img.chunk_size,
                    chunks: img.chunks.iter().map(OutChunk::of).collect(),
                })
                .collect(),
        };
        // Serializing plain structs of strings and integers into a Vec cannot fail.
        serde_json::to_vec(&out).unwrap_or_default()
    }

    /// Checks every rule of the format that the typed fields do not already guarantee: text
    /// fields, image count, slot classes, chunk sizes, image sizes, chunk counts against sizes,
    /// stored lengths against chunk lengths. [`Manifest::parse`] runs it; so does `create`
    /// before it signs.
    pub fn validate(&self) -> Result<()> {
        check_text("compatible", &self.compatible)?;
        check_text("version", &self.version)?;
        check_image_count(self.images.len())?;
        check_total_chunks(self.images.iter().map(|i| i.chunks.len()))?;
        for (i, img) in self.images.iter().enumerate() {
            check_slot_class(i, &img.slot_class)?;
            check_chunk_size(i, u64::from(img.chunk_size))?;
            if img.size == 0 || img.size > MAX_IMAGE_SIZE {
                return Err(Error::ImageSize {
                    image: i,
                    size: img.size,
                });
            }
            let expected = img.expected_chunks();
            if u64::try_from(img.chunks.len()).ok() != Some(expected) {
                return Err(Error::ChunkCount {
                    image: i,
                    size: img.size,
                    chunk_size: img.chunk_size,
                    expected,
                    found: img.chunks.len(),
                });
            }
            if let ImageKind::Delta(base) = img.kind {
                if base.size == 0 || base.size > MAX_IMAGE_SIZE {
                    return Err(Error::BaseSize {
                        image: i,
                        size: base.size,
                    });
                }
            }
            for (k, c) in img.chunks.iter().enumerate() {
                check_op(i, img, k, c)?;
            }
        }
        check_unique_slot_classes(self.images.iter().map(|i| i.slot_class.as_str()))
    }
}

/// One operation against its image: only data in a full image; stored lengths within what
/// the chunk's length allows; base extents inside the base, as long as a copy's chunk or at
/// most a patch window.
fn check_op(i: usize, img: &Image, k: usize, c: &Chunk) -> Result<()> {
    let len = img.chunk_len(k);
    let base = match (img.kind, &c.op) {
        (_, Op::Data) => None,
        (ImageKind::Delta(base), _) => Some(base),
        (ImageKind::Full, op) => {
            return Err(Error::FieldNotAllowed {
                path: format!("images[{i}].chunks[{k}].op"),
                what: format!("a full image (a {} operation)", op.name()),
            })
        }
    };
    let (min, max) = match &c.op {
        Op::Data => (
            img.compression.min_stored_len(len),
            img.compression.max_stored_len(len),
        ),
        Op::Patch { .. } => (1, Compression::Zstd.max_stored_len(len)),
        Op::Zero | Op::Copy { .. } => (0, 0),
    };
    if c.stored < min || c.stored > max {
        return Err(Error::StoredLength {
            image: i,
            chunk: k,
            stored: u64::from(c.stored),
            min,
            max,
        });
    }
    let extents = c.op.extents();
    if let Some(base) = base.filter(|_| !extents.is_empty() || c.op.base_sha256().is_some()) {
        let bad = |message: String| Error::BadExtents {
            image: i,
            chunk: k,
            message,
        };
        if extents.is_empty() || extents.len() > MAX_OP_EXTENTS {
            return Err(bad(format!(
                "it lists {} extents, not 1 to {MAX_OP_EXTENTS}",
                extents.len()
            )));
        }
        for e in extents {
            if e.len == 0
                || e.offset
                    .checked_add(e.len)
                    .is_none_or(|end| end > base.size)
            {
                return Err(bad(format!(
                    "extent [{}, {}] is empty or reaches past the base's {} bytes",
                    e.offset, e.len, base.size
                )));
            }
        }
        let total = extents_len(extents);
        match c.op {
            Op::Copy { .. } if total != u64::from(len) => {
                return Err(bad(format!(
                    "its extents hold {total} bytes, the chunk {len}"
                )))
            }
            Op::Patch { .. } if total > MAX_PATCH_WINDOW => {
                return Err(bad(format!(
                "its extents hold {total} bytes, more than the {MAX_PATCH_WINDOW} a patch may read"
            )))
            }
            _ => {}
        }
        check_target_extents(img, k, &c.op).map_err(bad)?;
    }
    Ok(())
}

/// A patch's own-image extents: between the end of the first chunk (whose first block a
/// device holds back until it activates the slot) and the start of this chunk, and within
/// the window and extent limits together with the base extents.
fn check_target_extents(img: &Image, k: usize, op: &Op) -> std::result::Result<(), String> {
    let target = op.target_extents();
    if target.is_empty() {
        return Ok(());
    }
    let count = op.extents().len() + target.len();
    if count > MAX_OP_EXTENTS {
        return Err(format!(
            "it lists {count} extents of the base and the image, more than {MAX_OP_EXTENTS}"
        ));
    }
    let (first, start) = (u64::from(img.chunk_size), img.chunk_range(k).start);
    for e in target {
        if e.len == 0
            || e.offset < first
            || e.offset.checked_add(e.len).is_none_or(|end| end > start)
        {
            return Err(format!(
                "target extent [{}, {}] is empty or not between the end of the first chunk \
                 ({first}) and the start of this one ({start})",
                e.offset, e.len
            ));
        }
    }
    let total = extents_len(op.extents()).saturating_add(extents_len(target));
    if total > MAX_PATCH_WINDOW {
        return Err(format!(
            "its base and target extents hold {total} bytes, more than the {MAX_PATCH_WINDOW} a \
             patch may read"
        ));
    }
    Ok(())
}

/// Values read from outside go into messages; keep a hostile one from making a message huge.
pub(crate) fn shorten(s: &str) -> String {
    const MAX: usize = 80;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_string(),
    }
}

pub(crate) fn check_text(field: &'static str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= MAX_TEXT_LEN
        && value.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::BadText {
            field,
            value: shorten(value),
        })
    }
}

pub(crate) fn check_slot_class(image: usize, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= MAX_SLOT_CLASS_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::BadSlotClass {
            image,
            value: shorten(value),
        })
    }
}

pub(crate) fn check_unique_slot_classes<'a>(
    classes: impl Iterator<Item = &'a str> + Clone,
) -> Result<()> {
    for (i, a) in classes.clone().enumerate() {
        if classes.clone().take(i).any(|b| a == b) {
            return Err(Error::DuplicateSlotClass {
                slot_class: a.to_string(),
            });
        }
    }
    Ok(())
}

pub(crate) fn check_image_count(count: usize) -> Result<()> {
    if (1..=MAX_IMAGES).contains(&count) {
        Ok(())
    } else {
        Err(Error::ImageCount { count })
    }
}

pub(crate) fn check_chunk_size(image: usize, chunk_size: u64) -> Result<()> {
    let ok = chunk_size.is_power_of_two()
        && (u64::from(MIN_CHUNK_SIZE)..=u64::from(MAX_CHUNK_SIZE)).contains(&chunk_size);
    if ok {
        Ok(())
    } else {
        Err(Error::ChunkSize { image, chunk_size })
    }
}

fn check_total_chunks(counts: impl Iterator<Item = usize>) -> Result<()> {
    let count = counts.fold(0u64, |sum, n| {
        sum.saturating_add(u64::try_from(n).unwrap_or(u64::MAX))
    });
    if count > MAX_CHUNKS as u64 {
        return Err(Error::TooManyChunks { count });
    }
    Ok(())
}

// ---- the canonical spelling ----

#[derive(Serialize)]
struct OutManifest<'a> {
    compatible: &'a str,
    version: &'a str,
    security_version: u64,
    created: u64,
    images: Vec<OutImage<'a>>,
}

#[derive(Serialize)]
struct OutImage<'a> {
    slot_class: &'a str,
    size: u64,
    sha256: String,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    base_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    base_sha256: Option<String>,
    compression: &'static str,
    chunk_size: u32,
    chunks: Vec<OutChunk>,
}

/// A chunk's fields, each present only for the operations that have it, in the documented
/// order: `op`, `extents`, `target_extents`, `base_sha256`, `stored`, `sha256`, `out_sha256`.
#[derive(Serialize)]
struct OutChunk {
    op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    extents: Option<Vec<[u64; 2]>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_extents: Option<Vec<[u64; 2]>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    base_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stored: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    out_sha256: Option<String>,
}

impl OutChunk {
    fn of(c: &Chunk) -> OutChunk {
        let extents = |e: &[Extent]| Some(e.iter().map(|e| [e.offset, e.len]).collect());
        let mut out = OutChunk {
            op: c.op.name(),
            extents: None,
            target_extents: None,
            base_sha256: None,
            stored: None,
            sha256: None,
            out_sha256: None,
        };
        match &c.op {
            Op::Data => {
                out.stored = Some(c.stored);
                out.sha256 = Some(hex::encode(&c.sha256));
            }
            Op::Zero => {}
            Op::Copy { extents: e, sha256 } => {
                out.extents = extents(e);
                out.sha256 = Some(hex::encode(sha256));
            }
            Op::Patch {
                extents: e,
                target_extents,
                base_sha256,
                out_sha256,
            } => {
                out.extents = extents(e);
                if !target_extents.is_empty() {
                    out.target_extents = extents(target_extents);
                }
                out.base_sha256 = Some(hex::encode(base_sha256));
                out.stored = Some(c.stored);
                out.sha256 = Some(hex::encode(&c.sha256));
                out.out_sha256 = Some(hex::encode(out_sha256));
            }
        }
        out
    }
}

// ---- parsing ----

/// How many images and chunks a parse may still keep. An array longer than that is counted,
/// not kept, and refused once counted: a hostile 8 MiB manifest of `{},{},...` would
/// otherwise become millions of structs, hundreds of MiB, before any count is checked.
struct Budget {
    images: Cell<usize>,
    chunks: Cell<usize>,
    extents: Cell<usize>,
}

/// An array as far as the budget allowed, and how long it really was.
#[derive(Debug, Default)]
struct Counted<T> {
    items: Vec<T>,
    total: usize,
}

/// A wire object read with the budget at hand.
trait Wire<'de>: Sized {
    fn visit<A: MapAccess<'de>>(map: A, budget: &Budget) -> std::result::Result<Self, A::Error>;
    /// The budget an array of these draws from.
    fn allowance(budget: &Budget) -> &Cell<usize>;
}

struct WireSeed<'b, T> {
    budget: &'b Budget,
    object: PhantomData<T>,
}

impl<'b, T> WireSeed<'b, T> {
    fn new(budget: &'b Budget) -> Self {
        WireSeed {
            budget,
            object: PhantomData,
        }
    }
}

impl<'de, T: Wire<'de>> DeserializeSeed<'de> for WireSeed<'_, T> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<T, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T: Wire<'de>> Visitor<'de> for WireSeed<'_, T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<T, A::Error> {
        T::visit(map, self.budget)
    }
}

struct CountedSeed<'b, T>(WireSeed<'b, T>);

impl<'de, T: Wire<'de>> DeserializeSeed<'de> for CountedSeed<'_, T> {
    type Value = Counted<T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Counted<T>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: Wire<'de>> Visitor<'de> for CountedSeed<'_, T> {
    type Value = Counted<T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> std::result::Result<Counted<T>, A::Error> {
        let budget = self.0.budget;
        counted(seq, T::allowance(budget), |seq| {
            seq.next_element_seed(WireSeed::<T>::new(budget))
        })
    }
}

/// An array's elements read with `next` while `left` allows, counted (not kept) after that.
fn counted<'de, A: SeqAccess<'de>, T>(
    mut seq: A,
    left: &Cell<usize>,
    mut next: impl FnMut(&mut A) -> std::result::Result<Option<T>, A::Error>,
) -> std::result::Result<Counted<T>, A::Error> {
    let mut out = Counted {
        items: Vec::new(),
        total: 0,
    };
    loop {
        let more = if left.get() > 0 {
            next(&mut seq)?
                .map(|item| {
                    out.items.push(item);
                    left.set(left.get() - 1);
                })
                .is_some()
        } else {
            seq.next_element::<IgnoredAny>()?.is_some()
        };
        if !more {
            return Ok(out);
        }
        out.total += 1;
    }
}

/// How one field's value is read.
trait Field<'de>: Sized {
    fn read<A: MapAccess<'de>>(map: &mut A, budget: &Budget)
        -> std::result::Result<Self, A::Error>;
}

impl<'de> Field<'de> for String {
    fn read<A: MapAccess<'de>>(map: &mut A, _: &Budget) -> std::result::Result<Self, A::Error> {
        map.next_value()
    }
}

impl<'de> Field<'de> for u64 {
    fn read<A: MapAccess<'de>>(map: &mut A, _: &Budget) -> std::result::Result<Self, A::Error> {
        map.next_value()
    }
}

/// `[[offset, len], ...]`, kept as far as the budget allows and counted beyond.
impl<'de> Field<'de> for Counted<Extent> {
    fn read<A: MapAccess<'de>>(
        map: &mut A,
        budget: &Budget,
    ) -> std::result::Result<Self, A::Error> {
        map.next_value_seed(ExtentsSeed(budget))
    }
}

struct ExtentsSeed<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for ExtentsSeed<'_> {
    type Value = Counted<Extent>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ExtentsSeed<'_> {
    type Value = Counted<Extent>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of [offset, length] pairs")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> std::result::Result<Self::Value, A::Error> {
        counted(seq, &self.0.extents, |seq| {
            Ok(seq
                .next_element::<(u64, u64)>()?
                .map(|(offset, len)| Extent { offset, len }))
        })
    }
}

impl<'de, T: Wire<'de>> Field<'de> for Counted<T> {
    fn read<A: MapAccess<'de>>(
        map: &mut A,
        budget: &Budget,
    ) -> std::result::Result<Self, A::Error> {
        map.next_value_seed(CountedSeed(WireSeed::<T>::new(budget)))
    }
}

/// A JSON object read into optional fields, remembering the first field it does not know.
/// Duplicate fields are an error (JSON leaves them undefined; a signed document must not be
/// ambiguous).
macro_rules! wire_struct {
    ($name:ident, $allowance:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        #[derive(Debug, Default)]
        struct $name {
            $($field: Option<$ty>,)*
            unknown: Option<String>,
        }

        impl<'de> Wire<'de> for $name {
            fn visit<A: MapAccess<'de>>(
                mut map: A,
                budget: &Budget,
            ) -> std::result::Result<Self, A::Error> {
                let mut out = $name::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        $(stringify!($field) => {
                            if out.$field.is_some() {
                                return Err(de::Error::duplicate_field(stringify!($field)));
                            }
                            out.$field = Some(Field::read(&mut map, budget)?);
                        })*
                        _ => {
                            if out.unknown.is_none() {
                                out.unknown = Some(key);
                            }
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(out)
            }

            fn allowance(budget: &Budget) -> &Cell<usize> {
                &budget.$allowance
            }
        }
    };
}

wire_struct!(WireManifest, images {
    compatible: String,
    version: String,
    security_version: u64,
    created: u64,
    images: Counted<WireImage>,
});

wire_struct!(WireImage, images {
    slot_class: String,
    size: u64,
    sha256: String,
    kind: String,
    base_size: u64,
    base_sha256: String,
    compression: String,
    chunk_size: u64,
    chunks: Counted<WireChunk>,
});

wire_struct!(
    WireChunk,
    chunks {
        op: String,
        extents: Counted<Extent>,
        target_extents: Counted<Extent>,
        base_sha256: String,
        stored: u64,
        sha256: String,
        out_sha256: String,
    }
);

impl WireManifest {
    fn from_json(bytes: &[u8]) -> Result<WireManifest> {
        let budget = Budget {
            images: Cell::new(MAX_IMAGES),
            chunks: Cell::new(MAX_CHUNKS),
            extents: Cell::new(MAX_EXTENTS),
        };
        let mut d = serde_json::Deserializer::from_slice(bytes);
        WireSeed::<WireManifest>::new(&budget)
            .deserialize(&mut d)
            .and_then(|m| d.end().map(|()| m))
            .map_err(|e| Error::ManifestSyntax {
                message: e.to_string(),
            })
    }
}

fn required<T>(value: Option<T>, path: impl FnOnce() -> String) -> Result<T> {
    value.ok_or_else(|| Error::MissingField { path: path() })
}

fn no_unknown(unknown: Option<String>, path: impl FnOnce(&str) -> String) -> Result<()> {
    match unknown {
        Some(field) => Err(Error::UnknownField {
            path: path(&shorten(&field)),
        }),
        None => Ok(()),
    }
}

fn sha256_field(value: String, path: impl FnOnce() -> String) -> Result<[u8; 32]> {
    hex::decode32(&value).ok_or_else(|| Error::BadHex {
        path: path(),
        value: shorten(&value),
    })
}

impl WireManifest {
    fn into_manifest(self) -> Result<Manifest> {
        no_unknown(self.unknown, |f| f.to_string())?;
        let compatible = required(self.compatible, || "compatible".into())?;
        let version = required(self.version, || "version".into())?;
        let security_version = required(self.security_version, || "security_version".into())?;
        let created = required(self.created, || "created".into())?;
        let wire_images = required(self.images, || "images".into())?;
        // Both counts before anything else: beyond them the arrays were counted, not kept.
        check_image_count(wire_images.total)?;
        check_total_chunks(
            wire_images
                .items
                .iter()
                .map(|i| i.chunks.as_ref().map_or(0, |c| c.total)),
        )?;
        let images = wire_images
            .items
            .into_iter()
            .enumerate()
            .map(|(i, w)| w.into_image(i))
            .collect::<Result<Vec<_>>>()?;
        Ok(Manifest {
            compatible,
            version,
            security_version,
            created,
            images,
        })
    }
}

impl WireImage {
    fn into_image(self, i: usize) -> Result<Image> {
        let at = |field: &str| format!("images[{i}].{field}");
        // The kind decides what the other fields mean: look at it first.
        let kind_name = required(self.kind, || at("kind"))?;
        let delta = match kind_name.as_str() {
            "full" => false,
            "delta" => true,
            other => {
                return Err(Error::UnknownImageKind {
                    image: i,
                    kind: shorten(other),
                })
            }
        };
        no_unknown(self.unknown, |f| at(f))?;
        let kind = if delta {
            let size = required(self.base_size, || at("base_size"))?;
            let sha256 = required(self.base_sha256, || at("base_sha256"))?;
            ImageKind::Delta(Base {
                size,
                sha256: sha256_field(sha256, || at("base_sha256"))?,
            })
        } else {
            not_here(self.base_size.is_some(), || at("base_size"), "a full image")?;
            not_here(
                self.base_sha256.is_some(),
                || at("base_sha256"),
                "a full image",
            )?;
            ImageKind::Full
        };
        let compression_name = required(self.compression, || at("compression"))?;
        let compression =
            Compression::from_name(&compression_name).ok_or_else(|| Error::UnknownCompression {
                image: i,
                compression: shorten(&compression_name),
            })?;
        let slot_class = required(self.slot_class, || at("slot_class"))?;
        let size = required(self.size, || at("size"))?;
        let sha256 = sha256_field(required(self.sha256, || at("sha256"))?, || at("sha256"))?;
        let chunk_size = required(self.chunk_size, || at("chunk_size"))?;
        check_chunk_size(i, chunk_size)?;
        let chunk_size = u32::try_from(chunk_size).map_err(|_| Error::ChunkSize {
            image: i,
            chunk_size,
        })?;
        let wire_chunks = required(self.chunks, || at("chunks"))?;
        let extents = wire_chunks.items.iter().fold(0usize, |n, c| {
            [&c.extents, &c.target_extents].iter().fold(n, |n, e| {
                n.saturating_add(e.as_ref().map_or(0, |e| e.total))
            })
        });
        if extents > MAX_EXTENTS {
            return Err(Error::TooManyExtents { count: extents });
        }
        let chunks = wire_chunks
            .items
            .into_iter()
            .enumerate()
            .map(|(k, c)| c.into_chunk(i, k))
            .collect::<Result<Vec<_>>>()?;
        Ok(Image {
            slot_class,
            size,
            sha256,
            kind,
            compression,
            chunk_size,
            chunks,
        })
    }
}

impl WireChunk {
    fn into_chunk(self, i: usize, k: usize) -> Result<Chunk> {
        let at = |field: &str| format!("images[{i}].chunks[{k}].{field}");
        // The operation decides what the other fields mean: look at it first.
        let op_name = required(self.op, || at("op"))?;
        let known = ["data", "zero", "copy", "patch"];
        if !known.contains(&op_name.as_str()) {
            return Err(Error::UnknownChunkOp {
                image: i,
                chunk: k,
                op: shorten(&op_name),
            });
        }
        no_unknown(self.unknown, |f| at(f))?;
        let what = format!("a {op_name} operation");
        let hash = |value: Option<String>, field: &str| -> Result<[u8; 32]> {
            sha256_field(required(value, || at(field))?, || at(field))
        };
        let stored_field = |value: Option<u64>| -> Result<u32> {
            let stored = required(value, || at("stored"))?;
            // The precise bound depends on the chunk's length, checked by `validate`; this
            // one only makes the value fit its type.
            u32::try_from(stored)
                .ok()
                .filter(|&s| s <= MAX_STORED_LEN)
                .ok_or(Error::StoredLength {
                    image: i,
                    chunk: k,
                    stored,
                    min: 0,
                    max: MAX_STORED_LEN,
                })
        };
        let reads_base = matches!(op_name.as_str(), "copy" | "patch");
        let stores = matches!(op_name.as_str(), "data" | "patch");
        not_here(
            !reads_base && self.extents.is_some(),
            || at("extents"),
            &what,
        )?;
        not_here(!stores && self.stored.is_some(), || at("stored"), &what)?;
        let patch = op_name == "patch";
        not_here(
            !patch && self.target_extents.is_some(),
            || at("target_extents"),
            &what,
        )?;
        not_here(
            !patch && self.base_sha256.is_some(),
            || at("base_sha256"),
            &what,
        )?;
        not_here(
            !patch && self.out_sha256.is_some(),
            || at("out_sha256"),
            &what,
        )?;
        not_here(
            op_name == "zero" && self.sha256.is_some(),
            || at("sha256"),
            &what,
        )?;
        let extents = if reads_base {
            required(self.extents, || at("extents"))?.items
        } else {
            Vec::new()
        };
        let (op, stored, sha256) = match op_name.as_str() {
            "data" => (
                Op::Data,
                stored_field(self.stored)?,
                hash(self.sha256, "sha256")?,
            ),
            "zero" => (Op::Zero, 0, [0; 32]),
            "copy" => (
                Op::Copy {
                    extents,
                    sha256: hash(self.sha256, "sha256")?,
                },
                0,
                [0; 32],
            ),
            _ => {
                let base_sha256 = hash(self.base_sha256, "base_sha256")?;
                let stored = stored_field(self.stored)?;
                let sha256 = hash(self.sha256, "sha256")?;
                let out_sha256 = hash(self.out_sha256, "out_sha256")?;
                // Absent when the patch reads only the base; present, it lists at least one.
                let target_extents = match self.target_extents {
                    Some(t) if t.items.is_empty() => {
                        return Err(Error::BadExtents {
                            image: i,
                            chunk: k,
                            message: "its target_extents list is empty (leave the field out)"
                                .into(),
                        })
                    }
                    Some(t) => t.items,
                    None => Vec::new(),
                };
                (
                    Op::Patch {
                        extents,
                        target_extents,
                        base_sha256,
                        out_sha256,
                    },
                    stored,
                    sha256,
                )
            }
        };
        Ok(Chunk { op, stored, sha256 })
    }
}

/// A field that the kind or operation at hand does not have: a signed manifest means exactly
/// what it says, so it is an error rather than something to ignore.
fn not_here(present: bool, path: impl FnOnce() -> String, what: &str) -> Result<()> {
    if present {
        return Err(Error::FieldNotAllowed {
            path: path(),
            what: what.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
