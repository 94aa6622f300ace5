//! Decodes arbitrary bytes as a GRUB environment block and as abup's pair of blocks; whatever
//! decodes is then edited, and the invariants are checked: the size never changes, a new
//! variable reads back, damaged blocks are refused rather than edited, and a planned update is
//! the copy GRUB selects afterwards.
#![no_main]

use grub_env::{Change, EnvBlock, EnvPair, Error, LongWidth, SEQ_VAR, SIGNATURE};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 4] = ["a", "BOOT_ORDER", SEQ_VAR, "x y\\"];

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let name = NAMES[usize::from(control & 3)];
    let value: Vec<u8> = rest
        .iter()
        .take(usize::from(control >> 4) * 4)
        .copied()
        .filter(|&c| c != 0)
        .collect();
    let width = if control & 4 == 0 {
        LongWidth::Bits64
    } else {
        LongWidth::Bits32
    };

    // Half of the inputs get the signature for free, so the fuzzer spends its time on bodies.
    let signed = |bytes: &[u8]| {
        if control & 8 == 0 {
            bytes.to_vec()
        } else {
            [SIGNATURE, bytes].concat()
        }
    };

    if let Ok(block) = EnvBlock::from_bytes(signed(rest)) {
        check_block(block, name, &value);
    }

    let (first, second) = rest.split_at(rest.len() / 2);
    check_pair(&signed(first), &signed(second), width, &value);
});

fn check_block(block: EnvBlock, name: &str, value: &[u8]) {
    let size = block.size();
    for var in &block {
        assert!(!var.name.contains(&0) && !var.value.contains(&0));
    }
    let last = block.iter().filter(|v| v.name == name.as_bytes()).last();
    assert_eq!(block.get(name), last.map(|v| v.value));
    let fresh = block.get(name).is_none() && !block.iter().any(|v| v.name.contains(&0));
    let healthy = block.check_structure().is_ok();

    let mut edited = block.clone();
    match edited.set(name, value) {
        Ok(()) => {
            assert!(healthy);
            assert_eq!(edited.size(), size);
            assert!(edited.check_structure().is_ok());
            if fresh {
                assert_eq!(edited.get(name).as_deref(), Some(value));
            }
        }
        Err(Error::Broken { .. }) => {
            assert!(!healthy);
            assert_eq!(edited, block);
        }
        Err(Error::NoSpace { needed, free, .. }) => {
            assert!(needed > free);
            assert_eq!(edited, block);
        }
        Err(e) => panic!("unexpected error: {e}"),
    }

    let mut edited = block.clone();
    if edited.unset(name).is_ok() {
        assert_eq!(edited.size(), size);
        assert!(edited.check_structure().is_ok());
    }

    let mut booted = block;
    if booted.save_env(&[(name, Some(value))]).is_ok() {
        assert_eq!(booted.size(), size);
    }
}

fn check_pair(first: &[u8], second: &[u8], width: LongWidth, value: &[u8]) {
    let decode = || {
        EnvPair::new(
            EnvBlock::from_bytes(first.to_vec()),
            EnvBlock::from_bytes(second.to_vec()),
            width,
        )
    };
    let pair = decode();
    let selected = pair.selected();
    assert!(selected < 2);
    let Ok(current) = pair.current() else {
        assert!(pair.plan_update(&[]).is_err());
        return;
    };
    match pair.plan_update(&[Change::set("BOOT_ORDER", value)]) {
        Ok(plan) => {
            assert_eq!(plan.index, 1 - selected);
            assert_eq!(plan.block.size(), current.size());
            let mut after = decode();
            after.commit(plan);
            assert_eq!(after.selected(), 1 - selected);
            let now = after.current().ok();
            assert_eq!(
                now.and_then(|b| b.get("BOOT_ORDER")).as_deref(),
                Some(value)
            );
        }
        Err(
            Error::Broken { .. }
            | Error::NoSpace { .. }
            | Error::CopySizeMismatch { .. }
            | Error::SequenceExhausted { .. }
            | Error::Shadowed { .. },
        ) => {}
        Err(e) => panic!("unexpected error: {e}"),
    }
    if let Ok(plan) = pair.boot_save_env(&[("BOOT_A_LEFT", Some(value))]) {
        assert_eq!(plan.index, selected);
        assert_eq!(plan.block.size(), current.size());
    }
}
