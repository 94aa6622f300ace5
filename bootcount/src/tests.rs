//! Every (state, operation) pair over every reachable-or-not state of two- and three-slot
//! boards, under both schemes, checked against what the operation promises; then the safety
//! properties the state machine exists for, checked from every state.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

const A: SlotId = SlotId(0);
const B: SlotId = SlotId(1);

fn slots(n: usize, scheme: Scheme) -> Slots {
    let names = ["A", "B", "C", "D"];
    let tries = if scheme == Scheme::RaucGrub { 1 } else { 3 };
    Slots::new(&names[..n], tries, scheme).unwrap()
}

/// Every ordered subset of the slots: the possible boot orders.
fn orders(n: usize) -> Vec<Vec<SlotId>> {
    let mut out = vec![vec![]];
    let mut frontier = vec![vec![]];
    for _ in 0..n {
        let mut next = Vec::new();
        for o in &frontier {
            for s in (0..n).map(SlotId) {
                if !o.contains(&s) {
                    let mut o2: Vec<SlotId> = o.clone();
                    o2.push(s);
                    next.push(o2);
                }
            }
        }
        out.extend(next.iter().cloned());
        frontier = next;
    }
    out
}

/// Every combination of `n` values from `values`.
fn product<T: Clone>(values: &[T], n: usize) -> Vec<Vec<T>> {
    let mut out = vec![vec![]];
    for _ in 0..n {
        out = out
            .into_iter()
            .flat_map(|p| {
                values.iter().map(move |v| {
                    let mut p2 = p.clone();
                    p2.push(v.clone());
                    p2
                })
            })
            .collect();
    }
    out
}

fn abup_states(slots: &Slots) -> Vec<AbupState> {
    let n = slots.len();
    // One value above the board's tries: a board whose configured count was lowered.
    let lefts: Vec<u8> = (0..=slots.tries() + 1).collect();
    let mut goods: Vec<Option<SlotId>> = vec![None];
    goods.extend(slots.ids().map(Some));
    let mut out = Vec::new();
    for order in orders(n) {
        for left in product(&lefts, n) {
            for &good in &goods {
                out.push(AbupState::new(slots, &order, &left, good));
            }
        }
    }
    out
}

fn rauc_states(slots: &Slots) -> Vec<RaucGrubState> {
    let n = slots.len();
    let mut out = Vec::new();
    for order in orders(n) {
        for ok in product(&[false, true], n) {
            for tried in product(&[false, true], n) {
                out.push(RaucGrubState::new(slots, &order, &ok, &tried));
            }
        }
    }
    out
}

fn all_states(n: usize) -> Vec<(Slots, State)> {
    let mut out = Vec::new();
    let s = slots(n, Scheme::Abup);
    out.extend(
        abup_states(&s)
            .into_iter()
            .map(|x| (s.clone(), State::Abup(x))),
    );
    let s = slots(n, Scheme::RaucGrub);
    out.extend(
        rauc_states(&s)
            .into_iter()
            .map(|x| (s.clone(), State::RaucGrub(x))),
    );
    out
}

fn left(s: &State, slot: SlotId) -> u8 {
    s.status(slot).tries_left
}

fn good_var(s: &State) -> Option<SlotId> {
    match s {
        State::Abup(a) => a.confirmed(),
        State::RaucGrub(_) => None,
    }
}

fn vars_of(state: &State) -> HashMap<String, String> {
    state
        .encode()
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
}

#[test]
fn state_space_is_what_the_tests_claim() {
    // 5 orders x 5^2 tries x 3 confirmations, and 5 orders x 2^2 x 2^2 flags.
    assert_eq!(abup_states(&slots(2, Scheme::Abup)).len(), 5 * 25 * 3);
    assert_eq!(rauc_states(&slots(2, Scheme::RaucGrub)).len(), 5 * 16);
    assert_eq!(orders(3).len(), 16);
}

#[test]
fn encode_then_decode_is_identity_for_every_state() {
    for n in [2, 3] {
        for (slots, state) in all_states(n) {
            let vars = vars_of(&state);
            let scheme = match state {
                State::Abup(_) => Scheme::Abup,
                State::RaucGrub(_) => Scheme::RaucGrub,
            };
            let back = State::decode(scheme, &slots, |k| vars.get(k).map(String::as_str));
            assert_eq!(back, state, "vars {vars:?}");
            // The encoding names exactly the scheme's variables, each once.
            let names: Vec<String> = state.encode().into_iter().map(|(k, _)| k).collect();
            assert_eq!(names, variable_names(scheme, &slots));
        }
    }
}

