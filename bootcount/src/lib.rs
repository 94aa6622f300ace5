//! The A/B slot state machine, free of I/O.
//!
//! Everything abup decides about which slot boots next is a function of a few bootloader
//! variables. This crate holds that state in memory, defines what each operation does to it,
//! and predicts what the bootloader script does at power-on, so that the decisions can be
//! tested exhaustively without a disk and the same model can judge what a power cut leaves
//! behind.
//!
//! Two variable schemes exist ([`Scheme`]):
//!
//! * [`Scheme::Abup`], the native one, on GRUB and U-Boot alike: `BOOT_ORDER` (slot names,
//!   first preferred), `BOOT_<S>_LEFT` (tries left, `0`..=`9`; the names RAUC uses with U-Boot)
//!   and `BOOT_GOOD` (the slot last confirmed by `mark-good`). At power-on the script boots the
//!   first slot in `BOOT_ORDER` with tries left and saves its count minus one. When no slot
//!   has tries left it boots `BOOT_GOOD` without counting (see [`AbupState::boot`]); that is
//!   what keeps brownouts from stranding a device or promoting an unconfirmed slot.
//! * [`Scheme::RaucGrub`], RAUC's GRUB variables: `ORDER`, `<S>_OK`, `<S>_TRY`, one try per
//!   slot, written the way RAUC writes them, so a board whose `grub.cfg` came from RAUC keeps
//!   booting unchanged.
#![forbid(unsafe_code)]

mod abup;
mod rauc;
mod slots;

pub use abup::AbupState;
pub use rauc::RaucGrubState;
pub use slots::{SlotId, Slots};

/// The highest try count a board may configure. The boot scripts count down with an if-chain
/// over single digits (GRUB script has no arithmetic), so larger values cannot be counted.
pub const MAX_TRIES: u8 = 9;

/// Which set of bootloader variables carries the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `BOOT_ORDER`, `BOOT_<S>_LEFT`, `BOOT_GOOD`.
    Abup,
    /// RAUC's GRUB scheme: `ORDER`, `<S>_OK`, `<S>_TRY`.
    RaucGrub,
}

impl Scheme {
    /// The name used in board configurations and `abup status --json`.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Abup => "abup",
            Scheme::RaucGrub => "rauc-grub",
        }
    }
}

/// Errors for operations the state machine refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("slot {0} is the booted slot; an update must go to the other slot")]
    TargetIsBooted(String),
    #[error("a board needs between 2 and {max} slots, not {found}")]
    SlotCount { found: usize, max: usize },
    #[error(
        "slot name {0:?} is not usable in bootloader variable names: use letters, digits and '_'"
    )]
    BadSlotName(String),
    #[error("slot name {0:?} is used twice")]
    DuplicateSlot(String),
    #[error("tries must be between 1 and {max}, not {found}")]
    BadTries { found: u8, max: u8 },
    #[error("the rauc-grub scheme has exactly one try per slot (RAUC's <S>_TRY flag), not {0}")]
    RaucTries(u8),
}

/// One bootloader variable assignment; `None` removes the variable.
pub type Assignment = (String, Option<String>);

/// What the bootloader does at one power-on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boot {
    /// The slot whose kernel is started.
    pub slot: SlotId,
    /// Whether the script saved the environment before starting it (a try was used up).
    pub saves: bool,
    /// Whether this boot happened because no slot had tries left.
    pub fallback: bool,
}

/// How one slot looks to `abup status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotStatus {
    /// 1-based place in the boot order, `None` when the slot is not in it.
    pub priority: Option<usize>,
    /// Tries the bootloader will still make.
    pub tries_left: u8,
    /// In the boot order with tries left: the bootloader may boot it.
    pub good: bool,
    /// Confirmed by `mark-good` (the fallback of last resort).
    pub confirmed: bool,
}

/// The slot state under either scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Abup(AbupState),
    RaucGrub(RaucGrubState),
}

