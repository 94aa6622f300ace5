//! What an interrupted install has durably done, so that running the same command again
//! continues instead of starting over. Written only after the data it describes is synced, so
//! it never claims more than is on the disk; and never trusted further than the bytes it
//! describes: whatever phase it names, every byte is read back from the disk and checked
//! against the bundle's hashes before the slot is activated.

use anyhow::{bail, Context, Result};
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

/// The state files holding each image's first block while the install runs: this and the
/// image's number.
const HELD: &str = "install-first-block.";

/// The state file holding image `image`'s first block while the install runs.
fn held_block(image: usize) -> String {
    format!("{HELD}{image}")
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
        if !self.holds_blocks_of(&journal) {
            log::warn!(
                "starting the install over: the journal says slot {target} was partly written, \
                 but its held-back first block is gone"
            );
            return None;
        }
        Some(journal)
    }

    /// Whether the first blocks `journal` says were held back are all still here: without
    /// them the install cannot continue.
    fn holds_blocks_of(&self, journal: &Journal) -> bool {
        let started = match journal.phase {
            Phase::Write { image, next_chunk } => image + usize::from(next_chunk > 0),
            Phase::Activate => 0,
        };
        (0..started).all(|i| std::fs::symlink_metadata(self.file(&held_block(i))).is_ok())
    }

    /// The journal of an interrupted install, and whether running the same install again
    /// continues it (its held-back blocks are all here) rather than starting over.
    pub fn interrupted(&self) -> Result<Option<(Journal, bool)>> {
        Ok(self.read_journal()?.map(|j| {
            let resumable = self.holds_blocks_of(&j);
            (j, resumable)
        }))
    }

    /// `abup install --abort`: removes the journal, even one abup cannot read, then every
    /// held-back block. Returns whether there was a journal. A cut in between leaves blocks
    /// that no journal refers to, which the next install's start removes or overwrites.
    pub fn drop_journal(&self) -> Result<bool> {
        let existed = std::fs::symlink_metadata(self.file(JOURNAL)).is_ok();
        self.remove(JOURNAL)?;
        let dir = std::fs::read_dir(self.path())
            .with_context(|| format!("reading {}", self.path().display()))?;
        for entry in dir {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if name
                .strip_prefix(HELD)
                .is_some_and(|n| n.parse::<usize>().is_ok())
            {
                self.remove(&name)?;
            }
        }
        Ok(existed)
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

    use crate::state::temporary as state;

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
    fn dropping_a_journal_removes_its_held_blocks_only() {
        let (d, s) = state();
        assert!(!s.drop_journal().unwrap());
        s.hold_block(0, b"a").unwrap();
        s.hold_block(1, b"b").unwrap();
        s.save_journal(
            "b1",
            "B",
            Phase::Write {
                image: 1,
                next_chunk: 2,
            },
        )
        .unwrap();
        assert!(s.interrupted().unwrap().unwrap().1);
        std::fs::remove_file(d.path().join(held_block(1))).unwrap();
        assert!(!s.interrupted().unwrap().unwrap().1, "not resumable");
        std::fs::write(d.path().join("install-first-block.x"), b"").unwrap();
        assert!(s.drop_journal().unwrap());
        assert!(s.interrupted().unwrap().is_none());
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["install-first-block.x"]);
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
