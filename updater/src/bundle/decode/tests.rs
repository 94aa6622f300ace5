use zstd::zstd_safe::{CCtx, CParameter};

use super::*;
use crate::bundle::{Chunk, ImageKind, MIN_CHUNK_SIZE};

const CS: u32 = MIN_CHUNK_SIZE;

/// An image whose chunks are the given stored bytes, hashes filled in (decode does not
/// validate the image; the manifest parser did).
fn image(compression: Compression, size: u64, stored: &[&[u8]]) -> Image {
    Image {
        slot_class: "rootfs".into(),
        size,
        sha256: [0; 32],
        kind: ImageKind::Full,
        compression,
        chunk_size: CS,
        chunks: stored
            .iter()
            .map(|s| Chunk {
                op: crate::bundle::Op::Data,
                stored: s.len() as u32,
                sha256: Sha256::digest(s).into(),
            })
            .collect(),
    }
}

fn frame(data: &[u8], content_size: bool) -> Vec<u8> {
    let mut ctx = CCtx::create();
    ctx.set_parameter(CParameter::ContentSizeFlag(content_size))
        .unwrap();
    let mut out = Vec::with_capacity(zstd_safe::compress_bound(data.len()));
    ctx.compress2(&mut out, data).unwrap();
    out
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(seed) ^ (i >> 9) as u8)
        .collect()
}

fn decode_err(img: &Image, k: usize, stored: &[u8]) -> Error {
    let mut out = vec![1, 2, 3];
    let e = decode_chunk(img, k, stored, &mut out).expect_err("must fail");
    assert!(out.is_empty(), "out is emptied on error");
    assert!(!e.to_string().contains('\n'));
    e
}

#[test]
fn zstd_chunks_decode_to_their_bytes() {
    let (a, b) = (data(CS as usize, 3), data(100, 5));
    let (fa, fb) = (frame(&a, true), frame(&b, false));
    let img = image(Compression::Zstd, u64::from(CS) + 100, &[&fa, &fb]);
    let mut decoder = Decoder::new().unwrap();
    let mut out = Vec::new();
    decoder.decode(&img, 0, &fa, &mut out).unwrap();
    assert_eq!(out, a);
    decoder.decode(&img, 1, &fb, &mut out).unwrap();
    assert_eq!(out, b, "a frame without a content size decodes too");
}

#[test]
fn raw_chunks_are_their_bytes() {
    let (a, b) = (data(CS as usize, 7), data(1, 9));
    let img = image(Compression::None, u64::from(CS) + 1, &[&a, &b]);
    let mut out = Vec::new();
    decode_chunk(&img, 0, &a, &mut out).unwrap();
    assert_eq!(out, a);
    decode_chunk(&img, 1, &b, &mut out).unwrap();
    assert_eq!(out, b);
}

#[test]
fn steady_state_decoding_does_not_reallocate() {
    let chunks: Vec<Vec<u8>> = (0..4).map(|s| frame(&data(CS as usize, s), true)).collect();
    let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
    let img = image(Compression::Zstd, 4 * u64::from(CS), &refs);
    let mut decoder = Decoder::new().unwrap();
    let mut out = Vec::new();
    decoder.decode(&img, 0, &chunks[0], &mut out).unwrap();
    let (ptr, cap) = (out.as_ptr(), out.capacity());
    for (k, c) in chunks.iter().enumerate() {
        decoder.decode(&img, k, c, &mut out).unwrap();
        assert_eq!(out, data(CS as usize, k as u8));
        assert_eq!((out.as_ptr(), out.capacity()), (ptr, cap));
    }
}

#[test]
fn hash_is_checked_before_decoding() {
    let a = data(CS as usize, 3);
    let fa = frame(&a, true);
    let img = image(Compression::Zstd, u64::from(CS), &[&fa]);
    let mut bad = fa.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    match decode_err(&img, 0, &bad) {
        Error::ChunkHash {
            slot_class,
            chunk: 0,
            expected,
            found,
        } => {
            assert_eq!(slot_class, "rootfs");
            assert_eq!(expected, img.chunks[0].sha256);
            assert_eq!(found, <[u8; 32]>::from(Sha256::digest(&bad)));
        }
        e => panic!("{e}"),
    }
    assert!(matches!(
        decode_err(&img, 0, &fa[..fa.len() - 1]),
        Error::ChunkHash { .. }
    ));
    let raw = image(Compression::None, 3, &[b"abc"]);
    assert!(matches!(
        decode_err(&raw, 0, b"abd"),
        Error::ChunkHash { .. }
    ));
}

