//! Live cross-checks against the installed `grub-editenv` in both directions, and a property
//! test that runs random edits through both and demands identical files after every step.
//! Skipped, with a message, only where grub-editenv is not installed, and never in CI.

// Test helpers panic on purpose: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use common::have;
use grub_env::{Change, EnvBlock, Error, SIGNATURE};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Runs `grub-editenv FILE args...`; returns whether it succeeded. Its only failure here is a
/// refusal, which it reports with exit code 1.
fn editenv(file: &Path, args: &[&[u8]]) -> bool {
    let out = Command::new("grub-editenv")
        .arg(file)
        .args(args.iter().map(|a| OsStr::from_bytes(a)))
        .output()
        .unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "grub-editenv {args:?}: {out:?}"
    );
    out.status.success()
}

fn editenv_list(file: &Path) -> Vec<u8> {
    let out = Command::new("grub-editenv")
        .arg(file)
        .arg("list")
        .output()
        .unwrap();
    assert!(out.status.success(), "grub-editenv list failed");
    out.stdout
}

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

fn assignment(name: &[u8], value: &[u8]) -> Vec<u8> {
    [name, b"=", value].concat()
}

fn handmade(body: &[u8], size: usize) -> Vec<u8> {
    let mut bytes = SIGNATURE.to_vec();
    bytes.extend_from_slice(body);
    bytes.resize(size, b'#');
    bytes
}

#[test]
fn grub_editenv_reads_what_we_write() {
    if !have("grub-editenv") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("env");
    let mut block = EnvBlock::new(512).unwrap();
    block
        .set_many(&[
            (&b"ABUP_SEQ"[..], &b"7"[..]),
            (b"v", b"\\\n=#\t\r \xff\xc3\xa9"),
            (b"n a\\me#", b"\n"),
            (b"empty", b""),
        ])
        .unwrap();
    block.unset("v").unwrap();
    block.set("v", "back").unwrap();
    std::fs::write(&file, block.as_bytes()).unwrap();
    assert_eq!(editenv_list(&file), render_list(&block));

    // Hand-made duplicates and comments are listed alike.
    let dup = EnvBlock::from_bytes(handmade(b"a=1\n#x\\\ny=2\na=\\\\3\n=e\n", 300)).unwrap();
    std::fs::write(&file, dup.as_bytes()).unwrap();
    assert_eq!(editenv_list(&file), render_list(&dup));
    assert_eq!(dup.get("a").as_deref(), Some(&b"\\3"[..]));
}

