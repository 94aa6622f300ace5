//! Signed update bundles: the format in `docs/bundle-format.md`, reading and verifying a bundle
//! as a stream, decoding its chunks, and building one.
//!
//! A bundle is a fixed header, a JSON manifest, an ed25519 signature over header and manifest,
//! then the payload: every image cut into chunks, each stored as an independent zstd frame (or
//! raw) whose SHA-256 the manifest carries. Everything needed to check a chunk comes before it,
//! so an install reads the bundle once, front to back, in constant memory, and never writes a
//! byte it has not authenticated:
//!
//! ```no_run
//! # fn demo(mut bundle: impl std::io::Read, keyring: &abup::bundle::Keyring) -> Result<(), abup::bundle::Error> {
//! use abup::bundle::{read_stored, read_verified, Decoder};
//! let verified = read_verified(&mut bundle, keyring)?; // signature, then manifest
//! let mut decoder = Decoder::new()?;
//! let (mut stored, mut data) = (Vec::new(), Vec::new());
//! for c in verified.manifest.chunks() {
//!     read_stored(&mut bundle, &c, verified.payload_offset, &mut stored)?;
//!     decoder.decode(&verified.manifest.images[c.image], c.index, &stored, &mut data)?;
//!     // write `data` at image offset `c.range.start` of the target slot
//! }
//! # Ok(()) }
//! ```
//!
//! Every length and count read from a bundle is checked against the limits below, and against
//! the others, before it is used or anything is allocated for it.

mod create;
mod decode;
pub mod delta;
pub mod hex;
mod keys;
mod manifest;
mod read;

pub use create::{create, write_front, CreateOptions, ImageSource};
pub use decode::{check_stored, decode_chunk, read_base, Decoder, ReadAt, PATCH_WINDOW_LOG_MAX};
pub use keys::{generate_key, Keyring, PublicKey, SecretKey};
pub use manifest::{
    extents_len, Base, Chunk, ChunkRef, Compression, Extent, Image, ImageKind, Manifest, Op,
};
pub use read::{
    read_stored, read_unverified, read_verified, verify_all, Unverified, Verified,
    INFO_JSON_VERSION,
};

use std::fmt;
use std::path::PathBuf;

use hex::Hex;

