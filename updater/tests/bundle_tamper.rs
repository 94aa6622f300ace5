//! Damaged, tampered, truncated and padded bundles: each is refused with the error that names
//! what is wrong and where, never accepted and never a panic.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::Cursor;

use abup::bundle::{
    self, generate_key, read_unverified, read_verified, verify_all, Compression, CreateOptions,
    Error, ImageSource, Keyring, Region, SecretKey, Verified, FORMAT_VERSION, HEADER_LEN,
    MAX_MANIFEST_LEN, MIN_CHUNK_SIZE, SIGNATURE_LEN,
};

const CS: usize = MIN_CHUNK_SIZE as usize;

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(seed) >> 3 ^ i >> 11) as u8)
        .collect()
}

/// Two images: `boot` in 2 chunks, `rootfs` in 3.
fn fixture() -> (Vec<u8>, SecretKey, Verified) {
    fixture_with(Compression::Zstd)
}

fn fixture_with(compression: Compression) -> (Vec<u8>, SecretKey, Verified) {
    let key = generate_key();
    let (boot, rootfs) = (pattern(CS + 100, 7), pattern(2 * CS + 5, 13));
    let mut out = Vec::new();
    let opts = CreateOptions {
        compatible: "board".into(),
        version: "1".into(),
        chunk_size: MIN_CHUNK_SIZE,
        compression,
        threads: 2,
        ..CreateOptions::default()
    };
    let (mut a, mut b) = (boot.as_slice(), rootfs.as_slice());
    let mut sources = [
        ImageSource {
            slot_class: "boot".into(),
            reader: &mut a,
            base: None,
        },
        ImageSource {
            slot_class: "rootfs".into(),
            reader: &mut b,
            base: None,
        },
    ];
    bundle::create(
        &opts,
        &mut sources,
        &key,
        &mut Cursor::new(Vec::new()),
        &mut out,
    )
    .unwrap();
    let v = read_verified(&mut out.as_slice(), &ring(&key)).unwrap();
    (out, key, v)
}

fn ring(key: &SecretKey) -> Keyring {
    Keyring::from_keys(vec![key.public_key()])
}

fn flipped(b: &[u8], at: usize) -> Vec<u8> {
    let mut b = b.to_vec();
    b[at] ^= 0x01;
    b
}

fn verify_err(b: &[u8], ring: &Keyring) -> Error {
    let e = verify_all(&mut Cursor::new(b), ring, &[]).expect_err("must be refused");
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "one line: {msg}");
    e
}

#[test]
fn every_header_byte() {
    let (b, key, _) = fixture();
    let ring = ring(&key);
    for at in 0..HEADER_LEN {
        let e = verify_err(&flipped(&b, at), &ring);
        match at {
            0..=7 => assert!(matches!(e, Error::BadMagic { .. }), "{at}: {e}"),
            8..=9 => assert!(matches!(e, Error::UnsupportedVersion { .. }), "{at}: {e}"),
            10..=11 => assert!(matches!(e, Error::ReservedField { .. }), "{at}: {e}"),
            // The manifest length moves the signature block: the key id read is then wrong.
            _ => assert!(
                matches!(
                    e,
                    Error::UnknownKey { .. }
                        | Error::Truncated { .. }
                        | Error::ManifestLength { .. }
                ),
                "{at}: {e}"
            ),
        }
    }
}

#[test]
fn manifest_bytes_break_the_signature() {
    let (b, key, v) = fixture();
    let ring = ring(&key);
    let sig_at = v.payload_offset as usize - SIGNATURE_LEN;
    // A spread over the whole manifest, both ends included (an unoptimized signature check
    // takes about 10 ms, too slow for every byte in a debug build).
    let spread = (HEADER_LEN..sig_at).step_by(23).chain([sig_at - 1]);
    for at in spread {
        match read_verified(&mut Cursor::new(flipped(&b, at)), &ring) {
            Err(Error::BadSignature { key_id }) => assert_eq!(key_id, v.key_id),
            r => panic!("byte {at}: {r:?}"),
        }
    }
}

