//! A bounded history of what abup did to this device and what it saw: installs, refusals,
//! confirmations and fallbacks, for `abup status --history` and for the operator who asks
//! later why a device runs what it runs.
//!
//! `history.jsonl` holds one JSON object a line, oldest first, at most [`MAX_ENTRIES`]. Each
//! new entry rewrites the whole file with [`super::replace`] (a new file, synced, renamed over
//! the old one), so a power cut leaves the old history or the new one, never a torn line or a
//! lost older entry. The file is small (tens of kilobytes) and written a few times per install,
//! never on an install's hot path. A line that does not parse (a file edited by hand, one an
//! older abup appended to) is skipped when read and dropped by the next rewrite.

use std::fs::File;

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::StateDir;

const HISTORY: &str = "history.jsonl";
/// Serialises writers (an install ending while the boot-success service runs `mark-good`);
/// a separate file, because a rewrite replaces `history.jsonl` and the lock with it.
const LOCK: &str = "history.lock";
const VERSION: u32 = 1;

/// Entries kept: a device's last months of updates, at a few hundred bytes each.
pub const MAX_ENTRIES: usize = 100;

/// The most characters of a message kept in an entry: errors carry their causes, and the
/// history must stay small.
const MAX_MESSAGE: usize = 400;

/// More than [`MAX_ENTRIES`] entries of the largest size abup writes, with room to spare;
/// anything larger is not abup's.
const MAX_FILE: u64 = 256 * 1024;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    /// An install ran: it succeeded, or failed after it had begun to change the device.
    Install,
    /// abup declined: an install stopped before anything was written (a refused bundle, exit
    /// status 4; an unconfirmed running slot, 8), or a `mark-good`/`mark-active` that failed.
    Refused,
    /// `mark-good` confirmed a slot that was not confirmed before.
    Confirmed,
    /// The last installed slot ran out of tries without being confirmed and the device booted
    /// another slot (noticed by `mark-good`, which the boot-success service runs every boot).
    Fallback,
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub version: u32,
    /// Unix seconds.
    pub time: u64,
    pub event: Event,
    pub ok: bool,
    /// The command's exit status; null for a fallback (no command failed).
    pub exit_code: Option<u8>,
    /// One line: the error, or what was done.
    pub message: String,
    /// The slot installed, confirmed, or fallen back from.
    pub slot: Option<String>,
    pub bundle_version: Option<String>,
    /// Where an install's bundle came from, without credentials.
    pub source: Option<String>,
}

impl Entry {
    /// An entry of now; the remaining fields are the caller's.
    pub fn new(event: Event, ok: bool, exit_code: Option<u8>, message: &str) -> Entry {
        Entry {
            version: VERSION,
            time: super::now(),
            event,
            ok,
            exit_code,
            message: message.to_owned(),
            slot: None,
            bundle_version: None,
            source: None,
        }
    }
}

impl StateDir {
    /// The history, oldest first: every line that is a JSON object (an entry of this abup's
    /// version or another's); a line that is not (torn, edited) is skipped.
    pub fn history(&self) -> Result<Vec<serde_json::Value>> {
        Ok(self.history_lines()?.into_iter().map(|(_, v)| v).collect())
    }

