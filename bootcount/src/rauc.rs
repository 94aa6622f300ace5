//! RAUC's GRUB scheme: `ORDER`, `<S>_OK`, `<S>_TRY`.

use crate::{
    format_order, order_with_first, parse_order, Assignment, Boot, Error, SlotId, SlotStatus, Slots,
};

pub(crate) const ORDER: &str = "ORDER";

fn ok_var(slots: &Slots, slot: SlotId) -> String {
    format!("{}_OK", slots.name(slot))
}

fn try_var(slots: &Slots, slot: SlotId) -> String {
    format!("{}_TRY", slots.name(slot))
}

pub(crate) fn variable_names(slots: &Slots) -> Vec<String> {
    let mut names = vec![ORDER.to_owned()];
    for s in slots.ids() {
        names.push(ok_var(slots, s));
        names.push(try_var(slots, s));
    }
    names
}

/// RAUC's GRUB state: per slot an OK flag and a TRY flag, so each activation gets one try.
///
/// The boot model is RAUC's `contrib/grub.conf`: walk `ORDER`, set `<S>_TRY=1` on every slot
/// looked at, boot the first with `OK=1` and `TRY=0`; if there is none, clear `TRY` on every
/// `OK` slot. RAUC's example then boots its menu entry 0, a rescue system; abup's
/// RAUC-compatible `grub.cfg` has no rescue system and boots the first `OK` slot of `ORDER`
/// instead (slot 0 if none is `OK`), uncounted, because entry 0 may be the slot an interrupted
/// install left half written.
///
/// The reset lets brownouts hand the device back to a slot whose trial failed; abup narrows
/// the hole by marking such a slot bad whenever the running system confirms another one (see
/// [`RaucGrubState::mark_good`]). Boards that can change their `grub.cfg` should use
/// [`crate::Scheme::Abup`], which closes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaucGrubState {
    slots: Slots,
    order: Vec<SlotId>,
    ok: Vec<bool>,
    tried: Vec<bool>,
}

impl RaucGrubState {
    /// A state from its parts, for provisioning and tests.
    pub fn new(slots: &Slots, order: &[SlotId], ok: &[bool], tried: &[bool]) -> RaucGrubState {
        let mut o = Vec::new();
        for &s in order {
            if s.0 < slots.len() && !o.contains(&s) {
                o.push(s);
            }
        }
        let flag = |v: &[bool], s: SlotId| v.get(s.0).copied().unwrap_or(false);
        RaucGrubState {
            slots: slots.clone(),
            order: o,
            ok: slots.ids().map(|s| flag(ok, s)).collect(),
            tried: slots.ids().map(|s| flag(tried, s)).collect(),
        }
    }

