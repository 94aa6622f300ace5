//! What the test images are made of, fetched from Debian or built once and cached.
//!
//! The cache lives in `target/qemu-cache` (or `$ABUP_QEMU_CACHE`), so a second run of the
//! suite starts booting at once. Test threads and test processes share it: every artifact is
//! made under an exclusive `flock` and moved into place only when complete, so a run killed
//! half-way never leaves a half artifact behind.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

use std::sync::Mutex;

use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::fcntl::{Flock, FlockArg};

use crate::run;

/// The guest architectures the boards use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Arm64,
}

impl Arch {
    /// Debian's name for the architecture.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

/// The workspace's root directory.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Where fetched packages and built binaries are kept between runs.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("ABUP_QEMU_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/qemu-cache"))
}

/// Runs `make` with the cache lock `name` held, unless `done` already exists.
fn cached(name: &str, done: &Path, make: impl FnOnce() -> Result<()>) -> Result<()> {
    if done.exists() {
        return Ok(());
    }
    let dir = cache_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let lock_path = dir.join(format!("{name}.lock"));
    let file = File::create(&lock_path)
        .with_context(|| format!("creating lock file {}", lock_path.display()))?;
    let _lock = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("locking {}", lock_path.display()))?;
    if done.exists() {
        return Ok(());
    }
    make()
}

/// A Debian package unpacked with `dpkg -x` (never installed: a kernel's postinst would build
/// an initramfs nobody uses). `package` may carry an architecture, `name:arm64`.
pub fn debian_package(package: &str) -> Result<PathBuf> {
    let root = cache_dir().join("deb").join(package.replace(':', "_"));
    let done = root.join(".unpacked");
    cached("deb", &done, || {
        let work = cache_dir().join("deb/.work");
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work)?;
        let download = || {
            run(Command::new("apt-get")
                .args(["download", "-q", package])
                .current_dir(&work))
        };
        if download().is_err() {
            // The package lists may be missing or name versions the mirror no longer has.
            run(Command::new("apt-get").args(["update", "-q"]))?;
            download().with_context(|| {
                format!("fetching {package}: run scripts/install-deps, which sets apt up for it")
            })?;
        }
        let deb = fs::read_dir(&work)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .with_context(|| format!("apt-get download {package} left no .deb"))?;
        let _ = fs::remove_dir_all(&root);
        let unpacked = work.join("root");
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked))?;
        fs::rename(&unpacked, &root)?;
        File::create(&done)?;
        fs::remove_dir_all(&work)?;
        Ok(())
    })?;
    Ok(root)
}

/// A Debian cloud kernel: NVMe and ext4 built in, so the guests need no initramfs.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The kernel image as the bootloader loads it.
    pub image: PathBuf,
    /// `lib/modules/<release>`, for the few modules the guests load (vfat).
    pub modules: PathBuf,
}

/// The current cloud kernel for `arch`, resolved through the `linux-image-cloud-*`
/// metapackage rather than a hard-coded ABI.
pub fn kernel(arch: Arch) -> Result<Kernel> {
    let meta = format!("linux-image-cloud-{}", arch.debian());
    let out = Command::new("apt-cache")
        .args(["depends", &meta])
        .output()
        .context("running apt-cache")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let package = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .with_context(|| format!("apt-cache depends {meta} names no kernel package"))?;
    // A foreign architecture's dependency already carries its suffix.
    let package = package.split(':').next().unwrap_or(package).to_string();
    let package = match arch {
        Arch::X86_64 => package,
        Arch::Arm64 => format!("{package}:arm64"),
    };
    let root = debian_package(&package)?;
    let release = fs::read_dir(root.join("lib/modules"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .next()
        .with_context(|| format!("{package} has no lib/modules"))?;
    let version = release
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Kernel {
        image: root.join(format!("boot/vmlinuz-{version}")),
        modules: release,
    })
}

/// Debian's static busybox for `arch`.
pub fn busybox(arch: Arch) -> Result<PathBuf> {
    let package = match arch {
        Arch::X86_64 => "busybox-static".to_string(),
        Arch::Arm64 => "busybox-static:arm64".to_string(),
    };
    Ok(debian_package(&package)?.join("bin/busybox"))
}

/// The workspace's abup, as `cargo test` builds it. The host runs it as it is; the guests
/// get it stripped, with the shared libraries it needs from the host's
/// Debian packages (see `guest_libraries`).
pub fn abup() -> Result<PathBuf> {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let mut built = BUILT
        .lock()
        .map_err(|_| anyhow!("abup build lock poisoned"))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let bin = target.join("debug/abup");
    if !*built {
        // Usually already built by the same `cargo test` (with the same features: the arm64
        // board's install cuts use abup's fault injection); then this returns at once.
        run(Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "abup", "--bin", "abup"])
            .args(["--features", "fault-injection"])
            .current_dir(workspace()))?;
        *built = true;
    }
    Ok(bin)
}

/// The shared libraries `binary` loads, with the dynamic loader, as `ldd` resolves them.
pub fn guest_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    ensure!(out.status.success(), "ldd {} failed", binary.display());
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// U-Boot for `arch`, built from Debian's source package by `qemu-tests/u-boot/build`, which
/// keeps the build keyed by its inputs. Returns the directory holding `u-boot.bin` (arm64) or
/// `u-boot.rom` (x86) and `u-boot-initial-env`.
pub fn u_boot(arch: Arch) -> Result<PathBuf> {
    // Asked for at every power-on; the script (which hashes its inputs) runs once per arch.
    static BUILT: Mutex<[Option<PathBuf>; 2]> = Mutex::new([None, None]);
    let mut built = BUILT.lock().map_err(|_| anyhow!("U-Boot lock poisoned"))?;
    let (index, name) = match arch {
        Arch::X86_64 => (0, "x86"),
        Arch::Arm64 => (1, "arm64"),
    };
    if let Some(dir) = &built[index] {
        return Ok(dir.clone());
    }
    let script = workspace().join("qemu-tests/u-boot/build");
    let out = Command::new(&script)
        .arg(name)
        .arg(cache_dir())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} {name} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .last()
        .context("the U-Boot build printed no directory")?;
    let dir = PathBuf::from(dir.trim());
    built[index] = Some(dir.clone());
    Ok(dir)
}
