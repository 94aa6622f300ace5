//! Runs abup's real boot script (`board-configs/grub/abup-select.cfg`), and GRUB's `save_env`,
//! in `grub-emu` (GRUB 2.06's script engine and file system code, headless) over many hand-made
//! pairs, and checks that the crate's model gives the same answers and bytes.
//!
//! The pairs live on a FAT image made with `mkfs.vfat` and filled with `mcopy`; `grub-emu` sees
//! it as `(hd0)`. One `grub-emu` run handles all pairs of a test. Skipped, with a message, only
//! where grub-emu or mtools/dosfstools are missing, and never in CI.

// Test helpers panic on purpose: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::have;
use grub_env::{read_block, Change, EnvBlock, EnvPair, Error, LongWidth, SEQ_VAR, SIGNATURE};

/// The lines that run abup's boot script, `board-configs/grub/abup-select.cfg` exactly as it
/// ships to devices, on the pair in case `n`'s directory; GRUB reads it from the host, so there
/// is no copy here to drift from it. It leaves the current copy's path in `abup_env` and the
/// slot it boots in `abup_slot`, and saves the try it counts into the current copy.
fn select(n: usize) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../board-configs/grub/abup-select.cfg")
        .canonicalize()
        .unwrap();
    let script = script.to_str().unwrap();
    assert!(!script.contains('\''), "{script} cannot be quoted for GRUB");
    format!("set abup_envdir=(hd0)/t/p{n}\nsource '(host){script}'\n")
}

fn have_tools() -> bool {
    have("grub-emu") && have("mkfs.vfat") && have("mcopy")
}

/// One pair on the FAT image: `None` means the file does not exist.
struct Case {
    copies: [Option<Vec<u8>>; 2],
}

/// A FAT image holding `t/p<N>/abupenv.{0,1}` for every case.
struct Image {
    dir: tempfile::TempDir,
}

impl Image {
    fn new(cases: &[Case]) -> Image {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("t");
        for (n, case) in cases.iter().enumerate() {
            let pair_dir = tree.join(format!("p{n}"));
            std::fs::create_dir_all(&pair_dir).unwrap();
            for (index, copy) in case.copies.iter().enumerate() {
                if let Some(bytes) = copy {
                    std::fs::write(pair_dir.join(format!("abupenv.{index}")), bytes).unwrap();
                }
            }
        }
        let image = dir.path().join("fat.img");
        run(Command::new("mkfs.vfat")
            .args(["-s", "1", "-C"])
            .arg(&image)
            .arg("32768"));
        run(Command::new("mcopy")
            .arg("-s")
            .arg("-i")
            .arg(&image)
            .arg(&tree)
            .arg("::/"));
        std::fs::write(
            dir.path().join("devicemap"),
            format!("(hd0) {}\n", image.display()),
        )
        .unwrap();
        Image { dir }
    }

    fn copy_path(&self, n: usize, index: usize) -> PathBuf {
        self.dir.path().join(format!("t/p{n}/abupenv.{index}"))
    }

