//! Power cuts during `abup install`: the process is stopped right after each of its writes
//! that reach the disk (environment, slot chunks, held-back first block, journal, records),
//! and what it wrote since its device's last sync is lost, as a real power cut loses the page
//! cache and the disk's write cache (see `updater/src/failpoint.rs`). After every cut the
//! environment boots the running slot A and never the half-written target (until the
//! activation write itself), A is untouched, and running the same install again completes it,
//! resuming where the journal allows; the resumed run is itself cut at each of its writes.
//!
//! The device starts with the target B bootable (first in the order, all its tries) so that an
//! install that forgot to take B out of rotation would be seen booting it.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use common::fixture::{image, Fixture};
use common::{durable_writes, Output};

const SLOT: u64 = 2 << 20;

fn image_v2() -> Vec<u8> {
    image(900_000, 21)
}

/// A fresh device with B bootable and the v2 bundle next to it.
fn device() -> (Fixture, std::path::PathBuf) {
    let f = Fixture::in_memory(SLOT, "").with_b_bootable();
    let b = f.bundle("b.abup", &image_v2(), "2.0", 1);
    (f, b)
}

fn install(f: &Fixture, bundle: &std::path::Path, cut: Option<usize>) -> Output {
    let cut = cut.map(|c| c.to_string());
    let env: Vec<(&str, &str)> = cut
        .iter()
        .map(|c| ("ABUP_CUT_AFTER_WRITES", c.as_str()))
        .collect();
    f.abup_env(&["-vv", "install", bundle.to_str().unwrap()], &env)
}

/// What must hold after a cut that came before the activation: A boots next and stays the
/// confirmed fallback, B cannot be booted, A's bytes are untouched.
fn check_not_active(f: &Fixture, slot_a: &[u8], what: &str) {
    check_not_active_in(f, &f.status(), slot_a, what);
}

fn check_not_active_in(f: &Fixture, s: &serde_json::Value, slot_a: &[u8], what: &str) {
    assert_eq!(s["next_boot"], "A", "{what}: {s}");
    assert_eq!(s["slots"][0]["confirmed"], true, "{what}: {s}");
    assert_eq!(
        s["slots"][1]["good"], false,
        "{what}: B must be out of rotation: {s}"
    );
    assert_eq!(f.slot("A"), slot_a, "{what}: the running slot was written");
}

/// What must hold after any cut: the next boot is A, as above, or B holding the whole new
/// image: a half-written B is never bootable.
fn check_safe(f: &Fixture, slot_a: &[u8], what: &str) {
    let s = f.status();
    if s["next_boot"] == "B" {
        let img = image_v2();
        assert_eq!(
            &f.slot("B")[..img.len()],
            &img[..],
            "{what}: B boots half-written"
        );
    } else {
        check_not_active_in(f, &s, slot_a, what);
    }
}

/// The install finished: B holds v2 and boots next, the journal is gone.
fn check_done(f: &Fixture, what: &str) {
    let img = image_v2();
    let s = f.status();
    assert_eq!(s["next_boot"], "B", "{what}: {s}");
    assert_eq!(s["slots"][1]["bundle"]["version"], "2.0", "{what}");
    assert_eq!(&f.slot("B")[..img.len()], &img[..], "{what}: B's bytes");
    assert!(
        !f.state.join("install.json").exists(),
        "{what}: the journal is cleared when done"
    );
}

#[test]
fn a_cut_after_any_write_boots_the_old_slot_and_a_rerun_completes() {
    common::require_fault_injection();
    let (f, b) = device();
    let clean = f.save();
    let full = install(&f, &b, None);
    full.success();
    let writes = durable_writes(&full);
    // The activation is the last environment update: two writes on a GRUB pair, and the
    // first already makes B the next boot.
    let env_writes: Vec<usize> = (0..writes.len())
        .filter(|&i| writes[i].starts_with("GRUB environment"))
        .collect();
    let activation = env_writes
        .len()
        .checked_sub(2)
        .map_or(writes.len(), |i| env_writes[i]);
    assert!(writes.len() > 15, "{writes:#?}");
    assert!(
        writes.iter().any(|w| w.contains("install.json")),
        "the journal advances"
    );

    let slot_a = f.slot("A");
    let (mut resumed, mut second_cuts, mut lost) = (0, 0, 0);
    for cut in 1..=writes.len() {
        f.restore(&clean);
        let what = format!("cut {cut} ({})", writes[cut - 1]);
        let out = install(&f, &b, Some(cut));
        assert_eq!(out.code, None, "{what}: the process was stopped");
        if !out.stderr_text().contains(" 0 unsynced bytes lost") {
            lost += 1;
        }
        if cut <= activation {
            check_not_active(&f, &slot_a, &what);
        } else {
            check_safe(&f, &slot_a, &what);
            assert_eq!(f.status()["next_boot"], "B", "{what}");
        }
        // Every write of the run that resumes from here is cut in turn, each time from the
        // state the first cut left; then one more run must finish the job. A cut right after
        // a slot write leaves the same as a cut right after the last sync (the writes since
        // are lost), so its rerun is not cut again.
        let after_cut = f.save();
        let rerun_cuts: Vec<Option<usize>> = if writes[cut - 1].contains("slot-b at") {
            vec![None]
        } else {
            (1..=writes.len()).map(Some).chain([None]).collect()
        };
        for second in rerun_cuts {
            f.restore(&after_cut);
            let what = format!("{what}, then cut {second:?} of the rerun");
            let again = install(&f, &b, second);
            if again.code == Some(0) {
                if again.stdout_text().contains("(resumed)") {
                    resumed += 1;
                }
                check_done(&f, &what);
                break;
            }
            assert!(
                second.is_some() && again.code.is_none(),
                "{what}: {}",
                again.stderr_text()
            );
            second_cuts += 1;
            check_safe(&f, &slot_a, &what);
            install(&f, &b, None).success();
            check_done(&f, &what);
        }
    }
    // Cuts after a checkpoint resume instead of starting over.
    assert!(resumed >= 5, "{resumed} reruns resumed");
    assert!(lost >= 5, "only {lost} cuts lost unsynced writes");
    eprintln!(
        "{} cut points of a first run ({lost} of them losing unsynced slot writes), {second_cuts} \
         cuts of the reruns; {resumed} reruns resumed",
        writes.len()
    );
}
