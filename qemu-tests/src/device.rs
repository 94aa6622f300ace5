//! A test device: one board's disk image as the factory leaves it (slot A written and
//! confirmed, slot B empty, bundles waiting on the data partition), and the power-ons and
//! abup commands a scenario puts it through.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

use crate::artifacts;
use crate::board::Board;
use crate::factory::{self, FirstImage, Layout};
use crate::image::{self, Loop};
use crate::rootfs::{self, Defect, SlotImage};
use crate::run;
use crate::vm::{self, Vm};

/// The bundles on every device's data partition, as the guest sees them.
pub const BUNDLE_V2: &str = "/data/bundles/v2.abup";
pub const BUNDLE_PANIC: &str = "/data/bundles/panic.abup";
pub const BUNDLE_NO_KERNEL: &str = "/data/bundles/no-kernel.abup";
/// Where [`Device::add_bundle`] puts a bundle it signs, as the guest sees it.
pub const BUNDLES: &str = "/data/bundles";
/// Where the guests mount the data partition (every QEMU board's board.toml).
const DATA_MOUNT: &str = "/data";

/// A boot can take this long under software emulation with both cores busy.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// An install of a slot image in the guest.
pub const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);

/// What one board's devices are made from, built once per test process.
#[derive(Debug)]
struct Template {
    dir: tempfile::TempDir,
    disk: PathBuf,
    /// Where the partitions are on the disk (the same on every device's copy).
    layout: Layout,
    /// The board string its bundles carry.
    compatible: String,
}

impl Template {
    /// The slot image of `version` (`rootfs::image_path`): "1.0" is what slot A holds.
    fn image(&self, version: &str) -> PathBuf {
        rootfs::image_path(&self.dir.path().join("images"), version)
    }

    /// `abup bundle create`: `image` signed with the release key as `version`, a delta
    /// against `base` when one is given.
    fn create_bundle(
        &self,
        image: &Path,
        version: &str,
        base: Option<&Path>,
        out: &Path,
    ) -> Result<()> {
        create_bundle(
            &self.dir.path().join("release.key.pem"),
            &self.compatible,
            image,
            version,
            base,
            out,
        )
    }

    /// Copies `bundles` into [`BUNDLES`] on the data partition of `disk`, this template's
    /// disk or a device's copy of it.
    fn put_bundles(&self, disk: &Path, bundles: &[&Path]) -> Result<()> {
        let dir = Path::new(BUNDLES).strip_prefix(DATA_MOUNT)?;
        let files = bundles
            .iter()
            .map(|b| {
                let name = b.file_name().context("a bundle path without a file name")?;
                Ok((*b, dir.join(name)))
            })
            .collect::<Result<Vec<_>>>()?;
        image::ext4_put(disk, self.layout.mounted_at(DATA_MOUNT)?, &files)
    }
}

/// `abup bundle create` with the release key `secret`, at security version 1; a delta against
/// `base` when one is given (at abup's default level for deltas).
pub(crate) fn create_bundle(
    secret: &Path,
    compatible: &str,
    image: &Path,
    version: &str,
    base: Option<&Path>,
    out: &Path,
) -> Result<()> {
    let mut abup = Command::new(artifacts::abup()?);
    abup.args(["bundle", "create", "--key"])
        .arg(secret)
        .args(["--compatible", compatible, "--version", version])
        .args(["--security-version", "1", "--image"])
        .arg(image);
    if let Some(base) = base {
        abup.arg("--delta-from").arg(base);
    }
    run(abup.arg("-o").arg(out))
}

/// A release key in `d` (`release.key.pem`), its public half in `d/keyring/release.pem`,
/// which the guests trust.
pub(crate) fn release_key(d: &Path) -> Result<(PathBuf, PathBuf)> {
    let secret = d.join("release.key.pem");
    let keyring = d.join("keyring");
    fs::create_dir_all(&keyring)?;
    let public = keyring.join("release.pem");
    run(Command::new(artifacts::abup()?)
        .arg("keygen")
        .arg("--secret")
        .arg(&secret)
        .arg("--public")
        .arg(&public))?;
    Ok((secret, public))
}

fn template(board: Board) -> Result<Arc<Template>> {
    // One per board, each built under its own lock so boards build in parallel.
    static TEMPLATES: [Mutex<Option<Arc<Template>>>; 5] = [const { Mutex::new(None) }; 5];
    let index = board as usize;
    let mut slot = TEMPLATES[index]
        .lock()
        .map_err(|_| anyhow!("template lock poisoned"))?;
    if let Some(t) = slot.as_ref() {
        return Ok(Arc::clone(t));
    }
    let built = if board == Board::GrubUefiSplit {
        crate::split::build(board).map(|(dir, disk, layout, compatible)| Template {
            dir,
            disk,
            layout,
            compatible,
        })
    } else {
        build_template(board)
    };
    let t = Arc::new(built.with_context(|| format!("building the {} disk image", board.name()))?);
    *slot = Some(Arc::clone(&t));
    Ok(t)
}

