//! The owned, editable environment: what a decoded copy means and what an encoded copy will hold.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::raw::{self, Endianness, Header, Layout, RawCopy};

/// A U-Boot environment as a set of variables.
///
/// Variables are kept sorted bytewise (`strcmp` order), the order in which U-Boot's `saveenv`
/// and libubootenv write them, so that encoding is deterministic and matches those writers byte
/// for byte. Names and values are bytes: U-Boot stores them raw and requires only that a name is
/// non-empty and free of `=` and NUL, and that a value is free of NUL. The `.flags` variable (type
/// and access attributes) is kept as an ordinary variable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    vars: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Env {
    /// An environment without variables.
    pub fn new() -> Self {
        Self::default()
    }

    /// The variables of a copy, whatever its CRC says: a later duplicate replaces an earlier one,
    /// and `k=` is kept as present with an empty value.
    ///
    /// Decoded names and values always satisfy the rules [`Env::set`] enforces, so the result can
    /// be encoded again.
    pub fn from_copy(copy: &RawCopy<'_>) -> Self {
        let mut vars = BTreeMap::new();
        for (name, value) in copy.entries() {
            vars.insert(name.to_vec(), value.to_vec());
        }
        Env { vars }
    }

    /// Decodes one stored copy after checking its CRC.
    pub fn decode(bytes: &[u8], layout: Layout, endianness: Endianness) -> Result<Self> {
        let copy = RawCopy::parse(bytes, layout, endianness)?;
        if !copy.is_valid() {
            return Err(Error::BadCrc {
                stored: copy.stored_crc(),
                computed: copy.computed_crc(),
            });
        }
        Ok(Self::from_copy(&copy))
    }

    /// The value of a variable; `Some(b"")` for one stored as `k=`.
    pub fn get(&self, name: impl AsRef<[u8]>) -> Option<&[u8]> {
        self.vars.get(name.as_ref()).map(Vec::as_slice)
    }

    /// Sets a variable; an empty value removes it, because U-Boot itself treats `k=` as a
    /// deletion when it imports the environment and would not see an empty variable anyway.
    pub fn set(&mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let (name, value) = (name.as_ref(), value.as_ref());
        check_name(name)?;
        if let Some(offset) = value.iter().position(|&b| b == 0) {
            return Err(Error::InvalidValue {
                name: String::from_utf8_lossy(name).into_owned(),
                offset,
            });
        }
        if value.is_empty() {
            self.vars.remove(name);
        } else {
            self.vars.insert(name.to_vec(), value.to_vec());
        }
        Ok(())
    }

    /// Removes a variable, returning its value if it was present.
    pub fn remove(&mut self, name: impl AsRef<[u8]>) -> Option<Vec<u8>> {
        self.vars.remove(name.as_ref())
    }

    /// The variables in storage order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.vars.iter().map(|(n, v)| (n.as_slice(), v.as_slice()))
    }

    /// Number of variables.
    pub fn len(&self) -> usize {
        self.vars.len()
    }

    /// Whether there are no variables.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// Bytes of data area the variables need: `Σ(len(name) + 1 + len(value) + 1) + 1`, the rule
    /// of U-Boot and mkenvimage (libubootenv allows one byte more and then writes its final NUL
    /// past the CRC-covered area; abup keeps to the strict rule). An empty environment needs two
    /// NULs.
    pub fn encoded_len(&self) -> usize {
        let used: usize = self.iter().map(|(n, v)| n.len() + v.len() + 2).sum();
        if used == 0 {
            raw::MIN_DATA_LEN
        } else {
            used + 1
        }
    }

    /// Encodes one copy of `size` bytes: header, sorted entries, the terminating empty entry, and
    /// `fill` for the unused tail (U-Boot writes 0x00, mkenvimage 0xFF by default).
    pub fn encode(
        &self,
        header: Header,
        size: usize,
        fill: u8,
        endianness: Endianness,
    ) -> Result<Vec<u8>> {
        let available = size.saturating_sub(header.layout().header_len());
        let needed = self.encoded_len();
        if needed > available {
            return Err(Error::TooLarge { needed, available });
        }
        let mut out = vec![0u8; size];
        raw::encode_into(&mut out, header, endianness, fill, self.iter())?;
        Ok(out)
    }
}

