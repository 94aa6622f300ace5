#![allow(clippy::unwrap_used)] // test code: a panic is a failed test
//! U-Boot's slot selection (`board-configs/u-boot/abup-select.cmd`) run by the real U-Boot in
//! every state of a two-slot board with 3 tries, each compared with bootcount's model: the
//! slot it boots, whether it saves the environment, and the variables it leaves.
//!
//! One QEMU run of the arm64 board's U-Boot (2023.01, environment redundant on FAT, so its
//! `saveenv` works) does all of them: its boot command sources a generated `boot.scr`, which
//! sources the parts holding the cases; per case, a part sets the variables with `setenv`,
//! runs the script's text (as a board's `boot.scr` does, with its hush variables renamed for
//! the case: see `rename_hush_vars`) and prints the result between two markers. A case saved
//! when U-Boot's "Saving Environment to FAT... OK" is between them. The console goes to
//! `target/qemu-tests/uboot-select/console.log`. GRUB's scripts get the same check from
//! grub-emu (`updater/tests/power_cut.rs`).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bootcount::{Scheme, Slots, State};
use qemu_tests::artifacts;
use qemu_tests::board::{Board, TRIES};
use qemu_tests::vm::{self, Vm};
use qemu_tests::{factory, image, run};

/// The variables of the native scheme for slots A and B, in the order a `Case` holds them.
const VARS: [&str; 4] = ["BOOT_ORDER", "BOOT_A_LEFT", "BOOT_B_LEFT", "BOOT_GOOD"];

/// `BOOT_ORDER` values: unset, every order of the two slots, and what a hand-edited or foreign
/// environment may hold (a repeat, an unknown slot, extra spaces).
const ORDERS: [Option<&str>; 8] = [
    None,
    Some("A"),
    Some("B"),
    Some("A B"),
    Some("B A"),
    Some("B B A"),
    Some("C A"),
    Some("  B   A "),
];
/// `BOOT_<S>_LEFT`: unset, 0 to `TRIES`, and values the script's if-chain does not count.
const LEFT: [Option<&str>; 7] = [
    None,
    Some("0"),
    Some("1"),
    Some("2"),
    Some("3"),
    Some("x"),
    Some("10"),
];
/// `BOOT_GOOD`: unset, either slot, a slot the board does not have.
const GOOD: [Option<&str>; 4] = [None, Some("A"), Some("B"), Some("C")];

/// On an idle machine the whole session takes about 7 s (U-Boot starts in 1 s, a case takes
/// 5 ms): this long without the next case's answer is a hung session, even on a loaded CI
/// machine.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);

/// What U-Boot prints before it spins forever: hush out of memory (a script whose `if` or
/// `for` never ends swallows the rest of its part), and `hang()`.
const HANGS: [&str; 3] = [
    "ERROR : xmalloc failed",
    "ERROR : xrealloc failed",
    "### ERROR ### Please RESET the board ###",
];

