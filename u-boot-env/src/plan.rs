//! Which bytes to write where, decided from the stored copies alone.
//!
//! These functions are pure so that every power-cut point can be replayed in memory: apply a
//! planned write sector by sector to a copy of the stored bytes and check what a reader sees.

use crate::env::Env;
use crate::error::{CopyFault, Error, Result};
use crate::raw::{CopyId, Header, Layout, RawEnv};

/// One copy's new bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedWrite {
    /// The copy to overwrite.
    pub copy: CopyId,
    /// Its complete new content, exactly the copy's size.
    pub bytes: Vec<u8>,
}

/// Plans storing `env` as the new environment.
///
/// For a redundant pair only the copy that is not current is written (a copy with a bad CRC is
/// never current), with the current copy's counter plus one, wrapping 255 to 0; the current copy
/// stays untouched, so a power cut during the write leaves the previous environment in force. A
/// single copy is rewritten in place, which is not power-fail safe: that is the layout's nature.
///
/// An invalid environment is never silently replaced: with no valid copy this fails, and
/// [`plan_initialize`] is the explicit way to write a first environment.
pub fn plan_update(stored: &RawEnv<'_>, env: &Env, fill: u8) -> Result<PlannedWrite> {
    let Some(current) = stored.current() else {
        return Err(Error::NoValidEnvironment {
            faults: faults(stored),
        });
    };
    let copy = stored.copy(current).ok_or(Error::NoValidEnvironment {
        faults: faults(stored),
    })?;
    let (target, header) = match stored.layout() {
        Layout::Single => (CopyId::First, Header::Single),
        Layout::Redundant => {
            let flags = copy.flags().unwrap_or(0).wrapping_add(1);
            (current.other(), Header::Redundant { flags })
        }
    };
    log::debug!("current environment is {current}; writing {target} with {header:?}");
    Ok(PlannedWrite {
        copy: target,
        bytes: env.encode(header, copy.size(), fill, stored.endianness())?,
    })
}

/// Plans writing a first environment into an area that holds no valid one (blank, erased or
/// corrupt), for provisioning.
///
/// Both copies of a redundant pair get the same content and counter 1, the state produced by
/// flashing one `mkenvimage -r` image to both offsets: copy 0 is current and the next update goes
/// to copy 1. Copy 0 is written first, so a power cut between the two writes leaves a valid copy 0.
/// Refuses an area with a valid copy, so that a mistaken offset cannot wipe a live environment.
pub fn plan_initialize(stored: &RawEnv<'_>, env: &Env, fill: u8) -> Result<Vec<PlannedWrite>> {
    if let Some(copy) = stored.current() {
        return Err(Error::AlreadyInitialized { copy });
    }
    let header = match stored.layout() {
        Layout::Single => Header::Single,
        Layout::Redundant => Header::Redundant { flags: 1 },
    };
    stored
        .copies()
        .map(|(id, copy)| {
            Ok(PlannedWrite {
                copy: id,
                bytes: env.encode(header, copy.size(), fill, stored.endianness())?,
            })
        })
        .collect()
}

