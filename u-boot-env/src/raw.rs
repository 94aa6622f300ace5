//! The allocation-free core: a view of stored copies, their CRC, their entries, and which copy of
//! a redundant pair is current.
//!
//! Nothing here allocates, so an initramfs or a tiny agent can read the bootloader's variables
//! straight out of a buffer it read itself. Everything that needs memory (sorting, editing,
//! planning writes) lives in [`crate::env`] and [`crate::plan`].

use std::fmt;

use crate::error::{Error, Result};

/// Bytes of CRC at the start of every copy.
const CRC_LEN: usize = 4;

/// Smallest data area accepted: room for the two NULs of an empty environment.
pub const MIN_DATA_LEN: usize = 2;

/// Whether a copy carries the flag byte of a redundant pair.
///
/// The layout follows from the configuration (one copy or two), never from the bytes: a single
/// image read as a redundant copy, or the reverse, simply fails its CRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `[crc u32][data]`: one copy, no flag byte.
    Single,
    /// `[crc u32][flags u8][data]`: each of two copies; the data starts at offset 5.
    Redundant,
}

impl Layout {
    /// Bytes before the data area.
    pub const fn header_len(self) -> usize {
        match self {
            Layout::Single => CRC_LEN,
            Layout::Redundant => CRC_LEN + 1,
        }
    }

    /// The smallest copy this layout can hold an (empty) environment in.
    pub const fn min_copy_len(self) -> usize {
        self.header_len() + MIN_DATA_LEN
    }
}

/// Byte order of the stored CRC: the bootloader compares it as a native `u32`.
///
/// Little-endian is what U-Boot on ARM and x86, libubootenv on those hosts and `mkenvimage` by
/// default write; big-endian targets need `mkenvimage -b` and this option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Endianness {
    /// Least significant byte first.
    #[default]
    Little,
    /// Most significant byte first.
    Big,
}

impl Endianness {
    fn read_u32(self, bytes: [u8; 4]) -> u32 {
        match self {
            Endianness::Little => u32::from_le_bytes(bytes),
            Endianness::Big => u32::from_be_bytes(bytes),
        }
    }

    fn write_u32(self, value: u32) -> [u8; 4] {
        match self {
            Endianness::Little => value.to_le_bytes(),
            Endianness::Big => value.to_be_bytes(),
        }
    }
}

/// One of the (up to) two copies, numbered as U-Boot and libubootenv number them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CopyId {
    /// Copy 0: the only copy of a single environment, the first line of `fw_env.config`.
    First,
    /// Copy 1: the redundant copy, the second line of `fw_env.config`.
    Second,
}

impl CopyId {
    /// 0 or 1, as an index into the configured copies.
    pub const fn index(self) -> usize {
        match self {
            CopyId::First => 0,
            CopyId::Second => 1,
        }
    }

    /// The other copy of a redundant pair.
    pub const fn other(self) -> CopyId {
        match self {
            CopyId::First => CopyId::Second,
            CopyId::Second => CopyId::First,
        }
    }
}

impl fmt::Display for CopyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "copy {}", self.index())
    }
}

/// The header to write in front of an encoded copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Header {
    /// A single copy: CRC only.
    Single,
    /// A copy of a redundant pair: CRC and the flag byte (the incremental counter).
    Redundant {
        /// The counter; the copy with the newer counter is current.
        flags: u8,
    },
}

impl Header {
    /// The layout this header belongs to.
    pub const fn layout(self) -> Layout {
        match self {
            Header::Single => Layout::Single,
            Header::Redundant { .. } => Layout::Redundant,
        }
    }
}

/// A borrowed view of one stored copy: header fields, CRC check and entries.
///
/// Parsing never fails on content, only on a length too small for the layout; whether the copy
/// is usable is [`RawCopy::is_valid`], decided by its CRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawCopy<'a> {
    layout: Layout,
    stored_crc: u32,
    computed_crc: u32,
    flags: Option<u8>,
    data: &'a [u8],
}

