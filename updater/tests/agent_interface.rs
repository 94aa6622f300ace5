//! What an OTA agent drives abup by (issue 15, points 3, 4 and 7, and `install --abort`): the
//! `--progress=json` stream (schema 2, docs/progress-json.md) with its final `result` line,
//! also when an install fails early and when its reader goes away; `abup status --json`
//! (schema 2, docs/status-json.md) during, after and instead of an install; the bounded
//! history in the state directory, through power cuts; and log lines with syslog priorities
//! when standard error is the journal.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::fixture::{image, Fixture};
use common::Output;
use serde_json::Value;

const SLOT: u64 = 3 << 20;

/// Every field of a progress line (docs/progress-json.md).
const PROGRESS_FIELDS: [&str; 12] = [
    "version",
    "event",
    "phase",
    "bytes_downloaded",
    "download_total",
    "bytes_written",
    "write_total",
    "bytes_read_back",
    "percent",
    "eta_s",
    "time",
    // Checked separately: only in the result.
    "ok",
];

/// The phases in the order an install runs them.
const PHASES: [&str; 8] = [
    "plan",
    "base-check",
    "pre-install",
    "invalidate",
    "write",
    "read-back",
    "post-install",
    "activate",
];

/// The lines of a `--progress=json` run: every line of standard output is a JSON object of
/// schema 2, `progress` events and then exactly one `result`, the last.
fn json_lines(out: &Output) -> Vec<Value> {
    let text = out.stdout_text();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?} in {text}")))
        .collect();
    assert!(!lines.is_empty(), "no lines; stderr: {}", out.stderr_text());
    for (i, l) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        assert_eq!(l["version"], 2, "{l}");
        assert_eq!(l["event"], if last { "result" } else { "progress" }, "{l}");
        for field in &PROGRESS_FIELDS[..11] {
            assert!(l.get(field).is_some(), "{field} missing: {l}");
        }
        assert!(PHASES.contains(&l["phase"].as_str().unwrap()), "{l}");
        assert!(l["time"].as_f64().unwrap() > 1.7e9, "{l}");
    }
    lines
}

/// Checks the `result` line against the process: its exit status and its error line.
fn result_of(out: &Output) -> Value {
    let lines = json_lines(out);
    let r = lines.last().unwrap().clone();
    assert_eq!(r["exit_code"], out.code.unwrap(), "{r}");
    assert_eq!(r["ok"], out.code == Some(0), "{r}");
    if out.code != Some(0) {
        let err = out.stderr_text();
        let line = err.lines().last().unwrap();
        assert_eq!(
            Some(r["message"].as_str().unwrap()),
            line.strip_prefix("abup: error: "),
            "{r}"
        );
    }
    r
}

/// The events of `abup status --json --history`, oldest first.
fn events(status: &Value) -> Vec<&str> {
    status["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"].as_str().unwrap())
        .collect()
}

fn hooks(f: &common::Tmp) -> String {
    let hook = f.path("hook");
    std::fs::write(&hook, "#!/bin/sh\necho \"hook $ABUP_HOOK was here\"\n").unwrap();
    common::run_ok("chmod", &["+x", hook.to_str().unwrap()]);
    format!("pre-install = {hook:?}\npost-install = {hook:?}")
}

