//! The security floor: the lowest security version this device accepts. `mark-good` of a
//! slot raises it to that slot's bundle's security version; installs below it are refused,
//! and slots below it are not bootable.
//!
//! It is kept in two places, the state directory (`security.json`) and the bootloader
//! environment (`ABUP_SECURITY_FLOOR`), and the higher wins: wiping or replacing one of them
//! does not lower it. A copy that cannot be read as abup writes it fails closed: abup does
//! not guess a floor, it refuses what depends on one and says how to set it deliberately.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::StateDir;
use crate::bootenv::Environment;

/// The bootloader variable holding the floor.
pub const ENV_VAR: &str = "ABUP_SECURITY_FLOOR";
const FILE: &str = "security.json";
const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    version: u32,
    floor: u64,
}

/// One copy of the floor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Copy {
    Absent,
    Value(u64),
    /// Present but not what abup writes: the reason.
    Damaged(String),
}

/// Both copies, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Floor {
    pub state: Copy,
    pub env: Copy,
}

impl Floor {
    /// Reads both copies; `state` is `None` when the state directory does not exist yet.
    pub fn read(state: Option<&StateDir>, env: &Environment) -> Floor {
        let state = match state.map(|s| s.read_json::<Stored>(FILE)) {
            None | Some(Ok(None)) => Copy::Absent,
            Some(Ok(Some(s))) if s.version == VERSION => Copy::Value(s.floor),
            Some(Ok(Some(s))) => Copy::Damaged(format!(
                "{FILE} has version {}, this abup reads {VERSION}",
                s.version
            )),
            Some(Err(e)) => Copy::Damaged(format!("{e:#}")),
        };
        let env = match env.get(ENV_VAR) {
            Ok(None) => Copy::Absent,
            Ok(Some(v)) => match parse(&v) {
                Some(n) => Copy::Value(n),
                None => Copy::Damaged(format!(
                    "the bootloader variable {ENV_VAR} is {:?}, not a number",
                    String::from_utf8_lossy(&v)
                )),
            },
            Err(e) => Copy::Damaged(format!("{e:#}")),
        };
        Floor { state, env }
    }

    /// The floor: the higher copy. Fails closed when a copy is damaged, and when both are
    /// missing although the state directory says one was written (`expected`, see
    /// [`StateDir::floor_expected`]): someone removed it.
    pub fn value(&self, expected: bool) -> Result<u64> {
        for copy in [&self.state, &self.env] {
            if let Copy::Damaged(why) = copy {
                bail!(
                    "the security floor is damaged ({why}); abup refuses to guess it. If you \
                     know this device's floor N, set it with `abup security-floor --set N`"
                );
            }
        }
        match (&self.state, &self.env) {
            (Copy::Absent, Copy::Absent) if expected => bail!(
                "the security floor is missing from both the state directory and the \
                 bootloader environment, though abup has installed bundles here; if you know \
                 this device's floor N, set it with `abup security-floor --set N`"
            ),
            (a, b) => Ok(number(a).max(number(b))),
        }
    }

    /// The floor as far as it can be read, damaged copies ignored: what a deliberate
    /// `security-floor --set` must not go below.
    pub fn readable(&self) -> u64 {
        number(&self.state).max(number(&self.env))
    }

    /// Whether the environment must be written to hold `floor`.
    pub fn env_needs(&self, floor: u64) -> bool {
        self.env != Copy::Value(floor) && (floor > 0 || self.env != Copy::Absent)
    }

    /// Whether the state directory must be written to hold `floor`.
    pub fn state_needs(&self, floor: u64) -> bool {
        self.state != Copy::Value(floor)
    }
}

fn number(c: &Copy) -> u64 {
    match c {
        Copy::Value(n) => *n,
        _ => 0,
    }
}

/// A decimal number as abup writes it: digits only, no sign, no leading zero.
fn parse(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

impl StateDir {
    /// Writes the floor here if this copy is missing, so that from the first recorded
    /// install on a floor missing from both places is seen as removed.
    pub fn ensure_floor(&self, floor: u64) -> Result<()> {
        if self.read(FILE, super::MAX_STATE_FILE)?.is_none() {
            self.write_floor(floor)?;
        }
        Ok(())
    }

    pub fn write_floor(&self, floor: u64) -> Result<()> {
        self.write_json(
            FILE,
            &Stored {
                version: VERSION,
                floor,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_numbers_abup_writes_are_floors() {
        assert_eq!(parse(b"0"), Some(0));
        assert_eq!(parse(b"17"), Some(17));
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b"01",
            b" 1",
            b"1 ",
            b"x",
            b"99999999999999999999",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_higher_copy_wins_and_damage_fails_closed() {
        use super::Copy::{Absent, Damaged, Value};
        let f = |state, env| Floor { state, env };
        assert_eq!(f(Value(3), Value(5)).value(true).unwrap(), 5);
        assert_eq!(f(Value(7), Absent).value(true).unwrap(), 7);
        assert_eq!(f(Absent, Value(2)).value(true).unwrap(), 2);
        assert_eq!(f(Absent, Absent).value(false).unwrap(), 0);
        let e = f(Absent, Absent).value(true).unwrap_err().to_string();
        assert!(
            e.contains("missing") && e.contains("security-floor --set"),
            "{e}"
        );
        let e = f(Damaged("x".into()), Value(9))
            .value(false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("damaged (x)") && !e.contains("delete"), "{e}");
        assert_eq!(f(Damaged("x".into()), Value(9)).readable(), 9);
        assert!(f(Absent, Absent).env_needs(1));
        assert!(!f(Absent, Absent).env_needs(0));
        assert!(!f(Absent, Value(4)).env_needs(4));
        assert!(f(Absent, Value(4)).state_needs(4));
    }
}
