//! abup driven end to end the way an OTA agent (a hawkBit- or Mender-style client) drives it,
//! against the real binary and a real HTTPS server: a private CA and a required
//! `Authorization` header, `--progress=json` read line by line as it arrives, `abup status
//! --json` polled while the install runs, the install killed mid-way and started again (it
//! resumes with a Range request), the final `result` line and `reboot_required`, then a
//! reboot into the new slot and `mark-good`, after which nothing is pending.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use common::fixture::{image, Fixture};
use common::net::{Pki, PyServer};
use serde_json::Value;

const SLOT: u64 = 3 << 20;
const HEADER: &str = "Authorization: TargetToken 0ta-ag3nt-t0ken";

/// The agent's side of one `abup install --progress=json`: the process, and its progress
/// lines as they arrive, each parsed on its own.
struct Install {
    child: common::Holder,
    lines: mpsc::Receiver<Value>,
}

impl Install {
    fn start(f: &Fixture, url: &str, ca: &Path, env: &[(&str, String)]) -> Install {
        let mut child = f
            .command(&["install", url, "--progress", "json", "--retry-wait", "0"])
            .args(["--ca", ca.to_str().unwrap(), "--header", HEADER])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(f.t.path("agent.err")).unwrap(),
            ))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let line = line.unwrap();
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Install {
            child: common::Holder(child),
            lines,
        }
    }

    /// Every line so far, without waiting.
    fn drain(&self, into: &mut Vec<Value>) {
        into.extend(self.lines.try_iter());
    }
}

/// `abup status --json` during the install, in the schema the agent reads.
fn poll_status(f: &Fixture) -> Value {
    let s = f.status_during_install();
    assert_eq!(s["version"], 2, "{s}");
    s
}

/// The progress lines an agent relies on: schema 2, `progress` events whose percentage
/// never goes back, byte counts within their totals.
fn check_progress(lines: &[Value], bundle_len: u64) {
    let mut percent = 0.0;
    for l in lines {
        assert_eq!(l["version"], 2, "{l}");
        assert_eq!(l["event"], "progress", "{l}");
        let p = l["percent"].as_f64().unwrap();
        assert!((percent..=100.0).contains(&p), "percent went back: {l}");
        percent = p;
        assert!(l["bytes_downloaded"].as_u64().unwrap() <= bundle_len, "{l}");
        if let Some(total) = l["download_total"].as_u64() {
            assert_eq!(total, bundle_len, "{l}");
        }
        // Null until the bundle's signed front is read.
        let total = l["write_total"].as_u64().unwrap_or(0);
        assert!(l["bytes_written"].as_u64().unwrap() <= total, "{l}");
    }
}

