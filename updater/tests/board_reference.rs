//! board-configs/README.md's board.toml reference names every section and key that abup
//! accepts, and nothing it does not. The accepted keys come from the parser itself: every
//! section refuses unknown keys, and the error lists the keys it knows. So a key or section
//! added to board.rs without a row in the reference fails here, and so does a row left behind
//! by a key that was removed.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use abup::board::Board;

const README: &str = include_str!("../../board-configs/README.md");
const PROBE: &str = "zz-no-such-key";

/// The smallest board every section can be added to.
const BASE: &str = "\
[board]
name = \"probe\"
compatible = \"probe\"

[bootloader]
type = \"grub\"
grubenv = [\"/boot/abupenv.0\", \"/boot/abupenv.1\"]

[[slot]]
name = \"A\"
device = \"/dev/vda2\"

[[slot]]
name = \"B\"
device = \"/dev/vda3\"
";

/// The parser's error for `text`.
fn error(text: &str) -> String {
    match Board::parse(text, Path::new("probe.toml")) {
        Ok(_) => panic!("a board with {PROBE} was accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// The keys serde lists after "unknown field `zz-no-such-key`, expected ...".
fn keys_listed(err: &str) -> BTreeSet<String> {
    let Some((_, list)) = err.split_once(&format!("unknown field `{PROBE}`, expected ")) else {
        panic!("not an unknown-field error: {err}");
    };
    let list = list.split(" (line").next().unwrap();
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The keys `section` accepts: the probe key goes into its table (`[section]`, or
/// `[[section]]` for a list of tables), which is added if BASE has none.
fn accepted(section: &str) -> BTreeSet<String> {
    let probe = format!("{PROBE} = 1\n");
    for header in [format!("[{section}]\n"), format!("[[{section}]]\n")] {
        let text = match BASE.find(&header) {
            Some(at) => {
                let after = at + header.len();
                format!("{}{probe}{}", &BASE[..after], &BASE[after..])
            }
            None => format!("{BASE}\n{header}{probe}"),
        };
        let err = error(&text);
        if err.contains("unknown field") {
            return keys_listed(&err);
        }
    }
    panic!("cannot probe section {section}: neither [{section}] nor [[{section}]] takes keys");
}

/// The reference table: the keys of each section, as its rows name them in backquotes.
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let table = README
        .lines()
        .skip_while(|l| !l.starts_with("| section | key |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'));
    let mut sections: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current = String::new();
    for row in table {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (section, keys) = (cells[1], cells[2]);
        if !section.is_empty() {
            current = section.trim_matches(|c| "`[]".contains(c)).to_owned();
        }
        let entry = sections.entry(current.clone()).or_default();
        entry.extend(keys.split('`').skip(1).step_by(2).map(str::to_owned));
    }
    assert!(
        !sections.is_empty(),
        "no reference table in board-configs/README.md"
    );
    sections
}

#[test]
fn every_section_and_key_is_in_the_reference_and_nothing_else() {
    let top = keys_listed(&error(&format!("{PROBE} = 1\n{BASE}")));
    let documented = documented();
    let mut accepted_all = BTreeMap::new();
    for section in &top {
        accepted_all.insert(section.clone(), accepted(section));
    }
    assert_eq!(
        documented.keys().collect::<Vec<_>>(),
        accepted_all.keys().collect::<Vec<_>>(),
        "the sections of board-configs/README.md's reference table are not the ones board.rs \
         accepts"
    );
    for (section, keys) in &accepted_all {
        assert_eq!(
            &documented[section], keys,
            "board-configs/README.md's rows for [{section}] name other keys than board.rs \
             accepts"
        );
    }
}

/// The annotated example in the reference is a board abup accepts.
#[test]
fn the_annotated_example_parses() {
    let example: String = README
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap()
        .to_owned();
    Board::parse(&example, Path::new("board-configs/README.md")).unwrap();
}
