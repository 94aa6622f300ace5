//! Attacks on an install and on abup's state, each reproduced against the real binary and
//! now failing to do harm (issue 12): held-back first blocks swapped during the read-back, a
//! forged or stale journal that would activate a slot nobody checked, a security floor
//! lowered or removed, slots below the floor kept bootable, and a state directory that
//! someone else controls, with symbolic links planted in it or credentials leaked to it.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::fixture::{first_block_and_last_checkpoint, image, Fixture};
use sha2::{Digest, Sha256};

const SLOT: u64 = 2 << 20;

fn image_v2() -> Vec<u8> {
    image(900_000, 21)
}

fn device() -> (Fixture, std::path::PathBuf) {
    let f = Fixture::new(SLOT, "").with_b_bootable();
    let b = f.bundle("b.abup", &image_v2(), "2.0", 1);
    (f, b)
}

/// The install did not activate B: A boots next, B is out of rotation and unrecorded.
fn check_not_activated(f: &Fixture) {
    let s = f.status();
    assert_eq!(s["next_boot"], "A", "{s}");
    assert_eq!(s["slots"][1]["good"], false, "{s}");
    assert_eq!(s["slots"][1]["bundle"], serde_json::Value::Null, "{s}");
}

/// The bundle's name in the journal: the SHA-256 of its signed manifest.
fn manifest_sha256(bundle: &std::path::Path) -> String {
    let bytes = std::fs::read(bundle).unwrap();
    let len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    Sha256::digest(&bytes[16..16 + len])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn env_var(f: &Fixture, name: &str) -> Option<String> {
    let out = f.abup(&["env", "get", name]);
    (out.code == Some(0)).then(|| out.stdout_text().trim().to_owned())
}

/// Replacing the held-back first block after the read-back hashed it used to get the
/// attacker's bytes written at offset 0 and the slot activated: now the bytes written are
/// the ones that were hashed.
#[test]
fn a_held_block_swapped_after_it_was_hashed_is_not_written() {
    let (f, b) = device();
    let writes = f.install_writes(&b);
    // After the last checkpoint the read-back has long hashed the held block.
    let (_, last_checkpoint) = first_block_and_last_checkpoint(&writes);
    let held = f.state.join("install-first-block.0");
    let out = f.install_paused(&b, last_checkpoint + 1, || {
        std::fs::write(&held, vec![0xee; 4096]).unwrap();
    });
    out.success();
    let img = image_v2();
    assert_eq!(
        &f.slot("B")[..img.len()],
        &img[..],
        "B holds the signed image"
    );
    assert_eq!(f.status()["next_boot"], "B");
}

/// Swapped before it is hashed, the block fails the read-back: nothing is activated.
#[test]
fn a_held_block_swapped_before_it_was_hashed_fails_the_install() {
    let (f, b) = device();
    let writes = f.install_writes(&b);
    let held_write = writes
        .iter()
        .position(|w| w.ends_with("install-first-block.0"))
        .unwrap();
    let held = f.state.join("install-first-block.0");
    let out = f.install_paused(&b, held_write + 1, || {
        std::fs::write(&held, vec![0xee; 4096]).unwrap();
    });
    assert_eq!(out.code, Some(1), "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains("slot verification failed"),
        "{}",
        out.stderr_text()
    );
    check_not_activated(&f);
}

/// A journal that says the slot was verified, forged (the manifest hash is public) over a
/// slot that was never written: the slot is read back before anything trusts it.
#[test]
fn a_forged_verified_journal_does_not_activate_an_unchecked_slot() {
    let f = Fixture::new(SLOT, "").with_b_bootable();
    let b = f.bundle("b.abup", &image_v2(), "2.0", 7);
    std::fs::write(
        f.state.join("install.json"),
        format!(
            r#"{{"version":2,"bundle":"{}","target":"B","phase":"activate"}}"#,
            manifest_sha256(&b)
        ),
    )
    .unwrap();
    let out = f.abup(&["install", b.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains("slot verification failed"),
        "{}",
        out.stderr_text()
    );
    check_not_activated(&f);
    assert!(
        !f.state.join("install.json").exists(),
        "the journal is dropped"
    );
    // Nor is the bundle's security version recorded anywhere a floor could come from.
    f.abup(&["mark-good"]).success();
    assert_ne!(env_var(&f, "ABUP_SECURITY_FLOOR").as_deref(), Some("7"));
}

/// A post-install hook fails after the slot was verified; the slot is changed while nobody
/// looks; the next run must not activate it on the journal's word.
#[test]
fn a_slot_changed_after_a_failed_hook_is_checked_again() {
    let t = tempfile::tempdir().unwrap();
    let hook = t.path().join("hook");
    let flag = t.path().join("fail");
    std::fs::write(&hook, format!("#!/bin/sh\n[ ! -e {} ]\n", flag.display())).unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let f = Fixture::new(SLOT, &format!("post-install = {:?}\n", hook)).with_b_bootable();
    let b = f.bundle("b.abup", &image_v2(), "2.0", 1);
    std::fs::write(&flag, "").unwrap();
    let out = f.abup(&["install", b.to_str().unwrap()]);
    assert_eq!(out.code, Some(7), "{}", out.stderr_text());
    assert!(out.stderr_text().contains("post-install hook"));
    let journal = std::fs::read_to_string(f.state.join("install.json")).unwrap();
    assert!(journal.contains("activate"), "{journal}");

    let slot_b = f.t.path("slot-b");
    let mut bytes = std::fs::read(&slot_b).unwrap();
    bytes[300_000] ^= 0xff;
    std::fs::write(&slot_b, bytes).unwrap();
    std::fs::remove_file(&flag).unwrap();
    let out = f.abup(&["install", b.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{}", out.stderr_text());
    assert!(out.stderr_text().contains("slot verification failed"));
    let s = f.status();
    assert_eq!(s["next_boot"], "A", "{s}");
    assert_eq!(s["slots"][1]["good"], false, "{s}");
}

/// A device whose slot A holds a bundle of security version 1 and slot B one of version 2,
/// B running and confirmed: the floor is 2.
fn floor_two() -> (Fixture, std::path::PathBuf) {
    let f = Fixture::new(SLOT, "");
    let v1 = f.bundle("v1.abup", &image(500_000, 1), "1.0", 1);
    let v2 = f.bundle("v2.abup", &image(500_000, 2), "2.0", 2);
    f.abup(&["install", v1.to_str().unwrap()]).success();
    f.boot("B");
    f.abup(&["mark-good"]).success();
    f.abup(&["install", v2.to_str().unwrap()]).success();
    f.boot("A");
    f.abup(&["mark-good"]).success();
    let v1_again = f.bundle("v1-again.abup", &image(500_000, 3), "1.1", 1);
    (f, v1_again)
}

fn seq(f: &Fixture) -> u64 {
    env_var(f, "ABUP_SEQ").unwrap().parse().unwrap()
}

/// When the floor rises, every slot below it loses its tries in the same environment update
/// that confirms the new slot, and is refused by mark-good and mark-active from then on.
#[test]
fn a_rising_floor_takes_older_slots_out_of_rotation_in_one_update() {
    let f = Fixture::new(SLOT, "");
    let v1 = f.bundle("v1.abup", &image(500_000, 1), "1.0", 1);
    let v2 = f.bundle("v2.abup", &image(500_000, 2), "2.0", 2);
    f.abup(&["install", v1.to_str().unwrap()]).success();
    f.boot("B");
    f.abup(&["mark-good"]).success();
    f.abup(&["install", v2.to_str().unwrap()]).success();
    f.boot("A");
    let before = seq(&f);
    let s = f.status();
    assert_eq!(s["slots"][1]["good"], true, "B (1.0) still a fallback: {s}");
    let out = f.abup(&["mark-good"]);
    out.success();
    assert!(out
        .stdout_text()
        .contains("slot B is below the security floor 2"));
    assert_eq!(seq(&f), before + 2, "one environment update (two copies)");
    let s = f.status();
    assert_eq!(s["slots"][0]["confirmed"], true, "{s}");
    assert_eq!(s["slots"][1]["good"], false, "{s}");
    assert_eq!(s["slots"][1]["confirmed"], false, "{s}");
    assert_eq!(env_var(&f, "ABUP_SECURITY_FLOOR").as_deref(), Some("2"));
    let stored = std::fs::read_to_string(f.state.join("security.json")).unwrap();
    assert!(stored.contains("\"floor\": 2"), "{stored}");
    for cmd in ["mark-active", "mark-good"] {
        let out = f.abup(&[cmd, "B"]);
        assert_eq!(out.code, Some(1), "{cmd}: {}", out.stdout_text());
        assert!(
            out.stderr_text().contains("below this device's floor 2"),
            "{cmd}: {}",
            out.stderr_text()
        );
    }
}

/// The floor lives in the state directory and the bootloader environment; lowering or
/// removing one copy does not lower it.
#[test]
fn lowering_or_removing_one_copy_of_the_floor_changes_nothing() {
    let (f, v1) = floor_two();
    let install_v1 = || f.abup(&["install", v1.to_str().unwrap()]);
    std::fs::write(
        f.state.join("security.json"),
        "{\"version\": 1, \"floor\": 0}\n",
    )
    .unwrap();
    let out = install_v1();
    assert_eq!(out.code, Some(4), "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains("below 2"),
        "{}",
        out.stderr_text()
    );

    std::fs::remove_file(f.state.join("security.json")).unwrap();
    assert_eq!(
        install_v1().code,
        Some(4),
        "the environment's copy still says 2"
    );

    f.abup(&["security-floor", "--set", "2"]).success();
    f.abup(&["env", "unset", "ABUP_SECURITY_FLOOR"]).success();
    assert_eq!(
        install_v1().code,
        Some(4),
        "the state directory's copy says 2"
    );
}

/// A floor that is damaged, or gone from both places on a device that recorded installs,
/// fails closed, and says how to set it deliberately, never to delete a file.
#[test]
fn a_damaged_or_missing_floor_fails_closed_until_set_deliberately() {
    let (f, v1) = floor_two();
    let security = f.state.join("security.json");
    for (what, damage) in [
        ("not JSON", "{"),
        ("unknown field", "{\"version\": 1, \"floor\": 2, \"x\": 0}"),
        ("unknown version", "{\"version\": 9, \"floor\": 2}"),
    ] {
        std::fs::write(&security, damage).unwrap();
        for args in [vec!["mark-good"], vec!["install", v1.to_str().unwrap()]] {
            let out = f.abup(&args);
            let err = out.stderr_text();
            assert_eq!(out.code, Some(1), "{what} {args:?}: {err}");
            assert!(
                err.contains("security floor is damaged")
                    && err.contains("abup security-floor --set N")
                    && !err.contains("delete")
                    && err.lines().count() == 1,
                "{what} {args:?}: {err}"
            );
        }
    }
    let out = f.abup(&["security-floor", "--set", "1"]);
    assert!(
        out.stderr_text().contains("never goes down"),
        "{}",
        out.stderr_text()
    );
    f.abup(&["security-floor", "--set", "2"]).success();
    f.abup(&["mark-good"]).success();

    f.abup(&["env", "set", "ABUP_SECURITY_FLOOR=x"]).success();
    let out = f.abup(&["mark-good"]);
    assert!(
        out.stderr_text().contains("\"x\", not a number"),
        "{}",
        out.stderr_text()
    );
    f.abup(&["security-floor", "--set", "2"]).success();

    std::fs::remove_file(&security).unwrap();
    f.abup(&["env", "unset", "ABUP_SECURITY_FLOOR"]).success();
    let out = f.abup(&["mark-good"]);
    assert!(
        out.stderr_text().contains("missing from both"),
        "{}",
        out.stderr_text()
    );
    f.abup(&["security-floor", "--set", "2"]).success();
    f.abup(&["mark-good"]).success();
    assert_eq!(env_var(&f, "ABUP_SECURITY_FLOOR").as_deref(), Some("2"));
}

/// A state directory that someone other than root could write, or that is a symbolic link,
/// is refused before anything is read from it.
#[test]
fn a_state_directory_others_control_is_refused() {
    let (f, b) = device();
    let env = f.env();
    let install = || f.abup(&["install", b.to_str().unwrap()]);
    std::fs::set_permissions(&f.state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = install();
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr_text().contains("writable by group or others"),
        "{}",
        out.stderr_text()
    );
    std::fs::set_permissions(&f.state, std::fs::Permissions::from_mode(0o700)).unwrap();

    if common::is_root() {
        std::os::unix::fs::chown(&f.state, Some(65534), None).unwrap();
        let out = install();
        assert!(
            out.stderr_text().contains("owned by uid 65534"),
            "{}",
            out.stderr_text()
        );
        std::os::unix::fs::chown(&f.state, Some(0), None).unwrap();
    }

    let real = f.t.path("real-state");
    std::fs::rename(&f.state, &real).unwrap();
    std::os::unix::fs::symlink(&real, &f.state).unwrap();
    let out = install();
    assert!(
        out.stderr_text().contains("symbolic link"),
        "{}",
        out.stderr_text()
    );
    std::fs::remove_file(&f.state).unwrap();
    std::fs::rename(&real, &f.state).unwrap();
    assert_eq!(f.env(), env, "nothing was written");
    install().success();
}

/// abup creates its state directory 0700 and its files 0600, follows no symbolic link in it,
/// and writes through unique temporary files.
#[test]
fn state_files_are_private_and_planted_links_are_not_followed() {
    let (f, b) = device();
    std::fs::remove_dir(&f.state).unwrap();
    let victim = f.t.path("victim");
    std::fs::write(&victim, "precious").unwrap();
    // The first install creates the directory; plant links where it will write next.
    f.abup(&["install", b.to_str().unwrap()]).success();
    assert_eq!(std::fs::metadata(&f.state).unwrap().mode() & 0o777, 0o700);
    for e in std::fs::read_dir(&f.state).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            let mode = std::fs::metadata(&p).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
    }
    for name in ["last-install.json", "slots.json.new", "install.json"] {
        let p = f.state.join(name);
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink(&victim, &p).unwrap();
    }
    f.boot("B");
    f.abup(&["mark-good"]).success();
    let again = f.bundle("c.abup", &image(800_000, 5), "3.0", 1);
    f.abup(&["install", again.to_str().unwrap()]).success();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    let last = f.state.join("last-install.json");
    assert!(!std::fs::symlink_metadata(&last)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(f.status()["last_install"]["bundle_version"], "3.0");
}

/// A URL's user name, password and query (download tokens) never reach a state file, the
/// lock file or `abup status`.
#[test]
fn url_credentials_are_never_stored() {
    let (f, b) = device();
    let server = common::http::serve(b.clone(), vec![]);
    let url = server.url.replacen("http://", "http://agent:s3cret-pw@", 1) + "?token=s3cret-tok";
    f.abup(&["install", &url]).success();
    let status = f.abup(&["status", "--json"]).stdout_text();
    let mut seen = vec![("status", status)];
    for e in std::fs::read_dir(&f.state).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            seen.push((
                "state file",
                String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned(),
            ));
        }
    }
    assert!(seen.iter().any(|(_, t)| t.contains("***@")), "{seen:?}");
    for (what, text) in seen {
        assert!(!text.contains("s3cret"), "{what}: {text}");
    }
}

/// Nor does an install that fails to download store them in its recorded error.
#[test]
fn a_failed_download_records_no_credentials() {
    let (f, _) = device();
    let url = "http://agent:s3cret-pw@127.0.0.1:9/bundle?token=s3cret-tok";
    let out = f.abup(&["install", "--retries", "0", url]);
    // Nothing listens on port 9: a network failure, worth trying again later.
    assert_eq!(out.code, Some(6), "{}", out.stderr_text());
    let status = f.abup(&["status", "--json"]).stdout_text();
    assert!(status.contains("***@127.0.0.1:9/bundle?***"), "{status}");
    assert!(!status.contains("s3cret"), "{status}");
    assert!(
        !out.stderr_text().contains("s3cret"),
        "{}",
        out.stderr_text()
    );
}

/// A slot abup never installed (the factory image) has no version to hold against the floor:
/// it stays a slot the device can switch back to.
#[test]
fn a_factory_slot_is_not_held_against_the_floor() {
    let f = Fixture::new(SLOT, "");
    let v3 = f.bundle("v3.abup", &image(500_000, 3), "3.0", 3);
    f.abup(&["install", v3.to_str().unwrap()]).success();
    f.boot("B");
    f.abup(&["mark-good"]).success();
    assert_eq!(env_var(&f, "ABUP_SECURITY_FLOOR").as_deref(), Some("3"));
    assert_eq!(f.status()["slots"][0]["good"], true, "A keeps its tries");
    f.abup(&["mark-active", "A"]).success();
    assert_eq!(f.status()["next_boot"], "A");
}
