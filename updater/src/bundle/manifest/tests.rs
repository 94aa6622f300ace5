//! Every rule a manifest must meet, one test (or one table row) each, through the same path a
//! bundle's bytes take: JSON text into `Manifest::parse`.

use serde_json::{json, Value};

use super::*;
use crate::bundle::{DEFAULT_CHUNK_SIZE, MAX_MANIFEST_LEN};

const CS: u32 = MIN_CHUNK_SIZE;

fn chunk(stored: u32, seed: u8) -> Chunk {
    Chunk {
        op: Op::Data,
        stored,
        sha256: [seed; 32],
    }
}

/// A valid two-image manifest: `rootfs` of 2.5 chunks (zstd), `boot` of exactly 1 (raw).
fn sample() -> Manifest {
    Manifest {
        compatible: "qemu-x86_64-grub".into(),
        version: "2024.05 \"rc1\" \\ build".into(),
        security_version: 7,
        created: 1_700_000_000,
        images: vec![
            Image {
                slot_class: "rootfs".into(),
                size: u64::from(CS) * 5 / 2,
                sha256: [0xab; 32],
                kind: ImageKind::Full,
                compression: Compression::Zstd,
                chunk_size: CS,
                chunks: vec![chunk(1000, 1), chunk(CS + CS / 256, 2), chunk(17, 3)],
            },
            Image {
                slot_class: "boot".into(),
                size: u64::from(CS),
                sha256: [0xcd; 32],
                kind: ImageKind::Full,
                compression: Compression::None,
                chunk_size: CS,
                chunks: vec![chunk(CS, 4)],
            },
        ],
    }
}

fn sample_json() -> Value {
    serde_json::from_slice(&sample().to_canonical_json()).unwrap()
}

fn parse_value(v: &Value) -> Result<Manifest> {
    Manifest::parse(&serde_json::to_vec(v).unwrap())
}

/// Parses, expects an error, and checks that its message is one line.
fn err_of(bytes: &[u8]) -> Error {
    let e = Manifest::parse(bytes).expect_err("manifest must be refused");
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "one-line message: {msg}");
    e
}

fn err(v: &Value) -> Error {
    err_of(&serde_json::to_vec(v).unwrap())
}

fn edit(f: impl FnOnce(&mut Value)) -> Value {
    let mut v = sample_json();
    f(&mut v);
    v
}

fn hex64(b: u8) -> String {
    hex::encode(&[b; 32])
}

#[test]
fn canonical_json_round_trips() {
    let m = sample();
    let bytes = m.to_canonical_json();
    assert_eq!(Manifest::parse(&bytes).unwrap(), m);
    assert_eq!(bytes, m.clone().to_canonical_json(), "deterministic");
    // Whitespace and escapes are JSON's business: the same manifest, spelled differently,
    // parses the same (the signature, not the parser, pins the bytes).
    let pretty = serde_json::to_vec_pretty(&sample_json()).unwrap();
    assert_eq!(Manifest::parse(&pretty).unwrap(), m);
}

#[test]
fn canonical_json_is_exactly_the_documented_spelling() {
    let m = Manifest {
        compatible: "b".into(),
        version: "1.0".into(),
        security_version: 2,
        created: 3,
        images: vec![Image {
            slot_class: "rootfs".into(),
            size: 5,
            sha256: [0x11; 32],
            kind: ImageKind::Full,
            compression: Compression::Zstd,
            chunk_size: 1 << 20,
            chunks: vec![chunk(14, 0x22)],
        }],
    };
    let expected = format!(
        concat!(
            r#"{{"compatible":"b","version":"1.0","security_version":2,"created":3,"#,
            r#""images":[{{"slot_class":"rootfs","size":5,"sha256":"{}","kind":"full","#,
            r#""compression":"zstd","chunk_size":1048576,"#,
            r#""chunks":[{{"op":"data","stored":14,"sha256":"{}"}}]}}]}}"#
        ),
        hex64(0x11),
        hex64(0x22)
    );
    assert_eq!(String::from_utf8(m.to_canonical_json()).unwrap(), expected);
}