/// The first 8 bytes of every bundle.
pub const MAGIC: &[u8; 8] = b"ABUPBNDL";
/// The format version this abup reads and writes (header bytes 8..10, little-endian).
pub const FORMAT_VERSION: u16 = 1;
/// Magic, format version, reserved, manifest length.
pub const HEADER_LEN: usize = 16;
/// Key id (SHA-256 of the raw 32-byte ed25519 public key) and the 64-byte signature.
pub const SIGNATURE_LEN: usize = 96;
/// The largest manifest accepted; checked before anything is allocated for it. 65,536 chunks
/// take about 7 MiB of manifest.
pub const MAX_MANIFEST_LEN: usize = 8 << 20;
/// Images in one bundle.
pub const MAX_IMAGES: usize = 8;
/// Chunks in one bundle, over all images: 64 GiB of images at the default chunk size, 1 TiB at
/// the largest.
pub const MAX_CHUNKS: usize = 65_536;
/// The largest image, in bytes (1 TiB).
pub const MAX_IMAGE_SIZE: u64 = 1 << 40;
/// The smallest chunk size (uncompressed bytes per chunk); chunk sizes are powers of two.
pub const MIN_CHUNK_SIZE: u32 = 64 << 10;
/// The largest chunk size; a decoder holds one chunk (per thread) in memory.
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// The chunk size `abup bundle create` uses unless told otherwise.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// The largest chunk size an install accepts (see [`check_installable`]): an install's peak
/// memory must stay at or under 32 MiB whatever chunk size the signer chose, and the install
/// holds a fixed number of chunk buffers. With four decoder threads (the most it starts) that
/// is 13 buffers: 6 stored chunks (2 queued, one per decoder) and 7 decoded ones (2 queued, one
/// per decoder, one being written), each up to a chunk. At 1 MiB: 13 MiB of chunks, 4 MiB of
/// staging for the writes and the read-back, and the process itself; the release build peaks
/// at 24 MiB installing a 200 MiB image with four decoders, and at 37 MiB in 2 MiB chunks
/// (docs/bundle-format.md). With [`MAX_CHUNKS`] this caps an installable bundle at 64 GiB of
/// images.
pub const MAX_INSTALL_CHUNK_SIZE: u32 = 1 << 20;
// A chunk size the format allows, and bundles made with the defaults install.
const _: () = assert!(
    MAX_INSTALL_CHUNK_SIZE.is_power_of_two()
        && MIN_CHUNK_SIZE <= MAX_INSTALL_CHUNK_SIZE
        && MAX_INSTALL_CHUNK_SIZE <= MAX_CHUNK_SIZE
        && DEFAULT_CHUNK_SIZE <= MAX_INSTALL_CHUNK_SIZE
);
/// The largest stored chunk: a zstd frame of a `MAX_CHUNK_SIZE` chunk that did not compress
/// (see [`Compression::max_stored_len`]).
pub const MAX_STORED_LEN: u32 = MAX_CHUNK_SIZE + (MAX_CHUNK_SIZE >> 8);
/// The most base bytes one patch operation reads as its reference: the builder keeps every
/// window within it, and a device holds one window per decoder thread, so this (with the
/// chunk buffers) bounds an install's memory. 8 MiB: four decoders' windows and the chunk
/// buffers stay under the 64 MiB a delta install may use.
pub const MAX_PATCH_WINDOW: u64 = 8 << 20;
/// Extents one copy or patch operation may list: a window of scattered 4 KiB blocks.
pub const MAX_OP_EXTENTS: usize = (MAX_PATCH_WINDOW / 4096) as usize;
/// Extents over the whole manifest, counted while parsing like chunks are.
pub const MAX_EXTENTS: usize = 1 << 20;
/// `compatible` and `version` are 1 to this many printable ASCII characters.
pub const MAX_TEXT_LEN: usize = 128;
/// A slot class is 1 to this many of `[a-z0-9_-]`.
pub const MAX_SLOT_CLASS_LEN: usize = 32;
/// The zstd level `abup bundle create` uses unless told otherwise.
pub const DEFAULT_LEVEL: i32 = 3;
/// The zstd level of delta images unless told otherwise: a delta is built once and
/// downloaded by every device, so the build spends the time.
pub const DEFAULT_DELTA_LEVEL: i32 = 19;
/// `*.pem` files a keyring directory may hold.
pub const MAX_KEYRING_KEYS: usize = 256;
/// The largest key file; an ed25519 PEM key is about 120 bytes.
pub const MAX_KEY_FILE_LEN: u64 = 16 << 10;

/// Where in a bundle a read stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    Header,
    Manifest,
    Signature,
    Payload,
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Region::Header => "header",
            Region::Manifest => "manifest",
            Region::Signature => "signature",
            Region::Payload => "payload",
        })
    }
}

