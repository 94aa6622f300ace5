//! How an install reports progress: a bar for people at a terminal, one JSON object a line
//! for OTA agents (`--progress=json`, schema version 2, docs/progress-json.md), or nothing;
//! and, whatever the mode, a small report in the state directory for `abup status`.
//!
//! The JSON lines are the only thing abup writes to standard output in that mode, and the
//! last one is always the `result`. A reader that goes away (`| head -1`, an agent that
//! restarts) does not stop the install: abup stops writing lines and finishes, because an
//! install stopped by its audience would leave the target slot out of rotation for nothing;
//! the outcome is then in `abup status` (`last_install`, `--history`).

use std::io::Write;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::state::activity::Activity;
use crate::state::StateDir;

/// The schema version of the JSON lines: it goes up when a field changes meaning or
/// disappears.
pub const VERSION: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A bar when standard error is a terminal, else nothing.
    Auto,
    /// A bar on standard error.
    Bar,
    /// One JSON object a line on standard output, ending with the result.
    Json,
    /// Nothing.
    None,
}

/// An install's phases, in the order they run; an install skips those it has no work for
/// (docs/progress-json.md describes each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// The bundle's signed front read and checked: signature, board, security floor, running
    /// slot, target devices.
    Plan,
    /// A delta's base ranges in the running slot checked against their hashes.
    BaseCheck,
    PreInstall,
    /// The target taken out of rotation (one environment update).
    Invalidate,
    /// The payload downloaded, checked and written; the read-back follows it.
    Write,
    /// The rest of the slot read back from the disk and hashed.
    ReadBack,
    PostInstall,
    /// The slot recorded and put first in the boot order (one environment update).
    Activate,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Plan => "plan",
            Phase::BaseCheck => "base-check",
            Phase::PreInstall => "pre-install",
            Phase::Invalidate => "invalidate",
            Phase::Write => "write",
            Phase::ReadBack => "read-back",
            Phase::PostInstall => "post-install",
            Phase::Activate => "activate",
        }
    }

    /// Whether the phase's work is counted in bytes (the rest take a moment, or as long as a
    /// hook takes).
    fn counted(self) -> bool {
        matches!(self, Phase::BaseCheck | Phase::Write | Phase::ReadBack)
    }
}

/// How an install ended, for the `result` line.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub ok: bool,
    /// The process's exit status.
    pub exit_code: u8,
    /// The one-line error, or what was done.
    pub message: String,
    pub reboot_required: bool,
    /// What `--dry-run` found.
    pub dry_run: Option<serde_json::Value>,
}

/// Reports of one install: [`Progress::phase`] starts a phase, the byte counters move it
/// on, [`Progress::tick`] shows them (as often as is useful), [`Progress::result`] ends.
#[derive(Debug)]
pub struct Progress {
    out: Out,
    phase: Phase,
    downloaded: u64,
    download_total: Option<u64>,
    base_checked: u64,
    base_total: u64,
    written: u64,
    write_total: Option<u64>,
    read_back: u64,
    /// The highest percentage shown: what is shown never goes back.
    percent: f64,
    /// Where the current counted stretch began (time, bytes done), for the estimate.
    rate_from: Option<(Instant, u64)>,
    last_line: Option<Instant>,
    /// Standard output failed (its reader went away): no more lines.
    stdout_gone: bool,
    target: Option<String>,
    bundle_version: Option<String>,
    report: Option<Report>,
}

#[derive(Debug)]
enum Out {
    None,
    Bar(ProgressBar),
    Json,
}

/// The report in the state directory.
#[derive(Debug)]
struct Report {
    state: StateDir,
    source: String,
    bundle: Option<String>,
    last: Option<Instant>,
}

/// Often enough to look alive, rarely enough not to flood a log.
const JSON_INTERVAL: Duration = Duration::from_millis(250);

/// How often the report for `abup status` is rewritten within a phase.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Serialize)]
struct Line<'a> {
    version: u32,
    event: &'static str,
    phase: &'static str,
    bytes_downloaded: u64,
    download_total: Option<u64>,
    bytes_written: u64,
    write_total: Option<u64>,
    bytes_read_back: u64,
    percent: f64,
    eta_s: Option<u64>,
    time: f64,
    #[serde(flatten)]
    result: Option<ResultFields<'a>>,
}

#[derive(Serialize)]
struct ResultFields<'a> {
    ok: bool,
    exit_code: u8,
    message: &'a str,
    target: Option<&'a str>,
    bundle_version: Option<&'a str>,
    reboot_required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    dry_run: Option<&'a serde_json::Value>,
}

