//! The legacy `fw_env.config`, read line by line as libubootenv reads it with
//! `sscanf(line, "%ms %lli %zx %zx %lx %d")`.

use std::path::PathBuf;

use super::cnum::{is_c_space, scan, Base, Scanned};
use super::{check_env_size, Config, CopyConfig};
use crate::error::{Error, Result};

/// The fields of one line, as many as `sscanf` matched.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line<'a> {
    device: &'a str,
    offset: Option<i64>,
    size: Option<u64>,
    sector_size: Option<u64>,
    sectors: Option<u64>,
    disable_lock: Option<i32>,
}

/// Scans one line; `None` when not even the device name is there.
fn scan_line(line: &str) -> Option<Line<'_>> {
    let bytes = line.as_bytes();
    let start = bytes.iter().position(|&b| !is_c_space(b))?;
    let len = bytes[start..]
        .iter()
        .position(|&b| is_c_space(b))
        .unwrap_or(bytes.len() - start);
    let device = line.get(start..start + len)?;
    let mut pos = start + len;
    let mut next = |base: Base| {
        let scanned = scan(bytes.get(pos..).unwrap_or_default(), base)?;
        pos += scanned.end;
        Some(scanned)
    };
    let mut fields = Line {
        device,
        offset: None,
        size: None,
        sector_size: None,
        sectors: None,
        disable_lock: None,
    };
    scan_numbers(&mut fields, &mut next);
    Some(fields)
}

/// Fills the numeric fields in order; like sscanf, stops at the first conversion that fails and
/// leaves the later fields unset.
fn scan_numbers(
    fields: &mut Line<'_>,
    next: &mut impl FnMut(Base) -> Option<Scanned>,
) -> Option<()> {
    fields.offset = Some(next(Base::Auto)?.to_i64());
    fields.size = Some(next(Base::Hex)?.to_u64());
    fields.sector_size = Some(next(Base::Hex)?.to_u64());
    fields.sectors = Some(next(Base::Hex)?.to_u64());
    fields.disable_lock = Some(next(Base::Decimal)?.to_c_int());
    Some(())
}

