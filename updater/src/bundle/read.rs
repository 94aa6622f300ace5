//! Reading a bundle from a stream: the front (header, manifest, signature), the stored chunks,
//! and the whole-bundle check behind `abup bundle verify`.

use std::io::{ErrorKind, Read};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::hex;
use super::{
    ChunkRef, Decoder, Error, Keyring, Manifest, Region, Result, FORMAT_VERSION, HEADER_LEN, MAGIC,
    MAX_MANIFEST_LEN, SIGNATURE_LEN,
};

/// The front of a bundle whose signature holds, by a key of the keyring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub manifest: Manifest,
    /// The key that signed the bundle.
    pub key_id: [u8; 32],
    /// SHA-256 of the manifest bytes: names this bundle, e.g. in a resume journal.
    pub manifest_sha256: [u8; 32],
    /// Where the payload starts, from the start of the bundle.
    pub payload_offset: u64,
}

/// The front of a bundle whose signature was not checked: for showing what a bundle claims
/// (`abup bundle info`) when its key is not at hand. Nothing in it may be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    pub manifest: Manifest,
    /// The key the bundle says signed it.
    pub key_id: [u8; 32],
    pub manifest_sha256: [u8; 32],
    pub payload_offset: u64,
}

/// The front of a bundle as read, before anything is checked beyond the header.
struct Front {
    /// Header and manifest: the bytes the signature covers.
    signed: Vec<u8>,
    key_id: [u8; 32],
    signature: [u8; 64],
}

impl Front {
    fn manifest_bytes(&self) -> &[u8] {
        &self.signed[HEADER_LEN..]
    }

    fn payload_offset(&self) -> u64 {
        (self.signed.len() + SIGNATURE_LEN) as u64
    }

    fn manifest_sha256(&self) -> [u8; 32] {
        Sha256::digest(self.manifest_bytes()).into()
    }
}