#[test]
fn frames_that_decode_to_the_wrong_length() {
    let len = CS as usize;
    // Declares one byte more than the chunk.
    let long = frame(&data(len + 1, 3), true);
    let img = image(Compression::Zstd, len as u64, &[&long]);
    match decode_err(&img, 0, &long) {
        Error::ChunkLength {
            expected, found, ..
        } => assert_eq!((expected, found), (len as u64, Some(len as u64 + 1))),
        e => panic!("{e}"),
    }
    // The same without a content size: caught by the bounded output.
    let long = frame(&data(len + 1, 3), false);
    let img = image(Compression::Zstd, len as u64, &[&long]);
    match decode_err(&img, 0, &long) {
        Error::ChunkLength { found: None, .. } => {}
        e => panic!("{e}"),
    }
    // A bomb: a small frame of many zeros.
    let bomb = frame(&vec![0u8; 16 << 20], false);
    assert!(bomb.len() < 4 << 10);
    let img = image(Compression::Zstd, len as u64, &[&bomb]);
    match decode_err(&img, 0, &bomb) {
        e @ Error::ChunkLength { found: None, .. } => {
            assert!(e.to_string().contains("decodes to more bytes"), "{e}")
        }
        e => panic!("{e}"),
    }
    // Short.
    for content_size in [true, false] {
        let short = frame(&data(len - 1, 3), content_size);
        let img = image(Compression::Zstd, len as u64, &[&short]);
        match decode_err(&img, 0, &short) {
            Error::ChunkLength { found, .. } => assert_eq!(found, Some(len as u64 - 1)),
            e => panic!("{e}"),
        }
    }
    // Raw stored bytes of the wrong length (an image not from the parser).
    let raw = image(Compression::None, 4, &[b"abc"]);
    assert!(matches!(
        decode_err(&raw, 0, b"abc"),
        Error::ChunkLength { found: Some(3), .. }
    ));
}

#[test]
fn exactly_one_frame() {
    let half = data(CS as usize / 2, 3);
    let f = frame(&half, false);
    let two = [f.clone(), f.clone()].concat();
    let img = image(Compression::Zstd, u64::from(CS), &[&two]);
    match decode_err(&img, 0, &two) {
        Error::ChunkDecode { message, .. } => assert!(message.contains("frame ends"), "{message}"),
        e => panic!("{e}"),
    }
    let trailing = [f.as_slice(), b"x"].concat();
    let img = image(Compression::Zstd, u64::from(CS) / 2, &[&trailing]);
    assert!(matches!(
        decode_err(&img, 0, &trailing),
        Error::ChunkDecode { .. }
    ));

    // A skippable frame (magic 0x184D2A50..5F) decodes to nothing.
    let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
    let img = image(Compression::Zstd, 10, &[&skippable]);
    assert!(matches!(
        decode_err(&img, 0, &skippable),
        Error::ChunkDecode { .. }
    ));
    skippable.extend_from_slice(&f);
    let img = image(Compression::Zstd, half.len() as u64, &[&skippable]);
    assert!(matches!(
        decode_err(&img, 0, &skippable),
        Error::ChunkDecode { .. }
    ));
}

#[test]
fn garbage_and_damaged_frames() {
    let f = frame(&data(CS as usize, 3), true);
    let mut cases: Vec<Vec<u8>> = vec![
        vec![],
        b"not zstd".to_vec(),
        ZSTD_MAGIC.to_vec(),
        [&ZSTD_MAGIC[..], &[0xff; 20]].concat(),
        f[..f.len() / 2].to_vec(),
    ];
    for at in [4, 5, 6, f.len() / 2, f.len() - 3] {
        let mut g = f.clone();
        g[at] ^= 0x5a;
        cases.push(g);
    }
    for stored in &cases {
        // The hash is right (a builder's mistake, or a collision): decoding must still fail
        // cleanly.
        let img = image(Compression::Zstd, u64::from(CS), &[stored]);
        let mut out = Vec::new();
        match decode_chunk(&img, 0, stored, &mut out) {
            Err(Error::ChunkDecode { .. } | Error::ChunkLength { .. }) => assert!(out.is_empty()),
            // Damage in literal bytes can still decode to the right length.
            Ok(()) => assert_eq!(out.len(), CS as usize),
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn no_such_chunk() {
    let img = image(Compression::None, 3, &[b"abc"]);
    assert!(matches!(
        decode_err(&img, 1, b""),
        Error::ChunkDecode { .. }
    ));
    assert!(matches!(
        decode_err(&img, usize::MAX, b""),
        Error::ChunkDecode { .. }
    ));
}