#[test]
fn every_signature_block_byte() {
    let (b, key, v) = fixture();
    let ring = ring(&key);
    let sig_at = v.payload_offset as usize - SIGNATURE_LEN;
    for at in sig_at..sig_at + 32 {
        match read_verified(&mut Cursor::new(flipped(&b, at)), &ring) {
            Err(e @ Error::UnknownKey { key_id }) => {
                assert_ne!(key_id, v.key_id);
                assert!(e.to_string().contains(&bundle::hex::encode(&key_id)), "{e}");
            }
            r => panic!("byte {at}: {r:?}"),
        }
    }
    for at in sig_at + 32..sig_at + SIGNATURE_LEN {
        assert!(
            matches!(
                read_verified(&mut Cursor::new(flipped(&b, at)), &ring),
                Err(Error::BadSignature { .. })
            ),
            "byte {at}"
        );
    }
}

#[test]
fn chunk_bytes_name_their_chunk() {
    let (b, key, v) = fixture();
    let ring = ring(&key);
    for c in v.manifest.chunks() {
        let start = (v.payload_offset + c.offset) as usize;
        let end = start + c.stored as usize;
        for at in [start, start + 1, (start + end) / 2, end - 1] {
            match verify_err(&flipped(&b, at), &ring) {
                Error::ChunkHash {
                    slot_class, chunk, ..
                } => {
                    assert_eq!(slot_class, v.manifest.images[c.image].slot_class);
                    assert_eq!(chunk, c.index);
                }
                e => panic!("byte {at} in {c:?}: {e}"),
            }
        }
    }
}

#[test]
fn swapped_chunks_are_caught() {
    let (b, key, v) = fixture_with(Compression::None);
    let refs: Vec<_> = v.manifest.chunks().collect();
    let (x, y) = (&refs[2], &refs[3]);
    assert_eq!(
        x.stored, y.stored,
        "rootfs's first two chunks are the same length"
    );
    let mut swapped = b.clone();
    let (xs, ys) = (
        (v.payload_offset + x.offset) as usize,
        (v.payload_offset + y.offset) as usize,
    );
    let len = x.stored as usize;
    let tmp = swapped[xs..xs + len].to_vec();
    swapped.copy_within(ys..ys + len, xs);
    swapped[ys..ys + len].copy_from_slice(&tmp);
    assert_ne!(swapped, b);
    assert!(matches!(
        verify_err(&swapped, &ring(&key)),
        Error::ChunkHash { chunk: 0, ref slot_class, .. } if slot_class == "rootfs"
    ));
}

#[test]
fn keys_and_keyrings() {
    let (b, key, v) = fixture();
    let other = generate_key();
    match verify_err(&b, &ring(&other)) {
        e @ Error::UnknownKey { key_id } => {
            assert_eq!(key_id, key.public_key().key_id());
            assert!(e.to_string().contains(&bundle::hex::encode(&key_id)));
        }
        e => panic!("{e}"),
    }
    assert!(matches!(
        verify_err(&b, &Keyring::default()),
        Error::EmptyKeyring
    ));
    // A keyring with the old and the new key (rotation) accepts it.
    let both = Keyring::from_keys(vec![other.public_key(), key.public_key()]);
    assert_eq!(verify_all(&mut b.as_slice(), &both, &[]).unwrap().0, v);

    // The signature of one trusted key presented under the id of another.
    let sig_at = v.payload_offset as usize - SIGNATURE_LEN;
    let mut forged = b.clone();
    forged[sig_at..sig_at + 32].copy_from_slice(&other.public_key().key_id());
    assert!(matches!(
        verify_err(&forged, &both),
        Error::BadSignature { .. }
    ));
}

