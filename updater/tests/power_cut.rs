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

/// How the two copies stand before the operation under test.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// Both copies hold the state, copy 0 current: a pair as abup creates it.
    Created,
    /// Both copies hold the state, copy 1 current: as after GRUB's boots and abup's updates.
    Agreeing,
    /// The current copy holds the state and the other copy the state before abup's last
    /// write, each copy current in turn: U-Boot at rest; a GRUB pair after a power cut between
    /// the two writes of an update, or one written by an abup that wrote one copy only.
    Previous(usize),
}

const LAYOUTS: [Layout; 4] = [
    Layout::Created,
    Layout::Agreeing,
    Layout::Previous(0),
    Layout::Previous(1),
];

fn location(dir: &Path, kind: Kind) -> Location {
    match kind {
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
    }
}

fn variables(kind: Kind, state: &State) -> Vec<(String, Option<String>)> {
    let mut vars: Vec<(String, Option<String>)> = state.encode();
    if kind == Kind::UBootRedundant {
        // A bootcmd long enough that the variables span several sectors: a change to
        // BOOT_ORDER shifts everything sorted after it, so tears cut through real data.
        vars.push(("bootcmd".into(), Some("echo abup; ".repeat(150))));
    }
    vars
}

/// One write of one copy with `vars`, the way a single-copy update writes it: for U-Boot
/// abup's own write; for a GRUB pair only the first of the two writes abup makes.
fn write_one_copy(loc: &Location, vars: &[(String, Option<String>)]) {
    match loc {
        Location::GrubPair(paths) => {
            let files: Vec<std::fs::File> = paths
                .iter()
                .map(|p| {
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(p)
                        .unwrap()
                })
                .collect();
            let pair = grub_env::EnvPair::new(
                grub_env::read_block(&files[0]),
                grub_env::read_block(&files[1]),
                abup::bootenv::GRUB_WIDTH,
            );
            let changes: Vec<grub_env::Change<'_>> = vars
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => grub_env::Change::set(k.as_str(), v.as_str()),
                    None => grub_env::Change::unset(k.as_str()),
                })
                .collect();
            let plan = pair.plan_update(&changes).unwrap();
            grub_env::write_block(&files[plan.index], &plan.block).unwrap();
        }
        _ => Environment::open(loc, true).unwrap().update(vars).unwrap(),
    }
}

