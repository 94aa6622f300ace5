//! fw_env.config and YAML number parsing checked against glibc itself: a small C program
//! (tests/oracle/cscan.c) runs libubootenv's exact sscanf format and strtoull on generated lines,
//! and abup's parser must read every line the same way.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions fail loudly on purpose

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use u_boot_env::{Config, Error, MAX_ENV_SIZE};

/// Builds the oracle once per test binary; `None` (test skipped) without a C compiler. Called
/// before the property runs, so that in CI the missing compiler fails the test once instead of
/// failing every case proptest would shrink to.
fn oracle() -> Option<&'static Path> {
    static ORACLE: std::sync::OnceLock<Option<(tempfile::TempDir, PathBuf)>> =
        std::sync::OnceLock::new();
    ORACLE
        .get_or_init(|| {
            common::tool("cc", "c_oracle (glibc oracle for number parsing)")?;
            let dir = tempfile::tempdir().unwrap();
            let exe = dir.path().join("cscan");
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/cscan.c");
            common::run(Command::new("cc").args(["-O1", "-o"]).arg(&exe).arg(src));
            Some((dir, exe))
        })
        .as_ref()
        .map(|(_, exe)| exe.as_path())
}

/// One answer per line, in order; an oracle that answers fewer (or none) fails the test rather
/// than leaving the unanswered lines unchecked.
fn ask(oracle: &Path, mode: &str, lines: &[String]) -> Result<Vec<String>, TestCaseError> {
    let mut child = Command::new(oracle)
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    for line in lines {
        writeln!(input, "{line}").unwrap();
    }
    drop(input);
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let answers: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    prop_assert_eq!(
        answers.len(),
        lines.len(),
        "the {} oracle answered {} of {} lines",
        mode,
        answers.len(),
        lines.len()
    );
    Ok(answers)
}

/// Numbers in every notation C accepts, plus junk C stops at.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        "[+-]?(0[xX]?)?[0-9a-fA-F]{0,20}",
        "[0-9]{1,25}",
        "[+-]?0[0-7]{0,22}[89]?",
        "-?0x[0-9a-f]{0,18}[g-z]?",
        "[0-9a-f]{1,6}",
        "[0-9]{1,4}[a-z+-]{1,2}[0-9]{0,3}",
    ]
}

fn fw_env_line() -> impl Strategy<Value = String> {
    (
        "[ \t]{0,2}",
        prop::collection::vec(("[ \t]{1,2}", token()), 0..7),
        "[ \t\r]{0,2}",
    )
        .prop_map(|(lead, fields, tail)| {
            let mut line = format!("{lead}/dev/x");
            for (sep, tok) in fields {
                line.push_str(&sep);
                line.push_str(&tok);
            }
            line.push_str(&tail);
            line
        })
}

fn runner() -> TestRunner {
    TestRunner::new(ProptestConfig::with_cases(6))
}

#[test]
fn fw_env_config_lines_read_as_glibc_sscanf_reads_them() {
    let Some(oracle) = oracle() else { return };
    let lines = prop::collection::vec(fw_env_line(), 400);
    runner()
        .run(&lines, |lines| {
            let answers = ask(oracle, "fw_env", &lines)?;
            let mut kinds = [0usize; 3];
            for (line, answer) in lines.iter().zip(&answers) {
                let f: Vec<&str> = answer.split(' ').collect();
                let ret: i32 = f[0].parse().unwrap();
                let offset: i64 = f[2].parse().unwrap();
                let size: u64 = f[3].parse().unwrap();
                let parsed = Config::parse(line, None);
                kinds[usize::from(ret >= 3)
                    + usize::from((6..=MAX_ENV_SIZE as u64).contains(&size) && ret >= 3)] += 1;
                if ret < 3 {
                    prop_assert!(
                        matches!(parsed, Err(Error::ConfigEmpty)),
                        "{:?}: C matched {} fields, abup {:?}",
                        line,
                        ret,
                        parsed
                    );
                    continue;
                }
                if !(6..=MAX_ENV_SIZE as u64).contains(&size) {
                    prop_assert!(
                        matches!(parsed, Err(Error::ConfigLine { line: 1, .. })),
                        "{:?}: size {}, abup {:?}",
                        line,
                        size,
                        parsed
                    );
                    continue;
                }
                let config = parsed.map_err(|e| TestCaseError::fail(format!("{line:?}: {e}")))?;
                let copy = &config.copies()[0];
                prop_assert_eq!(copy.path.to_str(), Some(f[1]));
                prop_assert_eq!(copy.offset, offset, "{:?}", line);
                prop_assert_eq!(config.env_size() as u64, size, "{:?}", line);
                prop_assert_eq!(
                    copy.sector_size,
                    (ret >= 4).then(|| f[4].parse().unwrap()),
                    "{:?}",
                    line
                );
                prop_assert_eq!(
                    copy.sectors,
                    (ret >= 5).then(|| f[5].parse().unwrap()),
                    "{:?}",
                    line
                );
                prop_assert_eq!(copy.disable_lock, ret >= 6 && f[6] != "0", "{:?}", line);
            }
            // Every outcome must be exercised: skipped lines, refused sizes, parsed entries.
            prop_assert!(kinds.iter().all(|&k| k >= 20), "outcomes {:?}", kinds);
            Ok(())
        })
        .unwrap();
}

#[test]
fn yaml_numbers_read_as_glibc_strtoull_reads_them() {
    let Some(oracle) = oracle() else { return };
    let values =
        prop::collection::vec("[ \t]{0,2}[+-]?(0[xX]?)?[0-9a-fA-F]{0,22}[g-z_ ]{0,3}", 400);
    runner()
        .run(&values, |values| {
            let answers = ask(oracle, "strtoull", &values)?;
            for (value, answer) in values.iter().zip(&answers) {
                let expected: u64 = answer.parse().unwrap();
                let yaml =
                    format!("a:\n  size: 0x100\n  devices: [{{path: /f, offset: \"{value}\"}}]\n");
                let config = Config::parse(&yaml, None)
                    .map_err(|e| TestCaseError::fail(format!("{value:?}: {e}")))?;
                prop_assert_eq!(config.copies()[0].offset, expected as i64, "{:?}", value);
            }
            Ok(())
        })
        .unwrap();
}
