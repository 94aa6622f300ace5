//! A device in a directory: two file-backed slots, abup's GRUB environment pair in the
//! factory state (slot A running and confirmed), a keyring, a state directory, and a signing
//! key to build bundles with.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{abup, abup_with, Output, Tmp};

pub struct Fixture {
    pub t: Tmp,
    pub board: PathBuf,
    pub cmdline: PathBuf,
    pub key: PathBuf,
    pub keyring: PathBuf,
    pub state: PathBuf,
}

/// Deterministic image content: incompressible bytes, then zeros, then text.
pub fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed ^ 0x2545_f491_4f6c_dd1d;
    let mut v: Vec<u8> = (0..len / 2)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    v.resize(len * 3 / 4, 0);
    while v.len() < len {
        v.extend_from_slice(b"abup writes slots; ");
    }
    v.truncate(len);
    v
}

/// Where in an install's durable writes (`Fixture::install_writes`, 0-based) the held-back
/// first block of slot B is finally written, and the last journal checkpoint before it: the
/// moment its last region is synced and not yet read back.
pub fn first_block_and_last_checkpoint(writes: &[String]) -> (usize, usize) {
    let first_block = writes
        .iter()
        .rposition(|w| w.ends_with("slot-b at 0"))
        .expect("the install writes slot B's first block");
    let checkpoint = writes[..first_block]
        .iter()
        .rposition(|w| w.ends_with("install.json"))
        .expect("a journal checkpoint before the first block");
    (first_block, checkpoint)
}

impl Fixture {
    /// Slots of `slot_size` bytes; `extra` is appended to the board file (hooks and such).
    pub fn new(slot_size: u64, extra: &str) -> Fixture {
        Fixture::in_dir(Tmp::new(), slot_size, extra)
    }

    /// The same in memory ([`Tmp::in_memory`]): no direct I/O, but hundreds of installs in
    /// seconds, for tests that model power cuts themselves.
    pub fn in_memory(slot_size: u64, extra: &str) -> Fixture {
        Fixture::in_dir(Tmp::in_memory(), slot_size, extra)
    }

    fn in_dir(t: Tmp, slot_size: u64, extra: &str) -> Fixture {
        for d in ["keyring", "state", "boot"] {
            std::fs::create_dir(t.path(d)).unwrap();
        }
        for s in ["slot-a", "slot-b"] {
            let f = std::fs::File::create(t.path(s)).unwrap();
            f.set_len(slot_size).unwrap();
        }
        // Slot A holds the running system.
        std::fs::write(t.path("slot-a"), image(slot_size as usize, 99)).unwrap();
        let board = t.path("board.toml");
        std::fs::write(
            &board,
            format!(
                "[board]\nname = \"test\"\ncompatible = \"abup-test\"\n\
                 [bootloader]\ntype = \"grub\"\ngrubenv = [{:?}, {:?}]\n\
                 [install]\nstate-dir = {:?}\nkeyring = {:?}\n{extra}\n\
                 [[slot]]\nname = \"A\"\ndevice = {:?}\n[[slot]]\nname = \"B\"\ndevice = {:?}\n",
                t.path("boot/abupenv.0"),
                t.path("boot/abupenv.1"),
                t.path("state"),
                t.path("keyring"),
                t.path("slot-a"),
                t.path("slot-b"),
            ),
        )
        .unwrap();
        super::factory_env(&t.path("boot/abupenv.0"), &t.path("boot/abupenv.1"));
        let key = t.path("signing.pem");
        abup(&[
            "keygen",
            "--secret",
            key.to_str().unwrap(),
            "--public",
            t.path("keyring/release.pem").to_str().unwrap(),
        ])
        .success();
        let cmdline = t.path("cmdline");
        std::fs::write(&cmdline, "root=/dev/x abup.slot=A\n").unwrap();
        Fixture {
            board,
            cmdline,
            key,
            keyring: t.path("keyring"),
            state: t.path("state"),
            t,
        }
    }