/// One state: the values of `VARS`, `None` for unset.
type Case = [Option<&'static str>; 4];

/// What U-Boot did in one case.
#[derive(Debug)]
struct Answer {
    /// `abup_slot` after the script.
    slot: String,
    /// U-Boot printed "Saving Environment to FAT... OK".
    saved: bool,
    /// `VARS` after the script; an empty value reads as unset (U-Boot cannot hold one).
    after: [Option<String>; 4],
    /// Anything else U-Boot printed during the case (errors of the script or of saveenv).
    other_output: Vec<String>,
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for order in ORDERS {
        for a in LEFT {
            for b in LEFT {
                for good in GOOD {
                    cases.push([order, a, b, good]);
                }
            }
        }
    }
    cases
}

/// Cases per part: each part is one script image the driver loads and sources, so no
/// single image grows with the number of cases.
const CASES_PER_PART: usize = 128;

/// `script` with every hush variable (the words starting with `abup_`, as the script's own
/// comment names them) renamed with `suffix`. U-Boot's hush cannot unset or empty a variable
/// (`abup_slot=` is ignored, `unset` is compiled out), so a second run of the unmodified
/// script in one session would start from the first run's `abup_slot`; fresh names make
/// every case start as a power-on does, with none of them set.
fn rename_hush_vars(script: &str, suffix: &str) -> String {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(script.len() + 64 * suffix.len());
    let mut rest = script;
    while let Some(at) = rest.find("abup_") {
        let before_ok = !rest[..at].chars().next_back().is_some_and(ident);
        let word_len = rest[at..]
            .find(|c: char| !ident(c))
            .unwrap_or(rest.len() - at);
        out.push_str(&rest[..at + word_len]);
        if before_ok {
            out.push_str(suffix);
        }
        rest = &rest[at + word_len..];
    }
    out.push_str(rest);
    out
}

/// One part of the cases, as U-Boot sources it: per case, the variables, the selection
/// script (its hush variables renamed for the case) and the result between two markers.
fn part(select: &str, first: usize, cases: &[Case]) -> String {
    let mut s = String::new();
    for (i, case) in cases.iter().enumerate().map(|(k, c)| (first + k, c)) {
        let suffix = format!("_c{i}");
        writeln!(s, "echo \"ABUP-START {i}|\"").unwrap();
        for (name, value) in VARS.iter().zip(case) {
            match value {
                Some(v) => writeln!(s, "setenv {name} \"{v}\"").unwrap(),
                None => writeln!(s, "setenv {name}").unwrap(),
            }
        }
        s.push_str(&rename_hush_vars(select, &suffix));
        writeln!(
            s,
            "\necho \"ABUP-END {i}|${{abup_slot{suffix}}}|${{BOOT_ORDER}}|${{BOOT_A_LEFT}}|\
             ${{BOOT_B_LEFT}}|${{BOOT_GOOD}}|\""
        )
        .unwrap();
    }
    s
}

/// `boot.scr`: loads and sources each part in turn, then powers off.
fn driver(parts: usize) -> String {
    let mut s = String::new();
    for k in 0..parts {
        writeln!(
            s,
            "if load nvme 0:1 ${{kernel_addr_r}} part{k}.scr; then source ${{kernel_addr_r}}; \
             else echo abup-test: cannot load part{k}.scr; poweroff; fi"
        )
        .unwrap();
    }
    s.push_str("echo ABUP-DONE\npoweroff\n");
    s
}

/// `mkimage -T script` of `source` into `out`, as `abup provision` makes the U-Boot boards'
/// `boot.scr`.
fn script_image(source: &Path, out: &Path) -> Result<()> {
    run(Command::new("mkimage")
        .args(["-A", "arm64", "-T", "script", "-C", "none", "-d"])
        .arg(source)
        .arg(out))
}

/// The arm64 board's disk as `abup provision` makes it (slots empty; its redundant
/// environment holding U-Boot's defaults, so `saveenv` has somewhere to go, and the slot
/// variables, which every case sets anew), with the driver as `boot.scr` and the parts
/// beside it on the boot partition U-Boot finds at `nvme 0:1`.
fn build_disk(dir: &Path, cases: &[Case]) -> Result<PathBuf> {
    let board = Board::UbootArm64;
    let select_path = artifacts::workspace().join("board-configs/u-boot/abup-select.cmd");
    let select = fs::read_to_string(&select_path)
        .with_context(|| format!("reading {}", select_path.display()))?;
    ensure!(
        select.contains("abup_slot"),
        "{} no longer sets abup_slot",
        select_path.display()
    );
    let mut names = vec!["boot.scr".to_string()];
    let chunks: Vec<&[Case]> = cases.chunks(CASES_PER_PART).collect();
    for (k, chunk) in chunks.iter().enumerate() {
        let cmd = dir.join(format!("part{k}.cmd"));
        fs::write(&cmd, part(&select, k * CASES_PER_PART, chunk))?;
        script_image(&cmd, &dir.join(format!("part{k}.scr")))?;
        names.push(format!("part{k}.scr"));
    }
    fs::write(dir.join("boot.cmd"), driver(chunks.len()))?;
    script_image(&dir.join("boot.cmd"), &dir.join("boot.scr"))?;
    let disk = factory::provision(board, dir, None)?;
    let boot = disk.layout.mounted_at(board.boot_mount())?;
    for name in &names {
        image::fat_put(&disk.path, boot, &dir.join(name), &format!("/{name}"))?;
    }
    Ok(disk.path)
}

/// Reads the answers out of the console text; a case that never ended is missing.
fn parse(text: &str, cases: usize) -> Result<Vec<Option<Answer>>> {
    let mut answers: Vec<Option<Answer>> = (0..cases).map(|_| None).collect();
    for chunk in text.split("ABUP-START ").skip(1) {
        let (number, rest) = chunk
            .split_once('|')
            .context("a start marker without '|'")?;
        let i: usize = number.parse().with_context(|| format!("case {number:?}"))?;
        let Some((body, end)) = rest.split_once(&format!("ABUP-END {i}|")) else {
            continue;
        };
        let fields: Vec<&str> = end.lines().next().unwrap_or("").split('|').collect();
        ensure!(fields.len() == 6, "case {i}: end marker {end:?}");
        let value = |f: &str| (!f.is_empty()).then(|| f.to_string());
        let mut saved = false;
        let mut other_output = Vec::new();
        for line in body.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if line == "Saving Environment to FAT... OK" && !saved {
                saved = true;
            } else if !line.starts_with("## Executing script at ") {
                other_output.push(line.to_string());
            }
        }
        ensure!(i < cases, "case {i} of {cases}");
        answers[i] = Some(Answer {
            slot: fields[0].to_string(),
            saved,
            after: [
                value(fields[1]),
                value(fields[2]),
                value(fields[3]),
                value(fields[4]),
            ],
            other_output,
        });
    }
    Ok(answers)
}