/// The CRC faults of the invalid copies, for error messages.
pub(crate) fn faults(stored: &RawEnv<'_>) -> Vec<CopyFault> {
    stored
        .copies()
        .filter(|(_, copy)| !copy.is_valid())
        .map(|(id, copy)| CopyFault::BadCrc {
            copy: id,
            stored: copy.stored_crc(),
            computed: copy.computed_crc(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::Endianness;
    use proptest::prelude::*;

    const SIZE: usize = 0x40;
    const LE: Endianness = Endianness::Little;

    fn env_with(counter: u32) -> Env {
        let mut env = Env::new();
        env.set("counter", counter.to_string()).unwrap();
        env
    }

    /// Both copies of a redundant pair, as one buffer of two `SIZE` windows.
    fn pair(first: Option<(u8, &Env)>, second: Option<(u8, &Env)>) -> Vec<u8> {
        let mut out = Vec::new();
        for copy in [first, second] {
            match copy {
                Some((flags, env)) => out.extend(
                    env.encode(Header::Redundant { flags }, SIZE, 0, LE)
                        .unwrap(),
                ),
                None => out.extend(std::iter::repeat_n(0xA5, SIZE)),
            }
        }
        out
    }

    fn view(bytes: &[u8]) -> RawEnv<'_> {
        RawEnv::redundant(&bytes[..SIZE], &bytes[SIZE..], LE).unwrap()
    }

    fn apply(bytes: &mut [u8], write: &PlannedWrite) {
        let start = write.copy.index() * SIZE;
        bytes[start..start + SIZE].copy_from_slice(&write.bytes);
    }

    fn current_env(bytes: &[u8]) -> Option<Env> {
        view(bytes).current_copy().map(|c| Env::from_copy(&c))
    }

    #[test]
    fn single_copy_is_rewritten_in_place() {
        let old = env_with(1).encode(Header::Single, SIZE, 0, LE).unwrap();
        let stored = RawEnv::single(&old, LE).unwrap();
        let write = plan_update(&stored, &env_with(2), 0).unwrap();
        assert_eq!(write.copy, CopyId::First);
        assert_eq!(
            Env::decode(&write.bytes, Layout::Single, LE).unwrap(),
            env_with(2)
        );
    }

    #[test]
    fn redundant_update_writes_the_inactive_copy_with_the_next_counter() {
        let bytes = pair(Some((7, &env_with(1))), Some((6, &env_with(0))));
        let write = plan_update(&view(&bytes), &env_with(2), 0).unwrap();
        assert_eq!(write.copy, CopyId::Second);
        assert_eq!(write.bytes[4], 8);
    }

    #[test]
    fn a_bad_copy_is_the_target_even_with_a_larger_counter() {
        let mut bytes = pair(Some((3, &env_with(1))), Some((200, &env_with(0))));
        bytes[SIZE + 20] ^= 0xFF;
        let write = plan_update(&view(&bytes), &env_with(2), 0).unwrap();
        assert_eq!(write.copy, CopyId::Second);
        assert_eq!(write.bytes[4], 4);
        let mut bytes = pair(Some((3, &env_with(1))), Some((200, &env_with(0))));
        bytes[20] ^= 0xFF;
        let write = plan_update(&view(&bytes), &env_with(2), 0).unwrap();
        assert_eq!(write.copy, CopyId::First);
        assert_eq!(write.bytes[4], 201);
    }

    #[test]
    fn the_counter_wraps_from_255_to_0_and_0_is_newer() {
        let mut bytes = pair(Some((254, &env_with(1))), Some((253, &env_with(0))));
        let w = plan_update(&view(&bytes), &env_with(2), 0).unwrap();
        assert_eq!((w.copy, w.bytes[4]), (CopyId::Second, 255));
        apply(&mut bytes, &w);
        let w = plan_update(&view(&bytes), &env_with(3), 0).unwrap();
        assert_eq!((w.copy, w.bytes[4]), (CopyId::First, 0));
        apply(&mut bytes, &w);
        assert_eq!(view(&bytes).current(), Some(CopyId::First));
        assert_eq!(current_env(&bytes), Some(env_with(3)));
        let w = plan_update(&view(&bytes), &env_with(4), 0).unwrap();
        assert_eq!((w.copy, w.bytes[4]), (CopyId::Second, 1));
    }

    #[test]
    fn no_valid_copy_is_an_error_not_a_repair() {
        let bytes = pair(None, None);
        let err = plan_update(&view(&bytes), &env_with(1), 0).unwrap_err();
        match &err {
            Error::NoValidEnvironment { faults } => assert_eq!(faults.len(), 2),
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            err.to_string().contains("copy 0: stored CRC 0xa5a5a5a5"),
            "{err}"
        );
        let blank = vec![0xFFu8; SIZE];
        let single = RawEnv::single(&blank, LE).unwrap();
        assert!(matches!(
            plan_update(&single, &env_with(1), 0),
            Err(Error::NoValidEnvironment { .. })
        ));
    }

    #[test]
    fn initialize_writes_both_copies_and_refuses_a_valid_area() {
        let mut bytes = pair(None, None);
        let writes = plan_initialize(&view(&bytes), &env_with(1), 0).unwrap();
        assert_eq!(writes.len(), 2);
        assert_eq!(writes[0].copy, CopyId::First);
        for w in &writes {
            apply(&mut bytes, w);
        }
        assert_eq!(view(&bytes).current(), Some(CopyId::First));
        assert_eq!(current_env(&bytes), Some(env_with(1)));
        assert!(matches!(
            plan_initialize(&view(&bytes), &env_with(2), 0),
            Err(Error::AlreadyInitialized {
                copy: CopyId::First
            })
        ));
        let w = plan_update(&view(&bytes), &env_with(2), 0).unwrap();
        assert_eq!((w.copy, w.bytes[4]), (CopyId::Second, 2));
    }

    #[test]
    fn too_large_update_is_refused_before_anything_is_written() {
        let bytes = pair(Some((1, &env_with(1))), None);
        let mut big = Env::new();
        big.set("k", "x".repeat(SIZE)).unwrap();
        assert!(matches!(
            plan_update(&view(&bytes), &big, 0),
            Err(Error::TooLarge { .. })
        ));
    }

    proptest! {
        /// Replays long update sequences: copies alternate, the counter increments mod 256 and
        /// wraps from 255 to 0, and the newest environment is always the one read back.
        #[test]
        fn update_sequences_alternate_and_count(start in any::<u8>(), n in 1usize..600) {
            let mut bytes = pair(Some((start, &env_with(0))), None);
            let mut expected_copy = CopyId::Second;
            let mut expected_flags = start;
            for i in 1..=n {
                let write = plan_update(&view(&bytes), &env_with(i as u32), 0).unwrap();
                expected_flags = expected_flags.wrapping_add(1);
                prop_assert_eq!(write.copy, expected_copy);
                prop_assert_eq!(write.bytes[4], expected_flags);
                apply(&mut bytes, &write);
                prop_assert_eq!(view(&bytes).current(), Some(expected_copy));
                prop_assert_eq!(current_env(&bytes), Some(env_with(i as u32)));
                expected_copy = expected_copy.other();
            }
        }

        /// A power cut after any number of 16-byte sectors of a planned write leaves either the
        /// old or the new environment current, never none and never a mixture.
        #[test]
        fn torn_writes_leave_old_or_new(first in any::<u8>(), second in any::<u8>(), old in 0u32..1000) {
            let mut bytes = pair(Some((first, &env_with(old))), Some((second, &env_with(old + 1))));
            let before = current_env(&bytes).unwrap();
            let write = plan_update(&view(&bytes), &env_with(9999), 0).unwrap();
            let start = write.copy.index() * SIZE;
            for sector in 0..=SIZE / 16 {
                let mut torn = bytes.clone();
                let end = sector * 16;
                torn[start..start + end].copy_from_slice(&write.bytes[..end]);
                let seen = current_env(&torn).unwrap();
                prop_assert!(seen == before || seen == env_with(9999), "sector {}: {:?}", sector, seen);
                if sector == 0 {
                    prop_assert_eq!(&seen, &before);
                }
            }
            apply(&mut bytes, &write);
            prop_assert_eq!(current_env(&bytes), Some(env_with(9999)));
        }
    }
}
