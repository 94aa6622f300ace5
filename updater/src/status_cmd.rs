//! `abup status`: what the device runs, what boots next, what an install is doing, and what
//! happened before, for people (text) and OTA agents (`--json`, docs/status-json.md).
//!
//! Status answers at once during an install: it reads the bootloader environment under a
//! shared lock (an install holds it exclusively only for its two environment updates), finds
//! out whether an install runs by trying the install lock without waiting, and reads the
//! install's own report of its phase from the state directory.

use std::io::Write;

use anyhow::Result;
use bootcount::{SlotId, State};
use serde::Serialize;

use crate::board::Board;
use crate::booted::{self, Method};
use crate::bootenv::{Environment, Location};
use crate::commands::Outcome;
use crate::slotstate;
use crate::state::floor::Floor;
use crate::state::journal::Phase;
use crate::state::records::{LastInstall, SlotBundle};
use crate::state::StateDir;

/// `version` changes only when a field changes meaning or disappears.
const VERSION: u32 = 2;

#[derive(Serialize)]
struct StatusReport<'a> {
    version: u32,
    abup_version: &'static str,
    board: &'a str,
    compatible: &'a str,
    bootloader: &'static str,
    scheme: &'static str,
    environment: String,
    booted: Option<&'a str>,
    booted_from: Option<&'static str>,
    next_boot: &'a str,
    next_boot_is_fallback: bool,
    reboot_required: Option<bool>,
    pending: Option<&'a str>,
    rolled_back: bool,
    security_floor: Option<u64>,
    install: Option<InstallReport>,
    last_install: Option<LastInstall>,
    slots: Vec<SlotReport<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<Vec<serde_json::Value>>,
}

#[derive(Serialize)]
struct SlotReport<'a> {
    name: &'a str,
    device: String,
    booted: bool,
    priority: Option<usize>,
    tries_left: u8,
    good: bool,
    confirmed: bool,
    /// The version of the bundle abup installed or provisioned there.
    version: Option<String>,
    bundle: Option<SlotBundle>,
}

/// An install that runs, or one that was interrupted and left a journal.
#[derive(Serialize)]
struct InstallReport {
    /// "running" or "interrupted".
    state: &'static str,
    pid: Option<u32>,
    phase: Option<String>,
    percent: Option<f64>,
    source: Option<String>,
    target: Option<String>,
    bundle_version: Option<String>,
    resumable: bool,
    /// Unix seconds of the install's last report.
    updated: Option<u64>,
}

/// The slot the last successful install activated, when it has since run out of tries
/// without being confirmed (or was marked bad) and another slot runs: the device fell back.
pub fn rolled_back(
    board: &Board,
    state: &State,
    last: Option<&LastInstall>,
    booted: Option<SlotId>,
) -> Option<SlotId> {
    let last = last.filter(|l| l.outcome == "success")?;
    let slot = board.slots.find(last.target.as_deref()?)?;
    let st = state.status(slot);
    (booted? != slot && !st.good && !st.confirmed).then_some(slot)
}

fn install_report(state: &StateDir) -> Option<InstallReport> {
    let journal = state
        .interrupted()
        .map_err(|e| log::warn!("{e:#}"))
        .ok()
        .flatten();
    let activity = state.activity();
    if let Some(running) = state.running_install() {
        // A report of an earlier install, before this one wrote its first.
        let a = activity.filter(|a| Some(a.pid) == running.pid);
        let resumable = match (&journal, &a) {
            (Some((j, held)), Some(a)) => *held && a.bundle.as_deref() == Some(&j.bundle),
            _ => false,
        };
        return Some(InstallReport {
            state: "running",
            pid: running.pid,
            phase: a.as_ref().map(|a| a.phase.clone()),
            percent: a.as_ref().map(|a| a.percent),
            source: a.as_ref().map(|a| a.source.clone()),
            target: running
                .target
                .or_else(|| a.as_ref().and_then(|a| a.target.clone())),
            bundle_version: a.as_ref().and_then(|a| a.bundle_version.clone()),
            resumable,
            updated: a.as_ref().map(|a| a.updated),
        });
    }
    let (j, resumable) = journal?;
    let a = activity.filter(|a| {
        a.bundle.as_deref() == Some(&j.bundle) && a.target.as_deref() == Some(&j.target)
    });
    let phase = match j.phase {
        Phase::Write { .. } => "write",
        Phase::Activate => "activate",
    };
    Some(InstallReport {
        state: "interrupted",
        pid: None,
        phase: Some(a.as_ref().map_or(phase.to_owned(), |a| a.phase.clone())),
        percent: a.as_ref().map(|a| a.percent),
        source: a.as_ref().map(|a| a.source.clone()),
        target: Some(j.target),
        bundle_version: a.as_ref().and_then(|a| a.bundle_version.clone()),
        resumable,
        updated: a.as_ref().map(|a| a.updated),
    })
}

