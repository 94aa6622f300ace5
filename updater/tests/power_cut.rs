//! Power cuts during every kind of environment update.
//!
//! From every state of a two-slot board, every operation (begin an install, activate, mark
//! good, mark bad, and the bootloader's own save at power-on) is written through abup's real
//! write path into file-backed environments. The bytes before and after the write are then
//! recombined sector by sector into every state a cut could leave: the write not started,
//! complete, any prefix or suffix of its sectors written (disks may reorder a multi-sector
//! write), each sector alone missing, and a sector left half-programmed (garbage). Each such
//! disk is read back with abup's reader and must hold exactly the old or the new state, never
//! a mix, never nothing.
//!
//! For GRUB, every torn disk is also handed to the real GRUB script engine (`grub-emu`)
//! running the board's slot selection: the slot GRUB picks must be the slot abup's model
//! predicts for that state, and what GRUB saves must be what the model says a boot does. The
//! safety of the states themselves (no unconfirmed slot displaces a confirmed one, an
//! interrupted install never boots) is bootcount's exhaustive tests; together they cover a
//! cut at any write.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use abup::board::Board;
use abup::bootenv::{Environment, Location};
use abup::slotstate;
use bootcount::{AbupState, Scheme, SlotId, Slots, State};
use common::{have, Tmp};

const SECTOR: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    GrubPair,
    UBootRedundant,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    BeginInstall(SlotId),
    Activate(SlotId),
    MarkGood(SlotId),
    MarkBad(SlotId),
    /// The bootloader at power-on: U-Boot's saveenv writes the inactive copy like abup does;
    /// GRUB's save_env rewrites the current copy in place (modelled separately below).
    Boot,
}

fn ops() -> Vec<Op> {
    let mut v = vec![Op::Boot];
    for s in [SlotId(0), SlotId(1)] {
        v.extend([
            Op::BeginInstall(s),
            Op::Activate(s),
            Op::MarkGood(s),
            Op::MarkBad(s),
        ]);
    }
    v
}

fn apply(op: Op, state: &mut State) -> Result<(), bootcount::Error> {
    match op {
        Op::BeginInstall(t) => return state.begin_install(t, SlotId(1 - t.0)),
        Op::Activate(s) => state.activate(s),
        Op::MarkGood(s) => state.mark_good(s),
        Op::MarkBad(s) => state.mark_bad(s),
        Op::Boot => {
            state.boot();
        }
    }
    Ok(())
}

fn slots() -> Slots {
    Slots::new(&["A", "B"], 3, Scheme::Abup).unwrap()
}

/// Every boot order of a two-slot board.
const ORDERS: [&[SlotId]; 5] = [
    &[],
    &[SlotId(0)],
    &[SlotId(1)],
    &[SlotId(0), SlotId(1)],
    &[SlotId(1), SlotId(0)],
];

/// Every native state of a two-slot board with three tries.
fn states() -> Vec<State> {
    let slots = slots();
    let mut out = Vec::new();
    for order in ORDERS {
        for a in 0..=3 {
            for b in 0..=3 {
                for good in [None, Some(SlotId(0)), Some(SlotId(1))] {
                    out.push(State::Abup(AbupState::new(&slots, order, &[a, b], good)));
                }
            }
        }
    }
    out
}