/// Factory provisioning of a test device: the slot images and bundles built on the host,
/// the disk made by `abup provision` from the board's shipped configuration with slot A's
/// bundle ([`factory::provision`]), then the bundles the scenarios install put on the data
/// partition.
fn build_template(board: Board) -> Result<Template> {
    let dir = tempfile::Builder::new().prefix("abup-qemu-").tempdir()?;
    let d = dir.path();

    let (secret, public) = release_key(d)?;
    let keyring = d.join("keyring");

    let board_cfg = abup::board::Board::load(&board.config_dir().join("board.toml"))?;
    let images = d.join("images");
    fs::create_dir_all(&images)?;
    let v1 = rootfs::image_path(&images, "1.0");
    let v2 = rootfs::image_path(&images, "2.0");
    let panics = rootfs::image_path(&images, "2.0-panic");
    let no_kernel = rootfs::image_path(&images, "2.0-no-kernel");
    let slot = |version, defect| SlotImage { version, defect };
    rootfs::build(board, slot("1.0", None), &public, &v1)?;
    rootfs::build(board, slot("2.0", None), &public, &v2)?;
    rootfs::build(
        board,
        slot("2.0-panic", Some(Defect::NoInit)),
        &public,
        &panics,
    )?;
    rootfs::build(
        board,
        slot("2.0-no-kernel", Some(Defect::NoKernel)),
        &public,
        &no_kernel,
    )?;

    let first = d.join("v1.abup");
    create_bundle(&secret, &board_cfg.compatible, &v1, "1.0", None, &first)?;
    let disk = factory::provision(
        board,
        d,
        Some(FirstImage {
            bundle: &first,
            keyring: &keyring,
        }),
    )?;
    let template = Template {
        disk: disk.path,
        layout: disk.layout,
        compatible: board_cfg.compatible,
        dir,
    };

    // The bundles the scenarios install, on the data partition; the host keeps them too,
    // for the arm64 board, whose installs run on the host.
    let bundles = template.dir.path().join("data/bundles");
    fs::create_dir_all(&bundles)?;
    let mut made = Vec::new();
    for (image, version, name) in [
        (&v2, "2.0", "v2.abup"),
        (&panics, "2.0-panic", "panic.abup"),
        (&no_kernel, "2.0-no-kernel", "no-kernel.abup"),
    ] {
        let out = bundles.join(name);
        template.create_bundle(image, version, None, &out)?;
        made.push(out);
    }
    let made: Vec<&Path> = made.iter().map(PathBuf::as_path).collect();
    template.put_bundles(&template.disk, &made)?;
    Ok(template)
}

/// One device under test, with its own copy of the board's disk.
#[derive(Debug)]
pub struct Device {
    pub board: Board,
    template: Arc<Template>,
    dir: PathBuf,
    pub disk: PathBuf,
    pub log: PathBuf,
    boots: usize,
    /// The test health check fails (see `set_unhealthy`).
    unhealthy: bool,
    /// The disk as `save_disk` left it, for power cuts that must be tried again.
    saved: PathBuf,
    /// The files of the data partition as the host keeps them: the template's, or this
    /// device's own once `add_bundle` put more on it.
    data: PathBuf,
}

/// What one power-on showed on the console.
#[derive(Debug)]
pub struct Boot {
    pub vm: Vm,
    /// `abup.slot=` of the running kernel.
    pub slot: String,
    /// The version of the image in that slot.
    pub version: String,
    /// `abup status --json` after the boot-success service ran (on arm64, from the host).
    pub status: Value,
}

