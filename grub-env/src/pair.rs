use crate::{Change, EnvBlock, Error};

/// Variable holding each copy's sequence number; the boot script compares it between copies.
pub const SEQ_VAR: &str = "ABUP_SEQ";

/// Width of C `long` on the GRUB platform that boots the device.
///
/// GRUB's `test -gt` converts with `strtoul` and then truncates to a 32-bit `int`. Numbers too
/// large for an `unsigned long` are clamped first, so the two widths disagree on magnitudes
/// from 2^32 up (`4294967297` is 1 with 64-bit longs and -1 with 32-bit ones). abup never writes
/// such numbers; only hand-made copies can hold them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LongWidth {
    /// i386-pc (BIOS), i386-efi, i386-coreboot, arm-efi, arm-uboot, ...
    Bits32,
    /// x86_64-efi, arm64-efi, riscv64-efi, and grub-emu on 64-bit hosts.
    Bits64,
}

/// The integer GRUB's `[ A -gt B ]` sees for a string (GRUB 2.06 `test`).
///
/// Mirrors its conversion exactly, because the boot script's choice between the copies depends
/// on it: an optional `-` (only as the very first byte), then leading spaces, tabs, CRs and LFs
/// are skipped, `0x` (lower-case x only) selects hexadecimal and a `0` followed by an octal
/// digit selects octal, digits are read until the first byte that is not one (anything else,
/// `+` included, ends the number; no digit at all gives 0), an overflow of 64 bits saturates,
/// the `unsigned long` result is negated for `-` and finally truncated to a 32-bit `int`.
pub fn grub_test_int(s: &[u8], width: LongWidth) -> i32 {
    let s = s.iter().position(|&c| c == 0).map_or(s, |nul| &s[..nul]);
    match s.split_first() {
        Some((b'-', rest)) => (strtoul(rest, width) as u32).wrapping_neg() as i32,
        _ => strtoul(s, width) as u32 as i32,
    }
}

fn strtoul(s: &[u8], width: LongWidth) -> u64 {
    let value = strtoull(s);
    match width {
        LongWidth::Bits64 => value,
        LongWidth::Bits32 => value.min(u64::from(u32::MAX)),
    }
}

fn strtoull(s: &[u8]) -> u64 {
    let start = s
        .iter()
        .position(|&c| !matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
        .unwrap_or(s.len());
    let mut digits = &s[start..];
    let mut base = 10;
    if let [b'0', next, ..] = digits {
        if *next == b'x' {
            base = 16;
            digits = &digits[2..];
        } else if (b'0'..=b'7').contains(next) {
            base = 8;
        }
    }
    let mut value: u64 = 0;
    for &c in digits {
        let digit = match c.to_ascii_lowercase() {
            d @ b'0'..=b'9' => u64::from(d - b'0'),
            d @ b'a'..=b'z' => u64::from(d - b'a' + 10),
            _ => break,
        };
        if digit >= base {
            break;
        }
        match value.checked_mul(base).and_then(|v| v.checked_add(digit)) {
            Some(v) => value = v,
            None => return u64::MAX,
        }
    }
    value
}

/// Which copy abup's boot script loads, given each copy's `ABUP_SEQ` as GRUB reads it (`None`
/// when the copy is not a valid block or has no or an empty `ABUP_SEQ`): copy 1 only if it has
/// a sequence and copy 0 has none or a smaller one; copy 0 otherwise, ties included.
pub fn select_copy(seq0: Option<&[u8]>, seq1: Option<&[u8]>, width: LongWidth) -> usize {
    match (seq0, seq1) {
        (_, None) => 0,
        (None, Some(_)) => 1,
        (Some(s0), Some(s1)) => usize::from(grub_test_int(s1, width) > grub_test_int(s0, width)),
    }
}

/// Bytes to write for one environment change: the whole new block for copy `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritePlan {
    /// Which copy (0 or 1) to overwrite, in place.
    pub index: usize,
    /// Its complete new content, the same size as the copy on disk.
    pub block: EnvBlock,
}

