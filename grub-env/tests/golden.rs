//! Byte-exact comparison with blocks made by the real `grub-editenv` (GRUB 2.06), stored in
//! `tests/data/` by `scripts/gen-grub-env-golden.sh`. Each test repeats the script's
//! operations on the crate and expects the very same bytes; every fixture is also read back and
//! listed the way `grub-editenv list` printed it.

// Test helpers panic on purpose: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use grub_env::{Change, EnvBlock, EnvPair, Error, LongWidth, SEQ_VAR};

fn data(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixture(name: &str) -> EnvBlock {
    EnvBlock::from_bytes(data(name)).unwrap()
}

fn assert_golden(block: &EnvBlock, name: &str) {
    let expected = data(name);
    assert!(
        block.as_bytes() == expected,
        "{name} differs from grub-editenv's output\n ours: {}\ntheirs: {}",
        block.as_bytes().escape_ascii(),
        expected.escape_ascii()
    );
}

/// What `grub-editenv FILE list` prints: `name=value\n` per entry, duplicates included.
fn render_list(block: &EnvBlock) -> Vec<u8> {
    let mut out = Vec::new();
    for var in block {
        out.extend_from_slice(var.name);
        out.push(b'=');
        out.extend_from_slice(&var.value);
        out.push(b'\n');
    }
    out
}

/// Same operations as the script's `specials.env`.
fn specials() -> EnvBlock {
    let mut block = EnvBlock::new(1024).unwrap();
    let batches: [&[(&str, &[u8])]; 3] = [
        &[
            ("bs", b"C:\\dir\\"),
            ("lf", b"line1\nline2"),
            ("eq", b"a=b=c"),
            ("hash", b"#not a comment"),
        ],
        &[
            ("sp", b"  two  spaces "),
            ("tab", b"a\tb"),
            ("cr", b"a\rb\r"),
            ("utf8", "grüße ☃".as_bytes()),
        ],
        &[
            ("high", b"\x80\xff\xfe\x01"),
            ("empty", b""),
            ("bslf", b"\\\n"),
            ("nl", b"\n\n"),
        ],
    ];
    for batch in batches {
        block.set_many(batch).unwrap();
    }
    block
}

#[test]
fn every_fixture_is_read_and_listed_like_grub_editenv() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("env") {
            continue;
        }
        let block = EnvBlock::from_bytes(std::fs::read(&path).unwrap()).unwrap();
        let listed = std::fs::read(path.with_extension("list")).unwrap();
        assert_eq!(
            render_list(&block).escape_ascii().to_string(),
            listed.escape_ascii().to_string(),
            "{}",
            path.display()
        );
        assert!(block.check_structure().is_ok(), "{}", path.display());
        count += 1;
    }
    assert!(
        count >= 20,
        "only {count} fixtures; run scripts/gen-grub-env-golden.sh"
    );
}

#[test]
fn create_matches() {
    assert_golden(&EnvBlock::new(1024).unwrap(), "create-1024.env");
}

#[test]
fn special_bytes_are_stored_like_grub_editenv_stores_them() {
    let block = specials();
    assert_golden(&block, "specials.env");
    let theirs = fixture("specials.env");
    for (name, value) in [
        ("bs", &b"C:\\dir\\"[..]),
        ("lf", b"line1\nline2"),
        ("eq", b"a=b=c"),
        ("hash", b"#not a comment"),
        ("cr", b"a\rb\r"),
        ("utf8", "grüße ☃".as_bytes()),
        ("high", b"\x80\xff\xfe\x01"),
        ("empty", b""),
        ("bslf", b"\\\n"),
        ("nl", b"\n\n"),
    ] {
        assert_eq!(theirs.get(name).as_deref(), Some(value), "{name}");
    }
}

#[test]
fn replacing_shifts_the_tail_like_grub_editenv() {
    let mut block = specials();
    block.set("eq", "x").unwrap();
    assert_golden(&block, "replace-shorter.env");

    let mut block = specials();
    block
        .set_many(&[
            ("bs", "C:\\a\\much\\longer\\path\\than\\before\\\\"),
            ("sp", "x"),
        ])
        .unwrap();
    assert_golden(&block, "replace-longer.env");
}

