use crate::{Error, Scheme, MAX_TRIES};

/// Most boards have two slots; a few keep a third (a rescue system). The limit keeps
/// exhaustive tests and the boot scripts' if-chains finite.
pub const MAX_SLOTS: usize = 4;

/// A slot, by its place in the board's slot list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotId(pub usize);

/// The board's slots and how many tries an activated slot gets. Slot 0 is the factory slot:
/// what the bootloader starts when its environment holds nothing usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slots {
    names: Vec<String>,
    tries: u8,
}

impl Slots {
    pub fn new<S: AsRef<str>>(names: &[S], tries: u8, scheme: Scheme) -> Result<Slots, Error> {
        if !(2..=MAX_SLOTS).contains(&names.len()) {
            return Err(Error::SlotCount {
                found: names.len(),
                max: MAX_SLOTS,
            });
        }
        let mut checked: Vec<String> = Vec::with_capacity(names.len());
        for name in names {
            let name = name.as_ref();
            let usable =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !usable {
                return Err(Error::BadSlotName(name.to_owned()));
            }
            if checked.iter().any(|n| n == name) {
                return Err(Error::DuplicateSlot(name.to_owned()));
            }
            checked.push(name.to_owned());
        }
        if !(1..=MAX_TRIES).contains(&tries) {
            return Err(Error::BadTries {
                found: tries,
                max: MAX_TRIES,
            });
        }
        if scheme == Scheme::RaucGrub && tries != 1 {
            return Err(Error::RaucTries(tries));
        }
        Ok(Slots {
            names: checked,
            tries,
        })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Never true: a board has at least two slots. Present because `len` is.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn tries(&self) -> u8 {
        self.tries
    }

    pub fn ids(&self) -> impl Iterator<Item = SlotId> {
        (0..self.names.len()).map(SlotId)
    }

    pub fn name(&self, slot: SlotId) -> &str {
        &self.names[slot.0]
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Looks a slot up by name, exactly as a boot script's string comparison would.
    pub fn find(&self, name: &str) -> Option<SlotId> {
        self.names.iter().position(|n| n == name).map(SlotId)
    }
}
