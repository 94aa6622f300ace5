//! Deltas between generated image pairs rebuild the new image exactly, and cost what they
//! should: little for moved data, nothing for zeros.

use proptest::prelude::*;

use super::*;
use crate::bundle::{Manifest, MIN_CHUNK_SIZE};

const CS: u32 = MIN_CHUNK_SIZE;

/// Incompressible bytes from `seed` (xorshift).
pub(super) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Text-like bytes: compressible, as most of a root filesystem is.
fn text(len: usize, seed: u64) -> Vec<u8> {
    let words = [
        "lib", "usr", "share", "doc", "ELF", "\0\0\0\0", "config", "=", "\n",
    ];
    let r = noise(len, seed);
    let mut out = Vec::with_capacity(len + 8);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(words[r[i % r.len()] as usize % words.len()].as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// How the new image is made from the old one, piece by piece.
#[derive(Debug, Clone)]
enum Edit {
    /// Old bytes from anywhere (moved, or kept in place).
    Copy {
        from: usize,
        len: usize,
    },
    /// Old bytes from anywhere with every `every`-th byte changed.
    Changed {
        from: usize,
        len: usize,
        every: usize,
    },
    /// New bytes (an inserted run).
    Insert {
        len: usize,
        seed: u64,
    },
    Zeros {
        len: usize,
    },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (0usize..1 << 20, 1usize..200_000).prop_map(|(from, len)| Edit::Copy { from, len }),
        2 => (0usize..1 << 20, 1usize..100_000, 50usize..5000)
            .prop_map(|(from, len, every)| Edit::Changed { from, len, every }),
        1 => (1usize..50_000, any::<u64>()).prop_map(|(len, seed)| Edit::Insert { len, seed }),
        1 => (1usize..150_000).prop_map(|len| Edit::Zeros { len }),
    ]
}

fn old_image(len: usize, seed: u64) -> Vec<u8> {
    let mut old = text(len, seed);
    // Some of it incompressible, some zeros: as in a filesystem image.
    let third = len / 3;
    old[third..third + third / 2].copy_from_slice(&noise(third / 2, seed + 1));
    old[2 * third..2 * third + third / 4].fill(0);
    old
}

fn apply_edits(old: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut new = Vec::new();
    for e in edits {
        match *e {
            Edit::Copy { from, len } | Edit::Changed { from, len, .. } => {
                let from = from % old.len();
                let len = len.min(old.len() - from);
                let start = new.len();
                new.extend_from_slice(&old[from..from + len]);
                if let Edit::Changed { every, .. } = *e {
                    for b in new[start..].iter_mut().step_by(every) {
                        *b = b.wrapping_add(1);
                    }
                }
            }
            Edit::Insert { len, seed } => new.extend_from_slice(&noise(len, seed)),
            Edit::Zeros { len } => new.resize(new.len() + len, 0),
        }
    }
    if new.is_empty() {
        new.push(1);
    }
    new
}

fn params() -> Params {
    Params {
        chunk_size: CS,
        level: 3,
        threads: 2,
    }
}

/// What a device does: every chunk made from the base, the stored bytes and what it made
/// before, independently of the builder's own check.
fn apply(image: &Image, old: &[u8], stored: &[Vec<u8>]) -> Vec<u8> {
    let mut decoder = Decoder::new().unwrap();
    let (mut window, mut out, mut image_bytes) = (Vec::new(), Vec::new(), Vec::new());
    for (k, bytes) in stored.iter().enumerate() {
        let made = image_bytes.as_slice();
        decoder
            .make(
                image,
                k,
                bytes,
                Some(&old),
                Some(&made),
                &mut window,
                &mut out,
            )
            .unwrap();
        assert_eq!(out.len() as u32, image.chunk_len(k));
        image_bytes.extend_from_slice(&out);
    }
    image_bytes
}

fn stored_len(stored: &[Vec<u8>]) -> usize {
    stored.iter().map(Vec::len).sum()
}

/// The image round-trips through the manifest's canonical JSON and its validation.
fn reparsed(image: &Image) -> Image {
    let m = Manifest {
        compatible: "c".into(),
        version: "v".into(),
        security_version: 0,
        created: 0,
        images: vec![image.clone()],
    };
    let back = Manifest::parse(&m.to_canonical_json()).unwrap();
    assert_eq!(back, m);
    back.images[0].clone()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn deltas_rebuild_the_new_image_exactly(
        old_len in 1usize..700_000,
        seed in any::<u64>(),
        edits in prop::collection::vec(edit(), 1..12),
    ) {
        let old = old_image(old_len.max(3 * 4096), seed);
        let new = apply_edits(&old, &edits);
        let (image, stored) = build("rootfs", &old, &new, &params()).unwrap();
        let image = reparsed(&image);
        let rebuilt = apply(&image, &old, &stored);
        prop_assert!(rebuilt == new, "rebuilt image differs");
        let digest: [u8; 32] = Sha256::digest(&rebuilt).into();
        prop_assert_eq!(digest, image.sha256);
        prop_assert_eq!(image.kind.base().map(|b| b.size), Some(old.len() as u64));
    }
}

#[test]
fn moved_data_costs_almost_nothing() {
    let old = old_image(1_500_000, 3);
    // The old image cut in three and reassembled in another order, one run shifted by an odd
    // number of bytes: every byte is in the base, none at its old offset.
    let mut new = Vec::new();
    new.extend_from_slice(&old[1_000_000..]);
    new.extend_from_slice(&[7; 333]);
    new.extend_from_slice(&old[..400_000]);
    new.extend_from_slice(&old[400_000..1_000_000]);
    let (image, stored) = build("rootfs", &old, &new, &params()).unwrap();
    assert_eq!(apply(&image, &old, &stored), new);
    let plain = zstd::bulk::compress(&new, 3).unwrap().len();
    assert!(
        stored_len(&stored) * 50 < plain,
        "delta stores {} bytes, the image compresses to {plain}",
        stored_len(&stored)
    );
    let copies = image
        .chunks
        .iter()
        .filter(|c| matches!(c.op, Op::Copy { .. }))
        .count();
    assert!(copies * 10 >= image.chunks.len() * 8, "{copies} copies");
}

#[test]
fn a_changed_file_diffs_against_its_old_self_far_away() {
    // The old version of a run sits 1 MiB away from where the new version lands, with other
    // data in between: the window must reach it.
    let old = old_image(2_000_000, 5);
    let mut new = noise(300_000, 77);
    let mut changed = old[1_200_000..1_400_000].to_vec();
    for b in changed.iter_mut().step_by(97) {
        *b ^= 0x55;
    }
    new.extend_from_slice(&old[..100_000]);
    new.extend_from_slice(&changed);
    new.extend_from_slice(&old[1_400_000..1_500_000]);
    let (image, stored) = build("rootfs", &old, &new, &params()).unwrap();
    assert_eq!(apply(&image, &old, &stored), new);
    let patches = image
        .chunks
        .iter()
        .filter(|c| matches!(c.op, Op::Patch { .. }))
        .count();
    assert!(patches >= 3, "{patches} patches");
    let alone = zstd::bulk::compress(&changed, 3).unwrap().len();
    assert!(
        stored_len(&stored) < 300_000 + alone / 3,
        "delta stores {} bytes",
        stored_len(&stored)
    );
}

#[test]
fn zero_runs_are_zero_operations() {
    let old = old_image(300_000, 9);
    let mut new = old.clone();
    new.resize(old.len() + 5 * CS as usize + 17, 0);
    let (image, stored) = build("rootfs", &old, &new, &params()).unwrap();
    assert_eq!(apply(&image, &old, &stored), new);
    let zeros = image.chunks.iter().filter(|c| c.op == Op::Zero).count();
    assert!(zeros >= 4, "{zeros} zero chunks");
}

#[test]
fn windows_stay_within_the_limits() {
    let old = old_image(3_000_000, 11);
    let mut new = old.clone();
    for b in new.iter_mut().step_by(1000) {
        *b ^= 1;
    }
    let (image, _) = build("rootfs", &old, &new, &params()).unwrap();
    for c in &image.chunks {
        let (base, target) = (c.op.extents(), c.op.target_extents());
        assert!(extents_len(base) + extents_len(target) <= MAX_PATCH_WINDOW);
        assert!(base.len() + target.len() <= MAX_OP_EXTENTS);
    }
}

#[test]
fn new_data_repeated_in_the_new_image_is_stored_once() {
    // Bytes the base does not have, twice in the new image with base data between them: the
    // second time they are patched against the new image's own earlier bytes.
    let old = old_image(1_000_000, 13);
    let fresh = noise(150_000, 99);
    let mut new = old[..200_000].to_vec();
    new.extend_from_slice(&fresh);
    new.extend_from_slice(&old[200_000..400_000]);
    new.extend_from_slice(&fresh);
    new.extend_from_slice(&old[400_000..600_000]);
    let (image, stored) = build("rootfs", &old, &new, &params()).unwrap();
    let image = reparsed(&image);
    assert_eq!(apply(&image, &old, &stored), new);
    let reading = image
        .chunks
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.op.target_extents().is_empty())
        .inspect(|(k, c)| {
            for e in c.op.target_extents() {
                assert!(e.offset >= u64::from(CS), "chunk {k} reads the first chunk");
                assert!(e.offset + e.len <= image.chunk_range(*k).start, "chunk {k}");
            }
        })
        .count();
    assert!(reading >= 2, "{reading} chunks read the new image");
    assert!(
        stored_len(&stored) < fresh.len() * 5 / 4,
        "delta stores {} bytes for {} new ones, repeated",
        stored_len(&stored),
        fresh.len()
    );
}
