//! Helpers shared by the CLI tests: run the real `abup` binary and the real tools.
#![allow(dead_code, clippy::unwrap_used)]

pub mod fixture;
pub mod http;
pub mod net;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct Output {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl From<std::process::Output> for Output {
    fn from(out: std::process::Output) -> Output {
        Output {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: out.stderr,
        }
    }
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Asserts a refusal: exit status 1 and one line on stderr, `abup: error: ...`, that says
    /// each of `what` (compared with spaces normalised), written without runs of spaces.
    pub fn assert_refused(&self, what: &[&str]) {
        self.assert_refused_with(1, what);
    }

    /// [`Output::assert_refused`] with exit status `code` (4: a bundle that will never
    /// install here).
    pub fn assert_refused_with(&self, code: i32, what: &[&str]) {
        let err = self.stderr_text();
        assert_eq!(
            self.code,
            Some(code),
            "not refused; stdout: {}, stderr: {err}",
            self.stdout_text()
        );
        let normalised = err.split_whitespace().collect::<Vec<_>>().join(" ");
        for w in what {
            assert!(normalised.contains(w), "expected {w:?} in: {err}");
        }
        assert_eq!(err.lines().count(), 1, "not one line: {err}");
        assert!(err.starts_with("abup: error: "), "{err}");
        assert!(
            !err.trim_end().contains("  "),
            "the message has a run of spaces (a string literal broken across lines without a \
             `\\`?): {err:?}"
        );
    }

