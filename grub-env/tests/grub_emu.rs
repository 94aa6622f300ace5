//! Runs abup's real copy-selection script, and GRUB's `save_env`, in `grub-emu` (GRUB 2.06's
//! script engine and file system code, headless) over many hand-made pairs, and checks that
//! the crate's model gives the same answers and bytes.
//!
//! The pairs live on a FAT image made with `mkfs.vfat` and filled with `mcopy`; `grub-emu` sees
//! it as `(hd0)`. One `grub-emu` run handles all pairs of a test. Skipped, with a message, only
//! where grub-emu or mtools/dosfstools are missing.

// Test helpers panic on purpose: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use grub_env::{read_block, Change, EnvBlock, EnvPair, Error, LongWidth, SEQ_VAR, SIGNATURE};

/// The boot script's selection, verbatim as it goes into board configs (`envdir` is set before).
const SELECT: &str = r#"set ABUP_SEQ=
load_env -f $envdir/abupenv.0 ABUP_SEQ
set abup_seq0="$ABUP_SEQ"
set ABUP_SEQ=
load_env -f $envdir/abupenv.1 ABUP_SEQ
set abup_seq1="$ABUP_SEQ"
set abup_env=$envdir/abupenv.0
if [ -n "$abup_seq1" ]; then
  if [ -z "$abup_seq0" ]; then set abup_env=$envdir/abupenv.1
  elif [ "$abup_seq1" -gt "$abup_seq0" ]; then set abup_env=$envdir/abupenv.1; fi
fi
"#;

fn have_tools() -> bool {
    let missing: Vec<&str> = ["grub-emu", "mkfs.vfat", "mcopy"]
        .into_iter()
        .filter(|tool| {
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .stdout(Stdio::null())
                .status()
                .map_or(true, |s| !s.success())
        })
        .collect();
    if !missing.is_empty() {
        eprintln!("SKIPPED: {} not installed", missing.join(", "));
    }
    missing.is_empty()
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
        script += &format!("set envdir=(hd0)/t/p{n}\n{SELECT}echo \"RESULT p{n} $abup_env\"\n");
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

/// A boot: select the copy, then `save_env` a try counter (and a variable GRUB does not have,
/// which `save_env` removes) into it.
struct Boot {
    pair: [Vec<u8>; 2],
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
            value: "2",
        },
        Boot {
            pair: [bytes(&updated, 0), bytes(&updated, 1)],
            value: "8",
        },
        Boot {
            pair: [bytes(&updated, 0), bytes(&updated, 1)],
            value: "10",
        },
        Boot {
            pair: [blocks[0].clone(), blocks[1].clone()],
            value: "9",
        },
        Boot {
            pair: [blocks[1].clone(), blocks[0].clone()],
            value: "0",
        },
        Boot {
            pair: [blocks[2].clone(), vec![0; 512]],
            value: "2 1",
        },
        Boot {
            pair: [vec![0; 512], blocks[2].clone()],
            value: "11",
        },
        Boot {
            pair: [full.as_bytes().to_vec(), with_seq(b"3")],
            value: "2",
        },
    ];
    // A longer counter does not fit, and GRUB leaves the copy alone.
    cases.push(Boot {
        pair: [full.as_bytes().to_vec(), with_seq(b"3")],
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
            "set envdir=(hd0)/t/p{n}\n{SELECT}set BOOT_A_LEFT=\"{}\"\nunset GONE\n\
             save_env -f $abup_env BOOT_A_LEFT GONE\necho \"RESULT p{n} $abup_env\"\n",
            case.value
        );
    }
    script += "halt\n";
    let output = image.grub(&script);
    let grub = results(&output, cases.len());
    let out = image.extract();

    for (n, case) in cases.iter().enumerate() {
        let pair = EnvPair::new(
            EnvBlock::from_bytes(case.pair[0].clone()),
            EnvBlock::from_bytes(case.pair[1].clone()),
            LongWidth::Bits64,
        );
        assert_eq!(grub[n], format!("(hd0)/t/p{n}/abupenv.{}", pair.selected()));
        let mut expected = case.pair.clone();
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
