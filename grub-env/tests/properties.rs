//! Properties that need no external tool: decoding never panics, edits keep the size and read
//! back, listing agrees with `get`, and the pair survives any sequence of updates, boots and
//! interrupted writes.

// Test helpers panic on purpose: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use grub_env::{Change, EnvBlock, EnvPair, Error, LongWidth, SEQ_VAR, SIGNATURE};
use proptest::prelude::*;

const NAME_BYTES: &[u8] = b"abAB_#\\ \t\r\xc3\xff";
const VALUE_BYTES: &[u8] = b"\\\n=# \t\rax\x80\xff\x01";

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::sample::select(vec![b"a".to_vec(), b"b".to_vec(), b"ab".to_vec()]),
        1 => prop::collection::vec(prop::sample::select(NAME_BYTES.to_vec()), 1..5)
            .prop_filter("valid name", |n| grub_env::validate_name(n).is_ok()),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(prop::sample::select(VALUE_BYTES.to_vec()), 0..10),
        1 => prop::collection::vec(prop::sample::select(VALUE_BYTES.to_vec()), 0..300),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Set(Vec<u8>, Vec<u8>),
    Unset(Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (name(), value()).prop_map(|(n, v)| Op::Set(n, v)),
        1 => name().prop_map(Op::Unset),
    ]
}

/// Bytes that look enough like a block to get past the signature most of the time.
fn block_like() -> impl Strategy<Value = Vec<u8>> {
    let body = prop::collection::vec(prop::sample::select(b"ab=#\\\n\0 x".to_vec()), 0..200);
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..100),
        4 => body.prop_map(|body| [SIGNATURE, &body[..]].concat()),
    ]
}

fn get(block: &EnvBlock, name: &[u8]) -> Option<Vec<u8>> {
    block.get(name).map(|value| value.into_owned())
}