impl State {
    /// Reads the state from bootloader variables. Absent or malformed variables read the way
    /// the board scripts treat them (no tries, not in the order), so the model never claims a
    /// slot is bootable when the bootloader would not boot it.
    pub fn decode<'a>(
        scheme: Scheme,
        slots: &Slots,
        lookup: impl Fn(&str) -> Option<&'a str>,
    ) -> State {
        match scheme {
            Scheme::Abup => State::Abup(AbupState::decode(slots, lookup)),
            Scheme::RaucGrub => State::RaucGrub(RaucGrubState::decode(slots, lookup)),
        }
    }

    /// Every variable of the scheme with its value: one environment write carries all of them,
    /// so one logical change is one write and the result never depends on what was there.
    pub fn encode(&self) -> Vec<Assignment> {
        match self {
            State::Abup(s) => s.encode(),
            State::RaucGrub(s) => s.encode(),
        }
    }

    /// Before an install writes to `target`: make sure the bootloader cannot pick it.
    pub fn begin_install(&mut self, target: SlotId, booted: SlotId) -> Result<(), Error> {
        match self {
            State::Abup(s) => s.begin_install(target, booted),
            State::RaucGrub(s) => s.begin_install(target, booted),
        }
    }

    /// Put `slot` first with a full set of tries (after an install, or `mark-active`).
    pub fn activate(&mut self, slot: SlotId) {
        match self {
            State::Abup(s) => s.activate(slot),
            State::RaucGrub(s) => s.activate(slot),
        }
    }

    /// The booted system works: restore its tries and remember it as confirmed.
    pub fn mark_good(&mut self, slot: SlotId) {
        match self {
            State::Abup(s) => s.mark_good(slot),
            State::RaucGrub(s) => s.mark_good(slot),
        }
    }

    /// Take `slot` out of rotation.
    pub fn mark_bad(&mut self, slot: SlotId) {
        match self {
            State::Abup(s) => s.mark_bad(slot),
            State::RaucGrub(s) => s.mark_bad(slot),
        }
    }

    /// What the board's boot script does at power-on, including the variables it saves.
    pub fn boot(&mut self) -> Boot {
        match self {
            State::Abup(s) => s.boot(),
            State::RaucGrub(s) => s.boot(),
        }
    }

    /// The slot the next power-on will start, without changing anything.
    pub fn next_boot(&self) -> Boot {
        self.clone().boot()
    }

    pub fn status(&self, slot: SlotId) -> SlotStatus {
        match self {
            State::Abup(s) => s.status(slot),
            State::RaucGrub(s) => s.status(slot),
        }
    }

    /// The boot order, first preferred.
    pub fn order(&self) -> &[SlotId] {
        match self {
            State::Abup(s) => s.order(),
            State::RaucGrub(s) => s.order(),
        }
    }
}

/// Every variable name `scheme` reads or writes for these slots, in a stable order. Board
/// tests compare this with the names a boot script uses.
pub fn variable_names(scheme: Scheme, slots: &Slots) -> Vec<String> {
    match scheme {
        Scheme::Abup => abup::variable_names(slots),
        Scheme::RaucGrub => rauc::variable_names(slots),
    }
}

/// Shared by both schemes: `slot` first, then the rest of the current order, then any slot
/// that was missing from it, so an activated slot always has a fallback behind it.
fn order_with_first(order: &[SlotId], slot: SlotId, slots: &Slots) -> Vec<SlotId> {
    let mut new = vec![slot];
    new.extend(order.iter().copied().filter(|&s| s != slot));
    for s in slots.ids() {
        if !new.contains(&s) {
            new.push(s);
        }
    }
    new
}

/// Shared by both schemes: the order variable as the scripts read it: whitespace-separated
/// words, unknown names skipped (no script branch matches them), repeats ignored.
fn parse_order(slots: &Slots, value: Option<&str>) -> Vec<SlotId> {
    let mut order = Vec::new();
    for word in value.unwrap_or("").split_ascii_whitespace() {
        if let Some(id) = slots.find(word) {
            if !order.contains(&id) {
                order.push(id);
            }
        }
    }
    order
}

fn format_order(slots: &Slots, order: &[SlotId]) -> String {
    order
        .iter()
        .map(|&s| slots.name(s))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests;