#[test]
fn not_json_of_the_right_shape() {
    for bad in [
        &b""[..],
        b"{",
        b"[]",
        b"null",
        b"\"manifest\"",
        b"{}garbage",
        b"\xff\xfe{}",
        b"{\"compatible\":\"\xff\"}",
    ] {
        assert!(
            matches!(err_of(bad), Error::ManifestSyntax { .. }),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(matches!(
        err_of(deep.as_bytes()),
        Error::ManifestSyntax { .. }
    ));
    let deep_in_field = format!(
        r#"{{"extra":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    // serde_json skips an ignored value without recursing: no stack to overflow.
    assert!(matches!(
        err_of(deep_in_field.as_bytes()),
        Error::UnknownField { .. }
    ));
}

#[test]
fn wrong_types_and_numbers() {
    let cases: Vec<Value> = vec![
        edit(|v| v["security_version"] = json!(1.0)),
        edit(|v| v["security_version"] = json!(-1)),
        edit(|v| v["security_version"] = json!("7")),
        edit(|v| v["created"] = json!(1e9)),
        edit(|v| v["images"] = json!({})),
        edit(|v| v["images"][0]["size"] = json!(1.5)),
        edit(|v| v["images"][0]["chunks"][0] = json!([])),
        edit(|v| v["images"][0]["chunks"][0]["stored"] = json!(-5)),
        edit(|v| v["images"][0]["kind"] = json!(null)),
        edit(|v| v["compatible"] = json!(["a"])),
    ];
    for v in &cases {
        assert!(matches!(err(v), Error::ManifestSyntax { .. }), "{v}");
    }
    // Beyond u64.
    let text = String::from_utf8(sample().to_canonical_json())
        .unwrap()
        .replace("\"created\":1700000000", "\"created\":18446744073709551616");
    assert!(matches!(
        err_of(text.as_bytes()),
        Error::ManifestSyntax { .. }
    ));
}

#[test]
fn duplicate_fields_are_refused() {
    let text = String::from_utf8(sample().to_canonical_json()).unwrap();
    for (from, to) in [
        ("{\"compatible\":", "{\"compatible\":\"x\",\"compatible\":"),
        (
            "\"slot_class\":\"boot\"",
            "\"slot_class\":\"boot\",\"slot_class\":\"boot\"",
        ),
        ("\"op\":\"data\"", "\"op\":\"data\",\"op\":\"data\""),
    ] {
        let dup = text.replacen(from, to, 1);
        assert_ne!(dup, text);
        match err_of(dup.as_bytes()) {
            Error::ManifestSyntax { message } => {
                assert!(message.contains("duplicate"), "{message}")
            }
            e => panic!("{e}"),
        }
    }
}

#[test]
fn unknown_fields_are_refused_with_their_path() {
    let cases = [
        (edit(|v| v["extra"] = json!(1)), "extra"),
        (
            edit(|v| v["images"][1]["extra"] = json!({"a": [1]})),
            "images[1].extra",
        ),
        (
            edit(|v| v["images"][0]["chunks"][2]["offset"] = json!(0)),
            "images[0].chunks[2].offset",
        ),
    ];
    for (v, path) in cases {
        match err(&v) {
            Error::UnknownField { path: p } => assert_eq!(p, path),
            e => panic!("{path}: {e}"),
        }
    }
}

#[test]
fn missing_fields_are_named() {
    for field in [
        "compatible",
        "version",
        "security_version",
        "created",
        "images",
    ] {
        match err(&edit(|v| {
            v.as_object_mut().unwrap().remove(field);
        })) {
            Error::MissingField { path } => assert_eq!(path, field),
            e => panic!("{field}: {e}"),
        }
    }
    for field in [
        "slot_class",
        "size",
        "sha256",
        "kind",
        "compression",
        "chunk_size",
        "chunks",
    ] {
        match err(&edit(|v| {
            v["images"][1].as_object_mut().unwrap().remove(field);
        })) {
            Error::MissingField { path } => assert_eq!(path, format!("images[1].{field}")),
            e => panic!("{field}: {e}"),
        }
    }
    for field in ["op", "stored", "sha256"] {
        match err(&edit(|v| {
            v["images"][0]["chunks"][1]
                .as_object_mut()
                .unwrap()
                .remove(field);
        })) {
            Error::MissingField { path } => {
                assert_eq!(path, format!("images[0].chunks[1].{field}"))
            }
            e => panic!("{field}: {e}"),
        }
    }
}

#[test]
fn unknown_kind_says_update_even_with_fields_of_its_own() {
    // What an image kind from a later abup might look like: new kind, new fields, no chunks.
    let v = edit(|v| {
        let img = &mut v["images"][1];
        img["kind"] = json!("overlay");
        img["lower_sha256"] = json!(hex64(9));
        img.as_object_mut().unwrap().remove("chunks");
    });
    match err(&v) {
        e @ Error::UnknownImageKind { image: 1, .. } => {
            assert!(e.to_string().contains("\"overlay\""));
            assert!(e.to_string().contains("update abup"), "{e}");
        }
        e => panic!("{e}"),
    }
}

#[test]
fn unknown_op_says_update_even_with_fields_of_its_own() {
    let v = edit(|v| {
        v["images"][0]["chunks"][1] = json!({"op": "bsdiff", "base_offset": 0, "len": 5});
    });
    match err(&v) {
        e @ Error::UnknownChunkOp {
            image: 0, chunk: 1, ..
        } => assert!(e.to_string().contains("update abup"), "{e}"),
        e => panic!("{e}"),
    }
}

#[test]
fn unknown_compression() {
    let v = edit(|v| v["images"][0]["compression"] = json!("xz"));
    match err(&v) {
        Error::UnknownCompression {
            image: 0,
            compression,
        } => assert_eq!(compression, "xz"),
        e => panic!("{e}"),
    }
    // Names are exact.
    let v = edit(|v| v["images"][0]["compression"] = json!("ZSTD"));
    assert!(matches!(err(&v), Error::UnknownCompression { .. }));
}

#[test]
fn hashes_must_be_64_lowercase_hex_digits() {
    for bad in [
        hex64(0xab).to_uppercase(),
        hex64(0xab)[..62].to_string(),
        format!("{}0", hex64(0xab)),
        format!("0x{}", &hex64(0xab)[2..]),
        String::new(),
    ] {
        match err(&edit(|v| v["images"][0]["sha256"] = json!(bad))) {
            Error::BadHex { path, .. } => assert_eq!(path, "images[0].sha256"),
            e => panic!("{bad}: {e}"),
        }
        match err(&edit(|v| {
            v["images"][1]["chunks"][0]["sha256"] = json!(bad)
        })) {
            Error::BadHex { path, .. } => assert_eq!(path, "images[1].chunks[0].sha256"),
            e => panic!("{bad}: {e}"),
        }
    }
}

#[test]
fn text_fields() {
    let long = "x".repeat(MAX_TEXT_LEN + 1);
    for field in ["compatible", "version"] {
        for bad in [
            "",
            long.as_str(),
            "tab\there",
            "new\nline",
            "caf\u{e9}",
            "esc\u{1b}[31m",
        ] {
            match err(&edit(|v| v[field] = json!(bad))) {
                Error::BadText { field: f, .. } => assert_eq!(f, field),
                e => panic!("{field} {bad:?}: {e}"),
            }
        }
        let ok = "x".repeat(MAX_TEXT_LEN);
        parse_value(&edit(|v| v[field] = json!(ok))).unwrap();
    }
}

#[test]
fn image_count() {
    match err(&edit(|v| v["images"] = json!([]))) {
        Error::ImageCount { count: 0 } => {}
        e => panic!("{e}"),
    }
    let mut m = sample();
    let template = m.images[1].clone();
    m.images = (0..MAX_IMAGES)
        .map(|i| Image {
            slot_class: format!("part{i}"),
            ..template.clone()
        })
        .collect();
    Manifest::parse(&m.to_canonical_json()).unwrap();
    m.images.push(Image {
        slot_class: "one-too-many".into(),
        ..template
    });
    match err_of(&m.to_canonical_json()) {
        Error::ImageCount { count } => assert_eq!(count, MAX_IMAGES + 1),
        e => panic!("{e}"),
    }
}

#[test]
fn slot_classes() {
    let long = "a".repeat(MAX_SLOT_CLASS_LEN + 1);
    for bad in [
        "",
        "RootFS",
        "root fs",
        "root.fs",
        "rootfs/",
        long.as_str(),
        "\u{e9}",
    ] {
        match err(&edit(|v| v["images"][1]["slot_class"] = json!(bad))) {
            Error::BadSlotClass { image: 1, .. } => {}
            e => panic!("{bad:?}: {e}"),
        }
    }
    for good in ["a", "boot_a-2", &"z".repeat(MAX_SLOT_CLASS_LEN)] {
        parse_value(&edit(|v| v["images"][1]["slot_class"] = json!(good))).unwrap();
    }
    match err(&edit(|v| v["images"][1]["slot_class"] = json!("rootfs"))) {
        Error::DuplicateSlotClass { slot_class } => assert_eq!(slot_class, "rootfs"),
        e => panic!("{e}"),
    }
}

#[test]
fn chunk_sizes() {
    for bad in [
        0u64,
        1,
        u64::from(MIN_CHUNK_SIZE) / 2,
        u64::from(MIN_CHUNK_SIZE) + 1,
        3 << 20,
        u64::from(MAX_CHUNK_SIZE) * 2,
        1 << 32,
        u64::MAX,
    ] {
        match err(&edit(|v| v["images"][1]["chunk_size"] = json!(bad))) {
            Error::ChunkSize {
                image: 1,
                chunk_size,
            } => assert_eq!(chunk_size, bad),
            e => panic!("{bad}: {e}"),
        }
    }
    // Every allowed size, with the chunk count that goes with it.
    let mut cs = MIN_CHUNK_SIZE;
    while cs <= MAX_CHUNK_SIZE {
        let mut m = sample();
        m.images[1].chunk_size = cs;
        m.images[1].size = u64::from(cs);
        m.images[1].chunks = vec![chunk(cs, 1)];
        Manifest::parse(&m.to_canonical_json()).unwrap();
        cs *= 2;
    }
}

#[test]
fn image_sizes() {
    let mut m = sample();
    m.images[1].size = 0;
    m.images[1].chunks.clear();
    assert!(matches!(
        err_of(&m.to_canonical_json()),
        Error::ImageSize { image: 1, size: 0 }
    ));
    for size in [MAX_IMAGE_SIZE + 1, u64::MAX] {
        let mut m = sample();
        m.images[1].size = size;
        match m.validate() {
            Err(Error::ImageSize { image: 1, size: s }) => assert_eq!(s, size),
            r => panic!("{r:?}"),
        }
    }
}

#[test]
fn chunk_count_must_follow_from_size() {
    let cases: [(u64, usize); 6] = [
        (1, 0),
        (1, 2),
        (u64::from(CS), 2),
        (u64::from(CS) + 1, 1),
        (u64::from(CS) * 3, 4),
        (u64::from(CS) * 3 - 1, 2),
    ];
    for (size, n) in cases {
        let mut m = sample();
        m.images[1].size = size;
        m.images[1].chunks = vec![chunk(1, 1); n];
        m.images[1].compression = Compression::Zstd;
        match err_of(&m.to_canonical_json()) {
            Error::ChunkCount {
                image: 1,
                expected,
                found,
                ..
            } => {
                assert_eq!(expected, size.div_ceil(u64::from(CS)));
                assert_eq!(found, n);
            }
            e => panic!("{size} {n}: {e}"),
        }
    }
    // The chunk count check comes before anything that reads a chunk's length.
    let mut m = sample();
    m.images[0].size = MAX_IMAGE_SIZE;
    match m.validate() {
        Err(Error::ChunkCount { expected, .. }) => {
            assert_eq!(expected, MAX_IMAGE_SIZE / u64::from(CS))
        }
        r => panic!("{r:?}"),
    }
}

#[test]
fn too_many_chunks_in_all() {
    // Through validate: cheap to build.
    let mut m = sample();
    let per_image = MAX_CHUNKS / 2 + 1;
    for img in &mut m.images {
        img.chunk_size = MIN_CHUNK_SIZE;
        img.size = u64::from(MIN_CHUNK_SIZE) * per_image as u64;
        img.compression = Compression::None;
        img.chunks = vec![chunk(MIN_CHUNK_SIZE, 1); per_image];
    }
    match m.validate() {
        Err(Error::TooManyChunks { count }) => assert_eq!(count, 2 * per_image as u64),
        r => panic!("{r:?}"),
    }
    // Through parsing: refused before any chunk is looked at.
    let c = format!(r#"{{"op":"data","stored":1,"sha256":"{}"}}"#, hex64(0));
    let chunks = vec![c; MAX_CHUNKS + 1].join(",");
    let text = format!(
        r#"{{"compatible":"c","version":"v","security_version":0,"created":0,"images":[{{"slot_class":"rootfs","size":1,"sha256":"{}","kind":"full","compression":"zstd","chunk_size":65536,"chunks":[{chunks}]}}]}}"#,
        hex64(0)
    );
    match err_of(text.as_bytes()) {
        Error::TooManyChunks { count } => assert_eq!(count, MAX_CHUNKS as u64 + 1),
        e => panic!("{e}"),
    }
}

#[test]
fn stored_lengths() {
    let bound = |len: u32| Compression::Zstd.max_stored_len(len);
    // rootfs (zstd): chunks of CS, CS, CS/2 bytes.
    for (k, stored) in [
        (0usize, 0u64),
        (0, u64::from(bound(CS)) + 1),
        (2, u64::from(bound(CS / 2)) + 1),
        (1, u64::from(MAX_STORED_LEN) + 1),
        (1, u64::from(u32::MAX) + 1),
        (1, u64::MAX),
    ] {
        match err(&edit(|v| {
            v["images"][0]["chunks"][k]["stored"] = json!(stored)
        })) {
            Error::StoredLength {
                image: 0,
                chunk,
                stored: s,
                ..
            } => {
                assert_eq!((chunk, s), (k, stored));
            }
            e => panic!("{k} {stored}: {e}"),
        }
    }
    parse_value(&edit(|v| {
        v["images"][0]["chunks"][2]["stored"] = json!(bound(CS / 2))
    }))
    .unwrap();
    parse_value(&edit(|v| v["images"][0]["chunks"][2]["stored"] = json!(1))).unwrap();
    // boot (raw): exactly the chunk's length.
    for stored in [u64::from(CS) - 1, u64::from(CS) + 1, 0] {
        match err(&edit(|v| {
            v["images"][1]["chunks"][0]["stored"] = json!(stored)
        })) {
            Error::StoredLength {
                image: 1,
                chunk: 0,
                min,
                max,
                ..
            } => assert_eq!((min, max), (CS, CS)),
            e => panic!("{stored}: {e}"),
        }
    }
}

#[test]
fn stored_bound_is_zstds() {
    for len in [
        1u32,
        100,
        (128 << 10) - 1,
        128 << 10,
        (128 << 10) + 1,
        MIN_CHUNK_SIZE,
        DEFAULT_CHUNK_SIZE,
        MAX_CHUNK_SIZE,
    ] {
        assert_eq!(
            Compression::Zstd.max_stored_len(len) as usize,
            zstd::zstd_safe::compress_bound(len as usize),
            "{len}"
        );
    }
    assert_eq!(
        Compression::Zstd.max_stored_len(MAX_CHUNK_SIZE),
        MAX_STORED_LEN
    );
    assert_eq!(Compression::None.max_stored_len(5), 5);
    assert_eq!(Compression::None.min_stored_len(5), 5);
}

#[test]
fn worst_case_manifest_fits_the_limit() {
    // The most chunks, each with the longest stored length, the longest texts and slot
    // classes: what `create` can produce must be readable.
    let per_image = MAX_CHUNKS / MAX_IMAGES;
    let size = u64::from(MAX_CHUNK_SIZE) * per_image as u64;
    let m = Manifest {
        compatible: "c".repeat(MAX_TEXT_LEN),
        version: "\"".repeat(MAX_TEXT_LEN),
        security_version: u64::MAX,
        created: u64::MAX,
        images: (0..MAX_IMAGES)
            .map(|i| Image {
                slot_class: format!("{i}{}", "s".repeat(MAX_SLOT_CLASS_LEN - 1)),
                size,
                sha256: [0; 32],
                kind: ImageKind::Full,
                compression: Compression::Zstd,
                chunk_size: MAX_CHUNK_SIZE,
                chunks: vec![chunk(MAX_STORED_LEN, 0); per_image],
            })
            .collect(),
    };
    m.validate().unwrap();
    let len = m.to_canonical_json().len();
    assert!(len <= MAX_MANIFEST_LEN, "{len}");
}

#[test]
fn chunk_geometry() {
    let m = sample();
    let img = &m.images[0];
    let cs = u64::from(CS);
    assert_eq!(img.chunk_range(0), 0..cs);
    assert_eq!(img.chunk_range(1), cs..2 * cs);
    assert_eq!(img.chunk_range(2), 2 * cs..img.size);
    assert_eq!(img.chunk_len(2), CS / 2);
    assert_eq!(
        img.chunk_range(3),
        img.size..img.size,
        "past the end: empty"
    );
    assert_eq!(img.chunk_range(usize::MAX), img.size..img.size);
    assert_eq!(img.payload_len(), 1000 + u64::from(CS + CS / 256) + 17);
    assert_eq!(m.payload_len(), img.payload_len() + cs);

    let refs: Vec<ChunkRef> = m.chunks().collect();
    assert_eq!(refs.len(), m.chunk_count());
    assert_eq!(refs.len(), 4);
    for r in &refs {
        assert_eq!(r.offset, m.chunk_offset(r.image, r.index));
        assert_eq!(r.range, m.images[r.image].chunk_range(r.index));
        assert_eq!(r.stored, m.images[r.image].chunks[r.index].stored);
    }
    assert_eq!((refs[3].image, refs[3].index), (1, 0));
    assert_eq!(refs[3].offset, img.payload_len());
    assert_eq!(
        m.chunk_offset(2, 0),
        m.payload_len(),
        "one past the last image: the end"
    );
}

#[test]
fn long_hostile_values_are_shortened_in_messages() {
    let huge = "x".repeat(1 << 20);
    let e = err(&edit(|v| v["images"][0]["kind"] = json!(huge)));
    assert!(e.to_string().len() < 400, "{}", e.to_string().len());
    let e = err(&edit(|v| v[huge.as_str()] = json!(1)));
    assert!(e.to_string().len() < 400);
}

// ---- delta images ----

/// A valid delta manifest: one image of 2.5 chunks against a base of 3 chunks; chunk 0 a
/// copy from two extents, chunk 1 a patch, chunk 2 zeros.
fn delta_sample() -> Value {
    let cs = u64::from(CS);
    json!({
        "compatible": "c", "version": "v", "security_version": 0, "created": 0,
        "images": [{
            "slot_class": "rootfs", "size": cs * 5 / 2, "sha256": hex64(1), "kind": "delta",
            "base_size": cs * 3, "base_sha256": hex64(2),
            "compression": "zstd", "chunk_size": cs,
            "chunks": [
                {"op": "copy", "extents": [[cs, cs / 2], [0, cs / 2]], "sha256": hex64(3)},
                {"op": "patch", "extents": [[0, cs * 3]], "base_sha256": hex64(4),
                 "stored": 100, "sha256": hex64(5), "out_sha256": hex64(6)},
                {"op": "zero"}
            ]
        }]
    })
}

#[test]
fn a_delta_manifest_parses_and_spells_back_canonically() {
    let v = delta_sample();
    let m = Manifest::parse(v.to_string().as_bytes()).unwrap();
    let img = &m.images[0];
    assert_eq!(img.kind.base().unwrap().size, u64::from(CS) * 3);
    assert_eq!(img.chunks[0].op.extents().len(), 2);
    assert_eq!(img.chunks[1].stored, 100);
    assert_eq!(img.chunks[2].op, Op::Zero);
    // Canonical: exactly the fields of each operation, in the documented order.
    let json = String::from_utf8(m.to_canonical_json()).unwrap();
    assert!(json.contains(&format!(
        "\"kind\":\"delta\",\"base_size\":{},\"base_sha256\":\"{}\",\"compression\"",
        u64::from(CS) * 3,
        hex64(2)
    )));
    assert!(json.contains("{\"op\":\"zero\"}"), "{json}");
    assert!(json.contains(&format!(
        "{{\"op\":\"patch\",\"extents\":[[0,{}]],\"base_sha256\":\"{}\",\"stored\":100,\"sha256\":\"{}\",\"out_sha256\":\"{}\"}}",
        u64::from(CS) * 3,
        hex64(4),
        hex64(5),
        hex64(6)
    )), "{json}");
    assert_eq!(Manifest::parse(json.as_bytes()).unwrap(), m);
}

#[test]
fn a_patch_reads_the_images_own_earlier_bytes_within_the_window() {
    let cs = u64::from(CS);
    let mut v = delta_sample();
    v["images"][0]["chunks"][2] = json!({
        "op": "patch", "extents": [[0, cs]], "target_extents": [[cs, cs / 2], [cs + 10, 5]],
        "base_sha256": hex64(4), "stored": 100, "sha256": hex64(5), "out_sha256": hex64(6)
    });
    let m = Manifest::parse(v.to_string().as_bytes()).unwrap();
    let op = &m.images[0].chunks[2].op;
    assert_eq!(op.target_extents().len(), 2);
    assert!(m.images[0].reads_target());
    let json = String::from_utf8(m.to_canonical_json()).unwrap();
    assert!(
        json.contains(&format!(
            "\"extents\":[[0,{cs}]],\"target_extents\":[[{cs},{}],[{},5]],\"base_sha256\"",
            cs / 2,
            cs + 10
        )),
        "{json}"
    );
    assert_eq!(Manifest::parse(json.as_bytes()).unwrap(), m);
    // Base and target bytes share the window's limit.
    v["images"][0]["base_size"] = json!(MAX_PATCH_WINDOW);
    v["images"][0]["chunks"][2]["extents"] = json!([[0, MAX_PATCH_WINDOW - cs / 2 + 1]]);
    let e = Manifest::parse(v.to_string().as_bytes()).unwrap_err();
    assert!(
        e.to_string().contains("base and target extents hold"),
        "{e}"
    );
}

#[test]
fn delta_rules_each_refused_with_their_own_message() {
    let cs = u64::from(CS);
    type Edit = fn(&mut Value, u64);
    let cases: &[(&str, Edit, &str)] = &[
        (
            "base field in a full image",
            |v, _| {
                v["images"][0]["kind"] = json!("full");
            },
            "images[0].base_size",
        ),
        (
            "copy in a full image",
            |v, _| {
                let img = v["images"][0].as_object_mut().unwrap();
                img.insert("kind".into(), json!("full"));
                img.remove("base_size");
                img.remove("base_sha256");
            },
            "a full image",
        ),
        (
            "missing base_sha256",
            |v, _| {
                v["images"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("base_sha256");
            },
            "images[0].base_sha256",
        ),
        (
            "zero base",
            |v, _| v["images"][0]["base_size"] = json!(0),
            "base of 0 bytes",
        ),
        (
            "copy short of its chunk",
            |v, cs| {
                v["images"][0]["chunks"][0]["extents"] = json!([[0, cs / 2]]);
            },
            "the chunk 65536",
        ),
        (
            "extent past the base",
            |v, cs| {
                v["images"][0]["chunks"][0]["extents"] = json!([[cs * 3 - 10, cs]]);
            },
            "reaches past the base",
        ),
        (
            "extent wrapping around",
            |v, _| {
                v["images"][0]["chunks"][0]["extents"] = json!([[u64::MAX, 2], [0, 65534]]);
            },
            "reaches past the base",
        ),
        (
            "empty extent",
            |v, cs| {
                v["images"][0]["chunks"][0]["extents"] = json!([[0, 0], [0, cs]]);
            },
            "is empty",
        ),
        (
            "no extents",
            |v, _| {
                v["images"][0]["chunks"][1]["extents"] = json!([]);
            },
            "lists 0 extents",
        ),
        (
            "window too large",
            |v, _| {
                let big = MAX_PATCH_WINDOW + 1;
                v["images"][0]["base_size"] = json!(big);
                v["images"][0]["chunks"][1]["extents"] = json!([[0, big]]);
            },
            "more than the 8388608",
        ),
        (
            "patch storing nothing",
            |v, _| {
                v["images"][0]["chunks"][1]["stored"] = json!(0);
            },
            "stored in 0 bytes",
        ),
        (
            "zero with stored bytes",
            |v, _| {
                v["images"][0]["chunks"][2]["stored"] = json!(5);
            },
            "chunks[2].stored",
        ),
        (
            "zero with a hash",
            |v, _| {
                v["images"][0]["chunks"][2]["sha256"] = json!(hex64(1));
            },
            "chunks[2].sha256",
        ),
        (
            "data with extents",
            |v, cs| {
                v["images"][0]["chunks"][2] =
                    json!({"op": "data", "extents": [[0, cs]], "stored": 5, "sha256": hex64(1)});
            },
            "chunks[2].extents",
        ),
        (
            "copy with out_sha256",
            |v, _| {
                v["images"][0]["chunks"][0]["out_sha256"] = json!(hex64(1));
            },
            "chunks[0].out_sha256",
        ),
        (
            "patch without out_sha256",
            |v, _| {
                v["images"][0]["chunks"][1]
                    .as_object_mut()
                    .unwrap()
                    .remove("out_sha256");
            },
            "chunks[1].out_sha256",
        ),
        (
            "target extents on a copy",
            |v, cs| {
                v["images"][0]["chunks"][0]["target_extents"] = json!([[cs, 1]]);
            },
            "chunks[0].target_extents",
        ),
        (
            "empty target extents",
            |v, _| {
                v["images"][0]["chunks"][1]["target_extents"] = json!([]);
            },
            "target_extents list is empty",
        ),
        (
            "target extent in the first chunk (held back by a device)",
            |v, _| {
                v["images"][0]["chunks"][1]["target_extents"] = json!([[0, 10]]);
            },
            "not between the end of the first chunk",
        ),
        (
            "target extent not before its chunk",
            |v, cs| {
                v["images"][0]["chunks"][1]["target_extents"] = json!([[cs, 1]]);
            },
            "and the start of this one (65536)",
        ),
        (
            "extent not a pair",
            |v, _| {
                v["images"][0]["chunks"][0]["extents"] = json!([[0, 1, 2]]);
            },
            "not valid",
        ),
        (
            "extent negative",
            |v, _| {
                v["images"][0]["chunks"][0]["extents"] = json!([[-1, 1]]);
            },
            "not valid",
        ),
    ];
    for (name, edit, needle) in cases {
        let mut v = delta_sample();
        edit(&mut v, cs);
        match Manifest::parse(v.to_string().as_bytes()) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(needle), "{name}: {msg}");
                assert!(!msg.contains('\n'), "{name}: {msg}");
            }
        }
    }
}

#[test]
fn too_many_extents_are_counted_not_kept() {
    let mut v = delta_sample();
    let many: Vec<Value> = (0..=crate::bundle::MAX_EXTENTS)
        .map(|_| json!([0, 1]))
        .collect();
    v["images"][0]["chunks"][0]["extents"] = Value::Array(many);
    match Manifest::parse(v.to_string().as_bytes()) {
        // The copy's and the patch's one.
        Err(Error::TooManyExtents { count }) => {
            assert_eq!(count, crate::bundle::MAX_EXTENTS + 2)
        }
        r => panic!("{r:?}"),
    }
}
