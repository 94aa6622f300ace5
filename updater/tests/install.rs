//! `abup install` end to end, as the binary, on file-backed slots with abup's GRUB pair:
//! from a file, standard input and HTTP (with dropped connections), through confirmation and
//! the security floor, with hooks, progress reports and the install lock.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::process::{Command, Stdio};

use common::fixture::{image, Fixture};

const SLOT: u64 = 3 << 20;

fn assert_installed(f: &Fixture, img: &[u8], version: &str) {
    let s = f.status();
    assert_eq!(s["next_boot"], "B", "{s}");
    assert_eq!(s["slots"][1]["bundle"]["version"], version);
    assert_eq!(s["last_install"]["outcome"], "success");
    assert_eq!(&f.slot("B")[..img.len()], img, "slot B holds the image");
}

#[test]
fn install_from_a_file_then_confirm_and_refuse_a_downgrade() {
    let f = Fixture::new(SLOT, "");
    let slot_a = f.slot("A");
    let img = image(2_500_000, 1);
    let b = f.bundle("v2.abup", &img, "2.0", 5);
    let out = f.abup(&["install", b.to_str().unwrap()]);
    out.success();
    assert!(
        out.stdout_text().contains("installed 2.0 into slot B"),
        "{}",
        out.stdout_text()
    );
    assert_installed(&f, &img, "2.0");
    assert_eq!(f.slot("A"), slot_a, "the running slot is never written");

    // The new slot boots and confirms itself: the security floor rises to 5.
    f.boot("B");
    f.abup(&["mark-good"]).success();
    let s = f.status();
    assert_eq!(s["slots"][1]["confirmed"], true);

    // A bundle below the floor is refused before anything is written.
    let old = f.bundle("v1.abup", &image(1_000_000, 2), "1.0", 4);
    let env = f.env();
    let out = f.abup(&["install", old.to_str().unwrap()]);
    assert_eq!(out.code, Some(4), "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains("security version 4, below 5"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(f.env(), env, "the environment is untouched");
    assert_eq!(f.status()["last_install"]["outcome"], "failed");

    // The same security version is fine: into slot A now.
    let same = f.bundle("v3.abup", &image(1_000_000, 3), "3.0", 5);
    f.abup(&["install", same.to_str().unwrap()]).success();
    assert_eq!(f.status()["next_boot"], "A");
}

#[test]
fn install_from_standard_input() {
    let f = Fixture::new(SLOT, "");
    let img = image(1_700_000, 4);
    let b = f.bundle("b.abup", &img, "2.0", 0);
    let out = f.install_stdin(&b);
    out.success();
    // One JSON object a line, each with the schema version; the read-back starts with the
    // whole image written.
    let lines: Vec<serde_json::Value> = out
        .stdout_text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().all(|l| l["version"] == 2));
    let read_back = lines.iter().find(|l| l["phase"] == "read-back").unwrap();
    assert_eq!(read_back["bytes_written"], img.len());
    assert_eq!(read_back["write_total"], img.len());
    assert_eq!(lines.last().unwrap()["event"], "result");
    assert_eq!(lines.last().unwrap()["percent"], 100.0);
    for phase in ["plan", "invalidate", "write", "read-back", "activate"] {
        assert!(
            lines.iter().any(|l| l["phase"] == phase),
            "no {phase} phase"
        );
    }
    assert_installed(&f, &img, "2.0");
}

#[test]
fn install_over_http_survives_dropped_connections() {
    let f = Fixture::new(SLOT, "");
    let img = image(2_900_000, 5);
    let b = f.bundle("b.abup", &img, "2.0", 0);
    let len = std::fs::metadata(&b).unwrap().len();
    // The first three connections break partway through.
    let server = common::http::serve(b.clone(), vec![len / 5, 700, len / 2]);
    let out = f.abup(&["install", &server.url, "--retry-wait", "0"]);
    out.success();
    assert!(
        out.stderr_text().contains("the download at byte"),
        "{}",
        out.stderr_text()
    );
    assert_installed(&f, &img, "2.0");
    let ranges = server.ranges.lock().unwrap().clone();
    // One request for the whole bundle, one Range request per broken connection.
    assert_eq!(ranges.len(), 4, "{ranges:?}");
    assert_eq!(ranges[0], "");
    assert!(
        ranges[1..].iter().all(|r| r.starts_with("bytes=")),
        "{ranges:?}"
    );

    // A link that never recovers: a bounded number of retries, a one-line error, exit status
    // 6 (the same command later resumes), and the slot stays out of rotation.
    let f = Fixture::new(SLOT, "");
    let b = f.bundle("b.abup", &img, "2.0", 0);
    // Progress resets the count, so a link that carries something each time recovers; this
    // one carries a third of the bundle, then nothing more.
    let mut drops = vec![len / 3];
    drops.extend([0; 10]);
    let server = common::http::serve(b, drops);
    let out = f.abup(&[
        "install",
        &server.url,
        "--retries",
        "2",
        "--retry-wait",
        "0",
    ]);
    assert_eq!(out.code, Some(6), "{}", out.stderr_text());
    let err = out.stderr_text();
    assert!(
        err.lines().last().unwrap().contains("after 2 retries"),
        "{err}"
    );
    assert_eq!(f.status()["next_boot"], "A");
    assert_eq!(server.ranges.lock().unwrap().len(), 3);
}

