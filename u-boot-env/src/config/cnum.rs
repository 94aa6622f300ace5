//! Numbers as libubootenv's C code reads them: glibc `sscanf` conversions for `fw_env.config`
//! and `strtoull(s, NULL, 0)` for the YAML format.
//!
//! Mirroring C here, quirks included, keeps abup pointed at the same bytes as `fw_printenv` for
//! any configuration file: a size column of `4000` is 0x4000, an offset of `010` is 8, `08` is 0
//! followed by a new field `8`.

/// Which digits a conversion accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Base {
    /// `%i` and `strtoull(.., 0)`: `0x` hexadecimal, leading `0` octal, else decimal.
    Auto,
    /// `%x`: hexadecimal, with an optional `0x`.
    Hex,
    /// `%d`: decimal.
    Decimal,
}

/// A conversion's raw result before it is narrowed to the C type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scanned {
    negative: bool,
    /// `None` when the digits overflow 64 bits.
    magnitude: Option<u64>,
    /// Bytes consumed, leading white space included.
    pub(crate) end: usize,
}

/// C's `isspace` in the C locale.
pub(crate) fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

/// Scans one number the way glibc's scanf family does, or `None` for a matching failure (no
/// digit at all). A `0x` prefix is consumed even when no hexadecimal digit follows it, and the
/// number then reads as 0, which is what glibc does.
pub(crate) fn scan(input: &[u8], base: Base) -> Option<Scanned> {
    let at = |i: usize| input.get(i).copied().unwrap_or(0);
    let mut i = 0;
    while is_c_space(at(i)) {
        i += 1;
    }
    let mut negative = false;
    if matches!(at(i), b'+' | b'-') {
        negative = at(i) == b'-';
        i += 1;
    }
    let mut any_digit = false;
    let radix = match base {
        Base::Auto | Base::Hex if at(i) == b'0' => {
            i += 1;
            any_digit = true;
            if matches!(at(i), b'x' | b'X') {
                i += 1;
                16
            } else if base == Base::Auto {
                8
            } else {
                16
            }
        }
        Base::Auto | Base::Decimal => 10,
        Base::Hex => 16,
    };
    let mut magnitude = Some(0u64);
    while let Some(digit) = (at(i) as char).to_digit(radix) {
        magnitude = magnitude
            .and_then(|m| m.checked_mul(u64::from(radix)))
            .and_then(|m| m.checked_add(u64::from(digit)));
        any_digit = true;
        i += 1;
    }
    any_digit.then_some(Scanned {
        negative,
        magnitude,
        end: i,
    })
}

impl Scanned {
    /// The value as `strtoll` (`%lli`) returns it: saturated to the `i64` range.
    pub(crate) fn to_i64(self) -> i64 {
        match (self.negative, self.magnitude) {
            (false, Some(m)) => i64::try_from(m).unwrap_or(i64::MAX),
            (false, None) => i64::MAX,
            (true, Some(m)) if m <= 1 << 63 => (m as i64).wrapping_neg(),
            (true, _) => i64::MIN,
        }
    }

    /// The value as `strtoull` (`%zx`, `%lx`) returns it: saturated on overflow, and a minus
    /// sign negates modulo 2^64.
    pub(crate) fn to_u64(self) -> u64 {
        match self.magnitude {
            None => u64::MAX,
            Some(m) if self.negative => m.wrapping_neg(),
            Some(m) => m,
        }
    }

    /// The value as glibc's `%d` stores it: read as a 64-bit `long`, then truncated to `int`.
    pub(crate) fn to_c_int(self) -> i32 {
        self.to_i64() as i32
    }
}