#[test]
fn we_read_what_grub_editenv_writes() {
    if !have("grub-editenv") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("env");
    let values: [&[u8]; 5] = [b"a\\b", b"\n", b"x=y#z", b"\r\t \x80\xff", b""];
    assert!(editenv(&file, &[b"create"]));
    for (i, value) in values.iter().enumerate() {
        assert!(editenv(
            &file,
            &[b"set", &assignment(format!("v{i}").as_bytes(), value)]
        ));
    }
    assert!(editenv(&file, &[b"set", b"v0=replaced\\"]));
    assert!(editenv(&file, &[b"unset", b"v1"]));
    let block = EnvBlock::from_bytes(std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(block.get("v0").as_deref(), Some(&b"replaced\\"[..]));
    assert_eq!(block.get("v1"), None);
    for (i, value) in values.iter().enumerate().skip(2) {
        assert_eq!(block.get(format!("v{i}")).as_deref(), Some(*value));
    }
    assert_eq!(editenv_list(&file), render_list(&block));
}

#[test]
fn overflow_and_damage_are_refused_like_grub_editenv() {
    if !have("grub-editenv") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("env");
    assert!(editenv(&file, &[b"create"]));
    let fresh = std::fs::read(&file).unwrap();
    let mut block = EnvBlock::from_bytes(fresh.clone()).unwrap();
    let big = assignment(b"k", &[b'x'; 928]);
    assert!(!editenv(&file, &[b"set", &big]));
    assert_eq!(std::fs::read(&file).unwrap(), fresh);
    assert!(matches!(
        block.set("k", [b'x'; 928]),
        Err(Error::NoSpace { .. })
    ));
    assert!(!editenv(&file, &[b"set", b"a=1", &big]));
    assert_eq!(std::fs::read(&file).unwrap(), fresh);
    assert!(block
        .set_many(&[(&b"a"[..], &b"1"[..]), (b"k", &[b'x'; 928])])
        .is_err());
    assert_eq!(block.as_bytes(), fresh);

    // No newline before the padding: grub-editenv's set refuses, and so do we.
    let broken = handmade(b"a=1\nb=2", 64);
    std::fs::write(&file, &broken).unwrap();
    assert!(!editenv(&file, &[b"set", b"c=3"]));
    assert_eq!(std::fs::read(&file).unwrap(), broken);
    let mut block = EnvBlock::from_bytes(broken).unwrap();
    assert!(matches!(block.set("c", "3"), Err(Error::Broken { .. })));
}

#[derive(Debug, Clone)]
enum Op {
    Set(Vec<(Vec<u8>, Vec<u8>)>),
    Unset(Vec<Vec<u8>>),
}

/// Bytes that stress escaping, comment detection and the argument handling of grub-editenv.
const NAME_BYTES: &[u8] = b"aZ_\\ \t\r\"'$\xc3\xa9\xff";
const VALUE_BYTES: &[u8] = b"\\\n=# \t\rax\x01\x80\xff\xc3\xa9";

fn name() -> impl Strategy<Value = Vec<u8>> {
    let fixed: Vec<Vec<u8>> = ["a", "b", "ab", "BOOT_A_LEFT", "ABUP_SEQ"]
        .iter()
        .map(|n| n.as_bytes().to_vec())
        .collect();
    let mut rest = NAME_BYTES.to_vec();
    rest.push(b'#');
    prop_oneof![
        3 => prop::sample::select(fixed),
        1 => (
            prop::sample::select(NAME_BYTES.to_vec()),
            prop::collection::vec(prop::sample::select(rest), 0..6)
        )
            .prop_map(|(first, rest)| [vec![first], rest].concat()),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    let byte = || prop::sample::select(VALUE_BYTES.to_vec());
    prop_oneof![
        4 => prop::collection::vec(byte(), 0..12),
        1 => prop::collection::vec(byte(), 0..400),
        1 => (byte(), 0..600usize).prop_map(|(c, n)| vec![c; n]),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop::collection::vec((name(), value()), 1..=3).prop_map(Op::Set),
        1 => prop::collection::vec(name(), 1..=2).prop_map(Op::Unset),
    ]
}

/// Lines placed in the block by hand before the edits: entries (duplicates likely) and comments.
fn handmade_line() -> impl Strategy<Value = Vec<u8>> {
    let comment_byte = prop::sample::select(b"#\\ x=".to_vec());
    prop_oneof![
        (name(), value()).prop_map(|(n, v)| {
            let mut line = n;
            line.push(b'=');
            for c in v {
                if c == b'\\' || c == b'\n' {
                    line.push(b'\\');
                }
                line.push(c);
            }
            line.push(b'\n');
            line
        }),
        prop::collection::vec(comment_byte, 0..5)
            .prop_map(|text| [b"#", &text[..], b"\n"].concat()),
    ]
}

/// A fresh block (`create`'s header where it fits, the bare signature in smaller ones) with
/// `lines` written after the header; `None` if they do not fit.
fn initial_block(size: usize, lines: &[Vec<u8>]) -> Option<EnvBlock> {
    let mut bytes = match EnvBlock::new(size) {
        Ok(block) => block.into_bytes(),
        Err(_) => handmade(b"", size),
    };
    let mut at = bytes.iter().rposition(|&c| c == b'\n')? + 1;
    for line in lines {
        bytes.get_mut(at..at + line.len())?.copy_from_slice(line);
        at += line.len();
    }
    Some(EnvBlock::from_bytes(bytes).unwrap())
}

fn run_case(dir: &Path, size: usize, lines: &[Vec<u8>], ops: &[Op]) -> Result<(), TestCaseError> {
    let Some(mut block) = initial_block(size, lines) else {
        return Ok(());
    };
    let file = dir.join("env");
    std::fs::write(&file, block.as_bytes()).unwrap();
    if block.check_structure().is_err() {
        // We refuse to edit damaged blocks; grub-editenv may go ahead, so nothing to compare.
        let refused = matches!(block.set("a", "1"), Err(Error::Broken { .. }));
        prop_assert!(refused);
        return Ok(());
    }
    for op in ops {
        let before = block.clone();
        let (theirs_ok, ours) = match op {
            Op::Set(vars) => {
                let args: Vec<Vec<u8>> = vars.iter().map(|(n, v)| assignment(n, v)).collect();
                let mut argv: Vec<&[u8]> = vec![b"set"];
                argv.extend(args.iter().map(Vec::as_slice));
                let ok = editenv(&file, &argv);
                let ours = if let [(name, value)] = vars.as_slice() {
                    block.set(name, value)
                } else {
                    block.set_many(vars)
                };
                (ok, ours)
            }
            Op::Unset(names) => {
                let mut argv: Vec<&[u8]> = vec![b"unset"];
                argv.extend(names.iter().map(Vec::as_slice));
                let ok = editenv(&file, &argv);
                let ours = if let [name] = names.as_slice() {
                    block.unset(name).map(|_| ())
                } else {
                    let changes: Vec<Change<'_>> = names.iter().map(Change::unset).collect();
                    block.apply(&changes)
                };
                (ok, ours)
            }
        };
        let on_disk = std::fs::read(&file).unwrap();
        if theirs_ok {
            prop_assert!(
                ours.is_ok(),
                "{op:?}: grub-editenv succeeded, we said {ours:?}"
            );
        } else {
            let refused = matches!(ours, Err(Error::NoSpace { .. }));
            prop_assert!(refused, "{op:?}: grub-editenv refused, we said {ours:?}");
            prop_assert_eq!(&block, &before);
        }
        prop_assert!(
            on_disk == block.as_bytes(),
            "{:?}\n ours: {}\ntheirs: {}",
            op,
            block.as_bytes().escape_ascii(),
            on_disk.escape_ascii()
        );
    }
    prop_assert_eq!(editenv_list(&file), render_list(&block));
    Ok(())
}

#[test]
fn random_edits_give_the_same_bytes_as_grub_editenv() {
    if !have("grub-editenv") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = prop_oneof![
        2 => Just(512usize),
        2 => Just(1024usize),
        3 => 95..=1500usize,
        1 => 26..95usize,
    ];
    let lines = prop_oneof![
        2 => Just(Vec::new()),
        1 => prop::collection::vec(handmade_line(), 1..6),
    ];
    let ops = prop::collection::vec(op(), 1..12);
    let mut runner = TestRunner::new(Config {
        cases: 96,
        ..Config::default()
    });
    runner
        .run(&(size, lines, ops), |(size, lines, ops)| {
            run_case(dir.path(), size, &lines, &ops)
        })
        .unwrap();
}