/// Everything that can go wrong reading, verifying, decoding or building a bundle. Each
/// message is one line that says what is wrong with which value and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // -- the stream --
    #[error("cannot read the bundle at byte {offset}: {source}")]
    Read { offset: u64, source: std::io::Error },
    #[error("the bundle ends at byte {offset}, inside its {region}: it is incomplete; download or copy it again")]
    Truncated { region: Region, offset: u64 },
    #[error("not an abup bundle: it starts with {} instead of \"ABUPBNDL\"; check the file name", Hex(.found))]
    BadMagic { found: [u8; 8] },
    #[error("bundle format version {found} is not supported: this abup reads version {FORMAT_VERSION}; update abup to install this bundle")]
    UnsupportedVersion { found: u16 },
    #[error("the bundle header's reserved field is {found:#06x} instead of 0: the bundle is damaged or needs a newer abup")]
    ReservedField { found: u16 },
    #[error("the bundle's manifest length is {len} bytes, outside 1..={MAX_MANIFEST_LEN}: the file is damaged or not an abup bundle")]
    ManifestLength { len: u64 },
    #[error("the bundle has data after its payload, from byte {offset}: the file is damaged or is not one bundle; download it again")]
    TrailingData { offset: u64 },

    // -- the signature --
    #[error("no public keys to verify the bundle with: put the signer's public key (a .pem file) in the keyring directory")]
    EmptyKeyring,
    #[error("the bundle names signing key {}, which is not in the keyring: add that public key, or use a bundle signed by a trusted key (a damaged header reads the same way)", Hex(.key_id))]
    UnknownKey { key_id: [u8; 32] },
    #[error("the signature by key {} does not match the bundle: it was modified or damaged; do not install it", Hex(.key_id))]
    BadSignature { key_id: [u8; 32] },

    // -- the manifest --
    #[error(
        "the bundle manifest is not valid: {message}; rebuild the bundle with abup bundle create"
    )]
    ManifestSyntax { message: String },
    #[error("the bundle manifest has a field {path:?} that this abup does not know: update abup to install this bundle")]
    UnknownField { path: String },
    #[error(
        "the bundle manifest lacks the field {path:?}; rebuild the bundle with abup bundle create"
    )]
    MissingField { path: String },
    #[error("image {image} is of kind {kind:?}, which this abup does not know (it knows \"full\" and \"delta\"): update abup to install this bundle")]
    UnknownImageKind { image: usize, kind: String },
    #[error("image {image} is compressed with {compression:?}, which this abup does not know (it knows \"zstd\" and \"none\"): update abup to install this bundle")]
    UnknownCompression { image: usize, compression: String },
    #[error("chunk {chunk} of image {image} is a {op:?} operation, which this abup does not know (it knows \"data\", \"zero\", \"copy\" and \"patch\"): update abup to install this bundle")]
    UnknownChunkOp {
        image: usize,
        chunk: usize,
        op: String,
    },
    #[error("manifest field {field} is {value:?}: it must be 1 to {MAX_TEXT_LEN} printable ASCII characters")]
    BadText { field: &'static str, value: String },
    #[error("image {image} has slot class {value:?}: it must be 1 to {MAX_SLOT_CLASS_LEN} characters of a-z, 0-9, _ and -")]
    BadSlotClass { image: usize, value: String },
    #[error("two images of the bundle are for slot class {slot_class:?}: each slot class may appear once")]
    DuplicateSlotClass { slot_class: String },
    #[error("the bundle has {count} images: it must have 1 to {MAX_IMAGES}")]
    ImageCount { count: usize },
    #[error("manifest field {path} is {value:?}, not 64 lowercase hex digits (a SHA-256)")]
    BadHex { path: String, value: String },
    #[error("image {image} has chunk size {chunk_size}: it must be a power of two from {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE}")]
    ChunkSize { image: usize, chunk_size: u64 },
    #[error("image {image} is {size} bytes: an image must be 1 to {MAX_IMAGE_SIZE} bytes")]
    ImageSize { image: usize, size: u64 },
    #[error("image {image} of {size} bytes in chunks of {chunk_size} needs {expected} chunks, but the manifest lists {found}")]
    ChunkCount {
        image: usize,
        size: u64,
        chunk_size: u32,
        expected: u64,
        found: usize,
    },
    #[error("manifest field {path} does not belong in {what}; the bundle is damaged, rebuild it with abup bundle create")]
    FieldNotAllowed { path: String, what: String },
    #[error("image {image} is a delta against a base of {size} bytes: a base must be 1 to {MAX_IMAGE_SIZE} bytes")]
    BaseSize { image: usize, size: u64 },
    #[error("chunk {chunk} of image {image} reads the base wrongly: {message}; the bundle is damaged, rebuild it")]
    BadExtents {
        image: usize,
        chunk: usize,
        message: String,
    },
    #[error("the bundle lists {count} base extents, more than {MAX_EXTENTS}: rebuild it")]
    TooManyExtents { count: usize },
    #[error("the bundle has {count} chunks, more than {MAX_CHUNKS}: use a larger chunk size")]
    TooManyChunks { count: u64 },
    #[error("chunk {chunk} of image {image} is stored in {stored} bytes: it must be {min} to {max}; the bundle is damaged")]
    StoredLength {
        image: usize,
        chunk: usize,
        stored: u64,
        min: u32,
        max: u32,
    },

    // -- the payload --
    #[error("chunk {chunk} of image {slot_class} has SHA-256 {} instead of {}: the bundle was modified or damaged; download it again", Hex(.found), Hex(.expected))]
    ChunkHash {
        slot_class: String,
        chunk: usize,
        expected: [u8; 32],
        found: [u8; 32],
    },
    #[error("chunk {chunk} of image {slot_class} does not decode: {message}; the bundle was built wrongly, rebuild it")]
    ChunkDecode {
        slot_class: String,
        chunk: usize,
        message: String,
    },
    #[error("chunk {chunk} of image {slot_class} decodes to {} bytes instead of {expected}: the bundle was built wrongly, rebuild it", .found.map_or_else(|| "more".to_string(), |n| n.to_string()))]
    ChunkLength {
        slot_class: String,
        chunk: usize,
        expected: u64,
        found: Option<u64>,
    },
    #[error("chunk {chunk} of image {slot_class} needs base bytes with SHA-256 {} but the base holds {} there: it is not the image the delta was built against (or it was changed, e.g. mounted read-write)", Hex(.expected), Hex(.found))]
    BaseMismatch {
        slot_class: String,
        chunk: usize,
        expected: [u8; 32],
        found: [u8; 32],
    },
    #[error("cannot read the base at byte {offset}: {source}")]
    BaseRead { offset: u64, source: std::io::Error },
    #[error("cannot read back byte {offset} of the new {slot_class} image for a patch: {source}")]
    TargetRead {
        slot_class: String,
        offset: u64,
        source: std::io::Error,
    },
    #[error("image {slot_class} is a delta, and no base image was given to rebuild it from")]
    NoBase { slot_class: String },
    #[error("chunk {chunk} of image {slot_class} patches to bytes the bundle does not vouch for: the bundle was built wrongly, rebuild it")]
    PatchOutput { slot_class: String, chunk: usize },
    #[error("image {slot_class} has SHA-256 {} instead of {}: the bundle was built wrongly, rebuild it", Hex(.found), Hex(.expected))]
    ImageHash {
        slot_class: String,
        expected: [u8; 32],
        found: [u8; 32],
    },

    // -- what this abup installs --
    #[error("image {slot_class} has chunk size {chunk_size}, more than the {MAX_INSTALL_CHUNK_SIZE} bytes this abup installs (it holds a dozen chunks in memory at once): rebuild the bundle with --chunk-size {MAX_INSTALL_CHUNK_SIZE} or less")]
    ChunkTooLargeToInstall { slot_class: String, chunk_size: u32 },

    // -- keys --
    #[error("cannot read the {what} key: {message}; expected a PEM ed25519 key as `abup keygen` or `openssl genpkey -algorithm ed25519` writes")]
    KeyPem { what: &'static str, message: String },
    #[error("cannot read key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: Box<Error>,
    },
    #[error("cannot read keyring {path}: {source}")]
    Keyring {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("keyring {path} has more than {MAX_KEYRING_KEYS} .pem files: remove the keys that are no longer used")]
    KeyringTooLarge { path: PathBuf },
    #[error("keyring {path} is writable by group or others (mode {mode:o}), so anyone who can write to it could add a key that signs updates: run `chmod go-w {path}`")]
    KeyringWritable { path: PathBuf, mode: u32 },
    #[error("key file {path} is {kind}, not a regular file: a keyring holds regular .pem files only; remove it, or put the key itself there")]
    KeyFileNotRegular { path: PathBuf, kind: &'static str },
    #[error("key file {path} is writable by group or others (mode {mode:o}), so anyone could replace the key: run `chmod go-w {path}`")]
    KeyFileWritable { path: PathBuf, mode: u32 },
    #[error("key file {path} is larger than {MAX_KEY_FILE_LEN} bytes: it is not an ed25519 key")]
    KeyFileTooLarge { path: PathBuf },
    #[error("key file {path} holds a secret key: a keyring holds public keys only; replace it with its public key (`openssl pkey -in FILE -pubout`) and keep the secret key off the device")]
    SecretKeyInKeyring { path: PathBuf },

    // -- building --
    #[error("zstd level {level} is outside {min}..={max}: choose one in that range (1 is fastest, 19 is small, 3 is the default)")]
    Level { level: i32, min: i32, max: i32 },
    #[error("cannot read image {slot_class}: {source}")]
    ImageRead {
        slot_class: String,
        source: std::io::Error,
    },
    #[error("cannot write the bundle: {source}")]
    Write { source: std::io::Error },
    #[error(
        "cannot use the scratch file for the payload: {source}; check the free space where it is"
    )]
    Scratch { source: std::io::Error },
    #[error("zstd failed: {message}")]
    Zstd { message: String },
}