#[test]
fn a_second_install_is_refused_while_one_runs() {
    let f = Fixture::new(SLOT, "");
    // The first install waits on a pipe that never delivers, holding the lock.
    let mut first = Command::new(env!("CARGO_BIN_EXE_abup"))
        .args(["install", "-"])
        .env("ABUP_CONFIG", &f.board)
        .env("ABUP_PROC_CMDLINE", &f.cmdline)
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = f.state.join("install.lock");
    for _ in 0..100 {
        if std::fs::read_to_string(&lock).is_ok_and(|s| s.contains("pid")) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let b = f.bundle("b.abup", &image(100_000, 6), "2.0", 0);
    let out = f.abup(&["install", b.to_str().unwrap()]);
    assert_eq!(out.code, Some(5), "{}", out.stderr_text());
    let err = out.stderr_text();
    assert!(
        err.contains(&format!("pid {}: abup install standard input", first.id())),
        "{err}"
    );
    first.kill().unwrap();
    first.wait().unwrap();
    // Once it is gone, the lock is free again.
    f.abup(&["install", b.to_str().unwrap()]).success();
}

#[test]
fn hooks_see_the_target_and_can_stop_activation() {
    let t = common::Tmp::new();
    let log = t.path("hook.log");
    let hook = t.path("hook");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nenv | grep ^ABUP_ | sort >> {0}\necho --- >> {0}\n\
             [ -e {1} ] && exit 7\nexit 0\n",
            log.display(),
            t.path("fail").display()
        ),
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&hook).status().unwrap();
    let extra = format!("pre-install = {hook:?}\npost-install = {hook:?}");
    let f = Fixture::new(SLOT, &extra);
    let b = f.bundle("b.abup", &image(600_000, 7), "2.0", 3);
    f.abup(&["install", b.to_str().unwrap()]).success();
    let seen = std::fs::read_to_string(&log).unwrap();
    for expected in [
        "ABUP_HOOK=pre-install",
        "ABUP_HOOK=post-install",
        "ABUP_TARGET_SLOT=B",
        &format!("ABUP_TARGET_DEVICE={}", f.t.path("slot-b").display()),
        "ABUP_BOOTED_SLOT=A",
        "ABUP_BUNDLE_VERSION=2.0",
        "ABUP_BUNDLE_COMPATIBLE=abup-test",
        "ABUP_BUNDLE_SECURITY_VERSION=3",
    ] {
        assert!(seen.contains(expected), "{expected} missing in {seen}");
    }

    // A failing hook: nothing activated, the slot out of rotation, a one-line error.
    std::fs::write(t.path("fail"), "").unwrap();
    let f = Fixture::new(SLOT, &extra);
    let b = f.bundle("b.abup", &image(600_000, 8), "2.0", 0);
    let env = f.env();
    let out = f.abup(&["install", b.to_str().unwrap()]);
    assert_eq!(out.code, Some(7));
    assert!(
        out.stderr_text().contains("pre-install hook"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(f.env(), env, "a failing pre-install hook changes nothing");
    assert_eq!(f.status()["next_boot"], "A");
}

#[test]
fn post_install_hook_gets_the_target_filesystem_mounted() {
    if !(common::is_root() && common::have("mkfs.ext4") && common::have("mount")) {
        return;
    }
    let t = common::Tmp::new();
    let hook = t.path("hook");
    let seen = t.path("seen");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\ncat \"$ABUP_TARGET_MOUNT/etc/hostname\" > {0}\n\
             echo carried-over > \"$ABUP_TARGET_MOUNT/etc/from-hook\"\n",
            seen.display()
        ),
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&hook).status().unwrap();
    let f = Fixture::new(
        SLOT,
        &format!("post-install = {hook:?}\npost-install-mount = true"),
    );
    // An ext4 image with /etc/hostname.
    let root = t.path("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/hostname"), "new-system\n").unwrap();
    let img_path = t.path("rootfs.img");
    let ok = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&img_path)
        .arg("2M")
        .status()
        .unwrap();
    assert!(ok.success());
    let img = std::fs::read(&img_path).unwrap();
    let b = f.bundle("b.abup", &img, "2.0", 0);
    f.abup(&["install", b.to_str().unwrap()]).success();
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "new-system\n");
    // What the hook wrote is in slot B (and it is unmounted again).
    let out = Command::new("debugfs")
        .args(["-R", "cat /etc/from-hook"])
        .arg(f.t.path("slot-b"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "carried-over\n");
    assert!(!f.state.join("mnt-B").exists());
}

