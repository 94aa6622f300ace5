//! What an interrupted install has durably done, so that running the same command again
//! continues instead of starting over. Written only after the data it describes is synced,
//! so it never claims more than is on the disk; the final read-back of the whole slot checks
//! everything anyway.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::statefile;

const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub version: u32,
    /// SHA-256 of the signed manifest: the bundle this journal belongs to.
    pub bundle: String,
    /// The slot being written.
    pub target: String,
    pub phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "phase")]
pub enum Phase {
    /// Chunks before `next_chunk` of image `image` (and every earlier image) are on the disk.
    Writing { image: usize, next_chunk: usize },
    /// Every image is written, read back and matched; only activation is left.
    Verified,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("install.json")
}

/// The first block of each image, held back until everything else is verified, kept in the
/// state directory so a resumed install still has it.
pub fn held_block_path(state_dir: &Path, image: usize) -> PathBuf {
    state_dir.join(format!("install-first-block.{image}"))
}

impl Journal {
    pub fn new(bundle: String, target: String, phase: Phase) -> Journal {
        Journal {
            version: VERSION,
            bundle,
            target,
            phase,
        }
    }

    /// The journal of an earlier attempt at the same bundle and target, if there is one.
    pub fn resume(state_dir: &Path, bundle: &str, target: &str) -> Result<Option<Journal>> {
        let found: Option<Journal> = match statefile::read_json(&path(state_dir)) {
            Ok(j) => j,
            Err(e) => {
                log::warn!("ignoring the install journal: {e:#}");
                None
            }
        };
        Ok(found.filter(|j| j.version == VERSION && j.bundle == bundle && j.target == target))
    }

    pub fn save(&self, state_dir: &Path) -> Result<()> {
        statefile::write_json(&path(state_dir), self)
    }

    pub fn clear(state_dir: &Path, images: usize) -> Result<()> {
        statefile::remove(&path(state_dir))?;
        for i in 0..images {
            statefile::remove(&held_block_path(state_dir, i))?;
        }
        Ok(())
    }
}
