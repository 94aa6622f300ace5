//! Bundles built by `bundle::create` from image files read back, chunk by chunk, into the
//! same images; builds are byte-for-byte reproducible whatever the thread count.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom, Write};

use abup::bundle::{
    self, generate_key, read_stored, read_unverified, read_verified, verify_all, Compression,
    CreateOptions, Decoder, ImageSource, Keyring, Manifest, SecretKey, DEFAULT_CHUNK_SIZE,
    HEADER_LEN, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, SIGNATURE_LEN,
};
use sha2::{Digest, Sha256};

const CS: usize = MIN_CHUNK_SIZE as usize;

/// Image-like bytes: runs that compress well between stretches that do not.
fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let run = (x % 3000) as usize + 1;
        if x % 3 == 0 {
            out.extend(std::iter::repeat_n((x >> 8) as u8, run));
        } else {
            let mut y = x;
            out.extend((0..run).map(|_| {
                y ^= y << 13;
                y ^= y >> 7;
                y ^= y << 17;
                y as u8
            }));
        }
    }
    out.truncate(len);
    out
}

fn options(chunk_size: u32, compression: Compression, threads: usize) -> CreateOptions {
    CreateOptions {
        compatible: "qemu-x86_64-grub".into(),
        version: "2025.1".into(),
        security_version: 3,
        created: 1_750_000_000,
        chunk_size,
        compression,
        threads,
        ..CreateOptions::default()
    }
}

/// Builds a bundle the way the CLI does: image files, a temporary scratch file.
fn build(opts: &CreateOptions, images: &[(&str, &[u8])], key: &SecretKey) -> (Vec<u8>, Manifest) {
    let mut files: Vec<File> = images
        .iter()
        .map(|(_, data)| {
            let mut f = tempfile::tempfile().unwrap();
            f.write_all(data).unwrap();
            f.seek(SeekFrom::Start(0)).unwrap();
            f
        })
        .collect();
    let mut sources: Vec<ImageSource<'_>> = images
        .iter()
        .zip(files.iter_mut())
        .map(|((class, _), f)| ImageSource {
            slot_class: class.to_string(),
            reader: f,
            base: None,
        })
        .collect();
    let mut out = Vec::new();
    let manifest = bundle::create(
        opts,
        &mut sources,
        key,
        &mut tempfile::tempfile().unwrap(),
        &mut out,
    )
    .unwrap();
    (out, manifest)
}

/// Reads a bundle the way an install does: front, then each chunk in turn from the stream.
fn install(bundle: &[u8], keyring: &Keyring) -> Vec<Vec<u8>> {
    let mut r = Cursor::new(bundle);
    let v = read_verified(&mut r, keyring).unwrap();
    assert_eq!(r.position(), v.payload_offset, "the front is read exactly");
    let mut images: Vec<Vec<u8>> = v
        .manifest
        .images
        .iter()
        .map(|i| vec![0xee; i.size as usize])
        .collect();
    let mut decoder = Decoder::new().unwrap();
    let (mut stored, mut data) = (Vec::new(), Vec::new());
    for c in v.manifest.chunks() {
        assert_eq!(r.position(), v.payload_offset + c.offset);
        read_stored(&mut r, &c, v.payload_offset, &mut stored).unwrap();
        let img = &v.manifest.images[c.image];
        decoder.decode(img, c.index, &stored, &mut data).unwrap();
        assert_eq!(data.len() as u64, c.range.end - c.range.start);
        images[c.image][c.range.start as usize..c.range.end as usize].copy_from_slice(&data);
    }
    assert_eq!(r.position() as usize, bundle.len());
    images
}

fn ring(key: &SecretKey) -> Keyring {
    Keyring::from_keys(vec![key.public_key()])
}

#[test]
fn single_images_of_awkward_sizes() {
    let key = generate_key();
    for size in [1, 2, CS - 1, CS, CS + 1, 3 * CS + CS / 2, 4 * CS] {
        for compression in [Compression::Zstd, Compression::None] {
            let data = image(size, size as u64);
            let (b, m) = build(
                &options(MIN_CHUNK_SIZE, compression, 2),
                &[("rootfs", &data)],
                &key,
            );
            assert_eq!(m.images[0].chunks.len(), size.div_ceil(CS), "{size}");
            assert_eq!(m.images[0].sha256, <[u8; 32]>::from(Sha256::digest(&data)));
            assert_eq!(install(&b, &ring(&key)), vec![data], "{size} {compression}");
            let v = verify_all(&mut b.as_slice(), &ring(&key), &[]).unwrap().0;
            assert_eq!(v.manifest, m);
        }
    }
}

