//! Decodes arbitrary bytes as a single U-Boot environment copy and as a redundant pair. Whatever
//! decodes must encode and decode back to itself (unless the area was full to its last byte, as
//! libubootenv leaves it), and a planned update of a pair must become the current copy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use u_boot_env::{plan_update, Endianness, Env, Error, Header, Layout, RawCopy, RawEnv};

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let endianness = if control & 1 == 0 {
        Endianness::Little
    } else {
        Endianness::Big
    };
    // Half of the inputs get a correct CRC for free, so the fuzzer spends its time on bodies.
    let fix_crc = control & 2 != 0;
    let stored = |bytes: &[u8], layout: Layout| {
        let mut bytes = bytes.to_vec();
        if fix_crc && bytes.len() >= layout.header_len() {
            let crc = crc32fast_hash(&bytes[layout.header_len()..]);
            let crc = match endianness {
                Endianness::Little => crc.to_le_bytes(),
                Endianness::Big => crc.to_be_bytes(),
            };
            bytes[..4].copy_from_slice(&crc);
        }
        bytes
    };

    let single = stored(rest, Layout::Single);
    check_copy(&single, Layout::Single, endianness);

    let (first, second) = rest.split_at(rest.len() / 2);
    let (first, second) = (
        stored(first, Layout::Redundant),
        stored(second, Layout::Redundant),
    );
    check_copy(&first, Layout::Redundant, endianness);
    if let Ok(pair) = RawEnv::redundant(&first, &second, endianness) {
        check_pair(&pair, [&first, &second], control);
    }
});

/// zlib's CRC-32, computed here independently of the crate under test.
fn crc32fast_hash(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn check_copy(bytes: &[u8], layout: Layout, endianness: Endianness) {
    let Ok(copy) = RawCopy::parse(bytes, layout, endianness) else {
        assert!(bytes.len() < layout.min_copy_len());
        return;
    };
    let env = Env::from_copy(&copy);
    for (name, value) in env.iter() {
        assert_eq!(copy.get(name), Some(value));
    }
    if !copy.is_valid() {
        assert!(matches!(
            Env::decode(bytes, layout, endianness),
            Err(Error::BadCrc { .. })
        ));
        return;
    }
    assert_eq!(
        Env::decode(bytes, layout, endianness).ok().as_ref(),
        Some(&env)
    );
    let header = match copy.flags() {
        None => Header::Single,
        Some(flags) => Header::Redundant { flags },
    };
    match env.encode(header, bytes.len(), 0, endianness) {
        Ok(again) => {
            assert_eq!(again.len(), bytes.len());
            assert_eq!(Env::decode(&again, layout, endianness).ok(), Some(env));
        }
        Err(Error::TooLarge { needed, available }) => assert!(needed <= available + 2),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn check_pair(pair: &RawEnv<'_>, bytes: [&[u8]; 2], control: u8) {
    let current = pair.current();
    let mut next = Env::new();
    next.set("BOOT_ORDER", if control & 4 == 0 { "A B" } else { "B A" })
        .unwrap_or_else(|e| panic!("{e}"));
    match plan_update(pair, &next, control) {
        Ok(write) => {
            let current = current.unwrap_or_else(|| panic!("planned without a valid copy"));
            assert_eq!(write.copy, current.other());
            let mut after = [bytes[0].to_vec(), bytes[1].to_vec()];
            after[write.copy.index()] = write.bytes;
            let after = RawEnv::redundant(&after[0], &after[1], pair.endianness())
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(after.current(), Some(write.copy));
            let copy = after
                .copy(write.copy)
                .unwrap_or_else(|| panic!("no {}", write.copy));
            assert_eq!(Env::from_copy(copy), next);
            let old = pair.copy(current).and_then(|c| c.flags()).unwrap_or(0);
            assert_eq!(copy.flags(), Some(old.wrapping_add(1)));
        }
        Err(Error::NoValidEnvironment { faults }) => {
            assert!(current.is_none());
            assert_eq!(faults.len(), 2);
        }
        Err(Error::TooLarge { .. }) => assert!(current.is_some()),
        Err(e) => panic!("unexpected error: {e}"),
    }
}
