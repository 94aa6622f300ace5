//! Properties over generated inputs: the readers give a value or an error for any bytes, never
//! a panic, and what they accept is consistent; every bundle `create` makes reads back.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::Cursor;
use std::sync::OnceLock;

use abup::bundle::{
    self, generate_key, read_unverified, read_verified, verify_all, Compression, CreateOptions,
    Decoder, ImageSource, Keyring, Manifest, SecretKey, FORMAT_VERSION, HEADER_LEN, MAGIC,
    MIN_CHUNK_SIZE, SIGNATURE_LEN,
};
use proptest::prelude::*;

fn key() -> &'static SecretKey {
    static KEY: OnceLock<SecretKey> = OnceLock::new();
    KEY.get_or_init(generate_key)
}

/// A real bundle's manifest, to mutate.
fn seed_manifest() -> &'static [u8] {
    static SEED: OnceLock<Vec<u8>> = OnceLock::new();
    SEED.get_or_init(|| {
        let data = vec![5u8; MIN_CHUNK_SIZE as usize + 1];
        let mut r = data.as_slice();
        let mut sources = [ImageSource {
            slot_class: "rootfs".into(),
            reader: &mut r,
            base: None,
        }];
        let opts = CreateOptions {
            compatible: "board".into(),
            version: "1".into(),
            chunk_size: MIN_CHUNK_SIZE,
            ..CreateOptions::default()
        };
        let m = bundle::create(
            &opts,
            &mut sources,
            key(),
            &mut Cursor::new(Vec::new()),
            &mut Vec::new(),
        )
        .unwrap();
        m.to_canonical_json()
    })
}

/// Whatever a reader accepted must hold together.
fn check_accepted(m: &Manifest) {
    m.validate().unwrap();
    assert_eq!(Manifest::parse(&m.to_canonical_json()).unwrap(), *m);
    for img in &m.images {
        assert_eq!(
            img.chunks.len() as u64,
            img.size.div_ceil(u64::from(img.chunk_size))
        );
    }
    let total: u64 = m.chunks().map(|c| u64::from(c.stored)).sum();
    assert_eq!(total, m.payload_len());
}

fn header(len: usize) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&(len as u32).to_le_bytes());
    h
}

/// JSON-ish text: the tokens a manifest is made of, in any order.
fn jsonish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(",".to_string()),
        Just(":".to_string()),
        Just("null".to_string()),
        Just("1.5".to_string()),
        Just("-1".to_string()),
        Just("18446744073709551616".to_string()),
        prop::sample::select(vec![
            "\"compatible\"",
            "\"version\"",
            "\"security_version\"",
            "\"created\"",
            "\"images\"",
            "\"slot_class\"",
            "\"size\"",
            "\"sha256\"",
            "\"kind\"",
            "\"compression\"",
            "\"chunk_size\"",
            "\"chunks\"",
            "\"op\"",
            "\"stored\"",
            "\"full\"",
            "\"zstd\"",
            "\"none\"",
            "\"data\"",
            "\"rootfs\"",
            "65536",
            "0",
            "1",
            "\"0000000000000000000000000000000000000000000000000000000000000000\"",
        ])
        .prop_map(str::to_string),
        "[ -~]{0,8}",
        any::<u64>().prop_map(|n| n.to_string()),
    ];
    prop::collection::vec(token, 0..60).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_read_unverified(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(u) = read_unverified(&mut bytes.as_slice()) {
            check_accepted(&u.manifest);
        }
    }

    #[test]
    fn any_manifest_behind_a_good_header(
        manifest in prop::collection::vec(any::<u8>(), 1..512),
        tail in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut b = header(manifest.len());
        b.extend_from_slice(&manifest);
        b.extend_from_slice(&tail);
        match read_unverified(&mut b.as_slice()) {
            Ok(u) => {
                check_accepted(&u.manifest);
                prop_assert_eq!(u.payload_offset as usize, HEADER_LEN + manifest.len() + SIGNATURE_LEN);
            }
            Err(e) => prop_assert!(!e.to_string().contains('\n')),
        }
        // Signed by nobody the keyring knows: refused, whatever the manifest.
        let ring = Keyring::from_keys(vec![key().public_key()]);
        prop_assert!(read_verified(&mut b.as_slice(), &ring).is_err());
    }

    #[test]
    fn jsonish_manifests_parse_or_fail_cleanly(text in jsonish()) {
        match Manifest::parse(text.as_bytes()) {
            Ok(m) => check_accepted(&m),
            Err(e) => prop_assert!(!e.to_string().contains('\n')),
        }
    }

    #[test]
    fn mutated_real_manifests_parse_or_fail_cleanly(
        at in 0usize..10_000,
        cut in 0usize..40,
        insert in jsonish(),
    ) {
        let seed = seed_manifest();
        let at = at % seed.len();
        let end = (at + cut).min(seed.len());
        let mut m = seed[..at].to_vec();
        m.extend_from_slice(insert.as_bytes());
        m.extend_from_slice(&seed[end..]);
        match Manifest::parse(&m) {
            Ok(parsed) => check_accepted(&parsed),
            Err(e) => prop_assert!(!e.to_string().contains('\n')),
        }
    }
}

/// Up to three images with sizes around chunk boundaries, compressible or not.
fn images() -> impl Strategy<Value = Vec<(usize, u8, bool)>> {
    let cs = MIN_CHUNK_SIZE as usize;
    let size = prop_oneof![
        1usize..300,
        (cs - 2)..(cs + 2),
        (2 * cs - 1)..(2 * cs + 1),
        1usize..(3 * cs),
    ];
    prop::collection::vec((size, any::<u8>(), any::<bool>()), 1..=3)
}

fn image_bytes(len: usize, seed: u8, compressible: bool) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|i| {
            if compressible {
                (i / 97) as u8 ^ seed
            } else {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn created_bundles_round_trip(
        specs in images(),
        zstd in any::<bool>(),
        threads in 1usize..4,
        level in 1i32..4,
    ) {
        let data: Vec<Vec<u8>> = specs.iter().map(|&(n, s, c)| image_bytes(n, s, c)).collect();
        let mut readers: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let mut sources: Vec<ImageSource<'_>> = readers
            .iter_mut()
            .enumerate()
            .map(|(i, r)| ImageSource { slot_class: format!("part{i}"), reader: r , base: None })
            .collect();
        let opts = CreateOptions {
            compatible: "board".into(),
            version: "v".into(),
            chunk_size: MIN_CHUNK_SIZE,
            compression: if zstd { Compression::Zstd } else { Compression::None },
            level,
            threads,
            ..CreateOptions::default()
        };
        let mut b = Vec::new();
        let m = bundle::create(&opts, &mut sources, key(), &mut Cursor::new(Vec::new()), &mut b).unwrap();
        let ring = Keyring::from_keys(vec![key().public_key()]);
        let v = verify_all(&mut b.as_slice(), &ring, &[]).unwrap().0;
        prop_assert_eq!(&v.manifest, &m);
        let mut decoder = Decoder::new().unwrap();
        let mut out = Vec::new();
        for c in m.chunks() {
            let at = (v.payload_offset + c.offset) as usize;
            decoder.decode(&m.images[c.image], c.index, &b[at..at + c.stored as usize], &mut out).unwrap();
            prop_assert_eq!(&out[..], &data[c.image][c.range.start as usize..c.range.end as usize]);
        }
    }
}