#[test]
fn progress_lines_cover_the_whole_install_and_end_with_the_result() {
    let t = common::Tmp::new();
    let f = Fixture::new(SLOT, &hooks(&t));
    let img = image(2_000_000, 1);
    let b = f.bundle("b.abup", &img, "2.0", 0);
    let len = std::fs::metadata(&b).unwrap().len();
    let out = f.abup(&["install", b.to_str().unwrap(), "--progress", "json"]);
    out.success();
    let lines = json_lines(&out);
    // The hooks said hello on standard error, not in the stream.
    assert!(out.stderr_text().contains("hook post-install was here"));

    // Phases in order, each one seen; the percentage from 0 to 100 and never back.
    let mut phase = 0;
    let mut percent = 0.0;
    for l in &lines {
        let p = PHASES
            .iter()
            .position(|&x| x == l["phase"].as_str().unwrap())
            .unwrap();
        assert!(p >= phase, "phase {} after {}", l["phase"], PHASES[phase]);
        phase = p;
        let now = l["percent"].as_f64().unwrap();
        assert!(
            (percent..=100.0).contains(&now),
            "{now} after {percent}: {l}"
        );
        percent = now;
    }
    for p in PHASES.iter().filter(|&&p| p != "base-check") {
        assert!(lines.iter().any(|l| l["phase"] == *p), "no {p} phase");
    }
    assert_eq!(lines[0]["phase"], "plan");
    assert_eq!(lines[0]["percent"], 0.0);
    assert_eq!(
        lines[0]["write_total"],
        Value::Null,
        "unknown before the front is read"
    );
    let r = result_of(&out);
    assert_eq!(r["percent"], 100.0);
    assert_eq!(r["eta_s"], 0);
    assert_eq!(r["target"], "B");
    assert_eq!(r["bundle_version"], "2.0");
    assert_eq!(r["reboot_required"], true);
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .starts_with("installed 2.0 into slot B"),
        "{r}"
    );
    assert_eq!(r["bytes_downloaded"], len);
    assert_eq!(r["download_total"], len);
    assert_eq!(r["bytes_written"], img.len());
    assert_eq!(r["write_total"], img.len());
    assert_eq!(r["bytes_read_back"], img.len());

    // Standard input does not tell its length.
    let f = Fixture::new(SLOT, "");
    let b = f.bundle("b.abup", &img, "2.0", 0);
    let out = f.install_stdin(&b);
    let r = result_of(&out);
    assert_eq!(r["download_total"], Value::Null);
    assert_eq!(r["bytes_downloaded"], len);
}

#[test]
fn the_result_line_comes_also_when_the_install_fails_early() {
    let f = Fixture::new(SLOT, "");
    let b = f.bundle("b.abup", &image(500_000, 2), "2.0", 0);
    let json = |args: &[&str]| {
        let mut all = vec!["install", "--progress", "json"];
        all.extend_from_slice(args);
        f.abup(&all)
    };

    // Not a bundle at all.
    let junk = f.t.path("junk.abup");
    std::fs::write(&junk, vec![7u8; 4096]).unwrap();
    let r = result_of(&json(&[junk.to_str().unwrap()]));
    assert_eq!(r["exit_code"], 4, "{r}");
    assert_eq!(r["target"], Value::Null, "{r}");
    assert_eq!(r["reboot_required"], false, "{r}");

    // A file that is not there.
    let r = result_of(&json(&[f.t.path("missing").to_str().unwrap()]));
    assert_eq!(r["exit_code"], 1, "{r}");

    // A server that is not there.
    let r = result_of(&json(&["http://127.0.0.1:9/b.abup", "--retries", "0"]));
    assert_eq!(r["exit_code"], 6, "{r}");

    // Another install holds the lock.
    let lock = std::fs::File::create(f.state.join("install.lock")).unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let r = result_of(&json(&[b.to_str().unwrap()]));
    assert_eq!(r["exit_code"], 5, "{r}");
    drop(held);

    // Running an unconfirmed slot: the bundle was read, so the result names it.
    f.boot("B");
    let r = result_of(&json(&[b.to_str().unwrap()]));
    assert_eq!(r["exit_code"], 8, "{r}");
    assert_eq!(r["bundle_version"], "2.0", "{r}");
    assert_eq!(r["target"], "A", "{r}");
    f.boot("A");

    // A board file that cannot be read: the result still comes.
    let out = Command::new(env!("CARGO_BIN_EXE_abup"))
        .args(["install", "--progress", "json", b.to_str().unwrap()])
        .env("ABUP_CONFIG", f.t.path("no-board.toml"))
        .output()
        .unwrap();
    assert_eq!(result_of(&out.into())["exit_code"], 1);

    // Each refusal is in the history; nothing was installed.
    let s = f.status_with(&["--history"]);
    assert_eq!(
        events(&s),
        ["refused", "install", "install", "refused"],
        "{s}"
    );
    assert_eq!(s["history"][3]["exit_code"], 8, "{s}");
    assert_eq!(s["history"][2]["exit_code"], 6, "{s}");
    assert_eq!(s["install"], Value::Null, "{s}");
}