/// A file-backed environment of `kind` in `dir`, holding `state`; with `flip`, one extra
/// write first, so that the operation under test writes the other copy.
fn setup(dir: &Path, kind: Kind, state: &State, flip: bool) -> (Board, Location) {
    let loc = match kind {
        Kind::GrubPair => Location::GrubPair([dir.join("abupenv.0"), dir.join("abupenv.1")]),
        Kind::UBootRedundant => {
            let cfg = dir.join("fw_env.config");
            std::fs::write(
                &cfg,
                format!(
                    "{} 0 0x4000\n{} 0 0x4000\n",
                    dir.join("uboot.env").display(),
                    dir.join("uboot-redund.env").display()
                ),
            )
            .unwrap();
            for f in ["uboot.env", "uboot-redund.env"] {
                std::fs::write(dir.join(f), vec![0u8; 0x4000]).unwrap();
            }
            Location::UBoot {
                config: cfg,
                lock_file: Some(dir.join("lock")),
            }
        }
    };
    let mut vars: Vec<(String, Option<String>)> = state.encode();
    if kind == Kind::UBootRedundant {
        // A bootcmd long enough that the variables span several sectors: a change to
        // BOOT_ORDER shifts everything sorted after it, so tears cut through real data.
        vars.push(("bootcmd".into(), Some("echo abup; ".repeat(150))));
    }
    let vars: Vec<_> = vars.into_iter().filter(|(_, v)| v.is_some()).collect();
    abup::provision::create_env(&loc, None, false, &vars).unwrap();
    if flip {
        let mut env = Environment::open(&loc, true).unwrap();
        env.update(&[("flip".into(), Some("1".into()))]).unwrap();
    }
    let board_text = format!(
        "[board]\nname = \"t\"\ncompatible = \"t\"\n[bootloader]\n{}\n\
         [[slot]]\nname = \"A\"\ndevice = \"/dev/null-a\"\n[[slot]]\nname = \"B\"\ndevice = \"/dev/null-b\"\n",
        match &loc {
            Location::GrubPair([a, b]) => format!("type = \"grub\"\ngrubenv = [{a:?}, {b:?}]"),
            Location::UBoot { config, .. } => format!("type = \"u-boot\"\nfw-env-config = {config:?}"),
            Location::GrubSingle(_) => unreachable!(),
        }
    );
    let board = Board::parse(&board_text, Path::new("test")).unwrap();
    (board, loc)
}