#[test]
fn several_images() {
    let key = generate_key();
    let (boot, rootfs, tiny) = (image(CS + 77, 1), image(5 * CS / 2, 2), image(1, 3));
    let images: [(&str, &[u8]); 3] = [("boot", &boot), ("rootfs", &rootfs), ("dtb", &tiny)];
    let (b, m) = build(
        &options(MIN_CHUNK_SIZE, Compression::Zstd, 3),
        &images,
        &key,
    );
    assert_eq!(
        m.images
            .iter()
            .map(|i| i.slot_class.as_str())
            .collect::<Vec<_>>(),
        ["boot", "rootfs", "dtb"],
        "images keep their order"
    );
    assert_eq!(install(&b, &ring(&key)), vec![boot, rootfs, tiny]);
    verify_all(&mut b.as_slice(), &ring(&key), &[]).unwrap();
}

#[test]
fn larger_chunk_sizes() {
    let key = generate_key();
    let data = image(2 * DEFAULT_CHUNK_SIZE as usize + 12_345, 9);
    let (b, m) = build(
        &options(DEFAULT_CHUNK_SIZE, Compression::Zstd, 0),
        &[("rootfs", &data)],
        &key,
    );
    assert_eq!(m.images[0].chunks.len(), 3);
    assert_eq!(install(&b, &ring(&key)), vec![data]);

    let data = image(MAX_CHUNK_SIZE as usize + 1, 10);
    let (b, m) = build(
        &options(MAX_CHUNK_SIZE, Compression::Zstd, 2),
        &[("rootfs", &data)],
        &key,
    );
    assert_eq!(m.images[0].chunks.len(), 2);
    assert!(
        m.images[0].chunks[1].stored < 64,
        "a one-byte chunk is a tiny frame"
    );
    assert_eq!(install(&b, &ring(&key)), vec![data]);
}

#[test]
fn same_inputs_same_bytes_whatever_the_thread_count() {
    let key = generate_key();
    // Chunks that take very different times to compress (zeros, then image bytes), so that
    // with several threads they come back out of order.
    let mut a = image(9 * CS + 5, 4);
    for chunk in a.chunks_mut(CS).step_by(3) {
        chunk.fill(0);
    }
    let b = image(2 * CS, 5);
    let images: [(&str, &[u8]); 2] = [("rootfs", &a), ("appfs", &b)];
    let reference = build(
        &options(MIN_CHUNK_SIZE, Compression::Zstd, 1),
        &images,
        &key,
    )
    .0;
    for threads in [1, 2, 3, 8, 0] {
        let again = build(
            &options(MIN_CHUNK_SIZE, Compression::Zstd, threads),
            &images,
            &key,
        )
        .0;
        assert!(again == reference, "{threads} threads");
    }
    // Another key changes the key id and signature, nothing else.
    let other = build(
        &options(MIN_CHUNK_SIZE, Compression::Zstd, 2),
        &images,
        &generate_key(),
    )
    .0;
    let sig_at = read_unverified(&mut reference.as_slice())
        .unwrap()
        .payload_offset as usize
        - SIGNATURE_LEN;
    assert_eq!(other.len(), reference.len());
    assert_eq!(other[..sig_at], reference[..sig_at]);
    assert_eq!(
        other[sig_at + SIGNATURE_LEN..],
        reference[sig_at + SIGNATURE_LEN..]
    );
    assert_ne!(
        other[sig_at..sig_at + SIGNATURE_LEN],
        reference[sig_at..sig_at + SIGNATURE_LEN]
    );
}

#[test]
fn layout_is_header_manifest_signature_payload() {
    let key = generate_key();
    let data = image(2 * CS + 3, 6);
    let (b, m) = build(
        &options(MIN_CHUNK_SIZE, Compression::Zstd, 2),
        &[("rootfs", &data)],
        &key,
    );
    assert_eq!(&b[..8], b"ABUPBNDL");
    assert_eq!(&b[8..12], &[1, 0, 0, 0], "format version 1, reserved 0");
    let manifest_len = u32::from_le_bytes(b[12..16].try_into().unwrap()) as usize;
    let json = m.to_canonical_json();
    assert_eq!(manifest_len, json.len());
    assert_eq!(&b[HEADER_LEN..HEADER_LEN + manifest_len], &json[..]);
    let sig_at = HEADER_LEN + manifest_len;
    assert_eq!(&b[sig_at..sig_at + 32], &key.public_key().key_id());

    let v = read_verified(&mut b.as_slice(), &ring(&key)).unwrap();
    assert_eq!(v.payload_offset as usize, sig_at + SIGNATURE_LEN);
    assert_eq!(v.manifest_sha256, <[u8; 32]>::from(Sha256::digest(&json)));
    assert_eq!(v.key_id, key.public_key().key_id());
    // Each chunk is where its offset says, and hashes to its manifest entry: a chunk can be
    // fetched alone (an HTTP Range request on resume) and checked.
    for c in m.chunks() {
        let at = v.payload_offset as usize + c.offset as usize;
        let stored = &b[at..at + c.stored as usize];
        assert_eq!(
            <[u8; 32]>::from(Sha256::digest(stored)),
            m.images[c.image].chunks[c.index].sha256
        );
    }
    assert_eq!(v.payload_offset + m.payload_len(), b.len() as u64);
}