/// `abup install --progress json` with standard output and error on one pipe whose reader
/// reads the first line and goes away (`abup install ... 2>&1 | head -1`) while the install
/// is paused after its first write: the install, its log lines (-v) and its post-install hook
/// that writes to the dead pipe all go on, and the install completes.
#[test]
fn an_install_whose_reader_goes_away_completes() {
    common::require_fault_injection();
    let t = common::Tmp::new();
    let f = Fixture::new(SLOT, &hooks(&t));
    let img = image(1_500_000, 3);
    let b = f.bundle("b.abup", &img, "2.0", 0);
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_abup"));
    cmd.args(["-v", "install", b.to_str().unwrap(), "--progress", "json"])
        .env("ABUP_CONFIG", &f.board)
        .env("ABUP_PROC_CMDLINE", &f.cmdline)
        .env("ABUP_PAUSE_AFTER_WRITES", "1")
        .stdin(Stdio::null())
        .stdout(write.try_clone().unwrap())
        .stderr(write);
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    let pid = child.id();
    let mut reader = BufReader::new(std::fs::File::from(read));
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    common::wait_stopped(&mut child, String::new);
    drop(reader);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status}; first line: {first}");
    let s = f.status();
    assert_eq!(s["next_boot"], "B", "{s}");
    assert_eq!(s["last_install"]["outcome"], "success", "{s}");
    assert_eq!(&f.slot("B")[..img.len()], &img[..]);
}

/// The durable write after which the payload's first checkpoint is journalled (1-based).
fn first_checkpoint(writes: &[String]) -> usize {
    // The first write of payload data (at 0, the first blocks are zeroed before).
    let slot = writes
        .iter()
        .position(|w| w.contains("slot-b at") && !w.ends_with(" at 0"))
        .unwrap();
    slot + writes[slot..]
        .iter()
        .position(|w| w.ends_with("install.json"))
        .unwrap()
        + 1
}

#[test]
fn status_shows_a_running_install_and_an_interrupted_one_and_abort_drops_it() {
    common::require_fault_injection();
    let f = Fixture::in_memory(SLOT, "").with_b_bootable();
    let img = image(2_500_000, 4);
    let b = f.bundle("b.abup", &img, "2.0", 0);
    let writes = f.install_writes(&b);
    let checkpoint = first_checkpoint(&writes);

    // Paused in the payload, the install holds its lock: status answers all the same.
    let mut seen = Value::Null;
    let mut aborted = None;
    let out = f.install_paused(&b, checkpoint, || {
        seen = f.status_during_install();
        aborted = Some(f.abup(&["install", "--abort"]));
    });
    out.success();
    let i = &seen["install"];
    assert_eq!(seen["version"], 2, "{seen}");
    assert_eq!(i["state"], "running", "{seen}");
    assert!(i["pid"].as_u64().unwrap() > 1, "{seen}");
    assert_eq!(i["phase"], "write", "{seen}");
    assert!(
        (1.0..98.0).contains(&i["percent"].as_f64().unwrap()),
        "{seen}"
    );
    assert_eq!(i["source"], b.to_str().unwrap(), "{seen}");
    assert_eq!(i["target"], "B", "{seen}");
    assert_eq!(i["bundle_version"], "2.0", "{seen}");
    assert_eq!(i["resumable"], true, "{seen}");
    assert_eq!(
        seen["reboot_required"], false,
        "B is out of rotation: {seen}"
    );
    assert_eq!(seen["slots"][1]["good"], false, "{seen}");
    // Aborting a running install is refused as busy.
    let aborted = aborted.unwrap();
    assert_eq!(aborted.code, Some(5), "{}", aborted.stderr_text());
    let s = f.status();
    assert_eq!(s["install"], Value::Null, "{s}");
    assert_eq!(s["reboot_required"], true, "{s}");
    assert_eq!(s["pending"], "B", "{s}");

    // Cut at the same write: interrupted, resumable, no process.
    let f = Fixture::in_memory(SLOT, "").with_b_bootable();
    let b = f.bundle("b.abup", &img, "2.0", 0);
    let cut = f.abup_env(
        &["install", b.to_str().unwrap()],
        &[("ABUP_CUT_AFTER_WRITES", &checkpoint.to_string())],
    );
    assert_eq!(cut.code, None, "{}", cut.stderr_text());
    let s = f.status();
    let i = &s["install"];
    assert_eq!(i["state"], "interrupted", "{s}");
    assert_eq!(i["pid"], Value::Null, "{s}");
    assert_eq!(i["phase"], "write", "{s}");
    assert_eq!(i["target"], "B", "{s}");
    assert_eq!(i["resumable"], true, "{s}");
    assert_eq!(i["source"], b.to_str().unwrap(), "{s}");
    let text = f.abup(&["status"]).stdout_text();
    assert!(text.contains("install:     interrupted"), "{text}");

    // --abort drops it; B stays out of rotation and nothing else changes.
    let env = f.env();
    let slots = std::fs::read(f.state.join("slots.json")).ok();
    let out = f.abup(&["install", "--abort", "--progress", "json"]);
    let r = result_of(&out);
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("dropped the interrupted install of slot B"),
        "{r}"
    );
    assert_eq!(f.env(), env, "the environment is untouched");
    assert_eq!(std::fs::read(f.state.join("slots.json")).ok(), slots);
    let left: Vec<String> = std::fs::read_dir(&f.state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("install") && n != "install.lock")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let s = f.status();
    assert_eq!(s["install"], Value::Null, "{s}");
    assert_eq!(s["slots"][1]["good"], false, "{s}");
    assert_eq!(s["next_boot"], "A", "{s}");
    // Nothing left to abort: said, and not an error.
    let again = f.abup(&["install", "--abort"]);
    again.success();
    assert!(
        again
            .stdout_text()
            .contains("no interrupted install to abort"),
        "{}",
        again.stdout_text()
    );
    // The next install starts over.
    let out = f.abup(&["install", b.to_str().unwrap()]);
    out.success();
    assert!(
        !out.stdout_text().contains("(resumed)"),
        "{}",
        out.stdout_text()
    );
    assert_eq!(&f.slot("B")[..img.len()], &img[..]);
}