impl Device {
    /// A fresh device from the factory image; its files and console log go to
    /// `target/qemu-tests/<board>-<scenario>/`.
    pub fn new(board: Board, scenario: &str) -> Result<Device> {
        let template = template(board)?;
        let dir = artifacts::workspace()
            .join("target/qemu-tests")
            .join(format!("{}-{scenario}", board.name()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let disk = dir.join("disk.img");
        copy_disk(&template.disk, &disk)?;
        let log = dir.join("console.log");
        vm::new_log(&log)?;
        eprintln!("{} {scenario}: console log {}", board.name(), log.display());
        Ok(Device {
            board,
            data: template.dir.path().join("data"),
            template,
            saved: dir.join("disk.saved"),
            dir,
            disk,
            log,
            boots: 0,
            unhealthy: false,
        })
    }

    /// Powers the device on without waiting for anything.
    pub fn power_on(&mut self) -> Result<Vm> {
        self.boots += 1;
        let qemu = self.board.qemu(&self.disk, &self.dir)?;
        Vm::start(qemu, &self.log, &format!("power-on {}", self.boots))
    }

    /// Powers on and waits until the guest has booted, run its boot-success service and
    /// reported its state. A power-on the emulator spoiled is done again
    /// ([`Device::watchdog`]).
    pub fn boot(&mut self) -> Result<Boot> {
        self.watchdog(Self::boot_once)
    }

    /// Runs `power_on` (one power-on and what the test does in it). If it fails because the
    /// emulator spoiled it, the disk is put back as it was before and `power_on` runs again,
    /// up to [`WATCHDOG_RETRIES`] times, as a watchdog would reset a real device; the test's
    /// output and [`WATCHDOG_LOG`] say so.
    ///
    /// Spoiled means one of two things abup cannot cause, since it only reads and writes
    /// block devices and the guest's kernel drives the disk:
    /// - the guest's NVMe disk failed I/O ([`DISK_FAULT`]). Under QEMU 7.2 a guest now and
    ///   then gets no answer to a disk request until its driver's timeouts reset the
    ///   controller, which fails what was in flight;
    /// - the kernel was started and the boot went no further within [`BOOT_TIMEOUT`].
    ///
    /// Both come in bursts, sometimes two in a row (what was seen: qemu-tests/README.md).
    /// Any other failure, or a power-on still spoiled after the retries, fails the test.
    fn watchdog<T>(&mut self, power_on: impl Fn(&mut Self) -> Result<T>) -> Result<T> {
        let before = self.dir.join("disk.before-boot");
        copy_disk(&self.disk, &before)?;
        let mut retries = 0;
        loop {
            let log_start = fs::metadata(&self.log)?.len();
            let e = match power_on(self) {
                Err(e) => e,
                ok => return ok,
            };
            let console = fs::read(&self.log)?;
            let console =
                String::from_utf8_lossy(&console[(log_start as usize).min(console.len())..]);
            let Some(why) = spoiled(&e, &console, self.boots) else {
                return Err(e);
            };
            if retries == WATCHDOG_RETRIES {
                return Err(e.context(format!("still spoiled after {retries} more power-ons")));
            }
            retries += 1;
            let scenario = self.dir.file_name().unwrap_or_default().to_string_lossy();
            let line = format!(
                "{scenario}: {why}; powering on again from the disk as it was before \
                 (retry {retries} of {WATCHDOG_RETRIES})"
            );
            eprintln!("{line}");
            vm::append_line(&artifacts::workspace().join(WATCHDOG_LOG), &line)?;
            copy_disk(&before, &self.disk)?;
        }
    }

    fn boot_once(&mut self) -> Result<Boot> {
        let mut vm = self.power_on()?;
        if let Err(e) = vm.expect(rootfs::BOOTED, BOOT_TIMEOUT) {
            return Err(self.hang_or(&mut vm, e));
        }
        let rest = vm.expect("\n", Duration::from_secs(10))?;
        let field = |name: &str| {
            rest.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .map(str::to_string)
                .ok_or_else(|| anyhow!("no {name} in {rest:?}"))
        };
        let slot = field("slot=")?;
        let version = field("version=")?;
        let status = if self.board.guest_runs_abup() {
            vm.expect(rootfs::STATUS, BOOT_TIMEOUT)?;
            let json = vm.expect("\n", Duration::from_secs(10))?;
            serde_json::from_str(json.trim())
                .with_context(|| format!("abup status --json printed {json:?}"))?
        } else {
            Value::Null
        };
        vm.expect(rootfs::READY, BOOT_TIMEOUT)?;
        eprintln!(
            "{}: booted slot {slot} and reported in {:.1} s",
            self.board.name(),
            vm.elapsed().as_secs_f64()
        );
        let mut boot = Boot {
            vm,
            slot,
            version,
            status,
        };
        if !self.board.guest_runs_abup() {
            // The arm64 guest has no abup: its boot-success service runs here, on the host,
            // once the guest is down, with the same health check.
            shutdown(&mut boot.vm)?;
            if !self.unhealthy {
                let (out, code) = self.abup(&mut boot, "mark-good booted")?;
                ensure!(code == 0, "abup mark-good on the host exited {code}: {out}");
            }
            boot.status = self.host_status(&boot.slot)?;
        }
        Ok(boot)
    }

    /// `e`, a wait for the console that timed out, or a [`KernelHang`] if QEMU still runs
    /// and the kernel had been started: a kernel that boots shows more within
    /// [`BOOT_TIMEOUT`], even one that only panics.
    fn hang_or(&self, vm: &mut Vm, e: anyhow::Error) -> anyhow::Error {
        if !vm.running() {
            return e;
        }
        vm.kill();
        match vm.rest() {
            Ok(console) if console.contains(self.board.kernel_started_marker()) => KernelHang {
                power_on: self.boots,
            }
            .into(),
            _ => e,
        }
    }

    /// Boots, expects `slot`, and shuts down cleanly.
    pub fn boot_expecting(&mut self, slot: &str, version: &str) -> Result<Value> {
        let mut boot = self.boot()?;
        ensure!(
            boot.slot == slot && boot.version == version,
            "expected slot {slot} with {version}, booted slot {} with {} (see {})",
            boot.slot,
            boot.version,
            self.log.display()
        );
        self.shutdown(&mut boot)?;
        Ok(boot.status)
    }

    /// Powers on a slot with `defect`: QEMU must end by itself (`panic=` on the kernel
    /// command line, the boot script's reset when there is no kernel, `-no-reboot`), having
    /// shown that failure. Returns the slot the bootloader chose.
    pub fn boot_fails(&mut self, defect: Defect) -> Result<String> {
        self.watchdog(|dev| {
            let mut vm = dev.power_on()?;
            vm.expect("abup: booting slot ", BOOT_TIMEOUT)?;
            let slot = vm.expect("\n", Duration::from_secs(10))?.trim().to_string();
            if let Err(e) = vm.expect(defect.console(), BOOT_TIMEOUT) {
                return Err(dev.hang_or(&mut vm, e));
            }
            vm.wait_exit(Duration::from_secs(60))?;
            Ok(slot)
        })
    }

    /// Starts the host side of abup against this device's disk, with the board
    /// configuration the guest has, its slots as loop devices over the disk's partitions,
    /// the U-Boot environment files copied out of the FAT partition (`host_finish` copies
    /// them back), and `slot` as the booted one. Only the arm64 board needs this: its guest
    /// cannot run abup.
    fn host_abup(&self, slot: &str, args: &[&str], env: &[(&str, String)]) -> Result<HostRun> {
        let host = self.dir.join("host");
        fs::create_dir_all(host.join("state"))?;
        let layout = &self.template.layout;
        let boot = layout.mounted_at(self.board.boot_mount())?;
        for name in ["uboot.env", "uboot-redund.env"] {
            image::fat_get(&self.disk, boot, &format!("/{name}"), &host.join(name))?;
        }
        let loops = [
            Loop::attach(&self.disk, layout.slot("A")?)?,
            Loop::attach(&self.disk, layout.slot("B")?)?,
        ];
        let path = |p: PathBuf| p.display().to_string();
        let board = fs::read_to_string(self.board.config_dir().join("board.toml"))?
            .replace("/etc/fw_env.config", &path(host.join("fw_env.config")))
            .replace("/dev/nvme0n1p2", &loops[0].device)
            .replace("/dev/nvme0n1p3", &loops[1].device)
            .replace("/data/abup", &path(host.join("state")));
        fs::write(host.join("board.toml"), board)?;
        fw_env_config(&host)?;
        fs::write(host.join("cmdline"), format!("abup.slot={slot}\n"))?;
        let mut abup = Command::new(artifacts::abup()?);
        abup.args(args);
        if args.contains(&"install") {
            abup.arg("--keyring")
                .arg(self.template.dir.path().join("keyring"));
        }
        let child = abup
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("ABUP_CONFIG", host.join("board.toml"))
            .env("ABUP_PROC_CMDLINE", host.join("cmdline"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(HostRun {
            child,
            _loops: loops,
        })
    }

    /// Waits for a host-side abup and puts the environment back on the disk.
    fn host_finish(&self, run: HostRun) -> Result<(String, i32)> {
        let out = run.child.wait_with_output()?;
        let host = self.dir.join("host");
        let boot = self.template.layout.mounted_at(self.board.boot_mount())?;
        for name in ["uboot.env", "uboot-redund.env"] {
            image::fat_put(&self.disk, boot, &host.join(name), &format!("/{name}"))?;
        }
        Ok((
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            out.status.code().unwrap_or(-1),
        ))
    }

    fn host_status(&self, slot: &str) -> Result<Value> {
        let run = self.host_abup(slot, &["status", "--json"], &[])?;
        let (out, code) = self.host_finish(run)?;
        ensure!(code == 0, "abup status on the host exited {code}: {out}");
        let json = out.lines().find(|l| l.starts_with('{')).unwrap_or("");
        serde_json::from_str(json).with_context(|| format!("abup status --json printed {out:?}"))
    }

    /// Runs `abup ARGS` as the device would while `boot` runs: in its guest, or on the host
    /// for arm64 (after the guest was shut down). Returns output and exit status.
    pub fn abup(&self, boot: &mut Boot, args: &str) -> Result<(String, i32)> {
        if self.board.guest_runs_abup() {
            return boot.vm.shell(&format!("abup {args} 2>&1"), INSTALL_TIMEOUT);
        }
        let argv: Vec<&str> = args.split_whitespace().collect();
        let run = self.host_abup(&boot.slot, &argv, &[])?;
        self.host_finish(run)
    }

    /// Keeps a copy of the disk as it is now (the device powered off), and of the state
    /// directory the host side keeps for the arm64 board, so that a power cut that lands
    /// somewhere else than aimed can be tried again from the same state.
    pub fn save_disk(&self) -> Result<()> {
        copy_disk(&self.disk, &self.saved)?;
        let (state, saved) = self.host_state();
        let _ = fs::remove_dir_all(&saved);
        if state.exists() {
            run(Command::new("cp").arg("-a").arg(&state).arg(&saved))?;
        }
        Ok(())
    }

    /// Puts back the disk (and host state) `save_disk` kept.
    pub fn restore_disk(&self) -> Result<()> {
        copy_disk(&self.saved, &self.disk)?;
        let (state, saved) = self.host_state();
        let _ = fs::remove_dir_all(&state);
        if saved.exists() {
            run(Command::new("cp").arg("-a").arg(&saved).arg(&state))?;
        }
        Ok(())
    }

    /// The host side's state directory (arm64 only) and where `save_disk` keeps its copy.
    fn host_state(&self) -> (PathBuf, PathBuf) {
        let host = self.dir.join("host");
        (host.join("state"), host.join("state.saved"))
    }

    /// `abup install --progress json SOURCE`, cut by a power cut at a random point of the
    /// phase `aim` names. Whether it landed there is told by the last progress line printed
    /// before the power went (read to the end of the console after the cut): that phase, not
    /// yet finished. When it landed elsewhere the disk is put back as [`Device::save_disk`]
    /// left it (on the guest boards before the boot that `boot` is) and the device tries
    /// again, booting anew and running the abup commands `redo` (what the test ran in `boot`
    /// before); `boot` is then the boot the cut install ran in.
    pub fn cut_install(
        &mut self,
        boot: &mut Boot,
        redo: &[&str],
        source: &str,
        aim: Aim,
        rng: &mut impl FnMut(f64, f64) -> f64,
    ) -> Result<Cut> {
        if !self.board.guest_runs_abup() {
            return self.cut_host_install(boot, source, aim, rng);
        }
        for attempt in 1..=CUT_ATTEMPTS {
            if attempt > 1 {
                self.restore_disk()?;
                *boot = self.boot()?;
                for args in redo {
                    let (out, code) = self.abup(boot, args)?;
                    ensure!(code == 0, "abup {args} exited {code}: {out}");
                }
            }
            let fraction = rng(0.05, 0.95);
            let last = self.install_until(boot, source, aim, fraction)?;
            let landed = last.as_ref().is_some_and(|p| p.inside(aim));
            let cut = Cut {
                aim: format!("the install's {} at {:.0}%", aim.what(), fraction * 100.0),
                attempt,
                landed: last.map_or("before any progress".into(), |p| p.to_string()),
            };
            eprintln!("{}: {cut}", self.board.name());
            if landed {
                return Ok(cut);
            }
        }
        bail!(
            "{CUT_ATTEMPTS} power cuts aimed at the install's {} all landed elsewhere",
            aim.what()
        )
    }

    /// Runs the install in the guest until its progress passes `fraction` of `aim`'s phase
    /// (or a later phase starts), cuts the power, and returns the last progress line the
    /// console printed before it.
    fn install_until(
        &self,
        boot: &mut Boot,
        source: &str,
        aim: Aim,
        fraction: f64,
    ) -> Result<Option<Progress>> {
        // Progress lines (docs/progress-json.md) are JSON objects that start with these keys.
        const START: &str = "{\"version\":2,\"event\":";
        boot.vm
            .send(&format!("abup install --progress json {source}"))?;
        loop {
            boot.vm.expect(START, INSTALL_TIMEOUT)?;
            let line = format!("{START}{}", boot.vm.expect("\n", Duration::from_secs(30))?);
            let Some(progress) = Progress::parse(&line) else {
                continue;
            };
            if progress.passed(aim, fraction) {
                boot.vm.kill();
                let rest = boot.vm.rest()?;
                return Ok(rest
                    .lines()
                    .rev()
                    .find_map(|l| l.find(START).and_then(|at| Progress::parse(&l[at..])))
                    .or(Some(progress)));
            }
        }
    }

    /// The arm64 board's cut: abup runs on the host, where killing it would not lose what
    /// the host's page cache holds, and comes too late to land anywhere in particular (the
    /// host writes a slot in a fraction of a second). So the install is cut by abup's own
    /// fault injection (`ABUP_CUT_AFTER_WRITES`, a test build's switch): it stops after a
    /// chosen write and first puts back everything written since the last sync, as a power
    /// cut would lose it. The write is chosen at random among the slot writes for
    /// `Aim::Write`; for `Aim::ReadBack` it is the last checkpoint before the first block,
    /// when the last region is synced but not yet read back. A full run, undone afterwards,
    /// tells which writes the install makes.
    fn cut_host_install(
        &mut self,
        boot: &mut Boot,
        source: &str,
        aim: Aim,
        rng: &mut impl FnMut(f64, f64) -> f64,
    ) -> Result<Cut> {
        self.save_disk()?;
        let argv = ["-vv", "install", "--progress", "none", source];
        let run = self.host_abup(&boot.slot, &argv, &[])?;
        let (out, code) = self.host_finish(run)?;
        ensure!(
            code == 0,
            "the host install to count its writes exited {code}: {out}"
        );
        self.restore_disk()?;
        let writes: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split("durable write ").nth(1))
            .filter_map(|w| w.split_once(": ").map(|(_, what)| what))
            .collect();
        let slot_device = |w: &str| w.starts_with("/dev/loop");
        let first_block = writes
            .iter()
            .rposition(|w| slot_device(w) && w.ends_with(" at 0"))
            .context("the install wrote no first block")?;
        let n = match aim {
            Aim::Write => {
                let slot_writes: Vec<usize> = (0..first_block)
                    .filter(|&i| slot_device(writes[i]) && !writes[i].ends_with(" at 0"))
                    .collect();
                ensure!(!slot_writes.is_empty(), "no slot writes: {out}");
                slot_writes
                    [(rng(0.0, slot_writes.len() as f64) as usize).min(slot_writes.len() - 1)]
            }
            Aim::ReadBack => writes[..first_block]
                .iter()
                .rposition(|w| w.ends_with("install.json"))
                .context("no journal checkpoint before the first block")?,
        } + 1;
        let run = self.host_abup(
            &boot.slot,
            &argv,
            &[("ABUP_CUT_AFTER_WRITES", n.to_string())],
        )?;
        let (out, code) = self.host_finish(run)?;
        let said = out
            .lines()
            .find(|l| l.contains("for a fault-injection test"))
            .with_context(|| format!("the install was not cut (exit {code}): {out}"))?;
        let cut = Cut {
            aim: format!(
                "the install's {} (write {n} of {})",
                aim.what(),
                writes.len()
            ),
            attempt: 1,
            landed: said.trim().to_string(),
        };
        eprintln!("{}: {cut}", self.board.name());
        Ok(cut)
    }

    /// Powers on and cuts the power while the bootloader saves its counted try: after the
    /// line it prints just before the save and before the one it prints once the save is
    /// done. The cut comes a random delay after the first line; when the console shows it
    /// came after the save, the disk is put back and the device tries again with shorter
    /// delays.
    pub fn cut_env_save(&mut self, rng: &mut impl FnMut(f64, f64) -> f64) -> Result<Cut> {
        self.save_disk()?;
        let (before, after) = (self.board.env_save_marker(), self.board.env_saved_marker());
        let mut longest_ms = 4.0;
        for attempt in 1..=CUT_ATTEMPTS {
            if attempt > 1 {
                self.restore_disk()?;
            }
            let mut vm = self.power_on()?;
            vm.expect(before, BOOT_TIMEOUT)?;
            let delay_ms = rng(0.0, longest_ms);
            std::thread::sleep(Duration::from_secs_f64(delay_ms / 1000.0));
            vm.kill();
            let rest = vm.rest()?;
            let landed = !rest.contains(after);
            let cut = Cut {
                aim: format!("{delay_ms:.2} ms after \"{before}\""),
                attempt,
                landed: if landed {
                    format!("in the save (no \"{after}\" followed)")
                } else {
                    format!("after the save: {:?}", rest.trim())
                },
            };
            eprintln!("{}: {cut}", self.board.name());
            if landed {
                return Ok(cut);
            }
            longest_ms /= 2.0;
        }
        bail!("{CUT_ATTEMPTS} power cuts aimed at the bootloader's environment save all came after it")
    }

    /// Makes the test health check fail from now on (a flag on the data partition), so the
    /// boot-success service leaves the slots it boots unconfirmed.
    pub fn set_unhealthy(&mut self, boot: &mut Boot) -> Result<()> {
        if self.board.guest_runs_abup() {
            boot.vm.shell_ok(
                &format!("touch {}", rootfs::UNHEALTHY),
                Duration::from_secs(30),
            )?;
        }
        self.unhealthy = true;
        Ok(())
    }

    /// `abup status --json` as the running system sees it.
    pub fn status(&self, boot: &mut Boot) -> Result<Value> {
        if self.board.guest_runs_abup() {
            let out = boot
                .vm
                .shell_ok("abup status --json", Duration::from_secs(60))?;
            let json = out.lines().find(|l| l.starts_with('{')).unwrap_or("");
            return serde_json::from_str(json)
                .with_context(|| format!("abup status --json printed {out:?}"));
        }
        self.host_status(&boot.slot)
    }

    /// Where a bundle of the data partition is, for the abup that installs it.
    pub fn bundle(&self, guest_path: &str) -> String {
        if self.board.guest_runs_abup() {
            return guest_path.to_string();
        }
        self.bundle_on_host(guest_path).display().to_string()
    }

    /// Where the host keeps a file of the data partition (`guest_path`, under `/data/`).
    pub fn bundle_on_host(&self, guest_path: &str) -> PathBuf {
        let on_data = guest_path.strip_prefix(DATA_MOUNT).unwrap_or(guest_path);
        self.data.join(on_data.trim_start_matches('/'))
    }

    /// The slot image of `version` the host built for this board: "1.0" holds exactly the
    /// bytes the factory wrote to slot A, "2.0" is the image `BUNDLE_V2` carries.
    pub fn image(&self, version: &str) -> PathBuf {
        self.template.image(version)
    }

    /// Signs `image` as a bundle of `version` (a delta against `base` when one is given) and
    /// puts it on the data partition as `BUNDLES/name`, as the factory would have: before the
    /// first power-on. Returns the bundle's path on the host.
    pub fn add_bundle(
        &mut self,
        name: &str,
        image: &Path,
        version: &str,
        base: Option<&Path>,
    ) -> Result<PathBuf> {
        ensure!(
            self.boots == 0,
            "bundles are added before the device's first power-on"
        );
        let own = self.dir.join("data");
        if self.data != own {
            run(Command::new("cp").arg("-a").arg(&self.data).arg(&own))?;
            self.data = own;
        }
        let out = self.data.join("bundles").join(name);
        self.template.create_bundle(image, version, base, &out)?;
        self.template.put_bundles(&self.disk, &[&out])?;
        Ok(out)
    }

    /// Ends a boot the way a clean reboot does.
    pub fn shutdown(&self, boot: &mut Boot) -> Result<()> {
        if boot.vm.running() {
            shutdown(&mut boot.vm)?;
        }
        Ok(())
    }
}

/// Writes `dir/fw_env.config` for the redundant environment files `uboot.env` and
/// `uboot-redund.env` in `dir` (the U-Boot builds' CONFIG_ENV_SIZE) and returns its path.
fn fw_env_config(dir: &Path) -> Result<PathBuf> {
    let config = dir.join("fw_env.config");
    fs::write(
        &config,
        format!(
            "{} 0 0x4000\n{} 0 0x4000\n",
            dir.join("uboot.env").display(),
            dir.join("uboot-redund.env").display()
        ),
    )?;
    Ok(config)
}

/// Ends a boot the way a clean reboot does; QEMU exits (`-no-reboot`).
pub fn shutdown(vm: &mut Vm) -> Result<()> {
    vm.send("sync; reboot -f")?;
    vm.wait_exit(Duration::from_secs(60))
}

/// Copies a disk image, keeping its holes: the images are mostly empty, and every power-on
/// and power cut takes a copy.
fn copy_disk(from: &Path, to: &Path) -> Result<()> {
    run(Command::new("cp").arg("--sparse=always").arg(from).arg(to))
}

/// What the guest's kernel prints when its NVMe disk failed a request (an error-level line,
/// so `quiet` shows it), typically after its driver timed out on requests QEMU left
/// unanswered and reset the controller.
const DISK_FAULT: &str = "I/O error, dev nvme";

/// Where [`Device::watchdog`] adds a line for every power-on it does again. libtest shows the
/// output of a passing test to no one, so without it a retry that succeeded would leave no
/// trace in CI; `scripts/test` prints the file after the tests.
const WATCHDOG_LOG: &str = "target/qemu-tests/watchdog.log";

/// How many times [`Device::watchdog`] powers a spoiled power-on on again. One was not
/// enough in a burst; each costs at most [`BOOT_TIMEOUT`], within CI's 30 minutes.
const WATCHDOG_RETRIES: usize = 2;

/// Why power-on `power_on`, which failed with `e` after printing `console`, was spoiled by
/// the emulator ([`Device::watchdog`]), or `None` if it was not.
fn spoiled(e: &anyhow::Error, console: &str, power_on: usize) -> Option<String> {
    if e.is::<KernelHang>() {
        return Some(e.to_string());
    }
    let line = console.lines().find(|l| l.contains(DISK_FAULT))?;
    Some(format!(
        "power-on {power_on}: the emulated disk failed I/O ({})",
        line.trim()
    ))
}

/// A started kernel whose boot went no further before the wait for it timed out.
#[derive(Debug, thiserror::Error)]
#[error("power-on {power_on}: the kernel was started and the boot went no further within {BOOT_TIMEOUT:?}")]
struct KernelHang {
    power_on: usize,
}

/// How often a power cut is tried again when it lands somewhere else than aimed.
const CUT_ATTEMPTS: usize = 8;

/// Where a power cut is aimed in an install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aim {
    /// While the slot is being written.
    Write,
    /// While the written slot is read back and hashed: the read-back follows the writing
    /// from checkpoint to checkpoint, then finishes in the `read-back` phase.
    ReadBack,
}

impl Aim {
    fn what(self) -> &'static str {
        match self {
            Aim::Write => "write",
            Aim::ReadBack => "read-back",
        }
    }
}

/// One power cut, as the test log shows it.
#[derive(Debug)]
pub struct Cut {
    /// Where it was aimed.
    pub aim: String,
    /// The attempt that landed (1 when the first did).
    pub attempt: usize,
    /// Where the console says it landed.
    pub landed: String,
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "power cut aimed at {}, attempt {}: landed {}",
            self.aim, self.attempt, self.landed
        )
    }
}

