//! Bundles are outside data, read from a download before anything is trusted: any bytes must
//! give a bundle or an error, never a panic, and what is accepted must hold together.
//!
//! The first input byte steers; the rest becomes a bundle in one of three ways:
//! - as is;
//! - (bit 2) manifest text, a NUL and the payload, wrapped in a correct header and a blank
//!   signature block, so that the fuzzer need not find those first;
//! - (bit 3) edits to a real bundle built at start-up: each 3 bytes set one byte (2 bytes of
//!   position, 1 of value), so that the fuzzer works near valid manifests and zstd frames.
//!
//! The bundle is read unverified and against a fixed keyring. When it has a manifest, every
//! declared chunk is decoded from the bytes that follow; with bit 0 the chunks' hashes are
//! first fixed up to match those bytes, so that decoding runs on them rather than stopping at
//! the hash. With bit 1 the (fixed-up) manifest is then re-signed with the fixed key, so that
//! the verified paths (`read_verified`, `verify_all`) run to the end.
#![no_main]

use std::borrow::Cow;
use std::io::Cursor;
use std::sync::OnceLock;

use abup::bundle::{
    self, Chunk, CreateOptions, Decoder, ImageSource, Keyring, Manifest, SecretKey, FORMAT_VERSION,
    HEADER_LEN, MAGIC, MIN_CHUNK_SIZE, SIGNATURE_LEN,
};
use libfuzzer_sys::fuzz_target;

const FUZZ_KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIF2jwQHUy2yKISXqsMDOH1o8O+I/SGKnDCPNJfJnMShX
-----END PRIVATE KEY-----
";

struct Fixed {
    key: SecretKey,
    ring: Keyring,
    /// A real bundle: `rootfs` in two zstd chunks, `boot` in one.
    template: Vec<u8>,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| {
        let key = SecretKey::from_pem(FUZZ_KEY).expect("the fuzz key is valid");
        let ring = Keyring::from_keys(vec![key.public_key()]);
        let rootfs: Vec<u8> = (0..MIN_CHUNK_SIZE as usize + 1000)
            .map(|i| (i / 300) as u8 ^ (i % 7) as u8)
            .collect();
        let boot: Vec<u8> = (0..300u32).map(|i| (i * 31) as u8).collect();
        let (mut r, mut b) = (rootfs.as_slice(), boot.as_slice());
        let mut sources = [
            ImageSource {
                slot_class: "rootfs".into(),
                reader: &mut r,
                base: None,
            },
            ImageSource {
                slot_class: "boot".into(),
                reader: &mut b,
                base: None,
            },
        ];
        let opts = CreateOptions {
            compatible: "fuzz".into(),
            version: "1".into(),
            chunk_size: MIN_CHUNK_SIZE,
            threads: 1,
            ..CreateOptions::default()
        };
        let mut template = Vec::new();
        bundle::create(
            &opts,
            &mut sources,
            &key,
            &mut Cursor::new(Vec::new()),
            &mut template,
        )
        .expect("the template bundle builds");
        Fixed {
            key,
            ring,
            template,
        }
    })
}

fn input(control: u8, data: &[u8]) -> Cow<'_, [u8]> {
    if control & 8 != 0 {
        let mut b = fixed().template.clone();
        for edit in data.chunks_exact(3) {
            let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % b.len();
            b[at] = edit[2];
        }
        Cow::Owned(b)
    } else if control & 4 != 0 {
        let (manifest, payload) = match data.iter().position(|&b| b == 0) {
            Some(nul) => (&data[..nul], &data[nul + 1..]),
            None => (data, &[][..]),
        };
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
        b.extend_from_slice(manifest);
        b.extend_from_slice(&[0; SIGNATURE_LEN]);
        b.extend_from_slice(payload);
        Cow::Owned(b)
    } else {
        Cow::Borrowed(data)
    }
}

/// What any accepted manifest must satisfy.
fn check_manifest(m: &Manifest) {
    m.validate().expect("an accepted manifest is valid");
    let again = Manifest::parse(&m.to_canonical_json()).expect("canonical JSON parses");
    assert_eq!(&again, m);
    let mut offset = 0u64;
    for c in m.chunks() {
        let img = &m.images[c.image];
        let len = img.chunk_len(c.index);
        assert_eq!(c.offset, offset);
        assert_eq!(c.offset, m.chunk_offset(c.image, c.index));
        assert_eq!(c.range, img.chunk_range(c.index));
        assert_eq!(c.range.end - c.range.start, u64::from(len));
        assert!(len > 0 && len <= img.chunk_size);
        assert!(c.stored >= img.compression.min_stored_len(len));
        assert!(c.stored <= img.compression.max_stored_len(len));
        if c.index + 1 == img.chunks.len() {
            assert_eq!(c.range.end, img.size, "the chunks cover the image");
        }
        offset += u64::from(c.stored);
    }
    assert_eq!(offset, m.payload_len());
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, data)) = data.split_first() else {
        return;
    };
    let data = input(control, data);
    let data = &data[..];
    let Fixed { key, ring, .. } = fixed();

    let verified = bundle::read_verified(&mut &data[..], ring);
    let Ok(front) = bundle::read_unverified(&mut &data[..]) else {
        assert!(verified.is_err());
        return;
    };
    if let Ok(v) = &verified {
        assert_eq!(v.manifest, front.manifest);
        assert_eq!(v.payload_offset, front.payload_offset);
    }
    let manifest_len = u32::from_le_bytes([data[12], data[13], data[14], data[15]]) as usize;
    assert_eq!(
        front.payload_offset as usize,
        HEADER_LEN + manifest_len + SIGNATURE_LEN
    );
    check_manifest(&front.manifest);

    // Every declared chunk, from the bytes that follow, as far as they go.
    let payload = &data[front.payload_offset as usize..];
    let mut manifest = front.manifest.clone();
    let mut decoder = Decoder::new().expect("a zstd context");
    let mut out = Vec::new();
    for c in front.manifest.chunks() {
        let Some(stored) = payload
            .get(c.offset as usize..)
            .and_then(|p| p.get(..c.stored as usize))
        else {
            break;
        };
        let image = &mut manifest.images[c.image];
        if control & 1 != 0 {
            image.chunks[c.index] = Chunk::describe(stored);
        }
        match decoder.decode(image, c.index, stored, &mut out) {
            Ok(()) => assert_eq!(out.len() as u64, c.range.end - c.range.start),
            Err(_) => assert!(out.is_empty()),
        }
    }

    // The same manifest (hashes fixed up), signed by the fixed key, then the same payload:
    // the verified paths accept the front, and check the payload to the end.
    if control & 2 != 0 {
        let mut signed = Vec::new();
        let offset = bundle::write_front(&manifest, key, &mut signed).expect("a valid manifest");
        signed.extend_from_slice(payload);
        let v = bundle::read_verified(&mut signed.as_slice(), ring).expect("signed just now");
        assert_eq!(v.payload_offset, offset);
        assert_eq!(v.manifest, manifest);
        if let Ok(all) = bundle::verify_all(&mut signed.as_slice(), ring, &[]).map(|(v, _)| v) {
            assert_eq!(all, v);
            assert_eq!(offset + manifest.payload_len(), signed.len() as u64);
        }
    }
});
