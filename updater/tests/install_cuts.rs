//! Power cuts during `abup install`: the process is stopped right after each of its writes
//! that reach the disk (environment, slot chunks, held-back first block, journal, records),
//! one run per write. After every cut the environment still boots the old slot (until the
//! activation write itself), the old slot is untouched, and running the same install again
//! completes it and activates the new slot, resuming where the journal allows.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use common::fixture::{image, Fixture};

const SLOT: u64 = 2 << 20;

/// The durable writes of an uninterrupted install, in order, as `-vv` names them.
fn writes_of_a_full_install() -> Vec<String> {
    let f = Fixture::new(SLOT, "");
    let b = f.bundle("b.abup", &image(900_000, 21), "2.0", 1);
    let out = f.abup(&["-vv", "install", b.to_str().unwrap()]);
    out.success();
    out.stderr_text()
        .lines()
        .filter_map(|l| l.split("durable write ").nth(1))
        .map(|w| w.split_once(": ").unwrap().1.to_owned())
        .collect()
}

#[test]
fn a_cut_after_any_write_boots_the_old_slot_and_a_rerun_completes() {
    let writes = writes_of_a_full_install();
    let activation = writes
        .iter()
        .rposition(|w| w.starts_with("GRUB environment"))
        .unwrap();
    assert!(writes.len() > 15, "{writes:#?}");
    assert!(
        writes.iter().any(|w| w.contains("install.json")),
        "the journal advances"
    );
    let mut resumed = 0;
    for cut in 1..=writes.len() {
        let f = Fixture::new(SLOT, "");
        let img = image(900_000, 21);
        let b = f.bundle("b.abup", &img, "2.0", 1);
        let slot_a = f.slot("A");
        let out = f.abup_env(
            &["install", b.to_str().unwrap()],
            &[("ABUP_CUT_AFTER_WRITES", &cut.to_string())],
        );
        assert_eq!(
            out.code,
            None,
            "cut {cut} ({}): the process was stopped",
            writes[cut - 1]
        );

        let s = f.status();
        let expected = if cut > activation { "B" } else { "A" };
        assert_eq!(
            s["next_boot"],
            expected,
            "after cut {cut} ({})",
            writes[cut - 1]
        );
        assert_eq!(
            s["slots"][0]["confirmed"], true,
            "A stays the confirmed fallback"
        );
        assert_eq!(f.slot("A"), slot_a, "the running slot is never written");

        let again = f.abup(&["install", b.to_str().unwrap()]);
        again.success();
        if again.stdout_text().contains("(resumed)") {
            resumed += 1;
        }
        let s = f.status();
        assert_eq!(s["next_boot"], "B", "after cut {cut} and a rerun");
        assert_eq!(s["slots"][1]["bundle"]["version"], "2.0");
        assert_eq!(
            &f.slot("B")[..img.len()],
            &img[..],
            "after cut {cut} and a rerun"
        );
        assert!(
            !f.state.join("install.json").exists(),
            "the journal is cleared when done"
        );
    }
    // Cuts after a checkpoint resume instead of starting over.
    assert!(resumed >= 5, "{resumed} reruns resumed");
    eprintln!("{} cut points, {resumed} reruns resumed", writes.len());
}