    pub(crate) fn decode<'a>(slots: &Slots, lookup: impl Fn(&str) -> Option<&'a str>) -> Self {
        // RAUC's grub.cfg tests the flags with `-eq 1`; abup only ever writes "0" and "1".
        let flag = |v: Option<&str>| v.is_some_and(|v| grub_integer(v) == 1);
        // RAUC's grub.cfg sets ORDER to all slots before load_env, so an absent ORDER means
        // every slot, while an empty one means none.
        let order = match lookup(ORDER) {
            None => slots.ids().collect(),
            value => parse_order(slots, value),
        };
        RaucGrubState {
            slots: slots.clone(),
            order,
            ok: slots
                .ids()
                .map(|s| flag(lookup(&ok_var(slots, s))))
                .collect(),
            tried: slots
                .ids()
                .map(|s| flag(lookup(&try_var(slots, s))))
                .collect(),
        }
    }

    pub(crate) fn encode(&self) -> Vec<Assignment> {
        let slots = &self.slots;
        let bit = |b: bool| Some(if b { "1" } else { "0" }.to_owned());
        let mut vars = vec![(ORDER.to_owned(), Some(format_order(slots, &self.order)))];
        for s in slots.ids() {
            vars.push((ok_var(slots, s), bit(self.ok[s.0])));
            vars.push((try_var(slots, s), bit(self.tried[s.0])));
        }
        vars
    }

    /// RAUC marks the target bad (`OK=0`, `TRY=0`).
    pub(crate) fn begin_install(&mut self, target: SlotId, booted: SlotId) -> Result<(), Error> {
        if target == booted {
            return Err(Error::TargetIsBooted(self.slots.name(target).to_owned()));
        }
        self.set(target, false, false);
        Ok(())
    }

    /// RAUC's "primary": `OK=1`, `TRY=0`, first in `ORDER`.
    pub(crate) fn activate(&mut self, slot: SlotId) {
        self.order = order_with_first(&self.order, slot, &self.slots);
        self.set(slot, true, false);
    }

    /// RAUC's "good" (`OK=1`, `TRY=0`), and into `ORDER` if it was missing, since a confirmed
    /// slot the script never looks at would be no fallback. A slot that was tried and never
    /// confirmed (`OK=1`, `TRY=1`, other than the one running) failed its trial; abup marks it
    /// bad in the same write, so RAUC's exhaustion reset cannot hand the device back to it.
    pub(crate) fn mark_good(&mut self, slot: SlotId) {
        for s in self.slots.ids() {
            if s != slot && self.ok[s.0] && self.tried[s.0] {
                self.set(s, false, false);
            }
        }
        self.set(slot, true, false);
        if !self.order.contains(&slot) {
            self.order.push(slot);
        }
    }

    /// RAUC's "bad": `OK=0`, `TRY=0`.
    pub(crate) fn mark_bad(&mut self, slot: SlotId) {
        self.set(slot, false, false);
    }

    pub(crate) fn boot(&mut self) -> Boot {
        for i in 0..self.order.len() {
            let s = self.order[i];
            let bootable = self.ok[s.0] && !self.tried[s.0];
            self.tried[s.0] = true;
            if bootable {
                return Boot {
                    slot: s,
                    saves: true,
                    fallback: false,
                };
            }
        }
        for s in self.slots.ids() {
            if self.ok[s.0] {
                self.tried[s.0] = false;
            }
        }
        let slot = self
            .order
            .iter()
            .copied()
            .find(|s| self.ok[s.0])
            .unwrap_or(SlotId(0));
        Boot {
            slot,
            saves: true,
            fallback: true,
        }
    }

    pub(crate) fn status(&self, slot: SlotId) -> SlotStatus {
        let priority = self.order.iter().position(|&s| s == slot).map(|p| p + 1);
        let ready = self.ok[slot.0] && !self.tried[slot.0];
        SlotStatus {
            priority,
            tries_left: u8::from(ready),
            good: priority.is_some() && ready,
            // RAUC cannot tell "confirmed" from "activated, not yet tried"; OK=1 with TRY=0 is
            // as close as the scheme gets.
            confirmed: ready,
        }
    }

    pub(crate) fn order(&self) -> &[SlotId] {
        &self.order
    }

    pub fn ok(&self, slot: SlotId) -> bool {
        self.ok[slot.0]
    }

    pub fn tried(&self, slot: SlotId) -> bool {
        self.tried[slot.0]
    }

    fn set(&mut self, slot: SlotId, ok: bool, tried: bool) {
        self.ok[slot.0] = ok;
        self.tried[slot.0] = tried;
    }
}

/// The integer GRUB's `test` sees in a string (measured with grub-emu 2.06): leading blanks
/// skipped, an optional `-`, `0x` for hex and a leading `0` for octal, digits up to the first
/// other character; no digits at all is 0, and so is a leading `+`.
fn grub_integer(s: &str) -> i128 {
    let s = s.trim_start_matches([' ', '\t', '\n', '\r']);
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (radix, digits) = if let Some(hex) = s.strip_prefix("0x").or(s.strip_prefix("0X")) {
        (16, hex)
    } else if s.starts_with('0') {
        (8, s)
    } else {
        (10, s)
    };
    let mut value: i128 = 0;
    for c in digits.chars() {
        let Some(d) = c.to_digit(radix) else { break };
        // Saturate: anything this long is not 1 either way.
        value = value
            .saturating_mul(i128::from(radix))
            .saturating_add(i128::from(d));
    }
    if negative {
        -value
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::grub_integer;

    /// Each pair was measured: `[ "<s>" -eq 1 ]` under grub-emu 2.06.
    #[test]
    fn grub_integer_matches_grub_test_eq_one() {
        let measured = [
            ("", false),
            ("abc", false),
            ("01", true),
            ("0x1", true),
            (" 1", true),
            ("1 ", true),
            ("1x", true),
            ("2", false),
            ("-1", false),
            ("+1", false),
        ];
        for (s, eq_one) in measured {
            assert_eq!(grub_integer(s) == 1, eq_one, "{s:?}");
        }
    }
}