fn snapshot(paths: &[PathBuf]) -> Vec<Vec<u8>> {
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn env_files(loc: &Location, dir: &Path) -> Vec<PathBuf> {
    match loc {
        Location::GrubPair(p) => p.to_vec(),
        Location::UBoot { .. } => vec![dir.join("uboot.env"), dir.join("uboot-redund.env")],
        Location::GrubSingle(p) => vec![p.clone()],
    }
}

/// A deterministic stand-in for a half-programmed sector.
fn garbage(seed: usize) -> Vec<u8> {
    let mut x = seed as u64 ^ 0x9e37_79b9_7f4a_7c15;
    (0..SECTOR)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every content a cut during the write of `old` -> `new` can leave in the file.
fn torn_variants(old: &[u8], new: &[u8]) -> Vec<Vec<u8>> {
    assert_eq!(old.len(), new.len(), "writes never change a file's size");
    let sectors: Vec<usize> = (0..old.len().div_ceil(SECTOR))
        .filter(|&i| {
            let r = i * SECTOR..((i + 1) * SECTOR).min(old.len());
            old[r.clone()] != new[r]
        })
        .collect();
    let mix = |new_sectors: &dyn Fn(usize) -> bool| {
        let mut v = old.to_vec();
        for &i in &sectors {
            if new_sectors(i) {
                let r = i * SECTOR..((i + 1) * SECTOR).min(old.len());
                v[r.clone()].copy_from_slice(&new[r]);
            }
        }
        v
    };
    let mut out = vec![old.to_vec(), new.to_vec()];
    let n = sectors.len();
    if n <= 8 {
        for mask in 0u32..(1 << n) {
            out.push(mix(&|i| {
                let k = sectors.iter().position(|&s| s == i).unwrap_or(0);
                mask & (1 << k) != 0
            }));
        }
    } else {
        for k in 0..=n {
            out.push(mix(&|i| sectors[..k].contains(&i)));
            out.push(mix(&|i| sectors[n - k..].contains(&i)));
        }
        for &s in &sectors {
            out.push(mix(&|i| i != s));
            out.push(mix(&|i| i == s));
        }
    }
    // A sequential write cut inside a sector that the medium does not write atomically.
    for (k, &s) in sectors.iter().enumerate() {
        let mut v = mix(&|i| sectors[..k].contains(&i));
        let r = s * SECTOR..((s + 1) * SECTOR).min(old.len());
        let len = r.len();
        v[r].copy_from_slice(&garbage(s)[..len]);
        out.push(v);
    }
    out.sort();
    out.dedup();
    out
}

fn read_state(board: &Board, loc: &Location) -> Result<State, String> {
    let env = Environment::open(loc, false).map_err(|e| format!("{e:#}"))?;
    Ok(slotstate::read(board, &env)
        .map_err(|e| format!("{e:#}"))?
        .state)
}

/// One torn GRUB disk for the real-GRUB check, with what the model expects GRUB to do.
struct GrubCase {
    copies: [Vec<u8>; 2],
    expect_slot: SlotId,
    expect_after: State,
}

fn check_kind(kind: Kind, grub_cases: &mut Vec<GrubCase>) -> usize {
    let t = Tmp::new();
    let mut checked = 0;
    for (si, start) in states().into_iter().enumerate() {
        for flip in [false, true] {
            for op in ops() {
                let dir = t.path(&format!("{si}-{flip}-{op:?}"));
                std::fs::create_dir(&dir).unwrap();
                let (board, loc) = setup(&dir, kind, &start, flip);
                let files = env_files(&loc, &dir);
                let before = snapshot(&files);
                let old = read_state(&board, &loc).unwrap();
                assert_eq!(old, start);

                let new = if matches!((kind, op), (Kind::GrubPair, Op::Boot)) {
                    grub_boot_save(&files, &board, &old)
                } else {
                    let mut env = Environment::open(&loc, true).unwrap();
                    match slotstate::transition(&board, &mut env, |s| apply(op, s)) {
                        Ok((new, _)) => new,
                        Err(e) => panic!("{op:?} from {start:?}: {e:#}"),
                    }
                };
                let after = snapshot(&files);
                let changed: Vec<usize> = (0..files.len())
                    .filter(|&i| before[i] != after[i])
                    .collect();
                assert!(
                    changed.len() <= 1,
                    "{op:?}: one logical change, one file written"
                );
                let Some(&f) = changed.first() else {
                    assert_eq!(new, old);
                    continue;
                };
                for variant in torn_variants(&before[f], &after[f]) {
                    std::fs::write(&files[f], &variant).unwrap();
                    let got = read_state(&board, &loc).unwrap_or_else(|e| {
                        panic!("{kind:?} {op:?} from {start:?}: cut left no environment: {e}")
                    });
                    assert!(
                        got == old || got == new,
                        "{kind:?} {op:?} from {start:?}: cut left {got:?}"
                    );
                    checked += 1;
                    if kind == Kind::GrubPair {
                        let mut expect_after = got.clone();
                        let boot = expect_after.boot();
                        let copies = [
                            std::fs::read(&files[0]).unwrap(),
                            std::fs::read(&files[1]).unwrap(),
                        ];
                        grub_cases.push(GrubCase {
                            copies,
                            expect_slot: boot.slot,
                            expect_after,
                        });
                    }
                }
                std::fs::write(&files[f], &after[f]).unwrap();
            }
        }
    }
    checked
}

/// GRUB's own save at power-on: the selected copy rewritten in place with the try count the
/// script computes (grub-env's model of save_env, itself checked against grub-emu).
fn grub_boot_save(files: &[PathBuf], board: &Board, old: &State) -> State {
    let mut new = old.clone();
    let boot = new.boot();
    if !boot.saves {
        return new;
    }
    let copies: Vec<_> = files
        .iter()
        .map(|p| grub_env::read_block(std::fs::File::open(p).unwrap()))
        .collect();
    let [c0, c1]: [_; 2] = copies.try_into().unwrap();
    let pair = grub_env::EnvPair::new(c0, c1, grub_env::LongWidth::Bits32);
    let name = format!("BOOT_{}_LEFT", board.slots.name(boot.slot));
    let value = new.status(boot.slot).tries_left.to_string();
    let plan = pair
        .boot_save_env(&[(name.as_str(), Some(value.as_str()))])
        .unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&files[plan.index])
        .unwrap();
    grub_env::write_block(&file, &plan.block).unwrap();
    new
}

#[test]
fn uboot_redundant_environment_survives_a_cut_at_every_write() {
    let n = check_kind(Kind::UBootRedundant, &mut Vec::new());
    eprintln!("{n} torn U-Boot environments read back as the old or the new state");
    assert!(n > 10_000, "{n}");
}

#[test]
fn grub_pair_survives_a_cut_at_every_write_and_real_grub_agrees() {
    let mut cases = Vec::new();
    let n = check_kind(Kind::GrubPair, &mut cases);
    eprintln!("{n} torn GRUB pairs read back as the old or the new state");
    assert!(n > 5_000, "{n}");
    if !(have("grub-emu") && have("mcopy") && have("mkfs.vfat")) {
        return;
    }
    // Identical disks need one GRUB run only.
    let mut unique: BTreeMap<[Vec<u8>; 2], GrubCase> = BTreeMap::new();
    for c in cases {
        unique.entry(c.copies.clone()).or_insert(c);
    }
    let cases: Vec<GrubCase> = unique.into_values().collect();
    let disks: Vec<Vec<Vec<u8>>> = cases.iter().map(|c| c.copies.to_vec()).collect();
    let results = run_grub("abup-select.cfg", &["abupenv.0", "abupenv.1"], &disks);
    let slots = slots();
    for (i, c) in cases.iter().enumerate() {
        let (slot, files) = &results[i];
        let copies: [Vec<u8>; 2] = [files[0].clone(), files[1].clone()];
        let copies = &copies;
        assert_eq!(
            slots.find(slot),
            Some(c.expect_slot),
            "case {i}: GRUB booted {slot:?}, the model says {}",
            slots.name(c.expect_slot)
        );
        let board = board_for_decode();
        let after = decode_pair(&board, copies);
        assert_eq!(after, c.expect_after, "case {i}: what GRUB saved");
    }
    eprintln!(
        "{} distinct torn GRUB disks booted by grub-emu as the model predicts",
        cases.len()
    );
}

fn board_for_decode() -> Board {
    Board::parse(
        "[board]\nname=\"t\"\ncompatible=\"t\"\n[bootloader]\ntype=\"grub\"\ngrubenv=[\"/x/0\",\"/x/1\"]\n\
         [[slot]]\nname=\"A\"\ndevice=\"/a\"\n[[slot]]\nname=\"B\"\ndevice=\"/b\"\n",
        Path::new("t"),
    )
    .unwrap()
}

fn decode_pair(board: &Board, copies: &[Vec<u8>; 2]) -> State {
    let t = Tmp::new();
    let paths = [t.path("0"), t.path("1")];
    for (p, c) in paths.iter().zip(copies) {
        std::fs::write(p, c).unwrap();
    }
    let env = Environment::open(&Location::GrubPair(paths), false).unwrap();
    slotstate::read(board, &env).unwrap().state
}

/// Runs a GRUB slot-selection script over many disks in one grub-emu process: each case's
/// files in their own directory of a FAT image (`$abup_envdir`, and `$prefix` for scripts that
/// use GRUB's default `grubenv`), the script sourced once per case. Returns per case the slot
/// GRUB chose and the files as GRUB left them.
fn run_grub(script: &str, names: &[&str], cases: &[Vec<Vec<u8>>]) -> Vec<(String, Vec<Vec<u8>>)> {
    let t = Tmp::new();
    let tree = t.path("tree");
    let select = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../board-configs/grub")
        .join(script);
    let mut cfg = String::from("set abup_real_prefix=\"${prefix}\"\n");
    for (i, files) in cases.iter().enumerate() {
        let rel = format!("s/{}/{}", i / 64, i % 64);
        let d = tree.join(&rel);
        std::fs::create_dir_all(&d).unwrap();
        for (name, bytes) in names.iter().zip(files) {
            std::fs::write(d.join(name), bytes).unwrap();
        }
        writeln!(
            cfg,
            "set abup_envdir=(hd0)/{rel}\nset prefix=(hd0)/{rel}\nsource (hd0)/select.cfg\n\
             set prefix=\"${{abup_real_prefix}}\"\necho \"ABUP-CASE {i} ${{abup_slot}}\""
        )
        .unwrap();
    }
    cfg.push_str("echo ABUP-DONE\nhalt\n");
    std::fs::copy(&select, tree.join("select.cfg")).unwrap();
    let img = t.path("fat.img");
    let kib = 8192 + cases.len() * names.len() * 2;
    run(Command::new("mkfs.vfat")
        .args(["-C", "-s", "1", "-S", "512"])
        .arg(&img)
        .arg(kib.to_string()));
    let mut mcopy = Command::new("mcopy");
    mcopy
        .args(["-s", "-i"])
        .arg(&img)
        .arg(tree.join("s"))
        .arg(tree.join("select.cfg"))
        .arg("::/");
    run(&mut mcopy);
    let grub_dir = t.path("grub");
    std::fs::create_dir(&grub_dir).unwrap();
    std::fs::write(grub_dir.join("grub.cfg"), cfg).unwrap();
    let map = t.path("device.map");
    std::fs::write(&map, format!("(hd0) {}\n", img.display())).unwrap();
    let out = Command::new("timeout")
        .args(["600", "grub-emu", "-d"])
        .arg(&grub_dir)
        .arg("-m")
        .arg(&map)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(
        text.contains("ABUP-DONE"),
        "grub-emu did not finish: {}",
        &text[text.len().saturating_sub(2000)..]
    );
    let mut slots = vec![String::new(); cases.len()];
    for line in text.lines() {
        if let Some(rest) = line.split("ABUP-CASE ").nth(1) {
            let mut w = rest.split_whitespace();
            let i: usize = w.next().unwrap().parse().unwrap();
            slots[i] = w
                .next()
                .unwrap_or("")
                .trim_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_owned();
        }
    }
    let back = t.path("back");
    run(Command::new("mcopy")
        .args(["-s", "-n", "-i"])
        .arg(&img)
        .arg("::/s")
        .arg(&back));
    (0..cases.len())
        .map(|i| {
            let d = back.join(format!("{}/{}", i / 64, i % 64));
            let files = names
                .iter()
                .map(|n| std::fs::read(d.join(n)).unwrap())
                .collect();
            (std::mem::take(&mut slots[i]), files)
        })
        .collect()
}

/// The RAUC-compatible script, run by the real GRUB on RAUC's single `grubenv` in every state
/// of a two-slot board, boots what abup's model of RAUC's scheme says and saves what it says.
#[test]
fn rauc_grub_script_matches_the_model_in_every_state() {
    if !(have("grub-emu") && have("mcopy") && have("mkfs.vfat")) {
        return;
    }
    let slots = Slots::new(&["A", "B"], 1, Scheme::RaucGrub).unwrap();
    let board = Board::parse(
        "[board]\nname=\"t\"\ncompatible=\"t\"\n[bootloader]\ntype=\"grub\"\nscheme=\"rauc-grub\"\n\
         grubenv=[\"/x/grubenv\"]\n[[slot]]\nname=\"A\"\ndevice=\"/a\"\n[[slot]]\nname=\"B\"\ndevice=\"/b\"\n",
        Path::new("t"),
    )
    .unwrap();
    let t = Tmp::new();
    let mut states = Vec::new();
    let mut cases = Vec::new();
    for order in ORDERS {
        for bits in 0..16u8 {
            let flag = |i: u8| bits & (1 << i) != 0;
            let state = State::RaucGrub(bootcount::RaucGrubState::new(
                &slots,
                order,
                &[flag(0), flag(1)],
                &[flag(2), flag(3)],
            ));
            let path = t.path(&format!("grubenv-{}", cases.len()));
            let vars: Vec<_> = state.encode();
            abup::provision::create_env(&Location::GrubSingle(path.clone()), None, false, &vars)
                .unwrap();
            cases.push(vec![std::fs::read(&path).unwrap()]);
            states.push(state);
        }
    }
    let results = run_grub("rauc-select.cfg", &["grubenv"], &cases);
    for ((state, (slot, files)), i) in states.iter().zip(&results).zip(0..) {
        let mut expect = state.clone();
        let boot = expect.boot();
        assert_eq!(
            slots.find(slot),
            Some(boot.slot),
            "state {i} {state:?}: GRUB booted {slot:?}"
        );
        let path = t.path(&format!("after-{i}"));
        std::fs::write(&path, &files[0]).unwrap();
        let env = Environment::open(&Location::GrubSingle(path), false).unwrap();
        assert_eq!(
            slotstate::read(&board, &env).unwrap().state,
            expect,
            "state {i}: what GRUB saved"
        );
    }
    eprintln!(
        "{} RAUC states booted by grub-emu as the model predicts",
        states.len()
    );
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
