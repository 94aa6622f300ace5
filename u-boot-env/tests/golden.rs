//! Images made by mkenvimage and fw_setenv (scripts/gen-u-boot-env-golden.sh): abup decodes all
//! of them, and re-encodes mkenvimage's byte for byte.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions fail loudly on purpose

mod common;

use std::path::PathBuf;

use u_boot_env::{Endianness, Env, Header, Layout, RawCopy, RawEnv};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

struct Row {
    image: String,
    tool: String,
    layout: Layout,
    endianness: Endianness,
    fill: Option<u8>,
    size: usize,
    input: String,
}

fn manifest() -> Vec<Row> {
    let text = std::fs::read_to_string(data("manifest.tsv")).unwrap();
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let hex = |s: &str| usize::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
            Row {
                image: f[0].into(),
                tool: f[1].into(),
                layout: match f[2] {
                    "single" => Layout::Single,
                    "redundant" => Layout::Redundant,
                    other => panic!("layout {other}"),
                },
                endianness: match f[3] {
                    "little" => Endianness::Little,
                    "big" => Endianness::Big,
                    other => panic!("endianness {other}"),
                },
                fill: (f[4] != "-").then(|| hex(f[4]) as u8),
                size: hex(f[5]),
                input: f[6].into(),
            }
        })
        .collect()
}

/// mkenvimage's reading of its input: `\` at the end of a line embeds a newline, empty lines
/// and lines starting with `#` are skipped.
fn mkenvimage_input(text: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut entries = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        if current.is_empty() && (line.is_empty() || line[0] == b'#') {
            continue;
        }
        if let Some(head) = line.strip_suffix(b"\\") {
            current.extend_from_slice(head);
            current.push(b'\n');
            continue;
        }
        current.extend_from_slice(line);
        let eq = current.iter().position(|&b| b == b'=').unwrap();
        entries.push((current[..eq].to_vec(), current[eq + 1..].to_vec()));
        current.clear();
    }
    entries
}

#[test]
fn manifest_covers_every_variant() {
    let rows = manifest();
    assert!(rows.len() >= 13);
    for image in std::fs::read_dir(data("")).unwrap() {
        let name = image.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".bin") {
            assert!(
                rows.iter().any(|r| r.image == name),
                "{name} is not in the manifest"
            );
        }
    }
}

#[test]
fn mkenvimage_images_decode_and_reencode_byte_for_byte() {
    let mut reencoded = 0;
    for row in manifest().iter().filter(|r| r.tool == "mkenvimage") {
        let bytes = std::fs::read(data(&row.image)).unwrap();
        assert_eq!(bytes.len(), row.size, "{}", row.image);
        let input = mkenvimage_input(&std::fs::read(data(&row.input)).unwrap());

        let copy = RawCopy::parse(&bytes, row.layout, row.endianness).unwrap();
        assert!(copy.is_valid(), "{}: CRC", row.image);
        let other_endianness = match row.endianness {
            Endianness::Little => Endianness::Big,
            Endianness::Big => Endianness::Little,
        };
        assert!(!RawCopy::parse(&bytes, row.layout, other_endianness)
            .unwrap()
            .is_valid());
        let stored: Vec<(Vec<u8>, Vec<u8>)> = copy
            .entries()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(
            stored, input,
            "{}: entries in mkenvimage's order",
            row.image
        );
        if row.layout == Layout::Redundant {
            assert_eq!(copy.flags(), Some(1), "mkenvimage -r writes flag 1");
        }

        let mut expected = Env::new();
        for (n, v) in &input {
            expected.set(n, v).unwrap();
        }
        let decoded = Env::decode(&bytes, row.layout, row.endianness).unwrap();
        assert_eq!(decoded, expected, "{}: last duplicate wins", row.image);

        let sorted_unique = input.windows(2).all(|w| w[0].0 < w[1].0);
        if sorted_unique {
            let header = match row.layout {
                Layout::Single => Header::Single,
                Layout::Redundant => Header::Redundant { flags: 1 },
            };
            let ours = decoded
                .encode(header, row.size, row.fill.unwrap(), row.endianness)
                .unwrap();
            assert_eq!(
                ours, bytes,
                "{}: abup's encoding differs from mkenvimage's",
                row.image
            );
            reencoded += 1;
        }
    }
    assert!(reencoded >= 9, "only {reencoded} images were re-encoded");
}

#[test]
fn fw_setenv_images_decode_to_fw_printenv_listing() {
    let rows: Vec<Row> = manifest()
        .into_iter()
        .filter(|r| r.tool == "fw_setenv")
        .collect();
    assert_eq!(rows.len(), 2);
    for row in rows {
        let bytes = std::fs::read(data(&row.image)).unwrap();
        let listing = common::parse_listing(&std::fs::read(data(&row.input)).unwrap());
        let stored = match row.layout {
            Layout::Single => RawEnv::single(&bytes, row.endianness).unwrap(),
            Layout::Redundant => {
                let (first, second) = bytes.split_at(row.size);
                RawEnv::redundant(first, second, row.endianness).unwrap()
            }
        };
        let current = stored.current_copy().expect("a valid copy");
        assert_eq!(
            common::pairs(&Env::from_copy(&current)),
            listing,
            "{}",
            row.image
        );
    }
}

#[test]
fn fw_setenv_leaves_stale_bytes_after_the_end_of_the_list() {
    let bytes = std::fs::read(data("fw-single-0x400.bin")).unwrap();
    let data_area = &bytes[4..];
    let end = data_area.windows(2).position(|w| w == b"\0\0").unwrap() + 2;
    let tail = &data_area[end..];
    assert!(
        tail.windows(8).any(|w| w == b"zz_ghost"),
        "the fixture no longer shows stale bytes"
    );
    let env = Env::decode(&bytes, Layout::Single, Endianness::Little).unwrap();
    assert!(env.iter().all(|(name, _)| !name.ends_with(b"ghost")));
}

#[test]
fn full_image_fits_exactly_and_one_more_byte_does_not() {
    let bytes = std::fs::read(data("mk-full-0x40.bin")).unwrap();
    let env = Env::decode(&bytes, Layout::Single, Endianness::Little).unwrap();
    assert_eq!(env.encoded_len(), 60);
    let mut bigger = env.clone();
    let mut value = env.get("k").unwrap().to_vec();
    value.push(b'v');
    bigger.set("k", value).unwrap();
    assert!(matches!(
        bigger.encode(Header::Single, 0x40, 0xFF, Endianness::Little),
        Err(u_boot_env::Error::TooLarge {
            needed: 61,
            available: 60
        })
    ));
}
