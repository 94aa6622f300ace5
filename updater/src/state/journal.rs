//! What an interrupted install has durably done, so that running the same command again
//! continues instead of starting over. Written only after the data it describes is synced, so
//! it never claims more than is on the disk; and never trusted further than the bytes it
//! describes: whatever phase it names, every byte is read back from the disk and checked
//! against the bundle's hashes before the slot is activated.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::StateDir;

const VERSION: u32 = 2;
const JOURNAL: &str = "install.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    pub version: u32,
    /// SHA-256 of the signed manifest: the bundle this journal belongs to.
    pub bundle: String,
    /// The slot being written.
    pub target: String,
    pub phase: Phase,
}

/// The install phase to continue with, named as `install` names its phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Phase {
    /// Writing the payload: chunks before `next_chunk` of image `image` (and every earlier
    /// image) are on the disk, synced; the target is out of rotation.
    Write { image: usize, next_chunk: usize },
    /// Every image is written and was read back and matched: what is left is the post-install
    /// hook and the activation.
    Activate,
}

impl Phase {
    pub const START: Phase = Phase::Write {
        image: 0,
        next_chunk: 0,
    };
}

/// The state file holding image `image`'s first block while the install runs.
fn held_block(image: usize) -> String {
    format!("install-first-block.{image}")
}

impl StateDir {
    /// The journal of an earlier attempt at the same bundle and target, if there is one that
    /// can be continued. Anything else (another bundle or slot, a journal this abup did not
    /// write, a held-back block that is gone) starts the install over, which is always safe.
    pub fn resumable_journal(&self, bundle: &str, target: &str) -> Option<Journal> {
        let journal = match self.read_journal() {
            Ok(j) => j?,
            Err(e) => {
                log::warn!("starting the install over: {e:#}");
                return None;
            }
        };
        if journal.bundle != bundle || journal.target != target {
            return None;
        }
        let started = match journal.phase {
            Phase::Write { image, next_chunk } => image + usize::from(next_chunk > 0),
            Phase::Activate => 0,
        };
        let held = |i| std::fs::symlink_metadata(self.file(&held_block(i))).is_ok();
        if !(0..started).all(held) {
            log::warn!(
                "starting the install over: the journal says slot {target} was partly written, \
                 but its held-back first block is gone"
            );
            return None;
        }
        Some(journal)
    }

    fn read_journal(&self) -> Result<Option<Journal>> {
        let journal: Option<Journal> = self.read_json(JOURNAL)?;
        if let Some(j) = &journal {
            super::records::check_version(j.version, VERSION, JOURNAL)?;
        }
        Ok(journal)
    }

    /// The slot an interrupted install was writing, if any.
    pub fn journal_target(&self) -> Result<Option<String>> {
        Ok(self.read_journal()?.map(|j| j.target))
    }

    pub fn save_journal(&self, bundle: &str, target: &str, phase: Phase) -> Result<()> {
        self.write_json(
            JOURNAL,
            &Journal {
                version: VERSION,
                bundle: bundle.to_owned(),
                target: target.to_owned(),
                phase,
            },
        )
    }

    /// Removes the journal and the held-back blocks of `images` images.
    pub fn clear_journal(&self, images: usize) -> Result<()> {
        self.remove(JOURNAL)?;
        for i in 0..images {
            self.remove(&held_block(i))?;
        }
        Ok(())
    }

    /// Keeps image `image`'s first block until everything else is verified.
    pub fn hold_block(&self, image: usize, bytes: &[u8]) -> Result<()> {
        self.replace(&held_block(image), bytes)
    }

    /// Image `image`'s held-back first block: exactly `len` bytes (the first block's size, or
    /// the image's when it is smaller), read once.
    pub fn held_block(&self, image: usize, len: usize) -> Result<Vec<u8>> {
        let name = held_block(image);
        let Some(bytes) = self.read(&name, len as u64)? else {
            bail!(
                "the held-back first block {} is missing",
                self.file(&name).display()
            );
        };
        if bytes.len() != len {
            bail!(
                "the held-back first block {} holds {} bytes, not {len}",
                self.file(&name).display(),
                bytes.len()
            );
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (tempfile::TempDir, StateDir) {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir {
            path: dir.path().to_owned(),
        };
        (dir, state)
    }

    #[test]
    fn a_journal_resumes_only_its_own_bundle_and_target() {
        let (_d, s) = state();
        let phase = Phase::Write {
            image: 0,
            next_chunk: 3,
        };
        s.hold_block(0, b"first").unwrap();
        s.save_journal("b1", "B", phase).unwrap();
        assert_eq!(s.resumable_journal("b1", "B").unwrap().phase, phase);
        assert!(s.resumable_journal("b2", "B").is_none());
        assert!(s.resumable_journal("b1", "A").is_none());
        assert_eq!(s.journal_target().unwrap().as_deref(), Some("B"));
        s.save_journal("b1", "B", Phase::Activate).unwrap();
        assert_eq!(
            s.resumable_journal("b1", "B").unwrap().phase,
            Phase::Activate
        );
    }

    #[test]
    fn a_journal_without_its_held_block_starts_over() {
        let (_d, s) = state();
        s.save_journal("b1", "B", Phase::START).unwrap();
        assert!(s.resumable_journal("b1", "B").is_some(), "nothing held yet");
        s.save_journal(
            "b1",
            "B",
            Phase::Write {
                image: 0,
                next_chunk: 1,
            },
        )
        .unwrap();
        assert!(s.resumable_journal("b1", "B").is_none());
    }

    #[test]
    fn unknown_journals_start_over() {
        let (d, s) = state();
        s.hold_block(0, b"x").unwrap();
        for text in [
            r#"{"version":1,"bundle":"b1","target":"B","phase":"writing","image":0,"next_chunk":1}"#,
            r#"{"version":2,"bundle":"b1","target":"B","phase":"activate","extra":1}"#,
            r#"{"version":2,"bundle":"b1","target":"B","phase":{"write":{"image":0,"next_chunk":1,"x":2}}}"#,
            r#"{"version":2,"bundle":"b1","target":"B","phase":"verified"}"#,
            "{",
        ] {
            std::fs::write(d.path().join(JOURNAL), text).unwrap();
            assert!(s.resumable_journal("b1", "B").is_none(), "{text}");
        }
    }

    #[test]
    fn a_held_block_is_exactly_its_length() {
        let (_d, s) = state();
        s.hold_block(0, &[7; 100]).unwrap();
        assert_eq!(s.held_block(0, 100).unwrap(), vec![7; 100]);
        assert!(format!("{:#}", s.held_block(0, 99).unwrap_err()).contains("larger than 99"));
        assert!(format!("{:#}", s.held_block(0, 101).unwrap_err()).contains("holds 100 bytes"));
        assert!(format!("{:#}", s.held_block(1, 10).unwrap_err()).contains("missing"));
    }
}
