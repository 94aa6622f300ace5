//! What abup remembers across updates, in the state directory: which bundle each slot holds,
//! the lowest security version it will still install, and how the last install ended.
//! Versioned JSON, replaced atomically.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::statefile;

const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
pub struct Slots {
    pub version: u32,
    pub slots: BTreeMap<String, SlotBundle>,
}

/// How the last install ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastInstall {
    pub version: u32,
    /// "success" or "failed".
    pub outcome: String,
    pub source: String,
    pub target: Option<String>,
    pub bundle_version: Option<String>,
    pub error: Option<String>,
    /// Unix seconds.
    pub finished: u64,
}

/// Never lowered: a confirmed slot raises it to its bundle's security version, and installs
/// below it are refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityFloor {
    pub version: u32,
    pub floor: u64,
}

fn slots_path(dir: &Path) -> std::path::PathBuf {
    dir.join("slots.json")
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn slots(dir: &Path) -> Result<Slots> {
    Ok(statefile::read_json(&slots_path(dir))?.unwrap_or(Slots {
        version: VERSION,
        slots: BTreeMap::new(),
    }))
}

pub fn set_slot(dir: &Path, slot: &str, bundle: Option<SlotBundle>) -> Result<()> {
    let mut all = slots(dir)?;
    match bundle {
        Some(b) => all.slots.insert(slot.to_owned(), b),
        None => all.slots.remove(slot),
    };
    all.version = VERSION;
    statefile::write_json(&slots_path(dir), &all)
}

pub fn security_floor(dir: &Path) -> Result<u64> {
    Ok(statefile::read_json::<SecurityFloor>(&dir.join("security.json"))?.map_or(0, |s| s.floor))
}

/// Raises the floor to `to` if it is lower.
pub fn raise_security_floor(dir: &Path, to: u64) -> Result<()> {
    if to > security_floor(dir)? {
        statefile::write_json(
            &dir.join("security.json"),
            &SecurityFloor {
                version: VERSION,
                floor: to,
            },
        )?;
    }
    Ok(())
}

pub fn last_install(dir: &Path) -> Result<Option<LastInstall>> {
    statefile::read_json(&dir.join("last-install.json"))
}

pub fn set_last_install(dir: &Path, mut last: LastInstall) -> Result<()> {
    last.version = VERSION;
    statefile::write_json(&dir.join("last-install.json"), &last)
}
