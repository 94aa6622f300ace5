//! The bootloader environment is locked only while an install writes it (issue 12, point 4):
//! an install stalled in the middle of its payload on a slow source holds no environment lock,
//! so `abup status`, `abup env get`, `fw_printenv` and hooks that read the environment answer
//! at once, while `mark-active` and `mark-good` of the slot being written are refused.
//!
//! Every command run during an install has a deadline: one that waits for a lock the install
//! holds fails the test instead of hanging it.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::fixture::{image, Fixture};
use common::Output;

const SLOT: u64 = 6 << 20;

/// 80 chunks of 64 KiB, the first 40 incompressible; a checkpoint every 10 chunks (an eighth).
const IMAGE: usize = 5 << 20;

/// Chunks the stalled install gets before its source goes quiet: past the first checkpoint,
/// so the journal shows the payload under way.
const CHUNKS_BEFORE_STALL: usize = 14;

/// What a command that reads the environment, or updates it once, may take during an
/// install. Waiting for the install's lock would take as long as the install.
const PROMPT: Duration = Duration::from_secs(5);

/// What the install may take once its source delivers again.
const INSTALL: Duration = Duration::from_secs(120);

/// How many bytes of `bundle` the header, manifest, signature and the first `chunks` stored
/// chunks take (docs/bundle-format.md: the manifest length at byte 12, the signature block
/// after the manifest, then the stored chunks of image 0 in order).
fn prefix_len(bundle: &[u8], chunks: usize) -> usize {
    let n = u32::from_le_bytes(bundle[12..16].try_into().unwrap()) as usize;
    let manifest: serde_json::Value = serde_json::from_slice(&bundle[16..16 + n]).unwrap();
    let stored: u64 = manifest["images"][0]["chunks"].as_array().unwrap()[..chunks]
        .iter()
        .map(|c| c["stored"].as_u64().unwrap())
        .sum();
    16 + n + 96 + stored as usize
}

/// `abup install -` fed the start of a bundle and then nothing, its standard input kept open:
/// an install waiting on a slow source in the middle of its payload. Killed when dropped.
struct Stalled {
    child: Child,
    go: Option<mpsc::Sender<()>>,
    feeder: Option<JoinHandle<std::io::Result<()>>>,
    out: PathBuf,
    err: PathBuf,
}

impl Stalled {
    fn start(f: &Fixture, bundle: &Path) -> Stalled {
        let bytes = common::read(bundle);
        let prefix = prefix_len(&bytes, CHUNKS_BEFORE_STALL);
        assert!(prefix < bytes.len());
        let (out, err) = (f.t.path("install.out"), f.t.path("install.err"));
        let mut child = f
            .command(&["install", "-"])
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let (go, wait) = mpsc::channel::<()>();
        // A thread, so that an install that stops reading cannot block the test in a write.
        let feeder = std::thread::spawn(move || {
            stdin.write_all(&bytes[..prefix])?;
            stdin.flush()?;
            if wait.recv().is_ok() {
                stdin.write_all(&bytes[prefix..])?;
            }
            Ok(())
        });
        let mut stalled = Stalled {
            child,
            go: Some(go),
            feeder: Some(feeder),
            out,
            err,
        };
        stalled.wait_for_payload(f);
        stalled
    }