#[test]
fn truncation_anywhere_says_where() {
    let (b, key, v) = fixture();
    let ring = ring(&key);
    let sig_at = v.payload_offset as usize - SIGNATURE_LEN;
    let region = |cut: usize| match cut {
        c if c < HEADER_LEN => Region::Header,
        c if c < sig_at => Region::Manifest,
        c if c < v.payload_offset as usize => Region::Signature,
        _ => Region::Payload,
    };
    // Every cut in the front (refused before the signature is checked: cheap); in the payload,
    // around every chunk boundary and a spread of others.
    let mut cuts: Vec<usize> = (0..v.payload_offset as usize).collect();
    for c in v.manifest.chunks() {
        let at = (v.payload_offset + c.offset) as usize;
        cuts.extend([at, at + 1, at + c.stored as usize - 1]);
    }
    cuts.extend((v.payload_offset as usize..b.len()).step_by(4099));
    cuts.retain(|&c| c < b.len());
    for cut in cuts {
        match verify_err(&b[..cut], &ring) {
            Error::Truncated { region: r, offset } => {
                assert_eq!(r, region(cut), "cut {cut}");
                assert_eq!(offset, cut as u64, "cut {cut}");
            }
            e => panic!("cut {cut}: {e}"),
        }
    }
    // The front alone is a complete front.
    let front = &b[..v.payload_offset as usize];
    assert_eq!(read_verified(&mut &front[..], &ring).unwrap(), v);
    read_unverified(&mut &front[..]).unwrap();
}

#[test]
fn nothing_may_follow_the_payload() {
    let (b, key, v) = fixture();
    let ring = ring(&key);
    for extra in [vec![0u8], b"ABUPBNDL".to_vec(), vec![0xff; 1 << 20]] {
        let padded = [b.as_slice(), &extra].concat();
        match verify_err(&padded, &ring) {
            Error::TrailingData { offset } => assert_eq!(offset, b.len() as u64),
            e => panic!("{e}"),
        }
        // The front is unaffected: an install that stops after the last chunk is fine.
        assert_eq!(read_verified(&mut padded.as_slice(), &ring).unwrap(), v);
    }
}

/// A header with the given fields, then `rest`.
fn with_header(version: u16, reserved: u16, len: u32, rest: &[u8]) -> Vec<u8> {
    let mut b = b"ABUPBNDL".to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&reserved.to_le_bytes());
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(rest);
    b
}

#[test]
fn header_fields() {
    let any = Keyring::from_keys(vec![generate_key().public_key()]);
    let read = |b: Vec<u8>| read_verified(&mut b.as_slice(), &any).unwrap_err();
    for v in [0, 2, FORMAT_VERSION + 1, u16::MAX] {
        match read(with_header(v, 0, 10, &[])) {
            e @ Error::UnsupportedVersion { found } => {
                assert_eq!(found, v);
                assert!(e.to_string().contains("update abup"), "{e}");
            }
            e => panic!("{e}"),
        }
    }
    assert!(matches!(
        read(with_header(1, 1, 10, &[])),
        Error::ReservedField { found: 1 }
    ));
    for len in [0, MAX_MANIFEST_LEN as u32 + 1, u32::MAX] {
        match read(with_header(1, 0, len, &[])) {
            Error::ManifestLength { len: l } => assert_eq!(l, u64::from(len)),
            e => panic!("{len}: {e}"),
        }
    }
    // The largest length is accepted, and a stream that then ends is reported where it ends
    // (without allocating the claim first: this would take 8 MiB per read otherwise).
    match read(with_header(1, 0, MAX_MANIFEST_LEN as u32, b"{}")) {
        Error::Truncated {
            region: Region::Manifest,
            offset,
        } => assert_eq!(offset, HEADER_LEN as u64 + 2),
        e => panic!("{e}"),
    }
    match read(b"ABUPBND".to_vec()) {
        Error::Truncated {
            region: Region::Header,
            offset: 7,
        } => {}
        e => panic!("{e}"),
    }
    match read(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".to_vec()) {
        e @ Error::BadMagic { .. } => assert!(e.to_string().contains("7f454c46"), "{e}"),
        e => panic!("{e}"),
    }
    // An empty keyring is reported before anything is read.
    assert!(matches!(
        read_verified(&mut &b""[..], &Keyring::default()),
        Err(Error::EmptyKeyring)
    ));
}

#[test]
fn read_errors_carry_the_offset() {
    struct FailsAfter(usize);
    impl std::io::Read for FailsAfter {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("cable cut"));
            }
            let n = buf.len().min(self.0).min(5);
            buf[..n].fill(b'A');
            self.0 -= n;
            Ok(n)
        }
    }
    match read_unverified(&mut FailsAfter(3)) {
        Err(Error::Read { offset: 3, .. }) => {}
        r => panic!("{r:?}"),
    }
}