pub fn status(board: &Board, json: bool, history: bool) -> Result<Outcome> {
    let env = Environment::open(&Location::of_board(board), false)?;
    let state_dir = StateDir::existing(board)?;
    let warn = |e: anyhow::Error| log::warn!("{e:#}");
    let last_install = state_dir
        .as_ref()
        .and_then(|s| s.last_install().map_err(warn).ok().flatten());
    let records = state_dir
        .as_ref()
        .and_then(|s| s.slots().map_err(warn).ok())
        .unwrap_or_default();
    let expected = state_dir
        .as_ref()
        .is_some_and(|s| s.floor_expected().unwrap_or(true));
    let security_floor = Floor::read(state_dir.as_ref(), &env)
        .value(expected)
        .map_err(warn)
        .ok();
    let install = state_dir.as_ref().and_then(install_report);
    let history = match (&state_dir, history) {
        (Some(s), true) => Some(s.history().map_err(warn).unwrap_or_default()),
        (None, true) => Some(Vec::new()),
        (_, false) => None,
    };
    let state = slotstate::read(board, &env)?.state;
    let environment = env.describe();
    drop(env);
    let booted = match booted::detect(board, &booted::read_cmdline()?) {
        Ok(b) => Some(b),
        Err(e) => {
            log::warn!("{e}");
            None
        }
    };
    let booted_slot = booted.map(|(s, _)| s);
    let next = state.next_boot();
    let report = StatusReport {
        version: VERSION,
        abup_version: env!("CARGO_PKG_VERSION"),
        board: &board.name,
        compatible: &board.compatible,
        bootloader: board.bootloader_name(),
        scheme: board.scheme.name(),
        environment,
        booted: booted_slot.map(|s| board.slots.name(s)),
        booted_from: booted.map(|(_, how): (SlotId, Method)| how.name()),
        next_boot: board.slots.name(next.slot),
        next_boot_is_fallback: next.fallback,
        reboot_required: booted_slot.map(|b| !next.fallback && next.slot != b),
        pending: (!state.status(next.slot).confirmed).then(|| board.slots.name(next.slot)),
        rolled_back: rolled_back(board, &state, last_install.as_ref(), booted_slot).is_some(),
        security_floor,
        install,
        last_install,
        slots: board
            .slots
            .ids()
            .map(|s| {
                let st = state.status(s);
                let bundle = records.get(board.slots.name(s)).cloned();
                SlotReport {
                    name: board.slots.name(s),
                    device: board.device(s).display().to_string(),
                    booted: booted_slot == Some(s),
                    priority: st.priority,
                    tries_left: st.tries_left,
                    good: st.good,
                    confirmed: st.confirmed,
                    version: bundle.as_ref().map(|b| b.version.clone()),
                    bundle,
                }
            })
            .collect(),
        history,
    };
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
        return Ok(Outcome::Done);
    }
    text(&mut out, board, &report)?;
    Ok(Outcome::Done)
}

fn when(secs: u64) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