/// abup's power-safe environment: two equal-size GRUB blocks, each carrying [`SEQ_VAR`].
///
/// Pure and in memory: reading and writing the two files is the caller's job (see
/// [`read_block`](crate::read_block) and [`write_block`](crate::write_block)), so every
/// decision here can be tested without a disk.
#[derive(Debug)]
pub struct EnvPair {
    copies: [Result<EnvBlock, Error>; 2],
    width: LongWidth,
}

impl EnvPair {
    /// Takes each copy as read, failures included: a garbage or unreadable copy is a normal
    /// state after a power cut during a write, and it is the one the next update overwrites.
    ///
    /// Every failed copy counts as having no sequence number, which is what GRUB sees for a
    /// missing file or a bad signature. GRUB may still read a copy that failed here for another
    /// reason (an I/O error, more than [`MAX_BLOCK_SIZE`](crate::MAX_BLOCK_SIZE)); such a pair
    /// can never be updated, because the copy that would be written has an unknown or a
    /// different size, so the divergence cannot lead to a wrong write.
    pub fn new(
        copy0: Result<EnvBlock, Error>,
        copy1: Result<EnvBlock, Error>,
        width: LongWidth,
    ) -> Self {
        EnvPair {
            copies: [copy0, copy1],
            width,
        }
    }

    /// Two identical fresh blocks with `ABUP_SEQ=0`: copy 0 wins the tie, so the first update
    /// writes copy 1 with 1. Write both with [`create_block`](crate::create_block).
    pub fn create(size: usize, width: LongWidth) -> Result<Self, Error> {
        let mut block = EnvBlock::new(size)?;
        block.set(SEQ_VAR, "0")?;
        Ok(EnvPair::new(Ok(block.clone()), Ok(block), width))
    }

    /// Each copy as given to [`new`](Self::new) (or as updated by [`commit`](Self::commit)).
    pub fn copy(&self, index: usize) -> Option<&Result<EnvBlock, Error>> {
        self.copies.get(index)
    }

    /// The `ABUP_SEQ` value the boot script sees in copy `index`: `None` if the copy is not a
    /// block, lacks the variable or has it empty, exactly the cases where the script's `-n`
    /// test is false.
    pub fn sequence(&self, index: usize) -> Option<Vec<u8>> {
        let block = self.copies.get(index)?.as_ref().ok()?;
        block
            .get(SEQ_VAR)
            .filter(|seq| !seq.is_empty())
            .map(|seq| seq.into_owned())
    }

    /// The copy GRUB's boot script selects (0 or 1), even when that copy is unusable.
    pub fn selected(&self) -> usize {
        select_copy(
            self.sequence(0).as_deref(),
            self.sequence(1).as_deref(),
            self.width,
        )
    }

    /// The block GRUB boots with. An error rather than a fallback when that copy is damaged:
    /// GRUB would boot without its variables, and silently resetting them would lose the slot
    /// state.
    pub fn current(&self) -> Result<&EnvBlock, Error> {
        let index = self.selected();
        self.copies[index]
            .as_ref()
            .map_err(|error| Error::NoValidCopy {
                index,
                reason: error.to_string(),
            })
    }