/// Reads `buf.len()` bytes, reporting where the stream ended if it ends early.
fn fill<R: Read + ?Sized>(r: &mut R, buf: &mut [u8], region: Region, offset: u64) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => {
                return Err(Error::Truncated {
                    region,
                    offset: offset + done as u64,
                })
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(Error::Read {
                    offset: offset + done as u64,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Appends exactly `len` bytes to `buf`, growing it as data arrives (so that a short stream
/// that claims a long region does not make us allocate the claim).
fn append<R: Read + ?Sized>(
    r: &mut R,
    buf: &mut Vec<u8>,
    len: usize,
    region: Region,
    offset: u64,
) -> Result<()> {
    let start = buf.len();
    let got = r
        .take(len as u64)
        .read_to_end(buf)
        .map_err(|source| Error::Read {
            offset: offset + (buf.len() - start) as u64,
            source,
        })?;
    if got < len {
        return Err(Error::Truncated {
            region,
            offset: offset + got as u64,
        });
    }
    Ok(())
}

fn read_front<R: Read + ?Sized>(r: &mut R) -> Result<Front> {
    let mut header = [0u8; HEADER_LEN];
    fill(r, &mut header, Region::Header, 0)?;
    let field = |at: usize| [header[at], header[at + 1]];
    if &header[..8] != MAGIC {
        let mut found = [0u8; 8];
        found.copy_from_slice(&header[..8]);
        return Err(Error::BadMagic { found });
    }
    // A later format version may give the rest of the header another meaning: look at
    // nothing else first.
    let version = u16::from_le_bytes(field(8));
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion { found: version });
    }
    let reserved = u16::from_le_bytes(field(10));
    if reserved != 0 {
        return Err(Error::ReservedField { found: reserved });
    }
    let len = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    let manifest_len = usize::try_from(len)
        .ok()
        .filter(|&n| (1..=MAX_MANIFEST_LEN).contains(&n))
        .ok_or(Error::ManifestLength { len: len.into() })?;

    let mut signed = Vec::with_capacity(HEADER_LEN + manifest_len.min(64 << 10));
    signed.extend_from_slice(&header);
    append(
        r,
        &mut signed,
        manifest_len,
        Region::Manifest,
        HEADER_LEN as u64,
    )?;
    let mut block = [0u8; SIGNATURE_LEN];
    fill(r, &mut block, Region::Signature, signed.len() as u64)?;
    let mut key_id = [0u8; 32];
    key_id.copy_from_slice(&block[..32]);
    let mut signature = [0u8; 64];
    signature.copy_from_slice(&block[32..]);
    Ok(Front {
        signed,
        key_id,
        signature,
    })
}

/// Reads the header, manifest and signature from the front of a bundle, checks the signature
/// against the keyring, and only then parses and validates the manifest. Reads exactly
/// `HEADER_LEN + manifest length + SIGNATURE_LEN` bytes (fewer on error), so `r` is left at the
/// start of the payload.
pub fn read_verified<R: Read + ?Sized>(r: &mut R, keyring: &Keyring) -> Result<Verified> {
    if keyring.is_empty() {
        return Err(Error::EmptyKeyring);
    }
    let front = read_front(r)?;
    let key = keyring.get(&front.key_id).ok_or(Error::UnknownKey {
        key_id: front.key_id,
    })?;
    if !key.verify(&front.signed, &front.signature) {
        return Err(Error::BadSignature {
            key_id: front.key_id,
        });
    }
    let manifest = Manifest::parse(front.manifest_bytes())?;
    Ok(Verified {
        manifest,
        key_id: front.key_id,
        manifest_sha256: front.manifest_sha256(),
        payload_offset: front.payload_offset(),
    })
}

/// [`read_verified`] without the signature check, for `abup bundle info` on a bundle whose key
/// is not at hand. The manifest is still parsed and validated.
pub fn read_unverified<R: Read + ?Sized>(r: &mut R) -> Result<Unverified> {
    let front = read_front(r)?;
    let manifest = Manifest::parse(front.manifest_bytes())?;
    Ok(Unverified {
        manifest,
        key_id: front.key_id,
        manifest_sha256: front.manifest_sha256(),
        payload_offset: front.payload_offset(),
    })
}

/// Reads the stored bytes of `chunk` (the next thing in the stream) into `buf`, replacing its
/// contents. `payload_offset` is where the payload starts in the bundle, for messages.
pub fn read_stored<R: Read + ?Sized>(
    r: &mut R,
    chunk: &ChunkRef,
    payload_offset: u64,
    buf: &mut Vec<u8>,
) -> Result<()> {
    buf.clear();
    append(
        r,
        buf,
        chunk.stored as usize,
        Region::Payload,
        payload_offset + chunk.offset,
    )
}

/// Checks a whole bundle: signature, manifest, every chunk's hash and decoded length, every
/// image's SHA-256, and that nothing follows the payload. Reads the bundle once, front to
/// back, holding one chunk at a time. A delta image is rebuilt from its base in `bases`
/// (slot class, base image) when there is one; without it only its stored chunks are checked
/// (hashes, and data chunks decoded), and its slot class is in the returned list. A delta
/// whose patches refer to its own earlier bytes is rebuilt in memory, as large as the image.
pub fn verify_all<R: Read + ?Sized>(
    r: &mut R,
    keyring: &Keyring,
    bases: &[(&str, &[u8])],
) -> Result<(Verified, Vec<String>)> {
    let verified = read_verified(r, keyring)?;
    let manifest = &verified.manifest;
    let mut decoder = Decoder::new()?;
    let (mut stored, mut data, mut window) = (Vec::new(), Vec::new(), Vec::new());
    let mut hasher = Sha256::new();
    let mut unchecked = Vec::new();
    let mut rebuilt = Vec::new();
    let reads_target: Vec<bool> = manifest.images.iter().map(|i| i.reads_target()).collect();
    for chunk in manifest.chunks() {
        let image = &manifest.images[chunk.image];
        read_stored(r, &chunk, verified.payload_offset, &mut stored)?;
        let base = bases
            .iter()
            .find(|(c, _)| *c == image.slot_class)
            .map(|(_, b)| b);
        let whole = image.kind.base().is_none() || base.is_some();
        if whole {
            let base = base.map(|b| b as &dyn super::ReadAt);
            let target = &rebuilt.as_slice();
            decoder.make(
                image,
                chunk.index,
                &stored,
                base,
                Some(target),
                &mut window,
                &mut data,
            )?;
            hasher.update(&data);
            if reads_target[chunk.image] {
                rebuilt.extend_from_slice(&data);
            }
        } else if image.chunks[chunk.index].op == super::Op::Data {
            decoder.decode(image, chunk.index, &stored, &mut data)?;
        } else if image.chunks[chunk.index].op.stores() {
            super::check_stored(image, chunk.index, &stored)?;
        }
        if chunk.index + 1 == image.chunks.len() {
            rebuilt = Vec::new();
            let found: [u8; 32] = hasher.finalize_reset().into();
            if !whole {
                unchecked.push(image.slot_class.clone());
            } else if found != image.sha256 {
                return Err(Error::ImageHash {
                    slot_class: image.slot_class.clone(),
                    expected: image.sha256,
                    found,
                });
            }
        }
    }
    let end = verified.payload_offset + manifest.payload_len();
    let mut byte = [0u8; 1];
    loop {
        match r.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => return Err(Error::TrailingData { offset: end }),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(Error::Read {
                    offset: end,
                    source,
                })
            }
        }
    }
    Ok((verified, unchecked))
}