fn sizes() -> impl Strategy<Value = usize> {
    prop_oneof![Just(512usize), Just(1024usize), 95..=2048usize]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decoding_never_panics_and_lists_agree_with_get(bytes in block_like(), probe in name()) {
        let Ok(mut block) = EnvBlock::from_bytes(bytes.clone()) else {
            return Ok(());
        };
        prop_assert_eq!(block.as_bytes(), &bytes[..]);
        let mut last: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for var in &block {
            prop_assert!(!var.name.contains(&0) && !var.value.contains(&0));
            last.insert(var.name.to_vec(), var.value.to_vec());
        }
        for (name, value) in &last {
            prop_assert_eq!(get(&block, name), Some(value.to_vec()));
        }
        prop_assert_eq!(get(&block, &probe), last.get(&probe).cloned());

        // Editing is either refused as damaged or works like on any healthy block.
        let before = block.clone();
        match block.set(&probe, "v") {
            Ok(()) => {
                prop_assert!(block.check_structure().is_ok());
                prop_assert_eq!(block.size(), before.size());
            }
            Err(Error::Broken { .. }) => {
                prop_assert!(before.check_structure().is_err());
                prop_assert_eq!(&block, &before);
            }
            Err(Error::NoSpace { .. }) => prop_assert_eq!(&block, &before),
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
        let mut model = before.clone();
        let _ = model.save_env(&[(&probe[..], None::<&[u8]>)]);
        prop_assert_eq!(model.size(), before.size());
    }

    #[test]
    fn edits_keep_the_size_read_back_and_keep_insertion_order(
        size in sizes(),
        ops in prop::collection::vec(op(), 1..30),
    ) {
        let mut block = EnvBlock::new(size).unwrap();
        // Present names in the order they were first added.
        let mut model: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for op in &ops {
            let before = block.clone();
            match op {
                Op::Set(name, value) => match block.set(name, value) {
                    Ok(()) => {
                        prop_assert_eq!(get(&block, name), Some(value.to_vec()));
                        match model.iter_mut().find(|(n, _)| n == name) {
                            Some(entry) => entry.1 = value.clone(),
                            None => model.push((name.clone(), value.clone())),
                        }
                    }
                    Err(Error::NoSpace { needed, free, .. }) => {
                        prop_assert!(needed > free);
                        prop_assert_eq!(&block, &before);
                    }
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                },
                Op::Unset(name) => {
                    let removed = block.unset(name).unwrap();
                    prop_assert_eq!(removed, model.iter().any(|(n, _)| n == name));
                    prop_assert_eq!(block.get(name), None);
                    model.retain(|(n, _)| n != name);
                }
            }
            prop_assert_eq!(block.size(), size);
            prop_assert!(block.check_structure().is_ok());
            let listed: Vec<(Vec<u8>, Vec<u8>)> = block
                .iter()
                .map(|v| (v.name.to_vec(), v.value.into_owned()))
                .collect();
            prop_assert_eq!(&listed, &model);
            let reread = EnvBlock::from_bytes(block.as_bytes().to_vec()).unwrap();
            prop_assert_eq!(&reread, &block);
        }
    }

    #[test]
    fn the_pair_always_boots_the_last_complete_write(
        steps in prop::collection::vec((0..4u8, value(), any::<bool>()), 1..25),
    ) {
        let mut pair = EnvPair::create(512, LongWidth::Bits64).unwrap();
        let mut seq = 0;
        for (kind, value, flag) in steps {
            let before = pair.current().unwrap().clone();
            let current = pair.selected();
            let value = &value[..value.len().min(40)];
            match kind {
                // An update that completes.
                0 | 1 => {
                    let plan = pair.plan_update(&[Change::set("BOOT_ORDER", value)]).unwrap();
                    prop_assert_eq!(plan.index, 1 - current);
                    prop_assert_eq!(plan.block.size(), 512);
                    pair.commit(plan.clone());
                    seq += 1;
                    prop_assert_eq!(pair.selected(), plan.index);
                    prop_assert_eq!(pair.current().unwrap(), &plan.block);
                    prop_assert_eq!(get(pair.current().unwrap(), b"BOOT_ORDER"), Some(value.to_vec()));
                    prop_assert_eq!(
                        pair.current().unwrap().get_str(SEQ_VAR).unwrap(),
                        Some(seq.to_string())
                    );
                }
                // An update cut short: the written copy is left as garbage or as it was.
                2 => {
                    let plan = pair.plan_update(&[Change::set("BOOT_ORDER", "X")]).unwrap();
                    if flag {
                        let garbage = EnvBlock::from_bytes(vec![0xff; 512]);
                        let copies = if plan.index == 0 {
                            [garbage, Ok(before.clone())]
                        } else {
                            [Ok(before.clone()), garbage]
                        };
                        let [c0, c1] = copies;
                        pair = EnvPair::new(c0, c1, LongWidth::Bits64);
                    }
                    prop_assert_eq!(pair.selected(), current);
                    prop_assert_eq!(pair.current().unwrap(), &before);
                }
                // A boot that counts a try down with save_env.
                _ => {
                    let plan = pair.boot_save_env(&[("BOOT_A_LEFT", Some(value))]).unwrap();
                    prop_assert_eq!(plan.index, current);
                    pair.commit(plan);
                    prop_assert_eq!(pair.selected(), current);
                    prop_assert_eq!(
                        pair.current().unwrap().get(SEQ_VAR),
                        before.get(SEQ_VAR)
                    );
                }
            }
        }
    }

    #[test]
    fn any_plan_makes_grub_select_the_written_copy(
        seq0 in prop::option::of(prop::collection::vec(prop::sample::select(b"0123456789-x ".to_vec()), 0..12)),
        seq1 in prop::option::of(prop::collection::vec(prop::sample::select(b"0123456789-x ".to_vec()), 0..12)),
        width in prop_oneof![Just(LongWidth::Bits32), Just(LongWidth::Bits64)],
    ) {
        let copy = |seq: &Option<Vec<u8>>| {
            let mut block = EnvBlock::new(512).unwrap();
            if let Some(seq) = seq {
                block.set(SEQ_VAR, seq).unwrap();
            }
            block
        };
        let pair = EnvPair::new(Ok(copy(&seq0)), Ok(copy(&seq1)), width);
        match pair.plan_update(&[Change::set("K", "v")]) {
            Ok(plan) => {
                prop_assert_eq!(plan.index, 1 - pair.selected());
                let mut after = EnvPair::new(Ok(copy(&seq0)), Ok(copy(&seq1)), width);
                after.commit(plan.clone());
                prop_assert_eq!(after.selected(), plan.index);
                prop_assert_eq!(get(after.current().unwrap(), b"K"), Some(b"v".to_vec()));
            }
            Err(Error::SequenceExhausted { current }) => prop_assert_eq!(current, i32::MAX),
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }
}