impl<'a> RawCopy<'a> {
    /// Views `bytes` (exactly one copy, the whole configured size) in the given layout.
    pub fn parse(bytes: &'a [u8], layout: Layout, endianness: Endianness) -> Result<Self> {
        let min = layout.min_copy_len();
        if bytes.len() < min {
            return Err(Error::CopyTooSmall {
                len: bytes.len(),
                min,
            });
        }
        let (header, data) = bytes.split_at(layout.header_len());
        let stored_crc = endianness.read_u32([header[0], header[1], header[2], header[3]]);
        let flags = match layout {
            Layout::Single => None,
            Layout::Redundant => Some(header[CRC_LEN]),
        };
        Ok(RawCopy {
            layout,
            stored_crc,
            // The CRC covers the whole data area, unused tail included, and never the flags.
            computed_crc: crc32fast::hash(data),
            flags,
            data,
        })
    }

    /// The layout the copy was parsed with.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Total size of the copy, header included.
    pub fn size(&self) -> usize {
        self.layout.header_len() + self.data.len()
    }

    /// The CRC stored in the header.
    pub fn stored_crc(&self) -> u32 {
        self.stored_crc
    }

    /// The CRC of the data area as stored now.
    pub fn computed_crc(&self) -> u32 {
        self.computed_crc
    }

    /// Whether the stored CRC matches the data: the only validity test U-Boot applies.
    pub fn is_valid(&self) -> bool {
        self.stored_crc == self.computed_crc
    }

    /// The redundant flag byte, `None` for a single copy.
    pub fn flags(&self) -> Option<u8> {
        self.flags
    }

    /// The data area, unused tail included.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The entries in stored order, duplicates included; see [`Entries`].
    pub fn entries(&self) -> Entries<'a> {
        Entries { rest: self.data }
    }

    /// The value of `name`; when the name occurs more than once the last one wins, as it does
    /// when U-Boot and libubootenv import the environment.
    ///
    /// This does not check the CRC: use [`RawEnv::current_copy`] to get a copy that is valid.
    pub fn get(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.entries()
            .filter(|(n, _)| *n == name)
            .last()
            .map(|(_, value)| value)
    }
}

/// Iterator over the `name=value` entries of a data area, yielding `(name, value)`.
///
/// It stops at the first empty entry (the double NUL that ends the list): what follows is
/// arbitrary, since libubootenv leaves uninitialised memory there, and a reader that skipped empty
/// entries would resurrect stale variables. Entries without `=`, and entries with an empty name,
/// are skipped (libubootenv ignores both). An entry cut off by the end of the data area counts as
/// ended there, which is how U-Boot reads it; that is also how the last entry of a completely full
/// area reads, as libubootenv writes it.
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Entries<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let (entry, tail) = match self.rest.iter().position(|&b| b == 0) {
                Some(end) => (&self.rest[..end], &self.rest[end + 1..]),
                None => (self.rest, &[][..]),
            };
            if entry.is_empty() {
                self.rest = &[];
                return None;
            }
            self.rest = tail;
            match entry.iter().position(|&b| b == b'=') {
                Some(eq) if eq > 0 => return Some((&entry[..eq], &entry[eq + 1..])),
                _ => continue,
            }
        }
    }
}

/// Which copy of a redundant pair is current, given the flag byte of each copy whose CRC is valid
/// (`None` for an invalid copy).
///
/// This is the incremental counter scheme of U-Boot (`env_check_redund`) and libubootenv for block
/// devices, files, NAND and UBI: only one valid copy wins outright; with both valid the larger
/// counter wins, except that exactly 255 against 0 is a wrap-around and the 0 wins; equal counters
/// pick copy 0. With no valid copy there is no environment.
pub fn select_current(first: Option<u8>, second: Option<u8>) -> Option<CopyId> {
    match (first, second) {
        (None, None) => None,
        (Some(_), None) => Some(CopyId::First),
        (None, Some(_)) => Some(CopyId::Second),
        (Some(255), Some(0)) => Some(CopyId::Second),
        (Some(0), Some(255)) => Some(CopyId::First),
        (Some(a), Some(b)) if b > a => Some(CopyId::Second),
        (Some(_), Some(_)) => Some(CopyId::First),
    }
}

/// A stored environment: one copy, or the two copies of a redundant pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawEnv<'a> {
    first: RawCopy<'a>,
    second: Option<RawCopy<'a>>,
    endianness: Endianness,
}