/// A file-backed environment of `kind` in `dir` holding `state`, its copies as `layout` says,
/// `prev` being the state before the last write where the layout has one.
fn setup(dir: &Path, kind: Kind, state: &State, prev: &State, layout: Layout) -> (Board, Location) {
    let loc = location(dir, kind);
    let (now, before) = (variables(kind, state), variables(kind, prev));
    let writes: Vec<&[(String, Option<String>)]> = match layout {
        Layout::Created => vec![&now],
        Layout::Agreeing => vec![&before, &now, &now, &now],
        Layout::Previous(1) => vec![&before, &now],
        Layout::Previous(_) => vec![&before, &before, &now],
    };
    abup::provision::create_env(&loc, None, false, writes[0]).unwrap();
    for vars in &writes[1..] {
        write_one_copy(&loc, vars);
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

/// The copy the bootloader reads now: the written copy for U-Boot, the copy GRUB's script
/// selects for a pair.
fn current_copy(kind: Kind, files: &[PathBuf]) -> usize {
    match kind {
        Kind::GrubPair => {
            let copies: Vec<_> = files
                .iter()
                .map(|p| grub_env::read_block(std::fs::File::open(p).unwrap()))
                .collect();
            let [c0, c1]: [_; 2] = copies.try_into().unwrap();
            grub_env::EnvPair::new(c0, c1, abup::bootenv::GRUB_WIDTH).selected()
        }
        Kind::UBootRedundant => usize::MAX,
    }
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

/// Every content a cut during the write of `old` -> `new` can leave in the file, except
/// `old` and `new` themselves (the write not started, the write done).
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
    let mut out = Vec::new();
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
    out.retain(|v| v != old && v != new);
    out
}

fn read_state(board: &Board, loc: &Location) -> Result<State, String> {
    let env = Environment::open(loc, false).map_err(|e| format!("{e:#}"))?;
    Ok(slotstate::read(board, &env)
        .map_err(|e| format!("{e:#}"))?
        .state)
}

/// The state one GRUB copy holds on its own.
fn copy_state(board: &Board, bytes: &[u8]) -> Option<State> {
    let t = Tmp::in_memory();
    let path = t.path("copy");
    std::fs::write(&path, bytes).unwrap();
    read_state(board, &Location::GrubSingle(path)).ok()
}

/// One torn GRUB disk for the real-GRUB check, with what the model expects GRUB to do.
struct GrubCase {
    copies: [Vec<u8>; 2],
    expect_slot: SlotId,
    expect_after: State,
}

/// What the power-cut tests counted, printed for docs/power-safety.md.
#[derive(Debug, Default)]
struct Counts {
    /// Operations that wrote something, each from its own starting environment.
    operations: usize,
    /// Writes of one copy among them.
    writes: usize,
    /// Disks a cut can leave (torn writes, and the points between writes), each read back.
    disks: usize,
}

/// Every state, copy layout and operation of `kind`: the operation is written, then every disk
/// a cut during one of its writes can leave is read back and judged. A disk whose writes are
/// all done must read as the new state and one whose writes have not started as the old one;
/// a torn write as the old or the new state, or, where the bootloader rewrote its current copy
/// in place (GRUB's save), as what the other copy really holds, because that is where GRUB
/// falls back when the current copy is garbage.
fn check_kind(kind: Kind, grub_cases: &mut Vec<GrubCase>) -> Counts {
    let t = Tmp::in_memory();
    let all = states();
    let mut counts = Counts::default();
    for (si, start) in all.iter().enumerate() {
        // The state before the last write: another state, different from this one.
        let prev = &all[(si * 7 + 1 + all.len() / 2) % all.len()];
        assert_ne!(prev, start);
        for layout in LAYOUTS {
            for op in ops() {
                let dir = t.path(&format!("{si}-{layout:?}-{op:?}"));
                std::fs::create_dir(&dir).unwrap();
                let (board, loc) = setup(&dir, kind, start, prev, layout);
                let files = env_files(&loc, &dir);
                let before = snapshot(&files);
                let old = read_state(&board, &loc).unwrap();
                assert_eq!(&old, start, "{layout:?}");
                let current = current_copy(kind, &files);

                let in_place = matches!((kind, op), (Kind::GrubPair, Op::Boot));
                let new = if in_place {
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
                if kind == Kind::GrubPair && !in_place {
                    // GRUB's next save rewrites the current copy in place; if that tears, GRUB
                    // reads the other copy, which must not undo what abup just wrote (nor
                    // what an earlier update, cut between its two writes, was about to write).
                    let other = 1 - current_copy(kind, &files);
                    assert_eq!(
                        copy_state(&board, &after[other]).as_ref(),
                        Some(&new),
                        "{op:?} from {start:?} ({layout:?}): the copy GRUB falls back to"
                    );
                }
                // The order of the writes: abup writes the copy that is not current first
                // (then, for a GRUB pair, the other); GRUB's save writes its current copy.
                let order: Vec<usize> = match (kind, changed.as_slice()) {
                    (_, []) => {
                        assert_eq!(new, old, "{op:?}: a change that writes nothing");
                        continue;
                    }
                    (_, [f]) => vec![*f],
                    (Kind::GrubPair, [_, _]) if !in_place => vec![1 - current, current],
                    _ => panic!("{kind:?} {op:?} wrote {changed:?}"),
                };
                if in_place {
                    assert_eq!(order, [current], "GRUB saves the copy it loaded");
                }
                counts.operations += 1;
                let mut disk = before.clone();
                for (w, &f) in order.iter().enumerate() {
                    counts.writes += 1;
                    // Between writes, and after the last: every write done reads as new.
                    let judge = |disk: &[Vec<u8>], allowed: &[&State], what: &str| {
                        for (p, bytes) in files.iter().zip(disk) {
                            std::fs::write(p, bytes).unwrap();
                        }
                        let got = read_state(&board, &loc).unwrap_or_else(|e| {
                            panic!("{kind:?} {op:?} from {start:?} ({layout:?}): {what} left no environment: {e}")
                        });
                        assert!(
                            allowed.contains(&&got),
                            "{kind:?} {op:?} from {start:?} ({layout:?}): {what} left {got:?}, \
                             expected one of {allowed:?}"
                        );
                        got
                    };
                    let start_of_write = if w == 0 { &old } else { &new };
                    let got = judge(&disk, &[start_of_write], "a cut before the write");
                    if w == 0 {
                        counts.disks += 1;
                        if kind == Kind::GrubPair {
                            grub_cases.push(GrubCase::new(&disk, got));
                        }
                    }
                    let mut allowed = vec![start_of_write, &new];
                    let fallback = in_place
                        .then(|| copy_state(&board, &before[1 - f]))
                        .flatten();
                    if let Some(other) = &fallback {
                        allowed.push(other);
                    }
                    for variant in torn_variants(&before[f], &after[f]) {
                        let mut torn = disk.clone();
                        torn[f] = variant;
                        let got = judge(&torn, &allowed, "a torn write");
                        counts.disks += 1;
                        if kind == Kind::GrubPair {
                            grub_cases.push(GrubCase::new(&torn, got));
                        }
                    }
                    disk[f] = after[f].clone();
                    let got = judge(&disk, &[&new], "a complete write");
                    counts.disks += 1;
                    if kind == Kind::GrubPair {
                        grub_cases.push(GrubCase::new(&disk, got));
                    }
                }
                for (p, bytes) in files.iter().zip(&after) {
                    std::fs::write(p, bytes).unwrap();
                }
            }
        }
    }
    counts
}

impl GrubCase {
    fn new(copies: &[Vec<u8>], state: State) -> GrubCase {
        let mut expect_after = state;
        let boot = expect_after.boot();
        GrubCase {
            copies: [copies[0].clone(), copies[1].clone()],
            expect_slot: boot.slot,
            expect_after,
        }
    }
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
    let c = check_kind(Kind::UBootRedundant, &mut Vec::new());
    eprintln!(
        "U-Boot: {} operations from {} starting environments, {} writes; {} disks a cut can \
         leave read back as judged",
        c.operations,
        states().len() * LAYOUTS.len(),
        c.writes,
        c.disks
    );
    assert!(c.disks > 10_000, "{c:?}");
}

#[test]
fn grub_pair_survives_a_cut_at_every_write_and_real_grub_agrees() {
    let mut cases = Vec::new();
    let c = check_kind(Kind::GrubPair, &mut cases);
    eprintln!(
        "GRUB pair: {} operations from {} starting environments, {} writes; {} disks a cut \
         can leave read back as judged",
        c.operations,
        states().len() * LAYOUTS.len(),
        c.writes,
        c.disks
    );
    assert!(c.disks > 5_000, "{c:?}");
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
    let t = Tmp::in_memory();
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
    let t = Tmp::in_memory();
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
    // FAT32 with one-sector clusters: a cluster per small file, and room for tens of
    // thousands of them (FAT32 needs at least 65,525 clusters).
    let kib = (8192 + cases.len() * names.len() * 2).max(40 << 10);
    run(Command::new("mkfs.vfat")
        .args(["-C", "-F", "32", "-s", "1", "-S", "512"])
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
    let t = Tmp::in_memory();
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