    /// Makes slot B still bootable: it holds an older system, and it is first in the boot
    /// order with all its tries, while A runs and is confirmed (someone ran `abup mark-active
    /// B` and has not rebooted yet). An install must take B out of rotation before it writes
    /// a byte of it; in the factory state B has no tries, that step writes nothing, and a test
    /// could not tell whether it happened.
    pub fn with_b_bootable(self) -> Fixture {
        let size = self.slot("B").len();
        std::fs::write(self.t.path("slot-b"), image(size, 77)).unwrap();
        self.abup(&["env", "set", "BOOT_ORDER=B A", "BOOT_B_LEFT=3"])
            .success();
        let s = self.status();
        assert_eq!(s["next_boot"], "B", "{s}");
        assert_eq!(s["slots"][0]["confirmed"], true, "{s}");
        self
    }

    /// Every file of the device (slots, environment, state directory), to put back with
    /// [`Fixture::restore`], so that many runs can start from one state.
    pub fn save(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut files = Vec::new();
        for dir in ["", "boot", "state"] {
            for e in std::fs::read_dir(self.t.path(dir)).unwrap() {
                let p = e.unwrap().path();
                if p.is_file() {
                    files.push((p.clone(), std::fs::read(&p).unwrap()));
                }
            }
        }
        files
    }

