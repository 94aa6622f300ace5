//! How an install reports progress: a bar for people at a terminal, one JSON object a line
//! for OTA agents (`--progress=json`, schema version 1), or nothing.

use std::io::Write;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A bar when standard error is a terminal, else nothing.
    Auto,
    Bar,
    Json,
    None,
}

/// Reports of one install; `phase` starts a phase, `set` moves it on.
#[derive(Debug)]
pub struct Progress {
    out: Out,
    phase: &'static str,
    total: u64,
    /// Bytes of the slot read back from the disk and hashed so far: the read-back overlaps
    /// the write, so `write` lines carry it too.
    verified: u64,
    last_json: Option<Instant>,
}

#[derive(Debug)]
enum Out {
    None,
    Bar(ProgressBar),
    Json,
}

/// Often enough to look alive, rarely enough not to flood a log.
const JSON_INTERVAL: Duration = Duration::from_millis(250);

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
            phase: "",
            total: 0,
            verified: 0,
            last_json: None,
        }
    }

    pub fn phase(&mut self, phase: &'static str, total: u64) {
        self.phase = phase;
        self.total = total;
        self.last_json = None;
        if let Out::Bar(bar) = &self.out {
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:>9} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(phase);
            bar.set_length(total);
            bar.set_position(0);
        }
        self.set(0);
    }

    pub fn set(&mut self, done: u64) {
        match &self.out {
            Out::None => {}
            Out::Bar(bar) => bar.set_position(done),
            Out::Json => {
                let due = self.last_json.is_none_or(|t| t.elapsed() >= JSON_INTERVAL);
                if due || done == self.total {
                    self.last_json = Some(Instant::now());
                    let line = serde_json::json!({
                        "version": 1, "phase": self.phase, "done": done, "total": self.total,
                        "verified": self.verified,
                    });
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            }
        }
    }

    /// How far the read-back has come; shown with the next line.
    pub fn verified(&mut self, bytes: u64) {
        self.verified = bytes;
    }

    pub fn finish(&mut self) {
        if let Out::Bar(bar) = &self.out {
            bar.finish_and_clear();
        }
    }
}
