//! What abup remembers about its slots and installs: which bundle each slot holds and how the
//! last install ended. Versioned JSON, parsed strictly: a file with another version or a field
//! this abup does not know is an error, not a guess.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::StateDir;

const VERSION: u32 = 1;
/// `slots.json` is at version 2 since abup keeps the security floor in two places: an abup
/// that writes version 2 has written `security.json` first (version 1 is read as is).
const SLOTS_VERSION: u32 = 2;
const SLOTS: &str = "slots.json";
const LAST_INSTALL: &str = "last-install.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotBundle {
    pub version: String,
    pub compatible: String,
    pub security_version: u64,
    /// SHA-256 of the bundle's signed manifest.
    pub bundle: String,
    /// Unix seconds.
    pub installed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Slots {
    version: u32,
    slots: BTreeMap<String, SlotBundle>,
}

/// How the last install ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastInstall {
    pub version: u32,
    /// "success" or "failed".
    pub outcome: String,
    /// Where the bundle came from, without credentials ([`super::redact`]).
    pub source: String,
    pub target: Option<String>,
    pub bundle_version: Option<String>,
    pub error: Option<String>,
    /// Unix seconds.
    pub finished: u64,
}

/// Refuses a state file of another version than this abup writes.
pub(super) fn check_version(found: u32, expected: u32, what: &str) -> Result<()> {
    if found != expected {
        bail!(
            "{what} has version {found}, this abup reads version {expected}: it was written by \
             another abup version"
        );
    }
    Ok(())
}

impl StateDir {
    fn slot_records(&self) -> Result<Slots> {
        match self.read_json::<Slots>(SLOTS)? {
            Some(s) => {
                if s.version != 1 {
                    check_version(s.version, SLOTS_VERSION, SLOTS)?;
                }
                Ok(s)
            }
            None => Ok(Slots {
                version: SLOTS_VERSION,
                slots: BTreeMap::new(),
            }),
        }
    }

    /// What abup installed in each slot, by slot name.
    pub fn slots(&self) -> Result<BTreeMap<String, SlotBundle>> {
        Ok(self.slot_records()?.slots)
    }

    /// Whether a security floor must exist here: an abup that keeps the floor recorded an
    /// install (and wrote the floor before it), so a floor missing from both places was
    /// removed. A device whose records come from an older abup has none yet.
    pub fn floor_expected(&self) -> Result<bool> {
        Ok(self.read(SLOTS, super::MAX_STATE_FILE)?.is_some()
            && self.slot_records()?.version == SLOTS_VERSION)
    }

    /// Records what `slot` holds. The caller has made sure the floor is in the state
    /// directory ([`StateDir::ensure_floor`]).
    pub fn set_slot(&self, slot: &str, bundle: Option<SlotBundle>) -> Result<()> {
        let mut all = self.slot_records()?;
        match bundle {
            Some(b) => all.slots.insert(slot.to_owned(), b),
            None => all.slots.remove(slot),
        };
        all.version = SLOTS_VERSION;
        self.write_json(SLOTS, &all)
    }

    /// Forgets what `slot` holds, before anything overwrites it: a slot whose install then
    /// fails holds no recorded bundle (so `mark-good` refuses it). The records keep their
    /// version, since this writes no floor.
    pub fn forget_slot(&self, slot: &str) -> Result<()> {
        let mut all = self.slot_records()?;
        if all.slots.remove(slot).is_some() {
            self.write_json(SLOTS, &all)?;
        }
        Ok(())
    }

    pub fn last_install(&self) -> Result<Option<LastInstall>> {
        let last: Option<LastInstall> = self.read_json(LAST_INSTALL)?;
        if let Some(l) = &last {
            check_version(l.version, VERSION, LAST_INSTALL)?;
        }
        Ok(last)
    }

    pub fn set_last_install(&self, mut last: LastInstall) -> Result<()> {
        last.version = VERSION;
        last.source = super::redact(&last.source);
        self.write_json(LAST_INSTALL, &last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_parsed_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir {
            path: dir.path().to_owned(),
        };
        assert!(state.slots().unwrap().is_empty());
        let b = SlotBundle {
            version: "2".into(),
            compatible: "c".into(),
            security_version: 3,
            bundle: "ab".into(),
            installed: 1,
        };
        state.set_slot("B", Some(b.clone())).unwrap();
        assert_eq!(state.slots().unwrap()["B"], b);

        let slots = dir.path().join(SLOTS);
        let text = std::fs::read_to_string(&slots).unwrap();
        assert!(state.floor_expected().unwrap());
        std::fs::write(&slots, text.replace("\"version\": 2", "\"version\": 1")).unwrap();
        assert_eq!(state.slots().unwrap()["B"], b, "an older abup's records");
        assert!(!state.floor_expected().unwrap());
        std::fs::write(&slots, text.replace("\"version\": 2", "\"version\": 3")).unwrap();
        let e = format!("{:#}", state.slots().unwrap_err());
        assert!(e.contains("has version 3"), "{e}");
        std::fs::write(
            &slots,
            text.replace("\"installed\"", "\"extra\": 1, \"installed\""),
        )
        .unwrap();
        let e = format!("{:#}", state.slots().unwrap_err());
        assert!(e.contains("unknown field"), "{e}");
    }
}