#[test]
fn unset_matches() {
    let mut block = specials();
    for name in ["lf", "absent", "hash"] {
        block.unset(name).unwrap();
    }
    assert_golden(&block, "unset.env");
}

#[test]
fn a_block_fills_to_its_last_byte_and_no_further() {
    let mut block = EnvBlock::new(1024).unwrap();
    let too_big = "x".repeat(928);
    assert!(matches!(
        block.set("k", &too_big),
        Err(Error::NoSpace {
            needed: 931,
            free: 930,
            ..
        })
    ));
    block.set("k", "x".repeat(927)).unwrap();
    assert_golden(&block, "full-1024.env");
    assert!(matches!(
        block.set("k", &too_big),
        Err(Error::NoSpace {
            needed: 1,
            free: 0,
            ..
        })
    ));
    assert!(matches!(block.set("j", ""), Err(Error::NoSpace { .. })));
    assert_golden(&block, "full-1024.env");

    block.set("k", "short").unwrap();
    assert_golden(&block, "full-shrunk.env");

    let mut block = EnvBlock::new(1024).unwrap();
    block.set("k", format!("{}x", "\\".repeat(463))).unwrap();
    assert_golden(&block, "full-escaped.env");

    let mut block = EnvBlock::new(512).unwrap();
    block.set("k", "y".repeat(415)).unwrap();
    assert_golden(&block, "full-512.env");
}

#[test]
fn duplicates_are_edited_at_the_first_and_read_at_the_last() {
    let input = fixture("dup-in.env");
    assert_eq!(input.get("a").as_deref(), Some(&b"3"[..]));
    assert_eq!(input.get("b").as_deref(), Some(&b"4"[..]));
    assert_eq!(input.iter().count(), 4);

    let mut block = input.clone();
    block.set("a", "XY").unwrap();
    assert_golden(&block, "dup-set.env");
    assert_eq!(block.get("a").as_deref(), Some(&b"3"[..]));

    let mut block = input;
    assert!(block.unset("b").unwrap());
    assert_golden(&block, "dup-unset.env");
    assert_eq!(block.get("b").as_deref(), Some(&b"4"[..]));
}

#[test]
fn a_comment_ending_in_a_backslash_hides_the_next_line() {
    let mut block = fixture("comment-bs.env");
    assert_eq!(block.get("hidden"), None);
    block.set("hidden", "3").unwrap();
    assert_golden(&block, "comment-bs-set.env");
}

#[test]
fn pair_blocks_match_grub_editenv() {
    assert_golden(&EnvBlock::new(512).unwrap(), "size-512.env");
    let pair = EnvPair::create(512, LongWidth::Bits64).unwrap();
    for index in 0..2 {
        assert_golden(pair.copy(index).unwrap().as_ref().unwrap(), "pair-512.env");
    }

    let mut block = fixture("pair-512.env");
    block
        .set_many(&[
            ("BOOT_ORDER", "A B"),
            ("BOOT_A_LEFT", "3"),
            ("BOOT_B_LEFT", "3"),
            (SEQ_VAR, "10"),
        ])
        .unwrap();
    block
        .apply(&[Change::set("BOOT_A_LEFT", "2"), Change::set(SEQ_VAR, "9")])
        .unwrap();
    assert_golden(&block, "boot-512.env");
}

#[test]
fn odd_sizes_behave_like_grub_editenv() {
    let mut block = fixture("size-26.env");
    assert_eq!(block.free_space(), 1);
    assert!(matches!(
        block.set("a", ""),
        Err(Error::NoSpace {
            needed: 3,
            free: 1,
            ..
        })
    ));

    let mut block = EnvBlock::new(97).unwrap();
    block.set("a", "").unwrap();
    assert_golden(&block, "size-97.env");
    assert_eq!(block.free_space(), 0);

    let mut block = EnvBlock::new(1000).unwrap();
    block.set("abc", "def").unwrap();
    assert_golden(&block, "size-1000.env");

    let mut block = EnvBlock::new(4097).unwrap();
    block.set("big", "z".repeat(3000)).unwrap();
    assert_golden(&block, "size-4097.env");
}