impl Progress {
    pub fn new(mode: Mode) -> Progress {
        use std::io::IsTerminal;
        let out = match mode {
            Mode::Json => Out::Json,
            Mode::Bar => Out::Bar(ProgressBar::new(0)),
            Mode::Auto if std::io::stderr().is_terminal() => Out::Bar(ProgressBar::new(0)),
            Mode::Auto | Mode::None => Out::None,
        };
        Progress {
            out,
            phase: Phase::Plan,
            downloaded: 0,
            download_total: None,
            base_checked: 0,
            base_total: 0,
            written: 0,
            write_total: None,
            read_back: 0,
            percent: 0.0,
            rate_from: None,
            last_line: None,
            stdout_gone: false,
            target: None,
            bundle_version: None,
            report: None,
        }
    }

    /// Also keeps the report `abup status` shows in `state` up to date, for the install of
    /// `source`.
    pub fn report_to(&mut self, state: &StateDir, source: &str) {
        self.report = Some(Report {
            state: state.clone(),
            source: source.to_owned(),
            bundle: None,
            last: None,
        });
    }

    pub fn phase(&mut self, phase: Phase) {
        self.phase = phase;
        if !phase.counted() {
            self.rate_from = None;
        }
        if let Out::Bar(bar) = &self.out {
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:>12} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(phase.name());
            bar.reset();
        }
        self.show(true);
    }

    /// What the bundle's signed front says: its version and manifest hash, the bytes the
    /// install writes, and the bundle's length if the source tells it.
    pub fn bundle(&mut self, version: &str, id: &str, write_total: u64, len: Option<u64>) {
        self.bundle_version = Some(version.to_owned());
        self.write_total = Some(write_total);
        self.download_total = len;
        if let Some(r) = &mut self.report {
            r.bundle = Some(id.to_owned());
        }
    }

    pub fn target(&mut self, name: &str) {
        self.target = Some(name.to_owned());
    }

    /// The phase the install is in, or ended in.
    pub fn current(&self) -> Phase {
        self.phase
    }

    /// The slot the install writes, once it is known.
    pub fn target_name(&self) -> Option<&str> {
        self.target.as_deref()
    }

    /// The bundle's version, once its signed front is read.
    pub fn bundle_version(&self) -> Option<&str> {
        self.bundle_version.as_deref()
    }

    /// Bytes of the bundle behind the reader, from its start.
    pub fn downloaded(&mut self, bytes: u64) {
        self.downloaded = self.downloaded.max(bytes);
    }

    /// Base bytes to check in the `base-check` phase.
    pub fn base_total(&mut self, bytes: u64) {
        self.base_total = bytes;
    }

    pub fn base_checked(&mut self, bytes: u64) {
        self.base_checked = bytes;
    }

    /// Bytes of the slot on the disk: written by this run, or by the interrupted run it
    /// continues.
    pub fn written(&mut self, bytes: u64) {
        self.written = bytes;
    }

    /// Bytes of the slot read back from the disk and hashed.
    pub fn read_back(&mut self, bytes: u64) {
        self.read_back = bytes;
    }

    /// Shows the counters if it is time to.
    pub fn tick(&mut self) {
        self.show(false);
    }

    /// Bytes done and to do in the counted phases: the base checked, the slot written and
    /// the slot read back.
    fn work(&self) -> Option<(u64, u64)> {
        let w = self.write_total?;
        Some((
            self.base_checked + self.written + self.read_back,
            self.base_total + 2 * w,
        ))
    }

    /// 0 while planning, 1 to 98 over the counted work, 98 for the post-install hook, 99
    /// for the activation; 100 only in a successful result. Never below what was shown.
    fn percent(&mut self) -> f64 {
        let p = match self.phase {
            Phase::Plan => 0.0,
            Phase::PostInstall => 98.0,
            Phase::Activate => 99.0,
            _ => match self.work() {
                Some((done, total)) if total > 0 => {
                    1.0 + 97.0 * (done as f64 / total as f64).min(1.0)
                }
                _ => 1.0,
            },
        };
        self.percent = self.percent.max((p * 10.0).floor() / 10.0);
        self.percent
    }

    /// Seconds the counted work still takes at the rate of this stretch of it; unknown
    /// before a second of it has passed, and outside it (a hook takes what it takes).
    fn eta(&mut self) -> Option<u64> {
        if !self.phase.counted() {
            return None;
        }
        let (done, total) = self.work()?;
        let (since, from) = *self.rate_from.get_or_insert((Instant::now(), done));
        let secs = since.elapsed().as_secs_f64();
        if secs < 1.0 || done <= from {
            return None;
        }
        let rate = (done - from) as f64 / secs;
        Some((total.saturating_sub(done) as f64 / rate).round() as u64)
    }

    fn show(&mut self, now: bool) {
        let percent = self.percent();
        let eta = self.eta();
        match &self.out {
            Out::None => {}
            Out::Bar(bar) => {
                let (done, total) = match self.phase {
                    Phase::BaseCheck => (self.base_checked, self.base_total),
                    Phase::Write => (self.written, self.write_total.unwrap_or(0)),
                    Phase::ReadBack => (self.read_back, self.write_total.unwrap_or(0)),
                    _ => (0, 0),
                };
                bar.set_length(total);
                bar.set_position(done);
            }
            Out::Json => {
                if now || self.last_line.is_none_or(|t| t.elapsed() >= JSON_INTERVAL) {
                    self.last_line = Some(Instant::now());
                    self.line("progress", percent, eta, None);
                }
            }
        }
        if let Some(r) = &mut self.report {
            if now || r.last.is_none_or(|t| t.elapsed() >= REPORT_INTERVAL) {
                r.last = Some(Instant::now());
                r.state.set_activity(Activity {
                    version: 0,
                    pid: std::process::id(),
                    phase: self.phase.name().to_owned(),
                    percent,
                    source: r.source.clone(),
                    target: self.target.clone(),
                    bundle: r.bundle.clone(),
                    bundle_version: self.bundle_version.clone(),
                    updated: crate::state::now(),
                });
            }
        }
    }

    /// One JSON line on standard output; when that fails (no reader any more), no more.
    fn line(
        &mut self,
        event: &'static str,
        percent: f64,
        eta: Option<u64>,
        result: Option<ResultFields<'_>>,
    ) {
        if self.stdout_gone {
            return;
        }
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_millis() as f64 / 1000.0);
        let line = Line {
            version: VERSION,
            event,
            phase: self.phase.name(),
            bytes_downloaded: self.downloaded,
            download_total: self.download_total,
            bytes_written: self.written,
            write_total: self.write_total,
            bytes_read_back: self.read_back,
            percent,
            eta_s: eta,
            time,
            result,
        };
        let Ok(mut text) = serde_json::to_string(&line) else {
            return;
        };
        text.push('\n');
        let mut out = std::io::stdout().lock();
        if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            self.stdout_gone = true;
            log::info!("standard output is gone ({e}); the install goes on without progress lines");
        }
    }

    /// Ends the reports: the bar is cleared, the JSON stream ends with the `result` line.
    pub fn result(&mut self, outcome: &Outcome) {
        if let Out::Bar(bar) = &self.out {
            bar.finish_and_clear();
        }
        if !matches!(self.out, Out::Json) {
            return;
        }
        let percent = if outcome.ok { 100.0 } else { self.percent() };
        let (target, version) = (self.target.clone(), self.bundle_version.clone());
        let fields = ResultFields {
            ok: outcome.ok,
            exit_code: outcome.exit_code,
            message: &outcome.message,
            target: target.as_deref(),
            bundle_version: version.as_deref(),
            reboot_required: outcome.reboot_required,
            dry_run: outcome.dry_run.as_ref(),
        };
        self.line("result", percent, outcome.ok.then_some(0), Some(fields));
    }

    /// Clears the bar (provisioning, which ends with its own summary).
    pub fn finish(&mut self) {
        if let Out::Bar(bar) = &self.out {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_percentage_spans_the_whole_install_and_never_goes_back() {
        let mut p = Progress::new(Mode::None);
        p.phase(Phase::Plan);
        assert_eq!(p.percent(), 0.0);
        p.bundle("2", "ab", 1000, Some(600));
        p.base_total(500);
        p.phase(Phase::BaseCheck);
        assert_eq!(p.percent(), 1.0);
        p.base_checked(500);
        let after_base = p.percent();
        assert!((20.0..21.0).contains(&after_base), "{after_base}");
        p.phase(Phase::PreInstall);
        assert_eq!(p.percent(), after_base, "a hook keeps the percentage");
        p.phase(Phase::Write);
        let mut last = after_base;
        for i in 0..=10 {
            p.written(i * 100);
            p.read_back(i * 90);
            let now = p.percent();
            assert!(now >= last, "{now} < {last}");
            last = now;
        }
        p.phase(Phase::ReadBack);
        p.read_back(1000);
        assert_eq!(p.percent(), 98.0);
        p.phase(Phase::PostInstall);
        assert_eq!(p.percent(), 98.0);
        p.phase(Phase::Activate);
        assert_eq!(p.percent(), 99.0);
        // A counter that goes back (a resumed read-back starts at zero) does not move the
        // percentage back.
        p.phase(Phase::ReadBack);
        p.read_back(0);
        assert_eq!(p.percent(), 99.0);
    }

    #[test]
    fn no_estimate_outside_the_counted_work() {
        let mut p = Progress::new(Mode::None);
        p.bundle("2", "ab", 1000, None);
        p.phase(Phase::PreInstall);
        assert_eq!(p.eta(), None);
        p.phase(Phase::Write);
        assert_eq!(p.eta(), None, "not before a second has passed");
        p.rate_from = Some((Instant::now() - Duration::from_secs(2), 0));
        p.written(500);
        assert_eq!(p.eta(), Some(6), "1500 bytes left at 250 a second");
    }
}