/// The schema version of [`info_json`]'s output.
pub const INFO_JSON_VERSION: u32 = 1;

/// `abup bundle info --json`: what the front of a bundle says, as one JSON object (schema in
/// `docs/bundle-format.md`). `verified` says whether the signature was checked.
fn info_json(
    manifest: &Manifest,
    key_id: &[u8; 32],
    manifest_sha256: &[u8; 32],
    payload_offset: u64,
    verified: bool,
) -> Value {
    let images: Vec<Value> = manifest
        .images
        .iter()
        .map(|img| {
            json!({
                "slot_class": img.slot_class,
                "size": img.size,
                "sha256": hex::encode(&img.sha256),
                "kind": img.kind.as_str(),
                "base_size": img.kind.base().map(|b| b.size),
                "base_sha256": img.kind.base().map(|b| hex::encode(&b.sha256)),
                "compression": img.compression.as_str(),
                "chunk_size": img.chunk_size,
                "chunk_count": img.chunks.len(),
                "stored": img.payload_len(),
            })
        })
        .collect();
    json!({
        "version": INFO_JSON_VERSION,
        "format_version": FORMAT_VERSION,
        "verified": verified,
        "key_id": hex::encode(key_id),
        "manifest_sha256": hex::encode(manifest_sha256),
        "compatible": manifest.compatible,
        "bundle_version": manifest.version,
        "security_version": manifest.security_version,
        "created": manifest.created,
        "payload_offset": payload_offset,
        "payload_len": manifest.payload_len(),
        "bundle_len": payload_offset + manifest.payload_len(),
        "images": images,
    })
}

impl Verified {
    /// `abup bundle info --json` of this bundle, marked verified: one JSON object, schema
    /// version [`INFO_JSON_VERSION`], described in `docs/bundle-format.md`.
    pub fn info_json(&self) -> Value {
        info_json(
            &self.manifest,
            &self.key_id,
            &self.manifest_sha256,
            self.payload_offset,
            true,
        )
    }
}

impl Unverified {
    /// `abup bundle info --json` of this bundle, marked unverified (`"verified": false`).
    pub fn info_json(&self) -> Value {
        info_json(
            &self.manifest,
            &self.key_id,
            &self.manifest_sha256,
            self.payload_offset,
            false,
        )
    }
}