    pub fn restore(&self, files: &[(PathBuf, Vec<u8>)]) {
        for e in std::fs::read_dir(&self.state).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                std::fs::remove_file(p).unwrap();
            }
        }
        for (p, bytes) in files {
            std::fs::write(p, bytes).unwrap();
        }
    }

    /// A slot's state in `abup status --json`.
    pub fn slot_status(&self, name: &str) -> serde_json::Value {
        let s = self.status();
        s["slots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .cloned()
            .unwrap()
    }

    /// A bundle of `image` for this board.
    pub fn bundle(
        &self,
        name: &str,
        image: &[u8],
        version: &str,
        security_version: u64,
    ) -> PathBuf {
        let sv = security_version.to_string();
        self.create_bundle(
            name,
            image,
            &["--version", version, "--security-version", &sv],
        )
    }

    /// A delta bundle from `base` (what the devices' slot A holds) to `image`.
    pub fn delta_bundle(&self, name: &str, base: &[u8], image: &[u8], version: &str) -> PathBuf {
        let old = self.t.path(&format!("{name}.base"));
        std::fs::write(&old, base).unwrap();
        let old = old.to_str().unwrap();
        let args = ["--version", version, "--level", "3", "--delta-from", old];
        self.create_bundle(name, image, &args)
    }

    fn create_bundle(&self, name: &str, image: &[u8], args: &[&str]) -> PathBuf {
        let img = self.t.path(&format!("{name}.img"));
        std::fs::write(&img, image).unwrap();
        let out = self.t.path(name);
        let mut all = vec![
            "bundle",
            "create",
            "--key",
            self.key.to_str().unwrap(),
            "--compatible",
            "abup-test",
            "--created",
            "1790000000",
            "--chunk-size",
            "65536",
            "--image",
            img.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        abup(&all).success();
        out
    }

    pub fn abup(&self, args: &[&str]) -> Output {
        self.abup_env(args, &[])
    }

    pub fn abup_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut all: Vec<(&str, &std::ffi::OsStr)> = vec![
            ("ABUP_CONFIG", self.board.as_os_str()),
            ("ABUP_PROC_CMDLINE", self.cmdline.as_os_str()),
        ];
        all.extend(env.iter().map(|(k, v)| (*k, std::ffi::OsStr::new(*v))));
        abup_with(args, &all)
    }

    /// `abup install BUNDLE`, stopped after its durable write number `pause` (1-based) while
    /// `tamper` changes things behind its back, then let go on.
    pub fn install_paused(&self, bundle: &Path, pause: usize, tamper: impl FnOnce()) -> Output {
        self.install_paused_with(bundle, &[], pause, tamper)
    }

    /// [`Fixture::install_paused`] with more arguments for `abup install`.
    pub fn install_paused_with(
        &self,
        bundle: &Path,
        args: &[&str],
        pause: usize,
        tamper: impl FnOnce(),
    ) -> Output {
        super::require_fault_injection();
        let (out, err) = (self.t.path("stdout"), self.t.path("stderr"));
        let child = self
            .command(&["install", bundle.to_str().unwrap()])
            .args(args)
            .env("ABUP_PAUSE_AFTER_WRITES", pause.to_string())
            // Files, not pipes: a stopped child must not wait for a reader.
            .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
            .spawn()
            .unwrap();
        let mut child = super::Holder(child);
        let pid = child.0.id();
        super::wait_stopped(&mut child.0, || std::fs::read_to_string(&err).unwrap());
        tamper();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGCONT,
        )
        .unwrap();
        let status = child.0.wait().unwrap();
        Output {
            code: status.code(),
            stdout: std::fs::read(&out).unwrap(),
            stderr: std::fs::read(&err).unwrap(),
        }
    }

    /// `abup install - --progress json`, the bundle written to its standard input.
    pub fn install_stdin(&self, bundle: &Path) -> Output {
        use std::io::Write;
        let mut child = self
            .command(&["install", "-", "--progress", "json"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&std::fs::read(bundle).unwrap())
            .unwrap();
        child.wait_with_output().unwrap().into()
    }

    /// `abup install BUNDLE` under `/usr/bin/time`: its output, and its peak resident memory
    /// in bytes.
    pub fn install_peak_rss(&self, bundle: &Path) -> (Output, u64) {
        let out = Command::new("/usr/bin/time")
            .args(["-f", "peak-rss-kib=%M", env!("CARGO_BIN_EXE_abup")])
            .args(["install", bundle.to_str().unwrap(), "--progress", "none"])
            .env("ABUP_CONFIG", &self.board)
            .env("ABUP_PROC_CMDLINE", &self.cmdline)
            .output()
            .unwrap();
        let out = Output::from(out);
        let err = out.stderr_text();
        let kib: u64 = err
            .lines()
            .find_map(|l| l.strip_prefix("peak-rss-kib="))
            .unwrap_or_else(|| panic!("no measurement: {err}"))
            .trim()
            .parse()
            .unwrap();
        (out, kib << 10)
    }

    /// The durable writes of a complete install of `bundle` (undone afterwards: the device is
    /// put back as it was), as `-vv` names them.
    pub fn install_writes(&self, bundle: &Path) -> Vec<String> {
        super::require_fault_injection();
        let saved = self.save();
        let out = self.abup(&["-vv", "install", bundle.to_str().unwrap()]);
        out.success();
        self.restore(&saved);
        super::durable_writes(&out)
    }

    /// The running slot, as the kernel command line says.
    pub fn boot(&self, slot: &str) {
        std::fs::write(&self.cmdline, format!("abup.slot={slot}\n")).unwrap();
    }

    /// `abup ARGS...` with this fixture's board and command line, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = super::command(args);
        cmd.env("ABUP_CONFIG", &self.board)
            .env("ABUP_PROC_CMDLINE", &self.cmdline);
        cmd
    }

    /// `abup status --json` while an install runs or is stopped. It must answer at any moment:
    /// a status that waited for a lock the install holds would never return, and fails here
    /// after a minute instead of hanging.
    pub fn status_during_install(&self) -> serde_json::Value {
        let cmd = self.command(&["status", "--json"]);
        let out = super::within(
            &self.t.path(""),
            cmd,
            "abup status",
            Duration::from_secs(60),
        );
        serde_json::from_slice(&out.success().stdout).unwrap()
    }

    pub fn status(&self) -> serde_json::Value {
        self.status_with(&[])
    }

    /// `abup status --json` with more options (`--history`).
    pub fn status_with(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["status", "--json"];
        all.extend_from_slice(args);
        let out = self.abup(&all);
        out.success();
        serde_json::from_str(&out.stdout_text()).unwrap()
    }

    /// Points the board's slot `name` at `device` instead of its file.
    pub fn set_slot_device(&self, name: &str, device: &Path) {
        let board = std::fs::read_to_string(&self.board).unwrap();
        let file = format!(
            "{:?}",
            self.t.path(&format!("slot-{}", name.to_lowercase()))
        );
        assert!(board.contains(&file), "{board}");
        std::fs::write(&self.board, board.replace(&file, &format!("{device:?}"))).unwrap();
    }

    pub fn slot(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.t.path(&format!("slot-{}", name.to_lowercase()))).unwrap()
    }

    /// The environment pair's bytes.
    pub fn env(&self) -> [Vec<u8>; 2] {
        [
            std::fs::read(self.t.path("boot/abupenv.0")).unwrap(),
            std::fs::read(self.t.path("boot/abupenv.1")).unwrap(),
        ]
    }
}