    /// Asserts exit status 0, showing stderr otherwise.
    pub fn success(&self) -> &Self {
        assert_eq!(self.code, Some(0), "stderr: {}", self.stderr_text());
        self
    }
}

/// The durable writes of an abup run with `-vv`, in order, as it names them (the file or
/// device, and for a device the offset): the numbers fault-injection tests cut or pause at.
pub fn durable_writes(out: &Output) -> Vec<String> {
    out.stderr_text()
        .lines()
        .filter_map(|l| l.split("durable write ").nth(1))
        .map(|w| w.split_once(": ").unwrap().1.to_owned())
        .collect()
}

pub fn abup(args: &[&str]) -> Output {
    abup_with(args, &[])
}

pub fn abup_with(args: &[&str], env: &[(&str, &OsStr)]) -> Output {
    let mut cmd = command(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running abup").into()
}

/// `abup ARGS...`, not yet run, with none of the environment's board, command line or proxy.
pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_abup"));
    cmd.args(args)
        .env_remove("ABUP_CONFIG")
        .env_remove("ABUP_PROC_CMDLINE");
    // The tests' servers are on this machine: a proxy the machine is set up with is not
    // theirs (the proxy tests set their own).
    for var in [
        "http_proxy",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// A child process that is killed and reaped when dropped, a failing test included: a
/// stopped install left behind would hold its lock and its devices.
pub struct Holder(pub std::process::Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd` to its end within `limit`, or kills it and fails the test naming `what`: a
/// command that waits for what never comes (a lock an install holds, bytes a failed writer
/// will not write) fails the test instead of hanging it. Output goes to files in `dir`: a
/// killed command leaves no pipe behind to wait on.
pub fn within(dir: &Path, mut cmd: Command, what: &str, limit: Duration) -> Output {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    let (out, err) = (dir.join(format!("out.{n}")), dir.join(format!("err.{n}")));
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {limit:?}; its stderr: {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    eprintln!("{what}: {:?}", start.elapsed());
    Output {
        code: status.code(),
        stdout: std::fs::read(&out).unwrap(),
        stderr: std::fs::read(&err).unwrap(),
    }
}

/// Fails the test, saying why, unless the `abup` under test obeys the fault-injection
/// switches: `cargo test` builds it with the `fault-injection` feature, but a plain `cargo
/// build` in between replaces target/debug/abup with a binary that ignores them.
pub fn require_fault_injection() {
    static CHECKED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let armed = *CHECKED.get_or_init(|| {
        let t = Tmp::new();
        let env = t.path("env");
        let out = abup_with(
            &["env", "--grub", env.to_str().unwrap(), "create"],
            &[("ABUP_CUT_AFTER_WRITES", OsStr::new("1"))],
        );
        out.code.is_none()
    });
    assert!(
        armed,
        "{} ignores ABUP_CUT_AFTER_WRITES: it was built without the fault-injection feature \
         (a plain `cargo build` replaced the test build); run the tests with `cargo test`, which \
         puts the test build back",
        env!("CARGO_BIN_EXE_abup")
    );
}

/// What a reboot does after a run cut while it had a disk image's partitions attached: the
/// dead run's mounts and loop devices over `disk` are gone.
pub fn reboot(disk: &Path) {
    let loops = run_ok("losetup", &["-j", disk.to_str().unwrap()]);
    for dev in loops.lines().filter_map(|l| l.split(':').next()) {
        let _ = Command::new("umount").arg(dev).status();
        let _ = Command::new("losetup").args(["-d", dev]).status();
    }
}

/// Unmounts `dir`, which must succeed. "Target is busy" is retried for a few seconds: a process
/// that another test thread forks while this one has a file open there holds a copy of that
/// descriptor until it execs, which a loaded machine can delay past the unmount.
pub fn umount(dir: &Path) {
    for _ in 0..50 {
        let out = Command::new("umount").arg(dir).output().unwrap();
        if out.status.success() {
            return;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("busy"), "umount {}: {err}", dir.display());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("umount {}: still busy after 5 s", dir.display());
}

/// Runs a tool that must succeed and returns its stdout.
pub fn run_ok(tool: &str, args: &[&str]) -> String {
    String::from_utf8_lossy(&run_bytes(tool, args)).into_owned()
}

/// Runs a tool that must succeed and returns its stdout as bytes (keys, decoded data).
pub fn run_bytes(tool: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Whether a tool is installed. Outside CI a test without its tool says `skipping: ...` and
/// passes; in CI (`CI` set) it fails, so a tool missing from `scripts/install-deps` cannot turn
/// a cross-check into a silent pass.
pub fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        unavailable(&format!(
            "{tool} is not installed (scripts/install-deps installs it)"
        ));
    }
    found
}

/// Whether the tests run as root (loop devices, mounts), with [`have`]'s rule: a skip outside
/// CI, a failure in CI.
pub fn is_root() -> bool {
    let root = run_ok("id", &["-u"]).trim() == "0";
    if !root {
        unavailable("the test needs root (CI runs the tests as root)");
    }
    root
}

fn unavailable(what: &str) {
    assert!(
        std::env::var_os("CI").is_none_or(|ci| ci.is_empty()),
        "{what}; CI is set, so the test fails instead of skipping"
    );
    eprintln!("skipping: {what}");
}

/// Waits until `child` is stopped (`ABUP_PAUSE_AFTER_WRITES` stops abup where it pauses),
/// failing if it ends first (`output` gives what it printed) or never stops within a minute.
pub fn wait_stopped(child: &mut std::process::Child, output: impl Fn() -> String) {
    let stat = format!("/proc/{}/stat", child.id());
    let start = std::time::Instant::now();
    loop {
        let s = std::fs::read_to_string(&stat).unwrap_or_default();
        // The state follows the command name in parentheses.
        if s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('T')
        {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("abup ended ({status}) before pausing: {}", output());
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "abup never paused"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

pub fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub struct Tmp(tempfile::TempDir);

impl Tmp {
    pub fn new() -> Tmp {
        Tmp(tempfile::tempdir().unwrap())
    }

    /// In memory (tmpfs) where the machine has it: for tests that sync thousands of small
    /// writes and model what a power cut loses themselves, so the disk only makes them slow.
    pub fn in_memory() -> Tmp {
        let shm = Path::new("/dev/shm");
        Tmp(if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

/// A board file in `t` whose slots are two files and whose environment is a fresh GRUB pair
/// in the factory state (A first and confirmed).
pub fn board_file(t: &Tmp, kind: &str) -> PathBuf {
    let board = t.path("board.toml");
    let (a, b) = (t.path("slot-a"), t.path("slot-b"));
    std::fs::write(&a, b"").unwrap();
    std::fs::write(&b, b"").unwrap();
    assert_eq!(kind, "grub-pair");
    let (e0, e1) = (t.path("abupenv.0"), t.path("abupenv.1"));
    std::fs::write(
        &board,
        format!(
            "[board]\nname = \"test\"\ncompatible = \"test-board\"\n\
             [bootloader]\ntype = \"grub\"\ngrubenv = [{:?}, {:?}]\n\
             [[slot]]\nname = \"A\"\ndevice = {:?}\n[[slot]]\nname = \"B\"\ndevice = {:?}\n",
            e0, e1, a, b
        ),
    )
    .unwrap();
    factory_env(&e0, &e1);
    board
}

/// Creates the GRUB pair `e0`/`e1` in the factory state: A first, confirmed, 3 tries.
pub fn factory_env(e0: &Path, e1: &Path) {
    factory_env_at(&[
        "--grub",
        e0.to_str().unwrap(),
        "--grub",
        e1.to_str().unwrap(),
    ]);
}

/// Creates the environment that `location` names (`env` options such as `--grub FILE` or
/// `--uboot-config FILE`) in the factory state: A first, confirmed, 3 tries; B none.
pub fn factory_env_at(location: &[&str]) {
    let mut args = vec!["env"];
    args.extend_from_slice(location);
    args.extend([
        "create",
        "BOOT_ORDER=A B",
        "BOOT_A_LEFT=3",
        "BOOT_B_LEFT=0",
        "BOOT_GOOD=A",
    ]);
    abup(&args).success();
}
