use std::io::Cursor;

use super::*;
use crate::bundle::{
    generate_key, read_verified, verify_all, Keyring, MIN_CHUNK_SIZE, SIGNATURE_LEN,
};

const CS: u32 = MIN_CHUNK_SIZE;

fn opts() -> CreateOptions {
    CreateOptions {
        compatible: "board".into(),
        version: "1.0".into(),
        chunk_size: CS,
        threads: 2,
        ..CreateOptions::default()
    }
}

fn build(opts: &CreateOptions, images: &mut [(&str, &[u8])], key: &SecretKey) -> Result<Vec<u8>> {
    let mut readers: Vec<&[u8]> = images.iter().map(|(_, d)| *d).collect();
    let mut sources: Vec<ImageSource<'_>> = images
        .iter()
        .zip(readers.iter_mut())
        .map(|((class, _), r)| ImageSource {
            slot_class: class.to_string(),
            reader: r,
            base: None,
        })
        .collect();
    let mut out = Vec::new();
    create(
        opts,
        &mut sources,
        key,
        &mut Cursor::new(Vec::new()),
        &mut out,
    )?;
    Ok(out)
}

/// A reader that fails the test if anything reads it.
struct Untouchable;
impl Read for Untouchable {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        panic!("read before the options were checked")
    }
}

fn create_err(opts: &CreateOptions, classes: &[&str]) -> Error {
    let mut readers: Vec<Untouchable> = classes.iter().map(|_| Untouchable).collect();
    let mut sources: Vec<ImageSource<'_>> = classes
        .iter()
        .zip(readers.iter_mut())
        .map(|(c, r)| ImageSource {
            slot_class: c.to_string(),
            reader: r,
            base: None,
        })
        .collect();
    let e = create(
        opts,
        &mut sources,
        &generate_key(),
        &mut Cursor::new(Vec::new()),
        &mut Vec::new(),
    )
    .expect_err("must be refused");
    assert!(!e.to_string().contains('\n'));
    e
}

#[test]
fn options_are_checked_before_any_image_is_read() {
    let o = |f: fn(&mut CreateOptions)| {
        let mut o = opts();
        f(&mut o);
        o
    };
    assert!(matches!(
        create_err(&o(|o| o.compatible.clear()), &["rootfs"]),
        Error::BadText {
            field: "compatible",
            ..
        }
    ));
    assert!(matches!(
        create_err(&o(|o| o.version = "v\n".into()), &["rootfs"]),
        Error::BadText {
            field: "version",
            ..
        }
    ));
    for cs in [
        0,
        1000,
        MIN_CHUNK_SIZE / 2,
        crate::bundle::MAX_CHUNK_SIZE * 2,
    ] {
        let mut bad = opts();
        bad.chunk_size = cs;
        assert!(matches!(
            create_err(&bad, &["rootfs"]),
            Error::ChunkSize { .. }
        ));
    }
    for level in [23, 1000, i32::MIN] {
        let mut bad = opts();
        bad.level = level;
        match create_err(&bad, &["rootfs"]) {
            Error::Level { level: l, .. } => assert_eq!(l, level),
            e => panic!("{e}"),
        }
    }
    assert!(matches!(
        create_err(&opts(), &[]),
        Error::ImageCount { count: 0 }
    ));
    assert!(matches!(
        create_err(&opts(), &["a"; crate::bundle::MAX_IMAGES + 1]),
        Error::ImageCount { .. }
    ));
    assert!(matches!(
        create_err(&opts(), &["boot", "Root"]),
        Error::BadSlotClass { image: 1, .. }
    ));
    assert!(matches!(
        create_err(&opts(), &["boot", "boot"]),
        Error::DuplicateSlotClass { .. }
    ));
}

#[test]
fn an_empty_image_is_refused() {
    let e = build(
        &opts(),
        &mut [("boot", b"x"), ("rootfs", b"")],
        &generate_key(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::ImageSize { image: 1, size: 0 }), "{e}");
}

#[test]
fn io_errors_say_which_side_failed() {
    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk on fire"))
        }
    }
    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Seek for Failing {
        fn seek(&mut self, _: SeekFrom) -> std::io::Result<u64> {
            Ok(0)
        }
    }
    let key = generate_key();
    let data = vec![7u8; 1000];

    let mut failing = Failing;
    let mut sources = [ImageSource {
        slot_class: "rootfs".into(),
        reader: &mut failing,
        base: None,
    }];
    let e = create(
        &opts(),
        &mut sources,
        &key,
        &mut Cursor::new(Vec::new()),
        &mut Vec::new(),
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::ImageRead { ref slot_class, .. } if slot_class == "rootfs"),
        "{e}"
    );

    let mut reader = data.as_slice();
    let mut sources = [ImageSource {
        slot_class: "rootfs".into(),
        reader: &mut reader,
        base: None,
    }];
    let e = create(&opts(), &mut sources, &key, &mut Failing, &mut Vec::new()).unwrap_err();
    assert!(matches!(e, Error::Scratch { .. }), "{e}");

    let mut reader = data.as_slice();
    let mut sources = [ImageSource {
        slot_class: "rootfs".into(),
        reader: &mut reader,
        base: None,
    }];
    let e = create(
        &opts(),
        &mut sources,
        &key,
        &mut Cursor::new(Vec::new()),
        &mut Failing,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Write { .. }), "{e}");
}