#[test]
fn activate_every_state_and_slot() {
    for n in [2, 3] {
        for (slots, before) in all_states(n) {
            for s in slots.ids() {
                let mut after = before.clone();
                after.activate(s);
                assert_eq!(after.order()[0], s);
                assert_eq!(
                    after.order().len(),
                    n,
                    "every slot stays reachable as fallback"
                );
                // The others keep their relative order.
                let rest_before: Vec<_> = before.order().iter().filter(|&&x| x != s).collect();
                let rest_after: Vec<_> = after.order()[1..]
                    .iter()
                    .filter(|x| before.order().contains(x))
                    .collect();
                assert_eq!(rest_before, rest_after);
                assert_eq!(left(&after, s), slots.tries());
                assert!(after.status(s).good);
                for x in slots.ids().filter(|&x| x != s) {
                    assert_eq!(left(&after, x), left(&before, x));
                }
                assert_eq!(
                    good_var(&after),
                    good_var(&before),
                    "activation confirms nothing"
                );
                assert_eq!(after.next_boot().slot, s);
            }
        }
    }
}

#[test]
fn mark_good_every_state_and_slot() {
    for n in [2, 3] {
        for (slots, before) in all_states(n) {
            for s in slots.ids() {
                let mut after = before.clone();
                after.mark_good(s);
                assert_eq!(left(&after, s), slots.tries());
                assert!(after.status(s).confirmed);
                assert!(after.order().contains(&s));
                if before.order().contains(&s) {
                    assert_eq!(after.order(), before.order());
                }
                for x in slots.ids().filter(|&x| x != s) {
                    match (&before, &after) {
                        (State::Abup(_), State::Abup(a)) => {
                            assert_eq!(left(&after, x), left(&before, x));
                            assert_eq!(a.confirmed(), Some(s));
                        }
                        (State::RaucGrub(b), State::RaucGrub(a)) => {
                            if b.ok(x) && b.tried(x) {
                                // A failed trial is retired.
                                assert!(!a.ok(x) && !a.tried(x));
                            } else {
                                assert_eq!((a.ok(x), a.tried(x)), (b.ok(x), b.tried(x)));
                            }
                        }
                        _ => unreachable!(),
                    }
                }
            }
        }
    }
}

#[test]
fn mark_bad_every_state_and_slot() {
    for n in [2, 3] {
        for (slots, before) in all_states(n) {
            for s in slots.ids() {
                let mut after = before.clone();
                after.mark_bad(s);
                assert_eq!(left(&after, s), 0);
                assert!(!after.status(s).good);
                assert_eq!(after.order(), before.order());
                for x in slots.ids().filter(|&x| x != s) {
                    assert_eq!(left(&after, x), left(&before, x));
                }
                if let (State::Abup(b), State::Abup(a)) = (&before, &after) {
                    if b.confirmed() == Some(s) {
                        let other = b
                            .order()
                            .iter()
                            .copied()
                            .find(|&x| x != s && b.tries_left(x) > 0);
                        assert_eq!(a.confirmed(), other.or(Some(s)));
                    } else {
                        assert_eq!(a.confirmed(), b.confirmed());
                    }
                }
                if let (State::RaucGrub(_), State::RaucGrub(a)) = (&before, &after) {
                    assert!(!a.ok(s) && !a.tried(s));
                }
            }
        }
    }
}

#[test]
fn begin_install_every_state_and_slot_pair() {
    for n in [2, 3] {
        for (slots, before) in all_states(n) {
            for target in slots.ids() {
                for booted in slots.ids() {
                    let mut after = before.clone();
                    let r = after.begin_install(target, booted);
                    if target == booted {
                        assert_eq!(r, Err(Error::TargetIsBooted(slots.name(target).into())));
                        assert_eq!(after, before, "a refused operation changes nothing");
                        continue;
                    }
                    assert_eq!(r, Ok(()));
                    assert_eq!(left(&after, target), 0);
                    assert!(!after.status(target).good);
                    assert_eq!(after.order(), before.order());
                    for x in slots.ids().filter(|&x| x != target) {
                        assert_eq!(left(&after, x), left(&before, x));
                    }
                    if let (State::Abup(b), State::Abup(a)) = (&before, &after) {
                        let expected = match b.confirmed() {
                            None => Some(booted),
                            Some(g) if g == target => Some(booted),
                            g => g,
                        };
                        assert_eq!(a.confirmed(), expected);
                    }
                }
            }
        }
    }
}