/// `strtoull(text, NULL, 0)`: no digits give 0, trailing text is ignored. Also returns the
/// ignored trailing text, so that callers can warn about it.
pub(crate) fn strtoull_auto(text: &str) -> (u64, &str) {
    match scan(text.as_bytes(), Base::Auto) {
        Some(s) => (s.to_u64(), text.get(s.end..).unwrap_or_default()),
        None => (0, text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn auto(s: &str) -> Option<(i64, usize)> {
        scan(s.as_bytes(), Base::Auto).map(|r| (r.to_i64(), r.end))
    }

    fn hex(s: &str) -> Option<(u64, usize)> {
        scan(s.as_bytes(), Base::Hex).map(|r| (r.to_u64(), r.end))
    }

    /// Cases measured with glibc 2.36 `sscanf("%lli")`, `("%zx")`, `("%d")` and `strtoull`.
    #[test]
    fn measured_glibc_cases() {
        assert_eq!(auto("0x10"), Some((16, 4)));
        assert_eq!(auto("010"), Some((8, 3)));
        assert_eq!(auto("08"), Some((0, 1)));
        assert_eq!(auto("019"), Some((1, 2)));
        assert_eq!(auto("0x"), Some((0, 2)));
        assert_eq!(auto("0xg"), Some((0, 2)));
        assert_eq!(auto("0x1g"), Some((1, 3)));
        assert_eq!(auto("10abc"), Some((10, 2)));
        assert_eq!(auto("1e3"), Some((1, 1)));
        assert_eq!(auto("  -0x20000"), Some((-0x20000, 10)));
        assert_eq!(auto("+12"), Some((12, 3)));
        assert_eq!(auto("-"), None);
        assert_eq!(auto("- 1"), None);
        assert_eq!(auto("+"), None);
        assert_eq!(auto("x10"), None);
        assert_eq!(auto("99999999999999999999").map(|r| r.0), Some(i64::MAX));
        assert_eq!(auto("-99999999999999999999").map(|r| r.0), Some(i64::MIN));
        assert_eq!(auto("0x8000000000000000").map(|r| r.0), Some(i64::MAX));
        assert_eq!(auto("-0x8000000000000000").map(|r| r.0), Some(i64::MIN));
        assert_eq!(auto("-0x8000000000000001").map(|r| r.0), Some(i64::MIN));

        assert_eq!(hex("4000"), Some((0x4000, 4)));
        assert_eq!(hex("16384"), Some((0x16384, 5)));
        assert_eq!(hex("0X1F"), Some((0x1F, 4)));
        assert_eq!(hex("0b1"), Some((0xB1, 3)));
        assert_eq!(hex("abc"), Some((0xABC, 3)));
        assert_eq!(hex("0x"), Some((0, 2)));
        assert_eq!(hex("0x0x10"), Some((0, 3)));
        assert_eq!(hex("-1"), Some((u64::MAX, 2)));
        assert_eq!(hex("-0x10"), Some((0xFFFF_FFFF_FFFF_FFF0, 5)));
        assert_eq!(hex("-ffffffffffffffff"), Some((1, 17)));
        assert_eq!(hex("fffffffffffffffffffff").map(|r| r.0), Some(u64::MAX));
        assert_eq!(hex("-fffffffffffffffffffff").map(|r| r.0), Some(u64::MAX));
        assert_eq!(hex("junk"), None);

        let int = |s: &str| scan(s.as_bytes(), Base::Decimal).map(Scanned::to_c_int);
        assert_eq!(int("99999999999"), Some(1_215_752_191));
        assert_eq!(int("2147483648"), Some(i32::MIN));
        assert_eq!(int("-5"), Some(-5));
        assert_eq!(int("0x1"), Some(0));
        assert_eq!(int("1x"), Some(1));

        assert_eq!(strtoull_auto("0x4000"), (0x4000, ""));
        assert_eq!(strtoull_auto(" 010"), (8, ""));
        assert_eq!(strtoull_auto("12abc"), (12, "abc"));
        assert_eq!(strtoull_auto("abc"), (0, "abc"));
        assert_eq!(strtoull_auto(""), (0, ""));
        assert_eq!(strtoull_auto("-1").0, u64::MAX);
        assert_eq!(strtoull_auto("-0x20000").0 as i64, -0x20000);
        assert_eq!(strtoull_auto("-18446744073709551615").0, 1);
        assert_eq!(strtoull_auto("18446744073709551616").0, u64::MAX);
        assert_eq!(strtoull_auto("0o17").0, 0);
        assert_eq!(strtoull_auto("1_000").0, 1);
        assert_eq!(strtoull_auto("\x0b\x0c\r7").0, 7);
    }

    proptest! {
        /// Any i64 written in any of C's notations reads back as itself, whatever follows it.
        #[test]
        fn auto_base_reads_every_notation(v in any::<i64>(), style in 0u8..3, upper: bool, pad in "[ \t]{0,3}", tail in "([ \t][0-9a-z]{0,4})?") {
            let m = v.unsigned_abs();
            let digits = match style {
                0 => m.to_string(),
                1 if upper => format!("0X{m:X}"),
                1 => format!("0x{m:x}"),
                _ if m == 0 => "0".to_string(),
                _ => format!("0{m:o}"),
            };
            let sign = if v < 0 { "-" } else if upper { "+" } else { "" };
            let text = format!("{pad}{sign}{digits}{tail}");
            let r = scan(text.as_bytes(), Base::Auto).unwrap();
            prop_assert_eq!(r.to_i64(), v);
            prop_assert_eq!(r.end, pad.len() + sign.len() + digits.len());
        }

        /// The size columns are hexadecimal with or without `0x`.
        #[test]
        fn hex_reads_with_and_without_prefix(v in any::<u64>(), prefix: bool) {
            let text = if prefix { format!("0x{v:x}") } else { format!("{v:x}") };
            prop_assert_eq!(hex(&text), Some((v, text.len())));
        }

        /// Scanning never panics and never reads past its input.
        #[test]
        fn scan_is_total(s in any::<Vec<u8>>()) {
            for base in [Base::Auto, Base::Hex, Base::Decimal] {
                if let Some(r) = scan(&s, base) {
                    prop_assert!(r.end <= s.len());
                }
            }
        }
    }
}
