//! Lowercase hexadecimal, the only spelling of hashes and key ids in manifests and messages.

use std::fmt;

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Exactly 64 lowercase hex digits to 32 bytes. Uppercase is refused so that every hash has
/// one spelling.
pub fn decode32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

fn digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Displays bytes as lowercase hex without allocating (for error messages and logs).
#[derive(Debug)]
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        let s = encode(&bytes);
        assert_eq!(s.len(), 64);
        assert_eq!(decode32(&s), Some(bytes));
        assert_eq!(Hex(&bytes).to_string(), s);
        assert_eq!(encode(&[0x00, 0xff, 0x0a]), "00ff0a");
    }

    #[test]
    fn refuses_bad_hex() {
        let good = "ab".repeat(32);
        assert!(decode32(&good).is_some());
        assert_eq!(decode32(&good[..62]), None, "too short");
        assert_eq!(decode32(&format!("{good}00")), None, "too long");
        assert_eq!(decode32(&good.to_uppercase()), None, "uppercase");
        assert_eq!(decode32(&format!("g{}", &good[1..])), None, "not a digit");
        assert_eq!(decode32(&format!("é{}", &good[2..])), None, "non-ASCII");
        assert_eq!(decode32(""), None);
    }
}