/// One `--progress json` line of an install.
#[derive(Debug, Clone, PartialEq)]
struct Progress {
    phase: String,
    done: u64,
    total: u64,
    /// Bytes read back from the disk and hashed so far (during the write too).
    verified: u64,
}

impl Progress {
    fn parse(line: &str) -> Option<Progress> {
        let v: Value = serde_json::from_str(line.trim()).ok()?;
        Some(Progress {
            phase: v["phase"].as_str()?.to_string(),
            done: v["bytes_written"].as_u64()?,
            // Unknown (null) until the bundle's front is read.
            total: v["write_total"].as_u64().unwrap_or(0),
            verified: v["bytes_read_back"].as_u64()?,
        })
    }

    /// Whether the install has come `fraction` of the way through what `aim` names, or past
    /// it: the bytes written, or the bytes read back.
    fn passed(&self, aim: Aim, fraction: f64) -> bool {
        let (here, end) = match aim {
            Aim::Write if self.phase == "write" => (self.done, self.total),
            Aim::ReadBack if matches!(self.phase.as_str(), "write" | "read-back") => {
                (self.verified, self.total)
            }
            // A later phase than the one aimed at: past it.
            _ => {
                return !matches!(
                    self.phase.as_str(),
                    "plan" | "base-check" | "pre-install" | "invalidate"
                )
            }
        };
        end > 0 && here as f64 >= fraction * end as f64
    }

