//! Every board's boot script uses exactly the bootloader variables abup writes for that
//! board's slots and scheme: a typo or a missing slot in a script would otherwise show up only
//! as a device that never falls back.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use abup::board::{Board, Bootloader};

fn boards() -> Vec<(PathBuf, Board)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../board-configs");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path().join("board.toml");
        if p.exists() {
            let b = Board::load(&p).unwrap();
            out.push((p, b));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 6);
    out
}

fn script(path: &Path, board: &Board) -> String {
    assert!(!board.script.is_empty(), "{}: no script", board.name);
    let dir = path.parent().unwrap();
    board
        .script
        .iter()
        .map(|part| std::fs::read_to_string(dir.join(part)).unwrap())
        .collect()
}

/// Identifiers outside comments.
fn identifiers(script: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in script.lines() {
        let code = line.split('#').next().unwrap_or("");
        let mut word = String::new();
        for c in code.chars().chain(std::iter::once(' ')) {
            if c.is_ascii_alphanumeric() || c == '_' {
                word.push(c);
            } else if !word.is_empty() {
                out.insert(std::mem::take(&mut word));
            }
        }
    }
    out
}

fn state_variables(script: &str, scheme: bootcount::Scheme) -> BTreeSet<String> {
    identifiers(script)
        .into_iter()
        .filter(|w| match scheme {
            bootcount::Scheme::Abup => w.starts_with("BOOT_"),
            bootcount::Scheme::RaucGrub => {
                w == "ORDER" || w.ends_with("_OK") || w.ends_with("_TRY")
            }
        })
        .collect()
}

#[test]
fn every_script_uses_exactly_the_variables_bootcount_writes() {
    for (path, board) in boards() {
        let text = script(&path, &board);
        let expected: BTreeSet<String> = bootcount::variable_names(board.scheme, &board.slots)
            .into_iter()
            .collect();
        assert_eq!(
            state_variables(&text, board.scheme),
            expected,
            "{}: script variables differ from what abup writes",
            board.name
        );
    }
}

#[test]
fn grub_scripts_load_every_variable_and_only_those() {
    for (path, board) in boards() {
        let Bootloader::Grub { .. } = board.bootloader else {
            continue;
        };
        let text = script(&path, &board);
        let expected: BTreeSet<String> = bootcount::variable_names(board.scheme, &board.slots)
            .into_iter()
            .collect();
        // The load_env that reads the state names every state variable, so a variable the
        // script tests but never loads cannot slip through.
        let loads: Vec<BTreeSet<String>> = text
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("load_env"))
            .map(|l| state_variables(l, board.scheme))
            .filter(|names| !names.is_empty())
            .collect();
        assert_eq!(loads, vec![expected], "{}", board.name);
    }
}

#[test]
fn uboot_scripts_save_only_tries() {
    for (path, board) in boards() {
        let Bootloader::UBoot { .. } = board.bootloader else {
            continue;
        };
        let code: String = script(&path, &board)
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").to_owned() + "\n")
            .collect();
        // Everything the script sets with setenv ends up in the saved environment: it may
        // only be a try counter (the board part's bootargs is set after saveenv).
        let (select, rest) = code.split_once("saveenv").unwrap();
        for line in select.lines() {
            for part in line.split(';') {
                if let Some(name) = part.trim().strip_prefix("setenv ") {
                    let name = name.split_whitespace().next().unwrap();
                    assert!(
                        name.starts_with("BOOT_") && name.ends_with("_LEFT"),
                        "{}: setenv {name} before saveenv",
                        board.name
                    );
                }
            }
        }
        assert!(!rest.contains("saveenv"), "{}: saves twice", board.name);
    }
}

/// abup's state (journal, slot records, security floor) must live outside both slots, or a slot
/// switch resets anti-rollback and resume: every shipped board keeps it on a partition of its
/// layout that is no slot (the data partition, mounted at /data, or on a board converted by
/// split-root, which has none, the ESP).
#[test]
fn every_board_keeps_its_state_outside_the_slots() {
    for (path, board) in boards() {
        let home = board
            .layout
            .iter()
            .filter(|p| {
                p.mount
                    .as_deref()
                    .is_some_and(|m| board.install.state_dir.starts_with(m))
            })
            .max_by_key(|p| p.mount.as_deref().map_or(0, str::len));
        assert!(
            home.is_some_and(|p| p.slot.is_none()),
            "{}: state-dir {} is on no partition of the layout outside the slots",
            path.display(),
            board.install.state_dir.display()
        );
        if board.name != "qemu-x86_64-grub-split" {
            assert!(
                board.install.state_dir.starts_with("/data"),
                "{}",
                path.display()
            );
        }
    }
}