impl Error {
    /// Whether the error is the bundle's own fault (its bytes, signature or contents), so that
    /// trying the same bundle again cannot help: the rest are I/O on this machine, its keyring,
    /// or the arguments of `bundle create`.
    pub fn is_bundle_fault(&self) -> bool {
        !matches!(
            self,
            Error::Read { .. }
                | Error::BaseRead { .. }
                | Error::TargetRead { .. }
                | Error::EmptyKeyring
                | Error::KeyPem { .. }
                | Error::KeyFile { .. }
                | Error::Keyring { .. }
                | Error::KeyringTooLarge { .. }
                | Error::KeyringWritable { .. }
                | Error::KeyFileNotRegular { .. }
                | Error::KeyFileWritable { .. }
                | Error::KeyFileTooLarge { .. }
                | Error::SecretKeyInKeyring { .. }
                | Error::Level { .. }
                | Error::ImageRead { .. }
                | Error::Write { .. }
                | Error::Scratch { .. }
                | Error::Zstd { .. }
        )
    }
}

/// The result of everything in this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether this abup can install a verified bundle within its memory budget: every image's
/// chunk size is at most [`MAX_INSTALL_CHUNK_SIZE`]. The format allows chunks up to
/// [`MAX_CHUNK_SIZE`] (the signer chooses), so an install checks this before it writes
/// anything; `bundle info` and `bundle verify` hold one chunk at a time and need not.
pub fn check_installable(manifest: &Manifest) -> Result<()> {
    match manifest
        .images
        .iter()
        .find(|i| i.chunk_size > MAX_INSTALL_CHUNK_SIZE)
    {
        Some(image) => Err(Error::ChunkTooLargeToInstall {
            slot_class: image.slot_class.clone(),
            chunk_size: image.chunk_size,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(chunk_sizes: &[u32]) -> Manifest {
        let images = chunk_sizes
            .iter()
            .enumerate()
            .map(|(i, &chunk_size)| Image {
                slot_class: format!("class{i}"),
                size: u64::from(chunk_size),
                sha256: [0; 32],
                kind: ImageKind::Full,
                compression: Compression::Zstd,
                chunk_size,
                chunks: vec![Chunk {
                    op: Op::Data,
                    stored: 1,
                    sha256: [0; 32],
                }],
            })
            .collect();
        Manifest {
            compatible: "c".into(),
            version: "v".into(),
            security_version: 0,
            created: 0,
            images,
        }
    }

    #[test]
    fn chunks_up_to_the_limit_install() {
        let mut size = MIN_CHUNK_SIZE;
        while size <= MAX_INSTALL_CHUNK_SIZE {
            check_installable(&manifest(&[size, MIN_CHUNK_SIZE])).unwrap();
            size *= 2;
        }
    }

    #[test]
    fn larger_chunks_are_refused_naming_the_image_and_the_limit() {
        let mut size = MAX_INSTALL_CHUNK_SIZE * 2;
        while size <= MAX_CHUNK_SIZE {
            // The second image too: every image is checked, not the first.
            match check_installable(&manifest(&[MIN_CHUNK_SIZE, size])) {
                Err(e @ Error::ChunkTooLargeToInstall { .. }) => {
                    let msg = e.to_string();
                    for part in [
                        "class1",
                        &size.to_string(),
                        &MAX_INSTALL_CHUNK_SIZE.to_string(),
                    ] {
                        assert!(msg.contains(part), "{part} missing in {msg}");
                    }
                    assert!(!msg.contains('\n'), "{msg}");
                }
                r => panic!("chunk size {size}: {r:?}"),
            }
            size *= 2;
        }
    }
}