#[test]
fn images_too_large_for_the_slot_are_refused() {
    let f = Fixture::new(1 << 20, "");
    let b = f.bundle("big.abup", &image(1_200_000, 9), "2.0", 0);
    let env = f.env();
    let out = f.abup(&["install", b.to_str().unwrap()]);
    assert_eq!(out.code, Some(4));
    assert!(
        out.stderr_text().contains("holds only 1048576"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(f.env(), env);
}

#[test]
fn an_unconfirmed_running_slot_must_confirm_first() {
    let f = Fixture::new(SLOT, "");
    let b = f.bundle("b.abup", &image(100_000, 10), "2.0", 0);
    f.abup(&["install", b.to_str().unwrap()]).success();
    // B boots but has not confirmed itself yet.
    f.boot("B");
    let b2 = f.bundle("b2.abup", &image(100_000, 11), "3.0", 0);
    let out = f.abup(&["install", b2.to_str().unwrap()]);
    assert_eq!(out.code, Some(8));
    assert!(
        out.stderr_text().contains("not confirmed"),
        "{}",
        out.stderr_text()
    );
}

#[test]
fn a_mounted_target_is_refused() {
    if !(common::is_root() && common::have("losetup") && common::have("mkfs.ext4")) {
        return;
    }
    let f = Fixture::new(SLOT, "");
    let b = f.bundle("b.abup", &image(100_000, 12), "2.0", 0);
    // Slot B on a loop device, mounted.
    let slot_b = f.t.path("slot-b");
    assert!(Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&slot_b)
        .status()
        .unwrap()
        .success());
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&slot_b)
        .output()
        .unwrap();
    let dev = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    struct Undo(String, std::path::PathBuf);
    impl Drop for Undo {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.1).status();
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let mnt = f.t.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _undo = Undo(dev.clone(), mnt.clone());
    assert!(Command::new("mount")
        .arg(&dev)
        .arg(&mnt)
        .status()
        .unwrap()
        .success());
    f.set_slot_device("B", std::path::Path::new(&dev));

    let env = f.env();
    let out = f.abup(&["install", b.to_str().unwrap()]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr_text()
            .contains(&format!("is mounted at {}", mnt.display())),
        "{}",
        out.stderr_text()
    );
    assert_eq!(f.env(), env);
}

/// `mark-good` confirms the booted slot whatever put it there (a factory image), but no other
/// slot abup has not installed: slot B of a new device, or a slot an install started to
/// overwrite. A confirmed slot is the fallback of last resort.
#[test]
fn mark_good_of_another_slot_needs_a_bundle_abup_installed() {
    let f = Fixture::new(SLOT, "");
    let env = f.env();
    for slot in ["other", "B"] {
        f.abup(&["mark-good", slot]).assert_refused(&[
            "slot B holds no bundle abup installed and is not the booted slot",
            "install a bundle into it",
        ]);
    }
    assert_eq!(f.env(), env, "a refused mark-good wrote the environment");
    f.abup(&["mark-good"]).success();

    let v2 = f.bundle("v2.abup", &image(1_000_000, 6), "2.0", 0);
    f.abup(&["install", v2.to_str().unwrap()]).success();
    // A second install into B forgets what B held before it writes a byte of it, so an
    // install stopped before its journal exists leaves a slot mark-good refuses.
    let v3 = f.bundle("v3.abup", &image(1_000_000, 7), "3.0", 0);
    let writes = f.install_writes(&v3);
    let forget = writes
        .iter()
        .position(|w| w.ends_with("slots.json"))
        .unwrap();
    assert!(
        !writes[..forget].iter().any(|w| w.contains("slot-b")),
        "{writes:#?}"
    );
    let cut = (forget + 1).to_string();
    let out = f.abup_env(
        &["install", v3.to_str().unwrap()],
        &[("ABUP_CUT_AFTER_WRITES", &cut)],
    );
    assert_eq!(out.code, None, "the install was stopped");
    f.abup(&["mark-good", "other"])
        .assert_refused(&["slot B holds no bundle abup installed"]);
    f.abup(&["install", v3.to_str().unwrap()]).success();
    f.abup(&["mark-good", "other"]).success();
    assert_eq!(f.slot_status("B")["confirmed"], true);
}