impl<'a> RawEnv<'a> {
    /// Views a single-copy environment.
    pub fn single(bytes: &'a [u8], endianness: Endianness) -> Result<Self> {
        Ok(RawEnv {
            first: RawCopy::parse(bytes, Layout::Single, endianness)?,
            second: None,
            endianness,
        })
    }

    /// Views the two copies of a redundant environment, which must be the same size.
    pub fn redundant(first: &'a [u8], second: &'a [u8], endianness: Endianness) -> Result<Self> {
        if first.len() != second.len() {
            return Err(Error::CopySizesDiffer {
                first: first.len(),
                second: second.len(),
            });
        }
        Ok(RawEnv {
            first: RawCopy::parse(first, Layout::Redundant, endianness)?,
            second: Some(RawCopy::parse(second, Layout::Redundant, endianness)?),
            endianness,
        })
    }

    /// The byte order the CRCs were read in, and new copies must be written in.
    pub fn endianness(&self) -> Endianness {
        self.endianness
    }

    /// Single or redundant.
    pub fn layout(&self) -> Layout {
        self.first.layout
    }

    /// One copy, if the environment has it.
    pub fn copy(&self, id: CopyId) -> Option<&RawCopy<'a>> {
        match id {
            CopyId::First => Some(&self.first),
            CopyId::Second => self.second.as_ref(),
        }
    }

    /// The copies, copy 0 first.
    pub fn copies(&self) -> impl Iterator<Item = (CopyId, &RawCopy<'a>)> {
        [
            (CopyId::First, Some(&self.first)),
            (CopyId::Second, self.second.as_ref()),
        ]
        .into_iter()
        .filter_map(|(id, copy)| copy.map(|c| (id, c)))
    }

    /// The copy the bootloader would load, or `None` when no copy is valid.
    pub fn current(&self) -> Option<CopyId> {
        let valid_flags = |copy: &RawCopy<'_>| copy.is_valid().then(|| copy.flags.unwrap_or(0));
        match &self.second {
            None => self.first.is_valid().then_some(CopyId::First),
            Some(second) => select_current(valid_flags(&self.first), valid_flags(second)),
        }
    }

    /// The current copy itself.
    pub fn current_copy(&self) -> Option<RawCopy<'a>> {
        self.current().and_then(|id| self.copy(id).copied())
    }
}