    /// Each history line that is a JSON object, as written and as parsed.
    fn history_lines(&self) -> Result<Vec<(String, serde_json::Value)>> {
        let Some(bytes) = self.read(HISTORY, MAX_FILE)? else {
            return Ok(Vec::new());
        };
        Ok(String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|line| {
                let v = serde_json::from_str::<serde_json::Value>(line).ok()?;
                v.is_object().then(|| (line.to_owned(), v))
            })
            .collect())
    }

    /// Appends `entry`, keeping the last [`MAX_ENTRIES`]; see the module documentation for
    /// why a power cut loses nothing.
    pub fn record(&self, mut entry: Entry) -> Result<()> {
        entry.version = VERSION;
        if entry.message.chars().count() > MAX_MESSAGE {
            entry.message = entry.message.chars().take(MAX_MESSAGE).collect::<String>() + "...";
        }
        entry.source = entry.source.map(|s| super::redact(&s));
        let path = self.file(LOCK);
        let file = super::open_nofollow(&path, true)
            .with_context(|| format!("opening {}", path.display()))?;
        let _lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e): (File, _)| e)
            .with_context(|| format!("locking {}", path.display()))?;
        let mut lines: Vec<String> = self.history_lines()?.into_iter().map(|(l, _)| l).collect();
        lines.push(serde_json::to_string(&entry)?);
        let keep = lines.len().saturating_sub(MAX_ENTRIES);
        let mut bytes = lines[keep..].join("\n");
        bytes.push('\n');
        self.replace(HISTORY, bytes.as_bytes())
    }

    /// [`StateDir::record`], for callers whose own work is done whatever happens to the
    /// history: a failure is a warning.
    pub fn record_or_warn(&self, entry: Entry) {
        if let Err(e) = self.record(entry) {
            log::warn!("cannot add to the history in {HISTORY}: {e:#}");
        }
    }

    /// Whether a fallback has been recorded since the last install that was recorded: so
    /// that one fallback is recorded once, whatever the number of boots that notice it.
    pub fn fallback_recorded(&self) -> Result<bool> {
        let kind = |v: &serde_json::Value| v["event"].as_str().map(str::to_owned);
        Ok(self
            .history()?
            .iter()
            .rev()
            .filter_map(kind)
            .find(|k| k == "install" || k == "fallback")
            .is_some_and(|k| k == "fallback"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::state::temporary as state;

    #[test]
    fn the_history_keeps_the_last_entries() {
        let (_d, s) = state();
        for i in 0..MAX_ENTRIES + 30 {
            s.record(Entry::new(Event::Install, true, Some(0), &format!("n{i}")))
                .unwrap();
        }
        let h = s.history().unwrap();
        assert_eq!(h.len(), MAX_ENTRIES);
        assert_eq!(h[0]["message"], "n30");
        assert_eq!(
            h[MAX_ENTRIES - 1]["message"],
            format!("n{}", MAX_ENTRIES + 29)
        );
    }

    #[test]
    fn a_torn_or_foreign_line_is_skipped_and_the_rest_kept() {
        let (d, s) = state();
        s.record(Entry::new(Event::Confirmed, true, Some(0), "one"))
            .unwrap();
        let path = d.path().join(HISTORY);
        let mut text = std::fs::read_to_string(&path).unwrap();
        // An entry of a later abup, then a line cut short by a power cut.
        text.push_str("{\"version\":2,\"time\":5,\"event\":\"new-kind\",\"extra\":[1]}\n");
        text.push_str("{\"version\":1,\"time\":6,\"ev");
        std::fs::write(&path, text).unwrap();
        assert_eq!(s.history().unwrap().len(), 2);
        let mut long = Entry::new(Event::Refused, false, Some(4), &"x".repeat(5000));
        long.source = Some("https://u:p@h/b.abup?t=1".into());
        s.record(long).unwrap();
        let h = s.history().unwrap();
        assert_eq!(h.len(), 3, "{h:?}");
        assert_eq!(h[0]["message"], "one");
        assert_eq!(h[1]["event"], "new-kind", "another version's entry is kept");
        assert_eq!(h[2]["source"], "https://***@h/b.abup?***");
        assert_eq!(h[2]["message"].as_str().unwrap().len(), MAX_MESSAGE + 3);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("}\n") && !text.contains("\"ev\n"), "{text}");
    }

    #[test]
    fn a_fallback_is_recorded_once_per_install() {
        let (_d, s) = state();
        assert!(!s.fallback_recorded().unwrap());
        s.record(Entry::new(Event::Install, true, Some(0), "i"))
            .unwrap();
        assert!(!s.fallback_recorded().unwrap());
        s.record(Entry::new(Event::Fallback, false, None, "f"))
            .unwrap();
        s.record(Entry::new(Event::Confirmed, true, Some(0), "c"))
            .unwrap();
        assert!(s.fallback_recorded().unwrap());
        s.record(Entry::new(Event::Install, true, Some(0), "i2"))
            .unwrap();
        assert!(!s.fallback_recorded().unwrap());
    }
}