/// Why a name cannot be stored: U-Boot splits entries at the first `=` and ends them at NUL, and
/// refuses to import an environment holding an empty name (it loads its default instead).
fn check_name(name: &[u8]) -> Result<()> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.contains(&b'=') {
        "it contains '='"
    } else if name.contains(&0) {
        "it contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: String::from_utf8_lossy(name).into_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        let mut env = Env::new();
        for (n, v) in pairs {
            env.set(n, v).unwrap();
        }
        env
    }

    #[test]
    fn variables_are_kept_in_bytewise_order() {
        let env = env(&[
            ("b", "2"),
            ("B", "3"),
            ("a", "1"),
            ("ab", "4"),
            ("\u{e9}", "5"),
        ]);
        let names: Vec<&[u8]> = env.iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [&b"B"[..], b"a", b"ab", b"b", "\u{e9}".as_bytes()],
            "strcmp order: uppercase first, prefix before longer, bytes >= 0x80 last"
        );
    }

    #[test]
    fn empty_value_deletes() {
        let mut env = env(&[("k", "v")]);
        env.set("k", "").unwrap();
        assert_eq!(env.get("k"), None);
        env.set("missing", "").unwrap();
        assert!(env.is_empty());
    }

    #[test]
    fn names_and_values_are_validated() {
        let mut env = Env::new();
        assert!(matches!(
            env.set("", "v"),
            Err(Error::InvalidName {
                reason: "it is empty",
                ..
            })
        ));
        assert!(matches!(
            env.set("a=b", "v"),
            Err(Error::InvalidName { .. })
        ));
        assert!(matches!(
            env.set(b"a\0b", "v"),
            Err(Error::InvalidName { .. })
        ));
        assert!(matches!(
            env.set("k", b"v\0w"),
            Err(Error::InvalidValue { offset: 1, .. })
        ));
        env.set("k", "a=b c\n#\\").unwrap();
        assert_eq!(env.get("k"), Some(&b"a=b c\n#\\"[..]));
        env.set(".flags", "k:sw").unwrap();
        assert_eq!(env.get(".flags"), Some(&b"k:sw"[..]));
    }

    #[test]
    fn decode_reports_present_empty_and_last_duplicate() {
        let mut bytes = vec![0u8; 32];
        bytes[4..20].copy_from_slice(b"k=\0d=1\0d=2\0x=y\0\0");
        let crc = crc32fast::hash(&bytes[4..]);
        bytes[..4].copy_from_slice(&crc.to_le_bytes());
        let env = Env::decode(&bytes, Layout::Single, Endianness::Little).unwrap();
        assert_eq!(env.get("k"), Some(&b""[..]));
        assert_eq!(env.get("d"), Some(&b"2"[..]));
        assert_eq!(env.len(), 3);
        bytes[31] ^= 1;
        assert!(matches!(
            Env::decode(&bytes, Layout::Single, Endianness::Little),
            Err(Error::BadCrc { .. })
        ));
    }

    #[test]
    fn encode_is_sorted_terminated_and_filled() {
        let env = env(&[("b", "2"), ("a", "1")]);
        let bytes = env
            .encode(Header::Redundant { flags: 9 }, 20, 0xEE, Endianness::Big)
            .unwrap();
        assert_eq!(&bytes[4..], b"\x09a=1\0b=2\0\0\xEE\xEE\xEE\xEE\xEE\xEE");
        assert_eq!(&bytes[..4], &crc32fast::hash(&bytes[5..]).to_be_bytes());
    }

    #[test]
    fn capacity_is_strict() {
        // Data area of a 0x20 single copy: 28 bytes; "k=" + value + NUL + final NUL.
        let fits = env(&[("k", &"v".repeat(24))]);
        assert_eq!(fits.encoded_len(), 28);
        fits.encode(Header::Single, 0x20, 0, Endianness::Little)
            .unwrap();
        let too_big = env(&[("k", &"v".repeat(25))]);
        assert!(matches!(
            too_big.encode(Header::Single, 0x20, 0, Endianness::Little),
            Err(Error::TooLarge {
                needed: 29,
                available: 28
            })
        ));
    }

    #[test]
    fn empty_environment_round_trips() {
        let bytes = Env::new()
            .encode(Header::Single, 6, 0xFF, Endianness::Little)
            .unwrap();
        assert_eq!(&bytes[4..], &[0, 0]);
        assert_eq!(
            Env::decode(&bytes, Layout::Single, Endianness::Little).unwrap(),
            Env::new()
        );
        assert!(Env::new()
            .encode(Header::Single, 5, 0, Endianness::Little)
            .is_err());
    }

    /// Bytes that often form entries: names, `=`, NULs and filler.
    fn env_like_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..160),
            prop::collection::vec(
                prop::sample::select(vec![b'a', b'b', b'=', 0, 0xFF]),
                0..160
            ),
        ]
    }

    proptest! {
        /// Whatever the bytes, decoding does not panic, and what it decodes encodes and decodes
        /// back to itself, unless the area was full to the last byte (as libubootenv leaves it).
        #[test]
        fn decode_is_total_and_reencodes(bytes in env_like_bytes(), redundant: bool, crc_ok: bool) {
            let layout = if redundant { Layout::Redundant } else { Layout::Single };
            let mut bytes = bytes;
            if crc_ok && bytes.len() >= layout.header_len() {
                let crc = crc32fast::hash(&bytes[layout.header_len()..]);
                bytes[..4].copy_from_slice(&crc.to_le_bytes());
            }
            let Ok(copy) = RawCopy::parse(&bytes, layout, Endianness::Little) else {
                prop_assert!(bytes.len() < layout.min_copy_len());
                return Ok(());
            };
            if crc_ok {
                prop_assert!(copy.is_valid());
            }
            let env = Env::from_copy(&copy);
            for (name, value) in env.iter() {
                prop_assert_eq!(copy.get(name), Some(value));
            }
            let header = match copy.flags() {
                None => Header::Single,
                Some(flags) => Header::Redundant { flags },
            };
            match env.encode(header, bytes.len(), 0xFF, Endianness::Little) {
                Ok(again) => prop_assert_eq!(Env::decode(&again, layout, Endianness::Little).unwrap(), env),
                Err(Error::TooLarge { needed, available }) => prop_assert!(needed <= available + 2),
                Err(e) => prop_assert!(false, "{}", e),
            }
        }

        /// Any valid variables round-trip through any copy large enough, in bytewise order.
        #[test]
        fn encode_decode_round_trip(
            vars in prop::collection::btree_map(
                prop::collection::vec(any::<u8>().prop_filter("name byte", |b| *b != 0 && *b != b'='), 1..12),
                prop::collection::vec(1u8..=255, 1..40),
                0..12,
            ),
            slack in 0usize..32,
            flags: u8,
            redundant: bool,
            big: bool,
            fill: u8,
        ) {
            let mut env = Env::new();
            for (name, value) in &vars {
                env.set(name, value).unwrap();
            }
            let (header, layout) = if redundant {
                (Header::Redundant { flags }, Layout::Redundant)
            } else {
                (Header::Single, Layout::Single)
            };
            let endianness = if big { Endianness::Big } else { Endianness::Little };
            let size = layout.header_len() + env.encoded_len() + slack;
            let bytes = env.encode(header, size, fill, endianness).unwrap();
            prop_assert_eq!(bytes.len(), size);
            let copy = RawCopy::parse(&bytes, layout, endianness).unwrap();
            prop_assert!(copy.is_valid());
            prop_assert_eq!(copy.flags(), redundant.then_some(flags));
            let names: Vec<&[u8]> = copy.entries().map(|(n, _)| n).collect();
            prop_assert!(names.windows(2).all(|w| w[0] < w[1]));
            prop_assert_eq!(Env::from_copy(&copy), env.clone());
            if slack == 0 && !env.is_empty() {
                prop_assert!(env.encode(header, size - 1, fill, endianness).is_err());
            }
        }
    }
}