    /// Waits until the journal says the payload is being written, past its first checkpoint.
    fn wait_for_payload(&mut self, f: &Fixture) {
        let journal = f.state.join("install.json");
        let start = Instant::now();
        loop {
            let phase = std::fs::read(&journal)
                .ok()
                .and_then(|j| serde_json::from_slice::<serde_json::Value>(&j).ok())
                .map(|j| j["phase"].clone());
            if let Some(next) = phase
                .as_ref()
                .and_then(|p| p["write"]["next_chunk"].as_u64())
            {
                if next > 0 {
                    eprintln!("install stalled in its payload: {}", phase.unwrap());
                    return;
                }
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the install ended ({status}) before it stalled: {}",
                    std::fs::read_to_string(&self.err).unwrap()
                );
            }
            assert!(
                start.elapsed() < INSTALL,
                "the install never reached its payload; journal: {phase:?}, stderr: {}",
                std::fs::read_to_string(&self.err).unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Delivers the rest of the bundle and waits for the install to end.
    fn finish(mut self) -> Output {
        self.go.take().unwrap().send(()).unwrap();
        self.feeder.take().unwrap().join().unwrap().unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(start.elapsed() < INSTALL, "the install did not finish");
            std::thread::sleep(Duration::from_millis(10));
        };
        Output {
            code: status.code(),
            stdout: std::fs::read(&self.out).unwrap(),
            stderr: std::fs::read(&self.err).unwrap(),
        }
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        // Killed first: a feeder blocked on a full pipe then gets an error and ends.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.go.take();
        if let Some(feeder) = self.feeder.take() {
            let _ = feeder.join();
        }
    }
}

fn assert_installed(f: &Fixture, out: &Output, img: &[u8]) {
    out.success();
    assert!(
        out.stdout_text().contains("installed 2.0 into slot B"),
        "{}",
        out.stdout_text()
    );
    let s = f.status();
    assert_eq!(s["next_boot"], "B", "{s}");
    assert_eq!(s["last_install"]["outcome"], "success", "{s}");
    assert_eq!(&f.slot("B")[..img.len()], img, "slot B holds the image");
}

#[test]
fn a_stalled_install_holds_no_environment_lock() {
    let f = Fixture::new(SLOT, "").with_b_bootable();
    let img = image(IMAGE, 21);
    let b = f.bundle("b.abup", &img, "2.0", 1);
    let dir = f.t.path("");
    let install = Stalled::start(&f, &b);

    let out = common::within(
        &dir,
        f.command(&["status", "--json"]),
        "abup status --json",
        PROMPT,
    );
    out.success();
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // What the install's first environment write did: B, half written, is out of rotation.
    assert_eq!(s["next_boot"], "A", "{s}");
    let out = common::within(
        &dir,
        f.command(&["env", "get", "BOOT_ORDER"]),
        "abup env get BOOT_ORDER",
        PROMPT,
    );
    out.success();
    assert!(!out.stdout_text().trim().is_empty());

    // The slot being written can be neither activated nor confirmed, and trying writes nothing.
    let env = f.env();
    for cmd in [["mark-active", "B"], ["mark-good", "B"]] {
        let out = common::within(&dir, f.command(&cmd), &cmd.join(" "), PROMPT);
        out.assert_refused(&["slot B is being written"]);
    }
    assert_eq!(
        f.env(),
        env,
        "a refused mark-active/mark-good wrote the environment"
    );
    // Taking it out of rotation is always allowed, and the running slot's boot-success
    // service confirms it as on every boot.
    for cmd in [["mark-bad", "B"], ["mark-good", "A"]] {
        common::within(&dir, f.command(&cmd), &cmd.join(" "), PROMPT).success();
    }

    let out = install.finish();
    assert_installed(&f, &out, &img);
}

#[test]
fn fw_printenv_answers_during_a_stalled_install_on_u_boot() {
    if !(common::have("fw_printenv") && common::have("fw_setenv")) {
        return;
    }
    let f = Fixture::new(SLOT, "");
    // The board's environment: a redundant U-Boot environment, two file-backed copies, under
    // libubootenv's lock, which fw_printenv and fw_setenv take as well.
    let cfg = f.t.path("boot/fw_env.config");
    let copies = [
        f.t.path("boot/uboot.env"),
        f.t.path("boot/uboot-redund.env"),
    ];
    std::fs::write(
        &cfg,
        format!(
            "{} 0 0x4000\n{} 0 0x4000\n",
            copies[0].display(),
            copies[1].display()
        ),
    )
    .unwrap();
    for c in &copies {
        std::fs::write(c, vec![0u8; 0x4000]).unwrap();
    }
    common::factory_env_at(&["--uboot-config", cfg.to_str().unwrap()]);
    let board = std::fs::read_to_string(&f.board).unwrap();
    let grub = format!(
        "type = \"grub\"\ngrubenv = [{:?}, {:?}]",
        f.t.path("boot/abupenv.0"),
        f.t.path("boot/abupenv.1")
    );
    assert!(board.contains(&grub), "{board}");
    std::fs::write(
        &f.board,
        board.replace(
            &grub,
            &format!("type = \"u-boot\"\nfw-env-config = {cfg:?}"),
        ),
    )
    .unwrap();
    let f = f.with_b_bootable();
    let uboot_env = || copies.iter().map(|c| common::read(c)).collect::<Vec<_>>();
    let fw = |tool: &str, args: &[&str]| {
        let mut cmd = Command::new(tool);
        cmd.arg("-c").arg(&cfg).args(args);
        cmd
    };
    let img = image(IMAGE, 22);
    let b = f.bundle("b.abup", &img, "2.0", 1);
    let dir = f.t.path("");
    let install = Stalled::start(&f, &b);

    let out = common::within(&dir, fw("fw_printenv", &[]), "fw_printenv", PROMPT);
    out.success();
    // fw_printenv reads what the install's first environment write left: B has no tries.
    assert!(
        out.stdout_text().lines().any(|l| l == "BOOT_B_LEFT=0"),
        "{}",
        out.stdout_text()
    );
    common::within(
        &dir,
        f.command(&["status", "--json"]),
        "abup status --json",
        PROMPT,
    )
    .success();
    let env = uboot_env();
    let out = common::within(
        &dir,
        f.command(&["mark-active", "B"]),
        "abup mark-active B",
        PROMPT,
    );
    out.assert_refused(&["slot B is being written"]);
    assert_eq!(
        uboot_env(),
        env,
        "a refused mark-active wrote the environment"
    );
    // A write by another program, between the install's two: activation keeps it.
    common::within(
        &dir,
        fw("fw_setenv", &["during_install", "yes"]),
        "fw_setenv",
        PROMPT,
    )
    .success();

    let out = install.finish();
    assert_installed(&f, &out, &img);
    let printed = common::run_ok("fw_printenv", &["-c", cfg.to_str().unwrap()]);
    assert!(printed.contains("during_install=yes\n"), "{printed}");
    assert!(printed.contains("BOOT_ORDER=B A\n"), "{printed}");
}

#[test]
fn hooks_can_read_the_environment() {
    if !common::have("timeout") {
        return;
    }
    let t = common::Tmp::new();
    let seen = t.path("seen");
    std::fs::create_dir(&seen).unwrap();
    let hook = t.path("hook");
    // ABUP_CONFIG and ABUP_PROC_CMDLINE come from the install's environment. Before
    // pre-install no journal exists yet: only the install's lock says which slot it writes.
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nset -e\n\
             timeout 5 {abup} env list > {seen}/env.$ABUP_HOOK\n\
             timeout 5 {abup} status --json > {seen}/status.$ABUP_HOOK\n\
             rc=0\n\
             timeout 5 {abup} mark-active B 2> {seen}/mark.$ABUP_HOOK || rc=$?\n\
             echo $rc >> {seen}/mark.$ABUP_HOOK\n",
            abup = env!("CARGO_BIN_EXE_abup"),
            seen = seen.display()
        ),
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&hook).status().unwrap();
    let f = Fixture::new(
        SLOT,
        &format!("pre-install = {hook:?}\npost-install = {hook:?}"),
    )
    .with_b_bootable();
    let img = image(1_000_000, 23);
    let b = f.bundle("b.abup", &img, "2.0", 1);
    let out = common::within(
        &f.t.path(""),
        f.command(&["install", b.to_str().unwrap()]),
        "abup install",
        INSTALL,
    );
    assert_installed(&f, &out, &img);
    // Each hook read the environment as it was at its point of the install: before the
    // install touched it, and with the written slot still out of rotation.
    let read = |name: &str| std::fs::read_to_string(seen.join(name)).unwrap();
    assert!(
        read("env.pre-install")
            .lines()
            .any(|l| l == "BOOT_B_LEFT=3"),
        "{}",
        read("env.pre-install")
    );
    assert!(
        read("env.post-install")
            .lines()
            .any(|l| l == "BOOT_B_LEFT=0"),
        "{}",
        read("env.post-install")
    );
    for hook in ["pre-install", "post-install"] {
        let s: serde_json::Value = serde_json::from_str(&read(&format!("status.{hook}"))).unwrap();
        assert!(s["next_boot"].is_string(), "{s}");
        // mark-active of the slot being written, from inside the install: refused at once.
        let mark = read(&format!("mark.{hook}"));
        assert!(
            mark.ends_with("\n1\n") && mark.contains("slot B is being written"),
            "{hook}: mark-active B was not refused: {mark}"
        );
    }
}
