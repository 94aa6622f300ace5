//! The slot state as the bootloader environment holds it, and changes to it: read the
//! variables, let `bootcount` apply an operation, write the result in one environment update.

use std::collections::HashMap;

use anyhow::Result;
use bootcount::State;

use crate::board::Board;
use crate::bootenv::{Assignment, Environment};

/// The state and the raw variable values it was decoded from.
#[derive(Debug, Clone)]
pub struct Current {
    pub state: State,
    raw: HashMap<String, String>,
}

pub fn read(board: &Board, env: &Environment) -> Result<Current> {
    let mut raw = HashMap::new();
    for name in bootcount::variable_names(board.scheme, &board.slots) {
        if let Some(v) = env.get(&name)? {
            raw.insert(name, String::from_utf8_lossy(&v).into_owned());
        }
    }
    let state = State::decode(board.scheme, &board.slots, |k| {
        raw.get(k).map(String::as_str)
    });
    Ok(Current { state, raw })
}

/// Applies `op` to the state in `env` and writes every variable that changed, in one update.
/// Returns the new state and whether anything was written: `mark-good` runs on every boot,
/// and rewriting an environment that already says the same thing would only wear the flash.
/// An environment that is not settled (a GRUB pair whose copies disagree) is written even
/// without a change, so that a cut between the two writes of an earlier update is healed
/// before anything relies on it (an install, say, before it writes its target).
pub fn transition(
    board: &Board,
    env: &mut Environment,
    op: impl FnOnce(&mut State) -> Result<(), bootcount::Error>,
) -> Result<(State, bool)> {
    transition_with(board, env, &[], op)
}

/// [`transition`], with `extra` variables (the security floor) set in the same update.
pub fn transition_with(
    board: &Board,
    env: &mut Environment,
    extra: &[Assignment],
    op: impl FnOnce(&mut State) -> Result<(), bootcount::Error>,
) -> Result<(State, bool)> {
    let Current { mut state, raw } = read(board, env)?;
    op(&mut state)?;
    let mut changes: Vec<Assignment> = state
        .encode()
        .into_iter()
        .filter(|(k, v)| raw.get(k) != v.as_ref())
        .collect();
    for (k, v) in extra {
        let now = env
            .get(k)?
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        if &now != v {
            changes.push((k.clone(), v.clone()));
        }
    }
    if changes.is_empty() && env.settled() {
        return Ok((state, false));
    }
    env.update(&changes)?;
    Ok((state, true))
}