#[test]
fn boot_every_state() {
    for n in [2, 3] {
        for (slots, before) in all_states(n) {
            let mut after = before.clone();
            let boot = after.boot();
            assert_eq!(before.next_boot(), boot, "next_boot predicts boot");
            match (&before, &after) {
                (State::Abup(b), State::Abup(a)) => {
                    let first = b.order().iter().copied().find(|&s| b.tries_left(s) > 0);
                    match first {
                        Some(s) => {
                            assert_eq!(
                                boot,
                                Boot {
                                    slot: s,
                                    saves: true,
                                    fallback: false
                                }
                            );
                            assert_eq!(a.tries_left(s), b.tries_left(s) - 1);
                            for x in slots.ids().filter(|&x| x != s) {
                                assert_eq!(a.tries_left(x), b.tries_left(x));
                            }
                            assert_eq!(a.order(), b.order());
                            assert_eq!(a.confirmed(), b.confirmed());
                        }
                        None => {
                            let expect = b
                                .confirmed()
                                .or_else(|| b.order().first().copied())
                                .unwrap_or(A);
                            assert_eq!(
                                boot,
                                Boot {
                                    slot: expect,
                                    saves: false,
                                    fallback: true
                                }
                            );
                            assert_eq!(a, b, "the fallback writes nothing");
                        }
                    }
                }
                (State::RaucGrub(b), State::RaucGrub(a)) => {
                    assert!(boot.saves, "RAUC's grub.cfg always saves the TRY flags");
                    let pos = b.order().iter().position(|&s| b.ok(s) && !b.tried(s));
                    match pos {
                        Some(p) => {
                            let s = b.order()[p];
                            assert_eq!(boot.slot, s);
                            assert!(!boot.fallback);
                            for x in slots.ids() {
                                let looked_at = b.order()[..=p].contains(&x);
                                assert_eq!(a.tried(x), b.tried(x) || looked_at);
                                assert_eq!(a.ok(x), b.ok(x));
                            }
                        }
                        None => {
                            assert!(boot.fallback);
                            let expect = b.order().iter().copied().find(|&s| b.ok(s)).unwrap_or(A);
                            assert_eq!(boot.slot, expect);
                            for x in slots.ids() {
                                let looked_at = b.order().contains(&x);
                                let tried = (b.tried(x) || looked_at) && !b.ok(x);
                                assert_eq!(a.tried(x), tried);
                                assert_eq!(a.ok(x), b.ok(x));
                            }
                        }
                    }
                }
                _ => unreachable!(),
            }
        }
    }
}

/// Power-ons with no `mark-good` in between (brownouts, or a system that never comes up).
fn brownouts(state: &mut State, times: usize) -> Vec<SlotId> {
    (0..times).map(|_| state.boot().slot).collect()
}

#[test]
fn brownouts_never_let_an_unconfirmed_slot_displace_the_confirmed_one() {
    for n in [2, 3] {
        let slots = slots(n, Scheme::Abup);
        for state in abup_states(&slots) {
            let Some(good) = state.confirmed() else {
                continue;
            };
            let budget: usize = slots.ids().map(|s| usize::from(state.tries_left(s))).sum();
            let mut s = State::Abup(state.clone());
            let booted = brownouts(&mut s, budget + 20);
            // Each counted boot uses a try, so after the budget only the confirmed slot boots.
            assert!(
                booted[budget..].iter().all(|&b| b == good),
                "{state:?}: {booted:?}"
            );
            // And no slot boots more often than it had tries, except the confirmed one.
            for x in slots.ids().filter(|&x| x != good) {
                let times = booted.iter().filter(|&&b| b == x).count();
                assert!(
                    times <= usize::from(state.tries_left(x)),
                    "{state:?}: {booted:?}"
                );
            }
        }
    }
}

/// Every install scenario: each state, each target, each other slot as the running one,
/// which abup only installs from once it is confirmed.
fn installs(n: usize) -> Vec<(Slots, State, SlotId, SlotId)> {
    let mut out = Vec::new();
    for (slots, start) in all_states(n) {
        for target in slots.ids() {
            for booted in slots.ids().filter(|&b| b != target) {
                let mut s = start.clone();
                s.mark_good(booted);
                out.push((slots.clone(), s, target, booted));
            }
        }
    }
    out
}