#[test]
fn chunks_decode_independently_in_any_order_and_thread() {
    let key = generate_key();
    let data = image(7 * CS + 1000, 7);
    let (b, m) = build(
        &options(MIN_CHUNK_SIZE, Compression::Zstd, 2),
        &[("rootfs", &data)],
        &key,
    );
    let payload_offset = read_verified(&mut b.as_slice(), &ring(&key))
        .unwrap()
        .payload_offset;
    let img = &m.images[0];
    let refs: Vec<_> = m.chunks().collect();
    std::thread::scope(|s| {
        for c in refs.iter().rev() {
            let (b, data) = (&b, &data);
            s.spawn(move || {
                let at = (payload_offset + c.offset) as usize;
                let mut out = Vec::new();
                bundle::decode_chunk(img, c.index, &b[at..at + c.stored as usize], &mut out)
                    .unwrap();
                assert_eq!(out, data[c.range.start as usize..c.range.end as usize]);
            });
        }
    });
}

#[test]
fn unverified_read_gives_the_same_front() {
    let key = generate_key();
    let data = image(CS / 3, 8);
    let (b, _) = build(
        &options(MIN_CHUNK_SIZE, Compression::Zstd, 1),
        &[("rootfs", &data)],
        &key,
    );
    let v = read_verified(&mut b.as_slice(), &ring(&key)).unwrap();
    let mut r = Cursor::new(&b);
    let u = read_unverified(&mut r).unwrap();
    assert_eq!(r.position(), u.payload_offset);
    assert_eq!(
        (&u.manifest, u.key_id, u.manifest_sha256, u.payload_offset),
        (&v.manifest, v.key_id, v.manifest_sha256, v.payload_offset)
    );
}

#[test]
fn info_json_schema_1() {
    let key = generate_key();
    let (a, b) = (image(CS + 1, 11), image(10, 12));
    let (bytes, m) = build(
        &options(MIN_CHUNK_SIZE, Compression::None, 1),
        &[("rootfs", &a), ("boot", &b)],
        &key,
    );
    let v = read_verified(&mut bytes.as_slice(), &ring(&key)).unwrap();
    let info = v.info_json();
    assert_eq!(info["version"], 1);
    assert_eq!(info["format_version"], 1);
    assert_eq!(info["verified"], true);
    assert_eq!(
        info["key_id"],
        bundle::hex::encode(&key.public_key().key_id())
    );
    assert_eq!(
        info["manifest_sha256"],
        bundle::hex::encode(&v.manifest_sha256)
    );
    assert_eq!(info["compatible"], "qemu-x86_64-grub");
    assert_eq!(info["bundle_version"], "2025.1");
    assert_eq!(info["security_version"], 3);
    assert_eq!(info["created"], 1_750_000_000u64);
    assert_eq!(info["payload_offset"], v.payload_offset);
    assert_eq!(info["payload_len"], m.payload_len());
    assert_eq!(info["bundle_len"], bytes.len());
    let img = &info["images"][0];
    assert_eq!(img["slot_class"], "rootfs");
    assert_eq!(img["size"], CS + 1);
    assert_eq!(img["sha256"], bundle::hex::encode(&Sha256::digest(&a)));
    assert_eq!(img["kind"], "full");
    assert_eq!(img["compression"], "none");
    assert_eq!(img["chunk_size"], CS);
    assert_eq!(img["chunk_count"], 2);
    assert_eq!(img["stored"], CS + 1);
    assert_eq!(info["images"][1]["slot_class"], "boot");

    let u = read_unverified(&mut bytes.as_slice()).unwrap().info_json();
    assert_eq!(u["verified"], false);
    let mut same = u.clone();
    same["verified"] = true.into();
    assert_eq!(same, info);
    // One line, as `--json` prints it.
    assert!(!serde_json::to_string(&info).unwrap().contains('\n'));
}

#[test]
fn images_may_be_pipes() {
    let key = generate_key();
    let data = image(3 * CS + 17, 13);
    let mut child = std::process::Command::new("cat")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feed = data.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&feed).unwrap());
    let mut stdout = child.stdout.take().unwrap();
    let mut sources = [ImageSource {
        slot_class: "rootfs".into(),
        reader: &mut stdout as &mut dyn Read,
        base: None,
    }];
    let mut out = Vec::new();
    bundle::create(
        &options(MIN_CHUNK_SIZE, Compression::Zstd, 2),
        &mut sources,
        &key,
        &mut tempfile::tempfile().unwrap(),
        &mut out,
    )
    .unwrap();
    writer.join().unwrap();
    child.wait().unwrap();
    assert_eq!(install(&out, &ring(&key)), vec![data]);
}