    /// Whether both copies are valid blocks with the same variables apart from `ABUP_SEQ`.
    /// Copies disagree after a power cut between the two writes of an update, and after each
    /// GRUB boot (its `save_env` changes the current copy only); until they agree again, a
    /// torn save of the current copy makes GRUB fall back to what the other copy says.
    pub fn copies_agree(&self) -> bool {
        let vars = |i: usize| -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
            let block = self.copies[i].as_ref().ok()?;
            Some(
                block
                    .iter()
                    .filter(|v| v.name != SEQ_VAR.as_bytes())
                    .map(|v| (v.name.to_vec(), v.value.into_owned()))
                    .collect(),
            )
        };
        matches!((vars(0), vars(1)), (Some(a), Some(b)) if a == b)
    }

    /// One update: `changes` applied to the current copy exactly as `grub-editenv` would, plus
    /// `ABUP_SEQ` = current + 1, to be written over the OTHER copy. The current copy is never
    /// touched, so a power cut during the write leaves it selected and intact.
    ///
    /// Refuses changes to `ABUP_SEQ`, changes that a later duplicate line would hide from GRUB,
    /// a sequence number that GRUB could not compare any more, and another copy whose size
    /// differs or is unknown.
    pub fn plan_update(&self, changes: &[Change<'_>]) -> Result<WritePlan, Error> {
        let current_index = self.selected();
        let current = self.current()?;
        let index = 1 - current_index;
        let other_size = match &self.copies[index] {
            Ok(block) => block.size() as u64,
            Err(
                Error::BadSignature { size }
                | Error::TooSmall { size, .. }
                | Error::TooLarge { size, .. },
            ) => *size,
            Err(error) => {
                return Err(Error::CopyUnreadable {
                    index,
                    reason: error.to_string(),
                })
            }
        };
        if other_size != current.size() as u64 {
            return Err(Error::CopySizeMismatch {
                index,
                expected: current.size(),
                found: other_size,
            });
        }
        if let Some(change) = changes
            .iter()
            .find(|change| change.name() == SEQ_VAR.as_bytes())
        {
            return Err(Error::ReservedName {
                name: change.name().to_vec(),
            });
        }
        let seq = self
            .sequence(current_index)
            .map_or(0, |seq| grub_test_int(&seq, self.width));
        let next = seq
            .checked_add(1)
            .ok_or(Error::SequenceExhausted { current: seq })?
            .to_string();

        let mut block = current.clone();
        let mut all = changes.to_vec();
        all.push(Change::set(SEQ_VAR, &next));
        block.apply(&all)?;
        check_visible(&block, &all)?;
        log::debug!("copy {current_index} is current; copy {index} gets {SEQ_VAR}={next}");
        Ok(WritePlan { index, block })
    }

    /// What GRUB's `save_env -f <selected copy> VAR...` does at boot (a try counter going down):
    /// the selected copy is changed in place, `ABUP_SEQ` kept. `None` values are variables
    /// that are not defined in GRUB, which `save_env` removes from the block.
    pub fn boot_save_env<N, V>(&self, vars: &[(N, Option<V>)]) -> Result<WritePlan, Error>
    where
        N: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let index = self.selected();
        let mut block = self.current()?.clone();
        block.save_env(vars)?;
        Ok(WritePlan { index, block })
    }

    /// Records that a plan has been written, so that a sequence of updates and boots can be
    /// followed in memory.
    pub fn commit(&mut self, plan: WritePlan) {
        if let Some(copy) = self.copies.get_mut(plan.index) {
            *copy = Ok(plan.block);
        }
    }
}