#[test]
fn an_interrupted_install_never_boots_its_target() {
    for n in [2, 3] {
        for (_, mut s, target, booted) in installs(n) {
            let start = s.clone();
            s.begin_install(target, booted).unwrap();
            let seq = brownouts(&mut s, 40);
            assert!(!seq.contains(&target), "{start:?} -> {seq:?}");
        }
    }
}

/// An install that completed and was activated, from a confirmed running slot.
fn activated(start: &State, target: SlotId, booted: SlotId) -> State {
    let mut s = start.clone();
    s.begin_install(target, booted).unwrap();
    s.activate(target);
    s
}

#[test]
fn a_failed_update_falls_back_and_stays_back() {
    for n in [2, 3] {
        for (slots, start, target, booted) in installs(n) {
            let tries = usize::from(slots.tries());
            let mut s = activated(&start, target, booted);
            // The new slot never confirms: it gets exactly its tries.
            let others: usize = slots
                .ids()
                .filter(|&x| x != target)
                .map(|x| usize::from(s.status(x).tries_left))
                .sum();
            let seq = brownouts(&mut s, 40);
            assert!(seq[..tries].iter().all(|&b| b == target), "{seq:?}");
            match s {
                State::Abup(_) => {
                    if n == 2 {
                        assert_eq!(seq[tries], booted, "{seq:?}");
                    }
                    assert!(!seq[tries..].contains(&target), "{seq:?}");
                    // Other slots use up their tries (on three-slot boards), then the
                    // confirmed slot boots forever, brownouts or not.
                    assert!(seq[tries + others..].iter().all(|&b| b == booted));
                }
                State::RaucGrub(_) => {
                    // RAUC's exhaustion reset retries the failed slot: the scheme's known
                    // weakness. The next boot is still not the failed one.
                    assert_ne!(seq[tries], target);
                }
            }
            // The fallback slot confirms on its next boot and the failed trial is never
            // retried, whatever the scheme.
            let mut s = activated(&start, target, booted);
            brownouts(&mut s, tries);
            let b = s.boot();
            assert_ne!(b.slot, target);
            if n == 2 {
                assert_eq!(b.slot, booted);
            }
            s.mark_good(b.slot);
            let after = brownouts(&mut s, 30);
            assert!(!after.contains(&target), "{after:?}");
            if n == 2 {
                assert!(after.iter().all(|&x| x == booted), "{after:?}");
            }
        }
    }
}

#[test]
fn a_successful_update_sticks() {
    for n in [2, 3] {
        for (slots, start, target, booted) in installs(n) {
            let mut s = activated(&start, target, booted);
            assert_eq!(s.boot().slot, target);
            s.mark_good(target);
            for _ in 0..10 {
                assert_eq!(s.boot().slot, target);
                s.mark_good(target);
            }
            if let State::Abup(a) = &s {
                // The old slot stays behind it as a counted fallback.
                assert!(a.order()[1..].contains(&booted));
                assert_eq!(a.tries_left(booted), slots.tries());
            }
        }
    }
}

#[test]
fn the_device_always_boots_a_slot() {
    for n in [2, 3] {
        for (slots, start) in all_states(n) {
            let mut s = start.clone();
            for b in brownouts(&mut s, 15) {
                assert!(b.0 < slots.len());
            }
        }
    }
}

#[test]
fn factory_state_boots_slot_zero_confirmed() {
    let slots = slots(2, Scheme::Abup);
    let s = AbupState::factory(&slots);
    assert_eq!(s.confirmed(), Some(A));
    let vars = vars_of(&State::Abup(s));
    assert_eq!(vars["BOOT_ORDER"], "A B");
    assert_eq!(vars["BOOT_A_LEFT"], "3");
    assert_eq!(vars["BOOT_B_LEFT"], "0");
    assert_eq!(vars["BOOT_GOOD"], "A");
}