    /// Runs `script` (which must end in `halt`) and returns what GRUB printed, without the
    /// terminal's escape sequences and carriage returns.
    fn grub(&self, script: &str) -> String {
        let grub_dir = self.dir.path().join("grub");
        std::fs::create_dir_all(&grub_dir).unwrap();
        std::fs::write(grub_dir.join("grub.cfg"), script).unwrap();
        let out = Command::new("timeout")
            .arg("60")
            .arg("grub-emu")
            .arg("-d")
            .arg(&grub_dir)
            .arg("-m")
            .arg(self.dir.path().join("devicemap"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "grub-emu failed: {out:?}");
        strip_terminal(&out.stdout)
    }

    /// Copies the files back out of the image after GRUB wrote to it.
    fn extract(&self) -> PathBuf {
        let out = self.dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        run(Command::new("mcopy")
            .arg("-s")
            .arg("-n")
            .arg("-i")
            .arg(self.dir.path().join("fat.img"))
            .arg("::/t")
            .arg(&out));
        out.join("t")
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed: {out:?}");
}

fn strip_terminal(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter().copied().peekable();
    while let Some(c) = bytes.next() {
        match c {
            0x1b => {
                if bytes.peek() == Some(&b'[') {
                    bytes.next();
                    for c in bytes.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            b'\r' => {}
            c => out.push(c),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `RESULT p<N> <value>` lines printed by the script, in case order.
fn results(output: &str, count: usize) -> Vec<String> {
    let mut found = vec![None; count];
    for piece in output.split("RESULT ").skip(1) {
        let line = piece.lines().next().unwrap_or("");
        let (id, value) = line.split_once(' ').unwrap_or((line, ""));
        let n: usize = id.trim_start_matches('p').parse().unwrap();
        found[n] = Some(value.trim().to_string());
    }
    found
        .into_iter()
        .enumerate()
        .map(|(n, v)| v.unwrap_or_else(|| panic!("no result for case {n} in:\n{output}")))
        .collect()
}

fn read_copy(path: &Path) -> Result<EnvBlock, Error> {
    read_block(File::open(path)?)
}

fn block_with(vars: &[(&str, &[u8])]) -> Vec<u8> {
    let mut block = EnvBlock::new(512).unwrap();
    block.set_many(vars).unwrap();
    block.into_bytes()
}

fn with_seq(seq: &[u8]) -> Vec<u8> {
    block_with(&[("BOOT_ORDER", b"A B"), (SEQ_VAR, seq)])
}

fn handmade(body: &[u8], size: usize) -> Vec<u8> {
    let mut bytes = SIGNATURE.to_vec();
    bytes.extend_from_slice(body);
    bytes.resize(size, b'#');
    bytes
}

/// Small deterministic generator, so the random cases are the same on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn string(&mut self, alphabet: &[u8], max_len: u64) -> Vec<u8> {
        let len = self.next() % (max_len + 1);
        (0..len)
            .map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize])
            .collect()
    }
}

fn selection_cases() -> Vec<Case> {
    let seqs: &[&[u8]] = &[
        b"0",
        b"1",
        b"2",
        b"9",
        b"10",
        b"010",
        b"08",
        b"0x10",
        b"0X10",
        b"0x",
        b"-1",
        b"-0",
        b"--5",
        b"+5",
        b" 7",
        b"\t\n8",
        b"- 3",
        b" -3",
        b"7junk",
        b"junk",
        b"2147483647",
        b"2147483648",
        b"-2147483649",
        b"4294967295",
        b"4294967296",
        b"4294967297",
        b"-4294967297",
        b"18446744073709551615",
        b"18446744073709551617",
        b"99999999999999999999999",
        b"0xffffffff",
        b"0x7fffffff",
        b"0777",
        b"5\xff",
    ];
    let mut cases = Vec::new();
    for s0 in seqs {
        for s1 in seqs {
            cases.push(Case {
                copies: [Some(with_seq(s0)), Some(with_seq(s1))],
            });
        }
    }

    let mut no_seq = EnvBlock::from_bytes(with_seq(b"1")).unwrap();
    no_seq.unset(SEQ_VAR).unwrap();
    let odd: Vec<Option<Vec<u8>>> = vec![
        None,
        Some(Vec::new()),
        Some(vec![0; 512]),
        Some(b"# GRUB Environment Blocx\nABUP_SEQ=50\n".to_vec()),
        Some(SIGNATURE.to_vec()),
        Some(handmade(b"", 26)),
        Some(handmade(b"ABUP_SEQ=50", 36)),
        Some(no_seq.into_bytes()),
        Some(with_seq(b"")),
        Some(handmade(b"ABUP_SEQ=50\nABUP_SEQ=\n", 512)),
        Some(handmade(b"ABUP_SEQ=\nABUP_SEQ=50\n", 512)),
        Some(handmade(b"ABUP_SEQ=50\nABUP_SEQ=3\n", 512)),
        Some(handmade(b"x\nABUP_SEQ=50\n", 512)),
        Some(handmade(b"#c\\\nABUP_SEQ=50\n", 512)),
        Some(handmade(b"ABUP_SEQ\0x=50\n", 512)),
        Some(handmade(b"ABUP_SEQ=5\x000\n", 512)),
        Some(handmade(b"ABUP_SEQ=\\5\\0\n", 512)),
        Some(handmade(b"ABUP_SEQ=50\nbroken", 512)),
        Some(handmade(b"ABUP_SEQ=50\\", 40)),
        Some(handmade(b"ABUP_SEQ =50\n", 512)),
        Some(handmade(b"ABUP_SEQ=50\n", 1024)),
        Some(handmade(b"ABUP_SEQ=50\n", 4096)),
        // Values that the `[` command could take for operators or the closing bracket.
        Some(with_seq(b"]")),
        Some(with_seq(b"-n")),
        Some(with_seq(b"-gt")),
        Some(with_seq(b"(")),
        Some(with_seq(b"!")),
        Some(with_seq(b"=")),
        Some(with_seq(b"$ABUP_SEQ")),
        Some(with_seq(b"\\60")),
        Some(with_seq(b"'70'")),
        Some(with_seq(b"\"80\"")),
        Some(with_seq(b"90\n1")),
    ];
    let partners: Vec<Option<Vec<u8>>> = vec![
        None,
        Some(vec![0; 512]),
        Some(with_seq(b"0")),
        Some(with_seq(b"50")),
        Some(with_seq(b"51")),
    ];
    for a in &odd {
        for b in &partners {
            cases.push(Case {
                copies: [a.clone(), b.clone()],
            });
            cases.push(Case {
                copies: [b.clone(), a.clone()],
            });
        }
    }

    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..300 {
        let s0 = rng.string(b"0123456789-xX \tab", 12);
        let s1 = rng.string(b"0123456789-xX \tab", 12);
        cases.push(Case {
            copies: [Some(with_seq(&s0)), Some(with_seq(&s1))],
        });
    }
    cases
}

#[test]
fn rust_selection_equals_the_grub_script() {
    if !have_tools() {
        return;
    }
    let cases = selection_cases();
    let image = Image::new(&cases);
    let mut script = String::new();
    for n in 0..cases.len() {
        script += &format!("{}echo \"RESULT p{n} $abup_env\"\n", select(n));
    }
    script += "halt\n";
    let output = image.grub(&script);
    let grub = results(&output, cases.len());

    let mut mismatches = Vec::new();
    for (n, grub) in grub.iter().enumerate() {
        let pair = EnvPair::new(
            read_copy(&image.copy_path(n, 0)),
            read_copy(&image.copy_path(n, 1)),
            LongWidth::Bits64,
        );
        let expected = format!("(hd0)/t/p{n}/abupenv.{}", pair.selected());
        if *grub != expected {
            let seen = |i: usize| match pair.copy(i).unwrap() {
                Ok(_) => format!(
                    "{:?}",
                    pair.sequence(i).map(|s| s.escape_ascii().to_string())
                ),
                Err(e) => format!("unreadable ({e})"),
            };
            mismatches.push(format!(
                "case {n}: GRUB chose {grub}, we chose {expected}; ABUP_SEQ of copy 0: {}, copy 1: {}",
                seen(0),
                seen(1)
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// A boot: the boot script selects the copy (and may count a try in it), then `save_env` a try
/// counter (and a variable GRUB does not have, which `save_env` removes) into it.
struct Boot {
    pair: [Vec<u8>; 2],
    /// What the boot script itself saves first, when the current copy gives a slot a try.
    counts: Option<(&'static str, &'static str)>,
    value: &'static str,
}

fn boot_cases() -> Vec<Boot> {
    let fresh = EnvPair::create(512, LongWidth::Bits64).unwrap();
    let mut updated = EnvPair::create(512, LongWidth::Bits64).unwrap();
    let mut blocks = Vec::new();
    for (left, gone) in [("3", "x"), ("10", "yy"), ("9", "")] {
        let plan = updated
            .plan_update(&[
                Change::set("BOOT_ORDER", "B A"),
                Change::set("BOOT_A_LEFT", left),
                Change::set("GONE", gone),
                Change::set("LAST", "z"),
            ])
            .unwrap();
        updated.commit(plan);
        blocks.push(updated.current().unwrap().as_bytes().to_vec());
    }
    let bytes =
        |pair: &EnvPair, i: usize| pair.copy(i).unwrap().as_ref().unwrap().as_bytes().to_vec();
    let mut full = EnvBlock::from_bytes(with_seq(b"4")).unwrap();
    let free = full.free_space();
    // Leaves exactly the room for "BOOT_A_LEFT=2\n".
    full.set("PAD", "p".repeat(free - 5 - 14)).unwrap();
    let mut cases = vec![
        Boot {
            pair: [bytes(&fresh, 0), bytes(&fresh, 1)],
            counts: None,
            value: "2",
        },
        Boot {
            pair: [bytes(&updated, 0), bytes(&updated, 1)],
            counts: Some(("BOOT_A_LEFT", "8")),
            value: "8",
        },
        Boot {
            pair: [bytes(&updated, 0), bytes(&updated, 1)],
            counts: Some(("BOOT_A_LEFT", "8")),
            value: "10",
        },
        Boot {
            pair: [blocks[0].clone(), blocks[1].clone()],
            counts: None,
            value: "9",
        },
        Boot {
            pair: [blocks[1].clone(), blocks[0].clone()],
            counts: None,
            value: "0",
        },
        Boot {
            pair: [blocks[2].clone(), vec![0; 512]],
            counts: Some(("BOOT_A_LEFT", "8")),
            value: "2 1",
        },
        Boot {
            pair: [vec![0; 512], blocks[2].clone()],
            counts: Some(("BOOT_A_LEFT", "8")),
            value: "11",
        },
        Boot {
            pair: [full.as_bytes().to_vec(), with_seq(b"3")],
            counts: None,
            value: "2",
        },
    ];
    // A longer counter does not fit, and GRUB leaves the copy alone.
    cases.push(Boot {
        pair: [full.as_bytes().to_vec(), with_seq(b"3")],
        counts: None,
        value: "222",
    });
    cases
}

#[test]
fn grub_save_env_writes_what_the_model_predicts() {
    if !have_tools() {
        return;
    }
    let cases = boot_cases();
    let image = Image::new(
        &cases
            .iter()
            .map(|c| Case {
                copies: [Some(c.pair[0].clone()), Some(c.pair[1].clone())],
            })
            .collect::<Vec<_>>(),
    );
    let mut script = String::new();
    for (n, case) in cases.iter().enumerate() {
        script += &format!(
            "{}set BOOT_A_LEFT=\"{}\"\nunset GONE\n\
             save_env -f $abup_env BOOT_A_LEFT GONE\necho \"RESULT p{n} $abup_env\"\n",
            select(n),
            case.value
        );
    }
    script += "halt\n";
    let output = image.grub(&script);
    let grub = results(&output, cases.len());
    let out = image.extract();

    for (n, case) in cases.iter().enumerate() {
        let mut pair = EnvPair::new(
            EnvBlock::from_bytes(case.pair[0].clone()),
            EnvBlock::from_bytes(case.pair[1].clone()),
            LongWidth::Bits64,
        );
        assert_eq!(grub[n], format!("(hd0)/t/p{n}/abupenv.{}", pair.selected()));
        let mut expected = case.pair.clone();
        if let Some((name, value)) = case.counts {
            let plan = pair.boot_save_env(&[(name, Some(value))]).unwrap();
            expected[plan.index] = plan.block.as_bytes().to_vec();
            pair.commit(plan);
        }
        match pair.boot_save_env(&[("BOOT_A_LEFT", Some(case.value)), ("GONE", None)]) {
            Ok(plan) => {
                assert_eq!(plan.index, pair.selected());
                assert_eq!(
                    plan.block.get(SEQ_VAR),
                    pair.current().unwrap().get(SEQ_VAR)
                );
                expected[plan.index] = plan.block.into_bytes();
            }
            Err(Error::NoSpace { .. }) => assert_eq!(case.value, "222", "case {n}"),
            Err(e) => panic!("case {n}: {e}"),
        }
        for (index, expected) in expected.iter().enumerate() {
            let got = std::fs::read(out.join(format!("p{n}/abupenv.{index}"))).unwrap();
            assert!(
                got == *expected,
                "case {n} copy {index}\n  GRUB: {}\nmodel: {}",
                got.escape_ascii(),
                expected.escape_ascii()
            );
        }
    }
}

/// A boot of the script alone: the current copy's slot variables, and what the script must do
/// with them (the slot it boots, and the count it saves for that slot, if it counts a try).
struct Decision {
    vars: Vec<(&'static str, String)>,
    slot: &'static str,
    saves: Option<String>,
}

fn decision_cases() -> Vec<Decision> {
    let vars = |order: &'static str, a: &str, b: &str, good: &'static str| {
        vec![
            ("BOOT_ORDER", order.to_string()),
            ("BOOT_A_LEFT", a.to_string()),
            ("BOOT_B_LEFT", b.to_string()),
            ("BOOT_GOOD", good.to_string()),
        ]
    };
    let mut cases = Vec::new();
    // Every count of the first slot of BOOT_ORDER: a try counted down by one; at 0 the next
    // slot's try (A first), or with no tries anywhere the confirmed slot, uncounted (B first).
    for left in 0..=9u8 {
        let (l, down) = (left.to_string(), left.checked_sub(1).map(|d| d.to_string()));
        cases.push(Decision {
            vars: vars("A B", &l, "3", "A"),
            slot: if left > 0 { "A" } else { "B" },
            saves: Some(down.clone().unwrap_or_else(|| "2".into())),
        });
        cases.push(Decision {
            vars: vars("B A", "0", &l, "A"),
            slot: if left > 0 { "B" } else { "A" },
            saves: down,
        });
    }
    // Anything but one digit from 1 to 9 is no tries: the confirmed slot boots uncounted.
    for junk in ["", "10", "01", "+1", " 1", "1 ", "x", "-1", "1x"] {
        cases.push(Decision {
            vars: vars("A B", junk, junk, "B"),
            slot: "B",
            saves: None,
        });
    }
    // Without a confirmed slot: the first slot of BOOT_ORDER, and A when there is none.
    let fallbacks = [
        (vars("C B A", "0", "0", "C"), "B"),
        (vars("A B", "0", "0", ""), "A"),
        (vars("", "0", "0", ""), "A"),
        (vars("C", "5", "5", ""), "A"),
        (Vec::new(), "A"),
    ];
    for (vars, slot) in fallbacks {
        cases.push(Decision {
            vars,
            slot,
            saves: None,
        });
    }
    // Names the script does not know are skipped.
    cases.push(Decision {
        vars: vars("C B A", "1", "1", "A"),
        slot: "B",
        saves: Some("0".into()),
    });
    cases
}

#[test]
fn the_boot_script_counts_a_try_down_or_boots_the_confirmed_slot() {
    if !have_tools() {
        return;
    }
    let cases = decision_cases();
    // Copy 1 is current; copy 0, older, would boot B with tries left if it were read.
    let older = block_with(&[
        ("BOOT_ORDER", b"B A"),
        ("BOOT_B_LEFT", b"3"),
        (SEQ_VAR, b"1"),
    ]);
    let pairs: Vec<[Vec<u8>; 2]> = cases
        .iter()
        .map(|case| {
            let mut current = EnvBlock::from_bytes(block_with(&[(SEQ_VAR, b"2")])).unwrap();
            for (name, value) in &case.vars {
                current.set(name, value).unwrap();
            }
            [older.clone(), current.into_bytes()]
        })
        .collect();
    let image = Image::new(
        &pairs
            .iter()
            .map(|pair| Case {
                copies: [Some(pair[0].clone()), Some(pair[1].clone())],
            })
            .collect::<Vec<_>>(),
    );
    let mut script = String::new();
    for n in 0..cases.len() {
        script += &format!("{}echo \"RESULT p{n} $abup_slot\"\n", select(n));
    }
    script += "halt\n";
    let output = image.grub(&script);
    let grub = results(&output, cases.len());
    let out = image.extract();

    for (n, (case, pair)) in cases.iter().zip(&pairs).enumerate() {
        assert_eq!(grub[n], case.slot, "case {n}: {:?}", case.vars);
        let mut expected = pair.clone();
        if let Some(left) = &case.saves {
            let model = EnvPair::new(
                EnvBlock::from_bytes(pair[0].clone()),
                EnvBlock::from_bytes(pair[1].clone()),
                LongWidth::Bits64,
            );
            let name = format!("BOOT_{}_LEFT", case.slot);
            let plan = model.boot_save_env(&[(name, Some(left))]).unwrap();
            expected[plan.index] = plan.block.into_bytes();
        }
        for (index, expected) in expected.iter().enumerate() {
            let got = std::fs::read(out.join(format!("p{n}/abupenv.{index}"))).unwrap();
            assert!(
                got == *expected,
                "case {n} ({:?}) copy {index}\n  GRUB: {}\nmodel: {}",
                case.vars,
                got.escape_ascii(),
                expected.escape_ascii()
            );
        }
    }
}