/// Parses `fw_env.config` text.
///
/// As in libubootenv: a line whose first byte is `#` is a comment; a line with fewer than three
/// fields (device, offset, size) is skipped; reading stops after the second entry; the size of
/// the first entry is the environment size and the second must match it.
pub(super) fn parse(text: &str) -> Result<Config> {
    let mut copies: Vec<CopyConfig> = Vec::new();
    let mut env_size = 0u64;
    for (index, raw) in text.split('\n').enumerate() {
        let line_no = index + 1;
        // C string functions end the line at its first NUL.
        let line = raw.split('\0').next().unwrap_or_default();
        if raw.starts_with('#') {
            continue;
        }
        let Some(fields) = scan_line(line) else {
            continue;
        };
        let (Some(offset), Some(size)) = (fields.offset, fields.size) else {
            if !line.trim().is_empty() {
                log::debug!("fw_env.config line {line_no} has fewer than 3 fields, skipped");
            }
            continue;
        };
        let bad = |reason: String| Error::ConfigLine {
            line: line_no,
            text: raw.trim_end().to_string(),
            reason,
        };
        if copies.len() == 2 {
            log::warn!(
                "fw_env.config line {line_no}: a third entry is ignored (libubootenv reads two)"
            );
            break;
        }
        if copies.is_empty() {
            env_size = size;
        } else if size != env_size {
            return Err(bad(format!(
                "size 0x{size:x} differs from the first copy's 0x{env_size:x}; both copies must be the same size (the size column is hexadecimal even without 0x)"
            )));
        }
        copies.push(CopyConfig {
            path: PathBuf::from(fields.device),
            offset,
            sector_size: fields.sector_size,
            sectors: fields.sectors,
            disable_lock: fields.disable_lock.is_some_and(|d| d != 0),
        });
        check_env_size(env_size, copies.len()).map_err(|reason| {
            bad(format!(
                "{reason} (the size column is hexadecimal, with or without 0x)"
            ))
        })?;
    }
    if copies.is_empty() {
        return Err(Error::ConfigEmpty);
    }
    Config::new(copies, env_size as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::Layout;

    fn line(s: &str) -> Option<Line<'_>> {
        scan_line(s)
    }

    /// Each case measured with glibc's sscanf and libubootenv's format string.
    #[test]
    fn lines_scan_like_sscanf() {
        let l = line("/dev/x 0x10 4000 200").unwrap();
        assert_eq!(
            (l.offset, l.size, l.sector_size, l.sectors),
            (Some(16), Some(0x4000), Some(0x200), None)
        );
        // Trailing junk on a number becomes the next field.
        let l = line("/dev/x 10abc 4000").unwrap();
        assert_eq!(
            (l.offset, l.size, l.sector_size),
            (Some(10), Some(0xABC), Some(0x4000))
        );
        let l = line("/dev/x 08 4000").unwrap();
        assert_eq!(
            (l.offset, l.size, l.sector_size),
            (Some(0), Some(8), Some(0x4000))
        );
        let l = line("/dev/x 0x 4000").unwrap();
        assert_eq!((l.offset, l.size), (Some(0), Some(0x4000)));
        let l = line("/dev/x 0xg 4000").unwrap();
        assert_eq!((l.offset, l.size), (Some(0), None));
        let l = line("/dev/x 0 4000junk 5").unwrap();
        assert_eq!((l.size, l.sector_size), (Some(0x4000), None));
        let l = line("  /dev/x\t0\t4000\r").unwrap();
        assert_eq!((l.device, l.size), ("/dev/x", Some(0x4000)));
        let l = line("/dev/x 0 4000 2000 3 99999999999").unwrap();
        assert_eq!((l.sectors, l.disable_lock), (Some(3), Some(1_215_752_191)));
        let l = line("/dev/x 0-1 4000").unwrap();
        assert_eq!(
            (l.offset, l.size, l.sector_size),
            (Some(0), Some(u64::MAX), Some(0x4000))
        );
        let l = line("/dev/x - 4000").unwrap();
        assert_eq!(l.offset, None);
        assert_eq!(line("   "), None);
    }

    #[test]
    fn single_and_redundant() {
        let c = parse("# comment\n/boot/uboot.env 0x0 0x4000\n").unwrap();
        assert_eq!(c.layout(), Layout::Single);
        assert_eq!(c.env_size(), 0x4000);
        assert_eq!(c.copies()[0].path, PathBuf::from("/boot/uboot.env"));
        let c = parse("/dev/mmcblk0 0xC0000 20000\n/dev/mmcblk0 -0x20000 0x20000").unwrap();
        assert_eq!(c.layout(), Layout::Redundant);
        assert_eq!(c.copies()[1].offset, -0x20000);
        assert_eq!(c.env_size(), 0x20000);
    }

    #[test]
    fn comments_short_lines_and_extra_entries() {
        let text =
            "#/dev/a 0 4000\n/dev/b\n/dev/c 0\n\n/dev/d 0 100\n  # x\n/dev/e 0 100\n/dev/f 0 100\n";
        let c = parse(text).unwrap();
        let paths: Vec<_> = c.copies().iter().map(|c| c.path.clone()).collect();
        assert_eq!(paths, [PathBuf::from("/dev/d"), PathBuf::from("/dev/e")]);
        // A NUL ends the line for C.
        let c = parse("/dev/x 0 100\0 junk\n").unwrap();
        assert_eq!(c.env_size(), 0x100);
    }

    #[test]
    fn bad_lines_name_the_line() {
        let err = parse("/dev/x 0 0\n").unwrap_err();
        assert!(
            matches!(&err, Error::ConfigLine { line: 1, text, .. } if text == "/dev/x 0 0"),
            "{err}"
        );
        let err = parse("# c\n/dev/x 0 4000\n/dev/x 0x4000 2000\n").unwrap_err();
        assert!(matches!(&err, Error::ConfigLine { line: 3, .. }), "{err}");
        assert!(err.to_string().contains("0x2000"), "{err}");
        let err = parse("/dev/x 0 2000000\n").unwrap_err();
        assert!(matches!(&err, Error::ConfigLine { line: 1, .. }), "{err}");
        let err = parse("/dev/x 0 5\n").unwrap_err();
        assert!(matches!(&err, Error::ConfigLine { line: 1, .. }), "{err}");
        assert!(parse("/dev/x 0 6\n").is_ok());
        assert!(matches!(
            parse("/dev/x 0 6\n/dev/x 6 6\n"),
            Err(Error::ConfigLine { line: 2, .. })
        ));
        assert!(matches!(parse("# nothing\n\n"), Err(Error::ConfigEmpty)));
    }
}