/// Writes one copy into `out` (its whole length): header, the entries, the terminating empty entry
/// and `fill` up to the end; the CRC covers the whole data area.
///
/// The entries must be valid names and values, in the order to store them; an empty list is
/// stored as two NULs because U-Boot steps past the first NUL before it looks for the end.
/// On [`Error::TooLarge`] `out` holds partial data and must not be stored.
pub(crate) fn encode_into<'e>(
    out: &mut [u8],
    header: Header,
    endianness: Endianness,
    fill: u8,
    entries: impl IntoIterator<Item = (&'e [u8], &'e [u8])>,
) -> Result<()> {
    let header_len = header.layout().header_len();
    let available = out.len().saturating_sub(header_len);
    let mut entries = entries.into_iter();
    let mut pos = 0usize;
    {
        let data = out.get_mut(header_len..).unwrap_or_default();
        let mut overflow = None;
        for (name, value) in entries.by_ref() {
            let len = name.len() + 1 + value.len() + 1;
            if pos + len + 1 > data.len() {
                overflow = Some(pos + len);
                break;
            }
            data[pos..pos + name.len()].copy_from_slice(name);
            data[pos + name.len()] = b'=';
            let value_start = pos + name.len() + 1;
            data[value_start..value_start + value.len()].copy_from_slice(value);
            data[value_start + value.len()] = 0;
            pos += len;
        }
        if let Some(used) = overflow {
            let rest: usize = entries.map(|(n, v)| n.len() + v.len() + 2).sum();
            return Err(Error::TooLarge {
                needed: used + rest + 1,
                available,
            });
        }
        let terminator = if pos == 0 { MIN_DATA_LEN } else { 1 };
        if pos + terminator > data.len() {
            return Err(Error::TooLarge {
                needed: pos + terminator,
                available,
            });
        }
        data[pos..pos + terminator].fill(0);
        data[pos + terminator..].fill(fill);
    }
    let crc = crc32fast::hash(&out[header_len..]);
    out[..CRC_LEN].copy_from_slice(&endianness.write_u32(crc));
    if let Header::Redundant { flags } = header {
        out[CRC_LEN] = flags;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single(data: &[u8], size: usize) -> [u8; 64] {
        let mut out = [0xA5u8; 64];
        out[4..4 + data.len()].copy_from_slice(data);
        let crc = crc32fast::hash(&out[4..size]);
        out[..4].copy_from_slice(&crc.to_le_bytes());
        out
    }

    #[test]
    fn too_small_copies_are_refused() {
        assert!(matches!(
            RawCopy::parse(&[0; 5], Layout::Single, Endianness::Little),
            Err(Error::CopyTooSmall { len: 5, min: 6 })
        ));
        assert!(matches!(
            RawCopy::parse(&[0; 6], Layout::Redundant, Endianness::Little),
            Err(Error::CopyTooSmall { len: 6, min: 7 })
        ));
        assert!(RawCopy::parse(&[0; 7], Layout::Redundant, Endianness::Little).is_ok());
    }

    #[test]
    fn crc_covers_the_whole_data_area_but_not_the_flags() {
        let mut bytes = [0u8; 32];
        bytes[5..9].copy_from_slice(b"a=1\0");
        let crc = crc32fast::hash(&bytes[5..]);
        bytes[..4].copy_from_slice(&crc.to_le_bytes());
        bytes[4] = 7;
        let copy = RawCopy::parse(&bytes, Layout::Redundant, Endianness::Little).unwrap();
        assert!(copy.is_valid());
        assert_eq!(copy.flags(), Some(7));
        bytes[4] = 8;
        assert!(
            RawCopy::parse(&bytes, Layout::Redundant, Endianness::Little)
                .unwrap()
                .is_valid()
        );
        bytes[31] = 1;
        assert!(
            !RawCopy::parse(&bytes, Layout::Redundant, Endianness::Little)
                .unwrap()
                .is_valid()
        );
    }

    #[test]
    fn big_endian_crc() {
        let mut bytes = [0u8; 16];
        bytes[4..8].copy_from_slice(b"x=y\0");
        let crc = crc32fast::hash(&bytes[4..]);
        bytes[..4].copy_from_slice(&crc.to_be_bytes());
        assert!(RawCopy::parse(&bytes, Layout::Single, Endianness::Big)
            .unwrap()
            .is_valid());
        assert!(!RawCopy::parse(&bytes, Layout::Single, Endianness::Little)
            .unwrap()
            .is_valid());
    }

    #[test]
    fn entries_stop_at_the_first_empty_entry() {
        let bytes = single(b"b=2\0a=1\0\0ghost=1\0", 64);
        let copy = RawCopy::parse(&bytes, Layout::Single, Endianness::Little).unwrap();
        let entries: Vec<_> = copy.entries().collect();
        assert_eq!(entries, [(&b"b"[..], &b"2"[..]), (&b"a"[..], &b"1"[..])]);
        assert_eq!(copy.get(b"ghost"), None);
    }

    #[test]
    fn entries_skip_those_without_equals_or_name() {
        let bytes = single(b"noequals\0=anon\0k=\0v=a=b\0\0", 64);
        let copy = RawCopy::parse(&bytes, Layout::Single, Endianness::Little).unwrap();
        let entries: Vec<_> = copy.entries().collect();
        assert_eq!(entries, [(&b"k"[..], &b""[..]), (&b"v"[..], &b"a=b"[..])]);
    }

    #[test]
    fn an_entry_cut_off_by_the_end_of_the_area_ends_there() {
        let bytes = *b"\0\0\0\0a=1\0b=22";
        let copy = RawCopy::parse(&bytes, Layout::Single, Endianness::Little).unwrap();
        let entries: Vec<_> = copy.entries().collect();
        assert_eq!(entries, [(&b"a"[..], &b"1"[..]), (&b"b"[..], &b"22"[..])]);
    }

    #[test]
    fn get_returns_the_last_duplicate() {
        let bytes = single(b"k=1\0j=0\0k=2\0\0", 64);
        let copy = RawCopy::parse(&bytes, Layout::Single, Endianness::Little).unwrap();
        assert_eq!(copy.get(b"k"), Some(&b"2"[..]));
        assert_eq!(copy.get(b"j"), Some(&b"0"[..]));
        assert_eq!(copy.get(b"x"), None);
    }

    #[test]
    fn selection_rules() {
        use CopyId::*;
        assert_eq!(select_current(None, None), None);
        assert_eq!(select_current(Some(9), None), Some(First));
        assert_eq!(select_current(None, Some(9)), Some(Second));
        assert_eq!(select_current(Some(1), Some(2)), Some(Second));
        assert_eq!(select_current(Some(2), Some(1)), Some(First));
        assert_eq!(select_current(Some(5), Some(5)), Some(First));
        assert_eq!(select_current(Some(255), Some(0)), Some(Second));
        assert_eq!(select_current(Some(0), Some(255)), Some(First));
        // Only the exact 255/0 pair wraps.
        assert_eq!(select_current(Some(255), Some(1)), Some(First));
        assert_eq!(select_current(Some(254), Some(0)), Some(First));
    }

    #[test]
    fn selection_is_exhaustively_consistent() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let expected = if (a, b) == (255, 0) {
                    CopyId::Second
                } else if (a, b) == (0, 255) || a >= b {
                    CopyId::First
                } else {
                    CopyId::Second
                };
                assert_eq!(select_current(Some(a), Some(b)), Some(expected), "{a} {b}");
                // Swapping the copies swaps the answer unless the counters are equal.
                let swapped = select_current(Some(b), Some(a));
                if a == b {
                    assert_eq!(swapped, Some(CopyId::First));
                } else {
                    assert_eq!(swapped, Some(expected.other()));
                }
            }
            assert_eq!(select_current(Some(a), None), Some(CopyId::First));
            assert_eq!(select_current(None, Some(a)), Some(CopyId::Second));
        }
    }

    #[test]
    fn redundant_pair_must_have_equal_sizes() {
        assert!(matches!(
            RawEnv::redundant(&[0; 16], &[0; 17], Endianness::Little),
            Err(Error::CopySizesDiffer {
                first: 16,
                second: 17
            })
        ));
    }

    #[test]
    fn encode_fills_exactly_and_refuses_one_byte_more() {
        // 4 header + "k=vv\0" (5) + terminator (1) = 10 bytes.
        let mut out = [0u8; 10];
        encode_into(
            &mut out,
            Header::Single,
            Endianness::Little,
            0xFF,
            [(&b"k"[..], &b"vv"[..])],
        )
        .unwrap();
        assert_eq!(&out[4..], b"k=vv\0\0");
        let mut out = [0u8; 10];
        let err = encode_into(
            &mut out,
            Header::Single,
            Endianness::Little,
            0xFF,
            [(&b"k"[..], &b"vvv"[..])],
        )
        .unwrap_err();
        assert!(matches!(
            err,
            Error::TooLarge {
                needed: 7,
                available: 6
            }
        ));
    }

    #[test]
    fn encode_reports_the_whole_need_when_it_overflows_early() {
        let mut out = [0u8; 8];
        let err = encode_into(
            &mut out,
            Header::Redundant { flags: 3 },
            Endianness::Little,
            0,
            [(&b"aaaa"[..], &b"1"[..]), (&b"b"[..], &b"2"[..])],
        )
        .unwrap_err();
        assert!(matches!(
            err,
            Error::TooLarge {
                needed: 12,
                available: 3
            }
        ));
    }

    #[test]
    fn empty_environment_is_two_nuls() {
        let mut out = [0u8; 9];
        encode_into(
            &mut out,
            Header::Redundant { flags: 1 },
            Endianness::Little,
            0xFF,
            [],
        )
        .unwrap();
        assert_eq!(&out[4..], &[1, 0, 0, 0xFF, 0xFF]);
        let copy = RawCopy::parse(&out, Layout::Redundant, Endianness::Little).unwrap();
        assert!(copy.is_valid());
        assert_eq!(copy.entries().count(), 0);
    }
}