fn show(vars: &[Option<&str>]) -> String {
    VARS.iter()
        .zip(vars)
        .map(|(name, v)| match v {
            Some(v) => format!("{name}={v:?}"),
            None => format!("{name} unset"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How `case` differs from the model, if it does.
fn check(slots: &Slots, case: &Case, answer: &Answer) -> Option<String> {
    // The model reads the variables the way abup does. (`AbupState::new` would take "10" as 9
    // tries; the script, like `decode`, counts only single digits.)
    let lookup = |name: &str| VARS.iter().position(|v| *v == name).and_then(|i| case[i]);
    let mut model = State::decode(Scheme::Abup, slots, lookup);
    let boot = model.boot();
    // The script changes nothing but the counted try, and writes it as one digit.
    let mut expect: Vec<Option<String>> = case.iter().map(|v| v.map(str::to_string)).collect();
    if boot.saves {
        let left = model.status(boot.slot).tries_left;
        expect[1 + boot.slot.0] = Some(left.to_string());
    }
    let after: Vec<Option<&str>> = answer.after.iter().map(Option::as_deref).collect();
    let after_lookup = |name: &str| VARS.iter().position(|v| *v == name).and_then(|i| after[i]);
    let decoded = State::decode(Scheme::Abup, slots, after_lookup);
    let same = slots.find(&answer.slot) == Some(boot.slot)
        && answer.saved == boot.saves
        && decoded == model
        && answer.after[..] == expect[..]
        && answer.other_output.is_empty();
    if same {
        return None;
    }
    let saves = |s: bool| if s { "saves" } else { "does not save" };
    let expect: Vec<Option<&str>> = expect.iter().map(Option::as_deref).collect();
    let mut why = format!(
        "{}: U-Boot boots {:?}, {}, leaves {}; the model boots {}, {}, leaves {}",
        show(case),
        answer.slot,
        saves(answer.saved),
        show(&after),
        slots.name(boot.slot),
        saves(boot.saves),
        show(&expect),
    );
    if !answer.other_output.is_empty() {
        write!(why, "; U-Boot also printed {:?}", answer.other_output).unwrap();
    }
    Some(why)
}

/// Every state of a two-slot board with 3 tries: the real U-Boot's hush running
/// `abup-select.cmd` boots the slot bootcount's model boots, saves exactly when it saves, and
/// leaves the variables in the state the model moves to.
#[test]
fn u_boot_select_script_matches_the_model_in_every_state() -> Result<()> {
    let cases = cases();
    let slots = Slots::new(&["A", "B"], u8::try_from(TRIES)?, Scheme::Abup)?;
    let dir = artifacts::workspace().join("target/qemu-tests/uboot-select");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let disk = build_disk(&dir, &cases).context("building the U-Boot test disk")?;
    let log = dir.join("console.log");
    vm::new_log(&log)?;
    eprintln!("uboot-select: console log {}", log.display());

    let board = Board::UbootArm64;
    let title = format!("{} cases of abup-select.cmd", cases.len());
    let mut vm = Vm::start(board.qemu(&disk, &dir)?, &log, &title)?;
    let mut text = String::new();
    let needles = [&["ABUP-END ", "ABUP-DONE"][..], &HANGS[..]].concat();
    loop {
        let (which, seen) = vm.expect_any(&needles, PROGRESS_TIMEOUT)?;
        text.push_str(&seen);
        match which {
            0 => continue,
            1 => break,
            _ => bail!(
                "U-Boot stopped after \"{}\" (see {})",
                needles[which],
                log.display()
            ),
        }
    }
    let seconds = vm.elapsed().as_secs_f64();
    drop(vm);

    let answers = parse(&text, cases.len())?;
    let answered = answers.iter().filter(|a| a.is_some()).count();
    ensure!(
        answered == cases.len(),
        "U-Boot answered {answered} of {} cases (see {})",
        cases.len(),
        log.display()
    );
    let differ: Vec<String> = cases
        .iter()
        .zip(&answers)
        .enumerate()
        .filter_map(|(i, (case, answer))| {
            let answer = answer.as_ref()?;
            check(&slots, case, answer).map(|why| format!("case {i}: {why}"))
        })
        .collect();
    ensure!(
        differ.is_empty(),
        "abup-select.cmd differs from bootcount's model in {} of {} states (see {}):\n{}",
        differ.len(),
        cases.len(),
        log.display(),
        differ
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let saved = answers.iter().flatten().filter(|a| a.saved).count();
    eprintln!(
        "uboot-select: {} states ({saved} of them saving) run by U-Boot's hush as bootcount's \
         model predicts, in {seconds:.1} s of QEMU",
        cases.len()
    );
    Ok(())
}

#[test]
fn renames_only_the_hush_variables() {
    let script = "abup_s=\nfor abup_s in ${BOOT_ORDER}; do abup_slot=${abup_s}; done\n\
                  echo xabup_s abup_slot_x \"${abup_slot}\"\n";
    assert_eq!(
        rename_hush_vars(script, "_c7"),
        "abup_s_c7=\nfor abup_s_c7 in ${BOOT_ORDER}; do abup_slot_c7=${abup_s_c7}; done\n\
         echo xabup_s abup_slot_x_c7 \"${abup_slot_c7}\"\n"
    );
}