fn text(out: &mut impl Write, board: &Board, report: &StatusReport<'_>) -> Result<()> {
    writeln!(out, "board:       {} ({})", report.board, report.compatible)?;
    writeln!(
        out,
        "bootloader:  {}, scheme {}, {} tries",
        report.bootloader,
        report.scheme,
        board.slots.tries()
    )?;
    writeln!(out, "environment: {}", report.environment)?;
    match (report.booted, report.booted_from) {
        (Some(b), Some(from)) => writeln!(out, "booted:      {b} (from {from})")?,
        _ => writeln!(out, "booted:      unknown")?,
    }
    writeln!(
        out,
        "next boot:   {}{}{}",
        report.next_boot,
        if report.next_boot_is_fallback {
            " (no slot has tries left: last confirmed slot, uncounted)"
        } else {
            ""
        },
        match (report.reboot_required, report.pending) {
            (Some(true), _) => "; reboot to try it",
            (_, Some(_)) => "; being tried, not confirmed yet",
            _ => "",
        }
    )?;
    if report.rolled_back {
        if let Some(last) = &report.last_install {
            writeln!(
                out,
                "rolled back: slot {} ({}) ran out of tries without being confirmed",
                last.target.as_deref().unwrap_or("?"),
                last.bundle_version.as_deref().unwrap_or("?")
            )?;
        }
    }
    match report.security_floor {
        Some(n) => writeln!(out, "security floor: {n}")?,
        None => writeln!(out, "security floor: unknown (see `abup security-floor`)")?,
    }
    if let Some(i) = &report.install {
        let mut line = match i.pid {
            Some(pid) => format!("install:     running (pid {pid})"),
            None => "install:     interrupted".to_owned(),
        };
        if let Some(v) = &i.bundle_version {
            line += &format!(", {v}");
        }
        if let Some(t) = &i.target {
            line += &format!(" into slot {t}");
        }
        if let Some(s) = &i.source {
            line += &format!(" from {s}");
        }
        if let Some(p) = &i.phase {
            line += &format!(", {p}");
        }
        if let Some(p) = i.percent {
            line += &format!(" {p:.1}%");
        }
        if i.pid.is_none() {
            line += if i.resumable {
                "; the same install continues it, `abup install --abort` drops it"
            } else {
                "; the next install starts over"
            };
        }
        writeln!(out, "{line}")?;
    }
    if let Some(last) = &report.last_install {
        let when = when(last.finished);
        match (
            &last.outcome[..],
            &last.bundle_version,
            &last.target,
            &last.error,
        ) {
            ("success", Some(v), Some(t), _) => {
                writeln!(out, "last install: {v} into slot {t}, {when}")?
            }
            (_, _, _, Some(e)) => writeln!(out, "last install: failed {when}: {e}")?,
            (o, ..) => writeln!(out, "last install: {o} {when}")?,
        }
    }
    writeln!(
        out,
        "slot  order  tries  state                      bundle      device"
    )?;
    for s in &report.slots {
        let mut words = vec![if s.good { "good" } else { "bad" }];
        if s.confirmed {
            words.push("confirmed");
        }
        if s.booted {
            words.push("booted");
        }
        writeln!(
            out,
            "{:<5} {:<6} {:<6} {:<26} {:<11} {}",
            s.name,
            s.priority.map_or("-".to_owned(), |p| p.to_string()),
            format!("{}/{}", s.tries_left, board.slots.tries()),
            words.join(", "),
            s.version.as_deref().unwrap_or("-"),
            s.device
        )?;
    }
    if let Some(history) = &report.history {
        writeln!(out, "history (oldest first):")?;
        for h in history {
            let time = h["time"]
                .as_u64()
                .map_or("?".to_owned(), |t| when(t).to_string());
            let code = h["exit_code"]
                .as_u64()
                .map_or(String::new(), |c| format!(" (exit {c})"));
            writeln!(
                out,
                "  {time}  {:<9} {}{code}",
                h["event"].as_str().unwrap_or("?"),
                h["message"].as_str().unwrap_or("")
            )?;
        }
    }
    Ok(())
}