#[test]
fn status_tells_a_pending_slot_a_reboot_and_a_fallback() {
    let f = Fixture::new(SLOT, "");
    let s = f.status();
    assert_eq!(s["version"], 2);
    assert_eq!(s["abup_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["reboot_required"], false);
    assert_eq!(s["pending"], Value::Null);
    assert_eq!(s["rolled_back"], false);
    assert_eq!(s["security_floor"], 0);
    assert_eq!(
        s["slots"][0]["version"],
        Value::Null,
        "abup never installed A"
    );

    let b = f.bundle("b.abup", &image(600_000, 5), "2.0", 3);
    f.abup(&["install", b.to_str().unwrap()]).success();
    let s = f.status();
    assert_eq!(s["reboot_required"], true, "{s}");
    assert_eq!(s["pending"], "B", "{s}");
    assert_eq!(s["slots"][1]["version"], "2.0", "{s}");

    // B boots and is tried: no reboot needed, still pending until it confirms.
    f.boot("B");
    f.abup(&["env", "set", "BOOT_B_LEFT=2"]).success();
    let s = f.status();
    assert_eq!(s["reboot_required"], false, "{s}");
    assert_eq!(s["pending"], "B", "{s}");

    // B never confirms: its tries run out and A boots again.
    f.abup(&["env", "set", "BOOT_B_LEFT=0"]).success();
    f.boot("A");
    let s = f.status();
    assert_eq!(s["rolled_back"], true, "{s}");
    assert_eq!(s["pending"], Value::Null, "{s}");
    assert_eq!(s["reboot_required"], false, "{s}");
    assert!(f
        .abup(&["status"])
        .stdout_text()
        .contains("rolled back: slot B (2.0)"));
    // The boot-success service notices the fallback, once, however often it runs.
    f.abup(&["mark-good"]).success();
    f.abup(&["mark-good"]).success();
    let s = f.status_with(&["--history"]);
    assert_eq!(events(&s), ["install", "fallback"], "{s}");
    let h = s["history"].as_array().unwrap();
    assert_eq!(h[1]["slot"], "B");
    assert_eq!(h[1]["bundle_version"], "2.0");
    assert_eq!(h[0]["exit_code"], 0);

    // A second install that boots and confirms: recorded once, and the floor rises.
    f.abup(&["install", b.to_str().unwrap()]).success();
    f.boot("B");
    f.abup(&["mark-good"]).success();
    f.abup(&["mark-good"]).success();
    let s = f.status_with(&["--history"]);
    assert_eq!(s["rolled_back"], false, "{s}");
    assert_eq!(s["pending"], Value::Null, "{s}");
    assert_eq!(s["security_floor"], 3, "{s}");
    assert_eq!(
        events(&s),
        ["install", "fallback", "install", "confirmed"],
        "{s}"
    );
    // A refused mark-good is a refusal in the history.
    f.abup(&["mark-bad", "A"]).success();
    let out = f.abup(&["mark-active", "nonesuch"]);
    assert_eq!(out.code, Some(1));
    let text = f.abup(&["status", "--history"]).stdout_text();
    assert!(text.contains("history (oldest first):"), "{text}");
    let last = text.lines().last().unwrap();
    assert!(
        last.contains("refused")
            && last.contains("mark-active nonesuch")
            && last.contains("(exit 1)"),
        "{text}"
    );
}

/// A history of `n` entries, as an abup of this version writes them.
fn seed_history(state: &Path, n: usize) -> Vec<String> {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"version":1,"time":{},"event":"install","ok":true,"exit_code":0,"message":"old {i}","slot":"B","bundle_version":"1.{i}","source":null}}"#,
                1_790_000_000 + i
            )
        })
        .collect();
    std::fs::write(state.join("history.jsonl"), lines.join("\n") + "\n").unwrap();
    lines
}