#[test]
fn an_ota_agent_installs_over_https_through_a_kill_and_a_reboot() {
    common::require_fault_injection();
    let f = Fixture::new(SLOT, "");
    let img = image(2_900_000, 15);
    let b = f.bundle("b.abup", &img, "2.0", 0);
    let bundle_len = std::fs::metadata(&b).unwrap().len();
    // The durable write to stop at: a journal checkpoint halfway through the payload.
    let writes = f.install_writes(&b);
    let checkpoints: Vec<usize> = writes
        .iter()
        .enumerate()
        .skip_while(|(_, w)| !w.contains("slot-b at") || w.ends_with(" at 0"))
        .filter(|(_, w)| w.ends_with("install.json"))
        .map(|(i, _)| i + 1)
        .collect();
    assert!(checkpoints.len() >= 3, "{writes:?}");
    let halfway = checkpoints[checkpoints.len() / 2];

    let www = f.t.path("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::copy(&b, www.join("b.abup")).unwrap();
    let pki_dir = f.t.path("pki");
    std::fs::create_dir(&pki_dir).unwrap();
    let pki = Pki::new(&pki_dir);
    let (cert, key) = (
        pki.server_cert.to_str().unwrap(),
        pki.server_key.to_str().unwrap(),
    );
    let server = PyServer::start(
        Some(&www),
        &f.t.path("server.log"),
        &["--tls", cert, key, "--header", HEADER, "--ranges"],
    );
    let url = server.url("https", "b.abup");

    // First attempt: stopped halfway, looked at, then killed as a power cut or an OOM kill
    // would.
    let pause = [("ABUP_PAUSE_AFTER_WRITES", halfway.to_string())];
    let mut first = Install::start(&f, &url, &pki.ca, &pause);
    common::wait_stopped(&mut first.child.0, || {
        std::fs::read_to_string(f.t.path("agent.err")).unwrap()
    });
    let s = poll_status(&f);
    let i = &s["install"];
    assert_eq!(i["state"], "running", "{s}");
    assert_eq!(i["pid"], first.child.0.id(), "{s}");
    assert_eq!(i["phase"], "write", "{s}");
    assert_eq!(i["target"], "B", "{s}");
    assert_eq!(i["source"], url, "{s}");
    assert!((1.0..98.0).contains(&i["percent"].as_f64().unwrap()), "{s}");
    assert_eq!(s["reboot_required"], false, "{s}");
    assert_eq!(s["pending"], Value::Null, "{s}");
    first.child.0.kill().unwrap();
    first.child.0.wait().unwrap();
    let mut lines = Vec::new();
    // The reader thread ends with the pipe; what it sent is all there was.
    lines.extend(first.lines.iter());
    assert!(!lines.is_empty());
    check_progress(&lines, bundle_len);
    assert!(lines.iter().any(|l| l["phase"] == "write"), "{lines:?}");

    let s = poll_status(&f);
    assert_eq!(s["install"]["state"], "interrupted", "{s}");
    assert_eq!(s["install"]["resumable"], true, "{s}");
    assert_eq!(s["next_boot"], "A", "the old slot still boots: {s}");
    assert_eq!(s["reboot_required"], false, "{s}");
    assert_eq!(s["pending"], Value::Null, "{s}");

    // Second attempt: the same command resumes; the agent reads each line as it comes and
    // polls status meanwhile.
    let requests_before = server.requests().len();
    let mut second = Install::start(&f, &url, &pki.ca, &[]);
    let mut lines = Vec::new();
    let mut polls = 0;
    let exit = loop {
        second.drain(&mut lines);
        if let Some(exit) = second.child.0.try_wait().unwrap() {
            break exit;
        }
        let s = poll_status(&f);
        let state = &s["install"]["state"];
        assert!(
            s["install"].is_null() || state == "running" || state == "interrupted",
            "{s}"
        );
        polls += 1;
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(polls >= 1);
    lines.extend(second.lines.iter());
    assert_eq!(
        exit.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(f.t.path("agent.err")).unwrap()
    );
    let result = lines.pop().unwrap();
    check_progress(&lines, bundle_len);
    assert_eq!(result["version"], 2, "{result}");
    assert_eq!(result["event"], "result", "{result}");
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["exit_code"], 0, "{result}");
    assert_eq!(result["target"], "B", "{result}");
    assert_eq!(result["bundle_version"], "2.0", "{result}");
    assert_eq!(result["reboot_required"], true, "{result}");
    assert_eq!(result["percent"], 100.0, "{result}");
    // It resumed: the first request of this run asked for the rest, not the whole bundle.
    let asked = server.requests();
    let resumed = asked[requests_before..]
        .iter()
        .filter_map(|r| r["range"].as_str())
        .filter_map(|r| r.strip_prefix("bytes="))
        .filter_map(|r| r.strip_suffix('-'))
        .map(|from| from.parse::<u64>().unwrap())
        .max();
    assert!(resumed.is_some_and(|from| from > 0), "{asked:?}");
    assert!(asked.iter().all(|r| r["header"] == true), "{asked:?}");
    assert_eq!(
        &f.slot("B")[..img.len()],
        &img[..],
        "slot B holds the image"
    );

    let s = poll_status(&f);
    assert_eq!(s["install"], Value::Null, "{s}");
    assert_eq!(s["reboot_required"], true, "{s}");
    assert_eq!(s["pending"], "B", "{s}");
    assert_eq!(s["next_boot"], "B", "{s}");

    // The agent reboots the device; B comes up and its boot-success service confirms it.
    f.boot("B");
    let s = poll_status(&f);
    assert_eq!(s["booted"], "B", "{s}");
    assert_eq!(s["reboot_required"], false, "{s}");
    f.abup(&["mark-good"]).success();
    let s = f.status_with(&["--history"]);
    assert_eq!(s["pending"], Value::Null, "{s}");
    assert_eq!(s["reboot_required"], false, "{s}");
    assert_eq!(s["rolled_back"], false, "{s}");
    assert_eq!(s["slots"][1]["confirmed"], true, "{s}");
    assert_eq!(s["slots"][1]["version"], "2.0", "{s}");
    let events: Vec<&str> = s["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"].as_str().unwrap())
        .collect();
    assert_eq!(events.last(), Some(&"confirmed"), "{s}");
    assert!(events.contains(&"install"), "{s}");
    // The token reached the server and nowhere else.
    let token = HEADER.rsplit(' ').next().unwrap();
    for e in std::fs::read_dir(&f.state).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            assert!(!String::from_utf8_lossy(&std::fs::read(&p).unwrap()).contains(token));
        }
    }
}