/// GRUB reads the LAST line for a name while edits touch the FIRST, so with hand-made
/// duplicates an edit can be invisible at boot; the last change per name must be what GRUB sees.
fn check_visible(block: &EnvBlock, changes: &[Change<'_>]) -> Result<(), Error> {
    let mut seen: Vec<&[u8]> = Vec::new();
    for change in changes.iter().rev() {
        let name = change.name();
        if seen.contains(&name) {
            continue;
        }
        seen.push(name);
        let visible = match *change {
            Change::Set { value, .. } => block.get(name).as_deref() == Some(value),
            Change::Unset { .. } => block.get(name).is_none(),
        };
        if !visible {
            return Err(Error::Shadowed {
                name: name.to_vec(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use LongWidth::{Bits32, Bits64};

    fn with_seq(seq: &str) -> EnvBlock {
        let mut block = EnvBlock::new(512).unwrap();
        block
            .set_many(&[("BOOT_ORDER", "A B"), (SEQ_VAR, seq)])
            .unwrap();
        block
    }

    fn garbage() -> Result<EnvBlock, Error> {
        EnvBlock::from_bytes(vec![0; 512])
    }

    fn pair(c0: Result<EnvBlock, Error>, c1: Result<EnvBlock, Error>) -> EnvPair {
        EnvPair::new(c0, c1, Bits64)
    }

    #[test]
    fn test_int_conversion_mirrors_grub() {
        let cases: &[(&str, i32, i32)] = &[
            ("", 0, 0),
            ("0", 0, 0),
            ("5", 5, 5),
            ("010", 8, 8),
            ("0777", 511, 511),
            ("0078", 7, 7),
            ("08", 8, 8),
            ("09", 9, 9),
            ("00", 0, 0),
            ("0x10", 16, 16),
            ("0xFf", 255, 255),
            ("0X10", 0, 0),
            ("0x", 0, 0),
            ("0xg", 0, 0),
            ("-1", -1, -1),
            ("-0", 0, 0),
            ("--5", 0, 0),
            ("+5", 0, 0),
            (" 7", 7, 7),
            ("\t\r\n7", 7, 7),
            ("- 7", -7, -7),
            (" -7", 0, 0),
            ("7 ", 7, 7),
            ("7abc", 7, 7),
            ("1e3", 1, 1),
            ("abc", 0, 0),
            ("0b1", 0, 0),
            ("5\u{0} 9", 5, 5),
            ("2147483647", i32::MAX, i32::MAX),
            ("2147483648", i32::MIN, i32::MIN),
            ("-2147483648", i32::MIN, i32::MIN),
            ("-2147483649", i32::MAX, i32::MAX),
            ("4294967295", -1, -1),
            ("0xffffffff", -1, -1),
            ("0x7fffffff", i32::MAX, i32::MAX),
            ("4294967296", 0, -1),
            ("4294967297", 1, -1),
            ("-4294967297", -1, 1),
            ("18446744073709551615", -1, -1),
            ("18446744073709551616", -1, -1),
            ("-99999999999999999999999", 1, 1),
        ];
        for &(s, bits64, bits32) in cases {
            assert_eq!(grub_test_int(s.as_bytes(), Bits64), bits64, "{s:?} 64");
            assert_eq!(grub_test_int(s.as_bytes(), Bits32), bits32, "{s:?} 32");
        }
    }

    #[test]
    fn selection_prefers_copy_0_unless_copy_1_is_strictly_newer() {
        let s = |s: &'static str| Some(s.as_bytes());
        assert_eq!(select_copy(None, None, Bits64), 0);
        assert_eq!(select_copy(s("3"), None, Bits64), 0);
        assert_eq!(select_copy(None, s("0"), Bits64), 1);
        assert_eq!(select_copy(None, s("junk"), Bits64), 1);
        assert_eq!(select_copy(s("3"), s("3"), Bits64), 0);
        assert_eq!(select_copy(s("3"), s("4"), Bits64), 1);
        assert_eq!(select_copy(s("4"), s("3"), Bits64), 0);
        assert_eq!(select_copy(s("9"), s("010"), Bits64), 0);
        assert_eq!(select_copy(s("0"), s("4294967297"), Bits64), 1);
        assert_eq!(select_copy(s("0"), s("4294967297"), Bits32), 0);
    }

    #[test]
    fn fresh_pair_alternates_copies_with_increasing_numbers() {
        let mut pair = EnvPair::create(512, Bits64).unwrap();
        assert_eq!(pair.selected(), 0);
        assert_eq!(pair.sequence(0).as_deref(), Some(&b"0"[..]));
        assert_eq!(pair.copy(0).unwrap().as_ref().unwrap().size(), 512);
        for step in 1..=4 {
            let value = step.to_string();
            let plan = pair
                .plan_update(&[Change::set("BOOT_ORDER", &value)])
                .unwrap();
            assert_eq!(plan.index, step % 2);
            assert_eq!(plan.block.get_str(SEQ_VAR).unwrap(), Some(value.clone()));
            pair.commit(plan);
            assert_eq!(pair.selected(), step % 2);
            assert_eq!(
                pair.current().unwrap().get_str("BOOT_ORDER").unwrap(),
                Some(value)
            );
        }
    }

    #[test]
    fn the_other_copy_is_written_whatever_its_state() {
        let p = pair(Ok(with_seq("5")), garbage());
        let plan = p.plan_update(&[]).unwrap();
        assert_eq!(plan.index, 1);
        assert_eq!(plan.block.get_str(SEQ_VAR).unwrap().as_deref(), Some("6"));

        let p = pair(garbage(), Ok(with_seq("5")));
        assert_eq!(p.selected(), 1);
        assert_eq!(p.plan_update(&[]).unwrap().index, 0);

        let p = pair(Ok(with_seq("7")), Ok(with_seq("3")));
        assert_eq!(p.plan_update(&[]).unwrap().index, 1);

        let mut no_seq = with_seq("1");
        no_seq.unset(SEQ_VAR).unwrap();
        let p = pair(Ok(no_seq), garbage());
        let plan = p.plan_update(&[]).unwrap();
        assert_eq!(plan.index, 1);
        assert_eq!(plan.block.get_str(SEQ_VAR).unwrap().as_deref(), Some("1"));
    }

    #[test]
    fn a_damaged_selected_copy_is_an_error_not_a_reset() {
        let p = pair(garbage(), garbage());
        assert!(matches!(
            p.current(),
            Err(Error::NoValidCopy { index: 0, .. })
        ));
        assert!(matches!(
            p.plan_update(&[]),
            Err(Error::NoValidCopy { index: 0, .. })
        ));
        // Copy 1 is valid but has no number, so the script still loads copy 0.
        let mut no_seq = with_seq("1");
        no_seq.unset(SEQ_VAR).unwrap();
        let p = pair(garbage(), Ok(no_seq));
        assert!(matches!(
            p.current(),
            Err(Error::NoValidCopy { index: 0, .. })
        ));
        let p = pair(Ok(with_seq("")), Ok(with_seq("x")));
        assert_eq!(p.selected(), 1);
    }

    #[test]
    fn the_other_copy_must_have_the_same_known_size() {
        let other = EnvBlock::new(1024).unwrap();
        let p = pair(Ok(with_seq("1")), Ok(other));
        assert!(matches!(
            p.plan_update(&[]),
            Err(Error::CopySizeMismatch {
                index: 1,
                expected: 512,
                found: 1024
            })
        ));
        let p = pair(Ok(with_seq("1")), EnvBlock::from_bytes(vec![0; 100]));
        assert!(matches!(
            p.plan_update(&[]),
            Err(Error::CopySizeMismatch { found: 100, .. })
        ));
        let p = pair(
            Ok(with_seq("1")),
            Err(std::io::Error::from(std::io::ErrorKind::NotFound).into()),
        );
        assert!(matches!(
            p.plan_update(&[]),
            Err(Error::CopyUnreadable { index: 1, .. })
        ));
    }

    #[test]
    fn sequence_numbers_stop_where_grub_cannot_compare_them() {
        let p = pair(Ok(with_seq("2147483646")), garbage());
        let plan = p.plan_update(&[]).unwrap();
        assert_eq!(
            plan.block.get_str(SEQ_VAR).unwrap().as_deref(),
            Some("2147483647")
        );
        let p = pair(Ok(with_seq("2147483647")), garbage());
        assert!(matches!(
            p.plan_update(&[]),
            Err(Error::SequenceExhausted { current: i32::MAX })
        ));
        // Hand-made numbers count as GRUB reads them.
        let p = pair(Ok(with_seq("0x10")), garbage());
        let plan = p.plan_update(&[]).unwrap();
        assert_eq!(plan.block.get_str(SEQ_VAR).unwrap().as_deref(), Some("17"));
        let p = pair(Ok(with_seq("-5")), garbage());
        let plan = p.plan_update(&[]).unwrap();
        assert_eq!(plan.block.get_str(SEQ_VAR).unwrap().as_deref(), Some("-4"));
    }

    fn handmade(body: &[u8]) -> EnvBlock {
        let mut bytes = crate::SIGNATURE.to_vec();
        bytes.extend_from_slice(body);
        bytes.resize(512, b'#');
        EnvBlock::from_bytes(bytes).unwrap()
    }

    #[test]
    fn updates_that_grub_would_not_see_are_refused() {
        let p = pair(Ok(with_seq("1")), garbage());
        assert!(matches!(
            p.plan_update(&[Change::set(SEQ_VAR, "9")]),
            Err(Error::ReservedName { .. })
        ));
        let p = pair(Ok(handmade(b"ABUP_SEQ=1\nX=1\nX=2\n")), garbage());
        assert!(matches!(
            p.plan_update(&[Change::set("X", "3")]),
            Err(Error::Shadowed { name }) if name == b"X"
        ));
        assert!(matches!(
            p.plan_update(&[Change::unset("X")]),
            Err(Error::Shadowed { .. })
        ));
        // Only the last change per name has to be visible.
        assert!(p
            .plan_update(&[Change::set("Y", "1"), Change::set("Y", "2")])
            .is_ok());
        let p = pair(Ok(handmade(b"ABUP_SEQ=1\nABUP_SEQ=3\n")), garbage());
        assert_eq!(p.sequence(0).as_deref(), Some(&b"3"[..]));
        assert!(matches!(
            p.plan_update(&[]),
            Err(Error::Shadowed { name }) if name == SEQ_VAR.as_bytes()
        ));
    }

    #[test]
    fn an_update_that_does_not_fit_is_refused() {
        let p = EnvPair::create(512, Bits64).unwrap();
        let big = "x".repeat(420);
        assert!(matches!(
            p.plan_update(&[Change::set("BIG", &big)]),
            Err(Error::NoSpace { .. })
        ));
    }

    #[test]
    fn a_cut_during_the_write_leaves_a_bootable_pair() {
        let p = pair(Ok(with_seq("41")), Ok(with_seq("40")));
        let plan = p.plan_update(&[Change::set("BOOT_ORDER", "B A")]).unwrap();
        assert_eq!(plan.index, 1);
        let old = p.current().unwrap().clone();
        for written in [
            Ok(with_seq("40")),
            garbage(),
            EnvBlock::from_bytes(Vec::new()),
            Ok(plan.block.clone()),
        ] {
            let done = written.as_ref().map(|b| b == &plan.block).unwrap_or(false);
            let after = pair(Ok(old.clone()), written);
            let expected = if done { &plan.block } else { &old };
            assert_eq!(after.current().unwrap(), expected);
        }
    }

    #[test]
    fn boot_save_env_writes_the_selected_copy_and_keeps_its_number() {
        let p = pair(Ok(with_seq("3")), Ok(with_seq("4")));
        let plan = p.boot_save_env(&[("BOOT_B_LEFT", Some("2"))]).unwrap();
        assert_eq!(plan.index, 1);
        assert_eq!(plan.block.get_str(SEQ_VAR).unwrap().as_deref(), Some("4"));
        assert_eq!(
            plan.block.get_str("BOOT_B_LEFT").unwrap().as_deref(),
            Some("2")
        );
        let mut p = p;
        p.commit(plan);
        assert_eq!(p.selected(), 1);
        let p = pair(garbage(), Ok(with_seq("")));
        assert!(matches!(
            p.boot_save_env(&[("A", None::<&str>)]),
            Err(Error::NoValidCopy { index: 0, .. })
        ));
    }

    #[test]
    fn copies_agree_ignores_the_sequence_and_needs_two_valid_copies() {
        assert!(pair(Ok(with_seq("3")), Ok(with_seq("4"))).copies_agree());
        let mut p = pair(Ok(with_seq("3")), Ok(with_seq("4")));
        let plan = p.boot_save_env(&[("BOOT_B_LEFT", Some("2"))]).unwrap();
        p.commit(plan);
        assert!(!p.copies_agree(), "GRUB's save changed one copy");
        let plan = p.plan_update(&[]).unwrap();
        p.commit(plan);
        assert!(
            p.copies_agree(),
            "an update without changes copies the current one"
        );
        assert!(!pair(garbage(), Ok(with_seq("4"))).copies_agree());
    }
}