#[test]
fn abup_decode_reads_what_the_scripts_read() {
    let slots = slots(2, Scheme::Abup);
    let env: HashMap<&str, &str> = [
        ("BOOT_ORDER", "  C B\tB A x "),
        ("BOOT_A_LEFT", "07"),
        ("BOOT_B_LEFT", "9"),
        ("BOOT_GOOD", "Z"),
    ]
    .into();
    let State::Abup(s) = State::decode(Scheme::Abup, &slots, |k| env.get(k).copied()) else {
        unreachable!()
    };
    assert_eq!(s.order(), &[B, A], "unknown and repeated names skipped");
    assert_eq!(
        s.tries_left(A),
        0,
        "the if-chain matches single digits only"
    );
    assert_eq!(s.tries_left(B), 9);
    assert_eq!(s.confirmed(), None);
    // Nothing at all: the scripts boot slot 0.
    let empty = State::decode(Scheme::Abup, &slots, |_| None);
    assert_eq!(
        empty.next_boot(),
        Boot {
            slot: A,
            saves: false,
            fallback: true
        }
    );
}

#[test]
fn rauc_decode_defaults_like_rauc_grub_cfg() {
    let slots = slots(2, Scheme::RaucGrub);
    // Absent ORDER: the script's default "A B"; absent flags: 0.
    let s = State::decode(Scheme::RaucGrub, &slots, |k| (k == "B_OK").then_some("1"));
    assert_eq!(s.order(), &[A, B]);
    assert_eq!(s.next_boot().slot, B);
    let s = State::decode(Scheme::RaucGrub, &slots, |k| (k == "ORDER").then_some(""));
    assert!(s.order().is_empty());
}

#[test]
fn rauc_writes_what_rauc_writes() {
    let slots = slots(2, Scheme::RaucGrub);
    let mut s = State::decode(Scheme::RaucGrub, &slots, |_| None);
    s.activate(B);
    let v = vars_of(&s);
    assert_eq!(
        (v["ORDER"].as_str(), v["B_OK"].as_str(), v["B_TRY"].as_str()),
        ("B A", "1", "0")
    );
    s.mark_bad(B);
    let v = vars_of(&s);
    assert_eq!((v["B_OK"].as_str(), v["B_TRY"].as_str()), ("0", "0"));
}

#[test]
fn slots_are_validated() {
    assert!(matches!(
        Slots::new(&["A"], 3, Scheme::Abup),
        Err(Error::SlotCount { found: 1, .. })
    ));
    assert_eq!(
        Slots::new(&["A", "b-1"], 3, Scheme::Abup),
        Err(Error::BadSlotName("b-1".into()))
    );
    assert_eq!(
        Slots::new(&["A", "A"], 3, Scheme::Abup),
        Err(Error::DuplicateSlot("A".into()))
    );
    assert_eq!(
        Slots::new(&["A", "B"], 10, Scheme::Abup),
        Err(Error::BadTries { found: 10, max: 9 })
    );
    assert_eq!(
        Slots::new(&["A", "B"], 0, Scheme::Abup),
        Err(Error::BadTries { found: 0, max: 9 })
    );
    assert_eq!(
        Slots::new(&["A", "B"], 3, Scheme::RaucGrub),
        Err(Error::RaucTries(3))
    );
}

proptest! {
    /// Whatever the environment holds, decoding yields a state the operations accept and
    /// whose re-encoding decodes to itself.
    #[test]
    fn decode_arbitrary_environments(
        order in "[ABCx \t]{0,12}",
        a in "[0-9a ]{0,3}", b in "[0-9a ]{0,3}", g in "[ABZ]{0,2}",
        rauc in any::<bool>(),
        ops in proptest::collection::vec((0u8..5, 0usize..2), 0..12),
    ) {
        let scheme = if rauc { Scheme::RaucGrub } else { Scheme::Abup };
        let slots = slots(2, scheme);
        let env: HashMap<&str, &str> = [
            ("BOOT_ORDER", order.as_str()), ("ORDER", order.as_str()),
            ("BOOT_A_LEFT", a.as_str()), ("BOOT_B_LEFT", b.as_str()), ("BOOT_GOOD", g.as_str()),
            ("A_OK", a.as_str()), ("B_OK", b.as_str()), ("A_TRY", g.as_str()),
        ].into();
        let mut s = State::decode(scheme, &slots, |k| env.get(k).copied());
        for (op, slot) in ops {
            let slot = SlotId(slot);
            match op {
                0 => s.activate(slot),
                1 => s.mark_good(slot),
                2 => s.mark_bad(slot),
                3 => { let _ = s.begin_install(slot, SlotId(1 - slot.0)); }
                _ => { s.boot(); }
            }
            let vars = vars_of(&s);
            let back = State::decode(scheme, &slots, |k| vars.get(k).map(String::as_str));
            prop_assert_eq!(&back, &s);
        }
    }
}
