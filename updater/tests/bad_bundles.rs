//! Every bundle in the bad-input corpus (scripts/gen-bad-bundles) is refused with a one-line
//! error naming the problem and a non-zero exit status. A bundle refused before anything was
//! written (exit status 4) leaves the bootloader environment, both slots and the state
//! exactly as they were. One found bad while writing (exit status 1) leaves the running slot
//! untouched and the target out of rotation: the device starts with the target bootable (see
//! `Fixture::with_b_bootable`), so an install that wrote it without taking it out first would
//! be seen.
//!
//! The delta cases are built against what slot A holds; a case may ask for slot A to be
//! changed first (a running slot that is no longer the delta's base), and is then checked
//! against the changed slot.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::process::Command;

use common::fixture::Fixture;

#[test]
fn every_bad_bundle_is_refused_and_nothing_changes() {
    if !(common::have("python3") && common::have("openssl")) {
        return;
    }
    let f = Fixture::new(3 << 20, "").with_b_bootable();
    // The device has confirmed security version 3.
    std::fs::write(f.state.join("security.json"), r#"{"version":1,"floor":3}"#).unwrap();
    let corpus = f.t.path("corpus");
    let base = f.t.path("base.img");
    std::fs::write(&base, f.slot("A")).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/gen-bad-bundles");
    let out = Command::new(script)
        .arg(env!("CARGO_BIN_EXE_abup"))
        .arg(&f.key)
        .arg("abup-test")
        .arg(&corpus)
        .arg(&base)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let device = f.save();
    let env = f.env();
    let (slot_a, slot_b) = (f.slot("A"), f.slot("B"));
    let cases = std::fs::read_to_string(corpus.join("cases.tsv")).unwrap();
    let mut n = 0;
    for line in cases.lines() {
        let mut cols = line.split('\t');
        let (name, status, word, setup, when) = (
            cols.next().unwrap(),
            cols.next().unwrap(),
            cols.next().unwrap(),
            cols.next().unwrap(),
            cols.next().unwrap(),
        );
        // Each case is a first attempt on the same device: a journal left by an earlier case
        // at the same signed bundle would rightly let this one resume past its damage.
        f.restore(&device);
        let mut slot_a = slot_a.clone();
        if let Some(at) = setup.strip_prefix("flip-slot-a=") {
            slot_a[at.parse::<usize>().unwrap()] ^= 0xff;
            std::fs::write(f.t.path("slot-a"), &slot_a).unwrap();
        } else {
            assert_eq!(setup, "", "{name}: unknown setup");
        }
        let r = f.abup(&["install", corpus.join(name).to_str().unwrap()]);
        let err = r.stderr_text();
        if std::env::var_os("SHOW_ERRORS").is_some() {
            eprintln!("{name}\t{:?}\t{}", r.code, err.trim());
        }
        assert_eq!(r.code, Some(status.parse().unwrap()), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "{name}: one line: {err}");
        assert!(err.starts_with("abup: error: "), "{name}: {err}");
        assert!(
            !word.is_empty() && err.contains(word),
            "{name}: the error should name {word:?}: {err}"
        );
        assert_eq!(f.slot("A"), slot_a, "{name}: the running slot changed");
        let s = f.status();
        assert_eq!(s["slots"][0]["confirmed"], true, "{name}: {s}");
        assert_eq!(s["last_install"]["outcome"], "failed", "{name}");
        if when == "before" {
            assert_eq!(f.env(), env, "{name}: the bootloader environment changed");
            assert_eq!(f.slot("B"), slot_b, "{name}: slot B was written");
        } else {
            assert_eq!(when, "written", "{name}");
            assert_eq!(s["next_boot"], "A", "{name}: {s}");
            assert_eq!(
                s["slots"][1]["good"], false,
                "{name}: B still bootable: {s}"
            );
        }
        n += 1;
    }
    assert!(n >= 85, "{n} cases");
    eprintln!("{n} bad bundles refused");
}
