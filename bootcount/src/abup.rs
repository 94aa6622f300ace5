//! abup's native scheme: `BOOT_ORDER`, `BOOT_<S>_LEFT`, `BOOT_GOOD`.

use crate::{
    format_order, order_with_first, parse_order, Assignment, Boot, Error, SlotId, SlotStatus, Slots,
};

pub(crate) const ORDER: &str = "BOOT_ORDER";
pub(crate) const GOOD: &str = "BOOT_GOOD";

fn left_var(slots: &Slots, slot: SlotId) -> String {
    format!("BOOT_{}_LEFT", slots.name(slot))
}

pub(crate) fn variable_names(slots: &Slots) -> Vec<String> {
    let mut names = vec![ORDER.to_owned()];
    names.extend(slots.ids().map(|s| left_var(slots, s)));
    names.push(GOOD.to_owned());
    names
}

/// The native state. A slot is *good* when it is in the order with tries left; the scripts
/// decrement the first good slot's tries at every power-on and `mark-good` restores them from
/// the running system (as RAUC does), so counting heals itself after every successful boot.
///
/// `good` (`BOOT_GOOD`) records the slot most recently confirmed. When no slot has tries left
/// (a broken update followed by brownouts that burnt the old slot's tries too), the scripts
/// boot that slot without counting, and the running system's `mark-good` restores its tries.
/// An unconfirmed slot therefore never wins because of power loss, and the device always
/// boots something: if `BOOT_GOOD` is unset, the first slot of the order, else slot 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbupState {
    slots: Slots,
    order: Vec<SlotId>,
    left: Vec<u8>,
    good: Option<SlotId>,
}

impl AbupState {
    /// A state from its parts, for provisioning and tests. Tries above [`crate::MAX_TRIES`] are
    /// clamped, unknown slots dropped.
    pub fn new(slots: &Slots, order: &[SlotId], left: &[u8], good: Option<SlotId>) -> AbupState {
        let known = |s: &SlotId| s.0 < slots.len();
        let mut o = Vec::new();
        for s in order.iter().copied().filter(known) {
            if !o.contains(&s) {
                o.push(s);
            }
        }
        AbupState {
            slots: slots.clone(),
            order: o,
            left: slots
                .ids()
                .map(|s| left.get(s.0).copied().unwrap_or(0).min(crate::MAX_TRIES))
                .collect(),
            good: good.filter(known),
        }
    }

    /// What a freshly provisioned board holds: slot 0 first, confirmed, with full tries; the
    /// other slots empty.
    pub fn factory(slots: &Slots) -> AbupState {
        let mut left = vec![0; slots.len()];
        left[0] = slots.tries();
        AbupState {
            slots: slots.clone(),
            order: slots.ids().collect(),
            left,
            good: Some(SlotId(0)),
        }
    }

    pub(crate) fn decode<'a>(slots: &Slots, lookup: impl Fn(&str) -> Option<&'a str>) -> Self {
        // The scripts count with an if-chain over "1".."9": anything else is no tries.
        let tries = |v: Option<&str>| match v.map(str::as_bytes) {
            Some(&[d]) if d.is_ascii_digit() => d - b'0',
            _ => 0,
        };
        AbupState {
            slots: slots.clone(),
            order: parse_order(slots, lookup(ORDER)),
            left: slots
                .ids()
                .map(|s| tries(lookup(&left_var(slots, s))))
                .collect(),
            good: lookup(GOOD).and_then(|g| slots.find(g)),
        }
    }

    pub(crate) fn encode(&self) -> Vec<Assignment> {
        let slots = &self.slots;
        let mut vars = vec![(ORDER.to_owned(), Some(format_order(slots, &self.order)))];
        for s in slots.ids() {
            vars.push((left_var(slots, s), Some(self.left[s.0].to_string())));
        }
        vars.push((GOOD.to_owned(), self.good.map(|g| slots.name(g).to_owned())));
        vars
    }

    /// The target gets no tries, so no counted boot can pick it while it is half written. The
    /// last resort must not be the target either: if it was (or there was none, which would
    /// make the first slot of the order the last resort), the booted slot takes that role,
    /// because it is running and the target is about to be garbage.
    pub(crate) fn begin_install(&mut self, target: SlotId, booted: SlotId) -> Result<(), Error> {
        if target == booted {
            return Err(Error::TargetIsBooted(self.slots.name(target).to_owned()));
        }
        self.left[target.0] = 0;
        if self.good.is_none() || self.good == Some(target) {
            self.good = Some(booted);
        }
        Ok(())
    }

    /// `BOOT_GOOD` stays on the old slot: the new one has to earn it by booting.
    pub(crate) fn activate(&mut self, slot: SlotId) {
        self.order = order_with_first(&self.order, slot, &self.slots);
        self.left[slot.0] = self.slots.tries();
    }

    pub(crate) fn mark_good(&mut self, slot: SlotId) {
        self.left[slot.0] = self.slots.tries();
        self.good = Some(slot);
        if !self.order.contains(&slot) {
            self.order.push(slot);
        }
    }

    /// If the confirmed slot is marked bad, the confirmation moves to the first other good
    /// slot; when there is none it stays, because booting a slot someone called bad beats
    /// booting one that may hold no system at all.
    pub(crate) fn mark_bad(&mut self, slot: SlotId) {
        self.left[slot.0] = 0;
        if self.good == Some(slot) {
            if let Some(other) = self.order.iter().copied().find(|&s| self.left[s.0] > 0) {
                self.good = Some(other);
            }
        }
    }

    pub(crate) fn boot(&mut self) -> Boot {
        if let Some(slot) = self.order.iter().copied().find(|&s| self.left[s.0] > 0) {
            self.left[slot.0] -= 1;
            return Boot {
                slot,
                saves: true,
                fallback: false,
            };
        }
        let slot = self
            .good
            .or_else(|| self.order.first().copied())
            .unwrap_or(SlotId(0));
        Boot {
            slot,
            saves: false,
            fallback: true,
        }
    }

    pub(crate) fn status(&self, slot: SlotId) -> SlotStatus {
        let priority = self.order.iter().position(|&s| s == slot).map(|p| p + 1);
        let tries_left = self.left[slot.0];
        SlotStatus {
            priority,
            tries_left,
            good: priority.is_some() && tries_left > 0,
            confirmed: self.good == Some(slot),
        }
    }

    pub(crate) fn order(&self) -> &[SlotId] {
        &self.order
    }

    pub fn tries_left(&self, slot: SlotId) -> u8 {
        self.left[slot.0]
    }

    pub fn confirmed(&self) -> Option<SlotId> {
        self.good
    }
}
