//! What an install is doing, for `abup status` while it runs and after it was interrupted:
//! its phase, how far it has come, where its bundle comes from.
//!
//! `install-progress.json` is a hint, not a record: it is rewritten at each phase change and
//! at most once a second in between, by renaming a new file over it without syncing (an
//! install must not spend its time in fsync for a progress report), so after a power cut it may
//! be older than the install or gone. Nothing decides anything from it: the install lock says
//! whether an install runs, the journal what an interrupted one has durably done; this file
//! only adds the phase, the percentage and the source, and only when it belongs to the same
//! install (the same process, or the journal's bundle).

use serde::{Deserialize, Serialize};

use super::StateDir;

const FILE: &str = "install-progress.json";
const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Activity {
    pub version: u32,
    /// The install's process.
    pub pid: u32,
    /// Its phase, as `--progress=json` names it (docs/progress-json.md).
    pub phase: String,
    /// 0 to 100 over the whole install.
    pub percent: f64,
    /// Where the bundle comes from, without credentials.
    pub source: String,
    /// The slot being written, once known.
    pub target: Option<String>,
    /// SHA-256 of the bundle's signed manifest (as in the journal), once known.
    pub bundle: Option<String>,
    pub bundle_version: Option<String>,
    /// Unix seconds of this report.
    pub updated: u64,
}

impl StateDir {
    /// Replaces the report; a failure only costs `abup status` its detail, so it is logged.
    pub fn set_activity(&self, mut activity: Activity) {
        activity.version = VERSION;
        activity.source = super::redact(&activity.source);
        let written = serde_json::to_vec(&activity)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| super::replace_unsynced(&self.file(FILE), &bytes));
        if let Err(e) = written {
            log::debug!("cannot write {FILE}: {e:#}");
        }
    }

    /// The last report, if there is one that this abup can read: a report is a hint, so one
    /// that is missing, damaged or of another version is none.
    pub fn activity(&self) -> Option<Activity> {
        self.read_json::<Activity>(FILE)
            .ok()
            .flatten()
            .filter(|a| a.version == VERSION)
    }

    /// Removes the report of an install that ended.
    pub fn clear_activity(&self) {
        if let Err(e) = std::fs::remove_file(self.file(FILE)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::debug!("cannot remove {FILE}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_a_hint() {
        let (dir, s) = crate::state::temporary();
        assert_eq!(s.activity(), None);
        let a = Activity {
            version: 0,
            pid: 7,
            phase: "write".into(),
            percent: 42.5,
            source: "https://u:pw@h/b.abup".into(),
            target: Some("B".into()),
            bundle: Some("ab".into()),
            bundle_version: Some("2".into()),
            updated: 1,
        };
        s.set_activity(a.clone());
        let back = s.activity().unwrap();
        assert_eq!(back.source, "https://***@h/b.abup");
        assert_eq!(back.percent, 42.5);
        std::fs::write(dir.path().join(FILE), b"{\"version\":1,\"pid\":").unwrap();
        assert_eq!(s.activity(), None, "a torn report is none");
        s.clear_activity();
        s.clear_activity();
        assert_eq!(s.activity(), None);
    }
}