/// The history stays at its bound, and a power cut at any write of an install that adds to
/// it leaves every older entry whole: the file holds the old entries, or the newer ones with
/// the oldest dropped, never a torn line or fewer.
#[test]
fn the_history_is_bounded_and_no_cut_loses_it() {
    common::require_fault_injection();
    let f = Fixture::in_memory(SLOT, "");
    let b = f.bundle("b.abup", &image(300_000, 6), "2.0", 0);
    let old = seed_history(&f.state, 100);
    let writes = f.install_writes(&b);
    assert!(
        writes.iter().any(|w| w.ends_with("history.jsonl")),
        "{writes:#?}"
    );
    let clean = f.save();
    for cut in 1..=writes.len() {
        f.restore(&clean);
        let out = f.abup_env(
            &["install", b.to_str().unwrap()],
            &[("ABUP_CUT_AFTER_WRITES", &cut.to_string())],
        );
        assert_eq!(out.code, None, "cut {cut}: {}", out.stderr_text());
        let text = std::fs::read_to_string(f.state.join("history.jsonl")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            text.ends_with('\n'),
            "cut {cut}: a torn last line: {text:?}"
        );
        assert_eq!(lines.len(), 100, "cut {cut} ({})", writes[cut - 1]);
        if lines[0] == old[0] {
            assert_eq!(lines, old, "cut {cut}");
        } else {
            assert_eq!(lines[..99], old[1..], "cut {cut}");
            let new: Value = serde_json::from_str(lines[99]).unwrap();
            assert_eq!(new["bundle_version"], "2.0", "cut {cut}");
        }
    }
    f.restore(&clean);
    f.abup(&["install", b.to_str().unwrap()]).success();
    let h = f.status_with(&["--history"])["history"].clone();
    let h = h.as_array().unwrap();
    assert_eq!(h.len(), 100);
    assert_eq!(h[0]["message"], "old 1");
    assert_eq!(h[99]["event"], "install");
    assert_eq!(h[99]["source"], b.to_str().unwrap());
}

/// With standard error on the journal (systemd sets `JOURNAL_STREAM` to its device and
/// inode), each line carries its syslog priority; a `JOURNAL_STREAM` inherited by a process
/// whose standard error goes elsewhere changes nothing.
#[test]
fn log_lines_carry_syslog_priorities_when_stderr_is_the_journal() {
    use std::os::unix::fs::MetadataExt;
    let t = common::Tmp::new();
    let f = Fixture::new(SLOT, &hooks(&t));
    let b = f.bundle("b.abup", &image(300_000, 7), "2.0", 0);
    let run = |args: &[&str], journal: bool| -> String {
        let err = t.path("stderr");
        let file = std::fs::File::create(&err).unwrap();
        let meta = file.metadata().unwrap();
        let ino = if journal { meta.ino() } else { meta.ino() + 1 };
        Command::new(env!("CARGO_BIN_EXE_abup"))
            .args(args)
            .env("ABUP_CONFIG", &f.board)
            .env("ABUP_PROC_CMDLINE", &f.cmdline)
            .env("JOURNAL_STREAM", format!("{}:{ino}", meta.dev()))
            .stdout(Stdio::null())
            .stderr(file)
            .status()
            .unwrap();
        std::fs::read_to_string(&err).unwrap()
    };
    let err = run(&["-vv", "install", b.to_str().unwrap()], true);
    for prefix in ["<6>info: running pre-install hook", "<7>debug: "] {
        assert!(
            err.lines().any(|l| l.starts_with(prefix)),
            "{prefix}: {err}"
        );
    }
    let err = run(&["install", f.t.path("missing").to_str().unwrap()], true);
    assert!(err.starts_with("<3>error: opening bundle"), "{err}");
    std::fs::write(&f.cmdline, "quiet\n").unwrap();
    let err = run(&["status"], true);
    assert!(err.starts_with("<4>warning: "), "{err}");
    let err = run(&["status"], false);
    assert!(err.starts_with("abup: warning: "), "{err}");
}