#[test]
fn chunks_follow_the_image_exactly() {
    let key = generate_key();
    let ring = Keyring::from_keys(vec![key.public_key()]);
    for (size, chunks) in [
        (1usize, 1usize),
        (CS as usize, 1),
        (CS as usize * 3, 3),
        (CS as usize * 3 + 1, 4),
    ] {
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        for compression in [Compression::Zstd, Compression::None] {
            let o = CreateOptions {
                compression,
                ..opts()
            };
            let bundle = build(&o, &mut [("rootfs", &data)], &key).unwrap();
            let v = verify_all(&mut bundle.as_slice(), &ring, &[]).unwrap().0;
            let img = &v.manifest.images[0];
            assert_eq!(img.size, size as u64);
            assert_eq!(img.chunks.len(), chunks, "{size}");
            assert_eq!(img.compression, compression);
            if compression == Compression::None {
                assert_eq!(img.payload_len(), size as u64);
                assert_eq!(&bundle[v.payload_offset as usize..], &data[..]);
            }
            assert_eq!(
                v.payload_offset + v.manifest.payload_len(),
                bundle.len() as u64
            );
        }
    }
}

#[test]
fn scratch_is_used_from_its_position() {
    let key = generate_key();
    let data = vec![3u8; 5000];
    let mut reader = data.as_slice();
    let mut sources = [ImageSource {
        slot_class: "rootfs".into(),
        reader: &mut reader,
        base: None,
    }];
    let mut scratch = Cursor::new(b"unrelated bytes before".to_vec());
    scratch.seek(SeekFrom::End(0)).unwrap();
    let mut out = Vec::new();
    create(&opts(), &mut sources, &key, &mut scratch, &mut out).unwrap();
    assert_eq!(out, build(&opts(), &mut [("rootfs", &data)], &key).unwrap());
}

#[test]
fn any_zstd_level_gives_a_valid_bundle() {
    let key = generate_key();
    let ring = Keyring::from_keys(vec![key.public_key()]);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i / 7) as u8).collect();
    let levels = zstd::compression_level_range();
    for level in [*levels.start(), -1, 0, 1, 19, *levels.end()] {
        let o = CreateOptions { level, ..opts() };
        let bundle = build(&o, &mut [("rootfs", &data)], &key).unwrap();
        verify_all(&mut bundle.as_slice(), &ring, &[]).unwrap();
    }
}

/// A bundle around arbitrary manifest bytes and payload, signed: for what `create` never
/// writes.
fn signed_bundle(manifest: &[u8], key: &SecretKey, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
    b.extend_from_slice(manifest);
    let sig = key.sign(&b);
    b.extend_from_slice(&key.public_key().key_id());
    b.extend_from_slice(&sig);
    assert_eq!(b.len(), HEADER_LEN + manifest.len() + SIGNATURE_LEN);
    b.extend_from_slice(payload);
    b
}

#[test]
fn a_signed_manifest_is_still_validated() {
    let key = generate_key();
    let ring = Keyring::from_keys(vec![key.public_key()]);
    let data = vec![9u8; 100];
    let bundle = build(&opts(), &mut [("rootfs", &data)], &key).unwrap();
    let v = read_verified(&mut bundle.as_slice(), &ring).unwrap();
    let mut m = v.manifest.clone();
    let first = m.images[0].chunks[0].clone();
    m.images[0].chunks.push(first);
    let bad = signed_bundle(&m.to_canonical_json(), &key, &[]);
    assert!(matches!(
        read_verified(&mut bad.as_slice(), &ring),
        Err(Error::ChunkCount { .. })
    ));
    let bad = signed_bundle(b"{\"compatible\":1}", &key, &[]);
    assert!(matches!(
        read_verified(&mut bad.as_slice(), &ring),
        Err(Error::ManifestSyntax { .. })
    ));
}

#[test]
fn verify_all_checks_each_image_hash() {
    let key = generate_key();
    let ring = Keyring::from_keys(vec![key.public_key()]);
    let (a, b) = (vec![1u8; 70_000], vec![2u8; 10]);
    let bundle = build(&opts(), &mut [("boot", &a), ("rootfs", &b)], &key).unwrap();
    let v = read_verified(&mut bundle.as_slice(), &ring).unwrap();
    let payload = &bundle[v.payload_offset as usize..];
    let mut m = v.manifest.clone();
    m.images[1].sha256[0] ^= 1;
    let bad = signed_bundle(&m.to_canonical_json(), &key, payload);
    match verify_all(&mut bad.as_slice(), &ring, &[]).map(|(v, _)| v) {
        Err(Error::ImageHash {
            slot_class,
            expected,
            found,
        }) => {
            assert_eq!(slot_class, "rootfs");
            assert_eq!(expected, m.images[1].sha256);
            assert_eq!(found, v.manifest.images[1].sha256);
        }
        r => panic!("{r:?}"),
    }
}