    /// Whether an install cut right after this line was cut where `aim` says: writing and
    /// not done writing, or reading back (the read-back overlaps the writing) and not done
    /// reading back.
    fn inside(&self, aim: Aim) -> bool {
        match aim {
            Aim::Write => self.phase == "write" && self.done < self.total,
            Aim::ReadBack => {
                matches!(self.phase.as_str(), "write" | "read-back")
                    && self.verified > 0
                    && self.verified < self.total
            }
        }
    }
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "in the install's {} phase, {} of {} bytes written, {} read back",
            self.phase, self.done, self.total, self.verified
        )
    }
}

/// A host-side abup command and the loop devices it runs on, detached when it ends.
#[derive(Debug)]
struct HostRun {
    child: Child,
    _loops: [Loop; 2],
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From a grub-bios power-on whose disk stopped answering for 90 s (kernel lines cut
    /// short).
    const FAULTED: &str = "abup: booting slot A\n  Booting `abup slot A'\n\n\
        [   93.475213] I/O error, dev nvme0n1, sector 330262 op 0x1:(WRITE) flags 0x100000\n\
        [   93.481645] Buffer I/O error on dev nvme0n1p4, logical block 267\n\
        mount: mounting /dev/nvme0n1p4 on /data failed: Input/output error\n\
        ABUP-BOOTED slot=A version=\n";

    #[test]
    fn a_power_on_whose_disk_failed_io_is_done_again() {
        let e = anyhow!("no \"ABUP-STATUS \" on the console within 120s");
        let why = spoiled(&e, FAULTED, 9).expect("a disk fault is the emulator's");
        assert!(
            why.starts_with("power-on 9: the emulated disk failed I/O"),
            "{why}"
        );
        assert!(why.contains("sector 330262"), "{why}");
    }

    #[test]
    fn a_hung_kernel_is_done_again() {
        let e: anyhow::Error = KernelHang { power_on: 3 }.into();
        let why = spoiled(&e, "abup: booting slot B\n", 3).expect("a hang is the emulator's");
        assert!(
            why.starts_with("power-on 3: the kernel was started"),
            "{why}"
        );
    }

    #[test]
    fn any_other_failure_fails_the_test() {
        let e = anyhow!("QEMU exited before the console printed \"ABUP-STATUS \"");
        let console = "abup: booting slot A\n[    1.4] Kernel panic - not syncing: \
            No working init found.\n";
        assert_eq!(spoiled(&e, console, 2), None);
        assert_eq!(spoiled(&e, "", 2), None);
    }
}
