//! The configured copies in files and block devices: locked, read, and written only inside their
//! windows.

use std::fs::{self, File, OpenOptions as FsOpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::config::{Config, CopyConfig, DeviceKind};
use crate::env::Env;
use crate::error::{CopyFault, Error, Result};
use crate::plan::{self, PlannedWrite};
use crate::raw::{select_current, CopyId, Layout, RawCopy, RawEnv};

/// The unused tail of copies abup writes is zeroed, as U-Boot's own `saveenv` leaves it, so
/// that what abup writes is reproducible.
const FILL: u8 = 0;

/// How to open a [`Device`]: overrides for the lock file and the sysfs root.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    lockfile: Option<PathBuf>,
    sysfs_root: PathBuf,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            lockfile: None,
            sysfs_root: PathBuf::from("/sys"),
        }
    }
}

impl OpenOptions {
    /// The defaults: the configuration's lock file and `/sys`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Locks this file instead of the configured one; for tests and for a system that keeps its
    /// lock elsewhere.
    pub fn lockfile(mut self, path: impl Into<PathBuf>) -> Self {
        self.lockfile = Some(path.into());
        self
    }

    /// Looks for `class/block/<device>/force_ro` under this directory instead of `/sys`.
    pub fn sysfs_root(mut self, path: impl Into<PathBuf>) -> Self {
        self.sysfs_root = path.into();
        self
    }
}

/// Where one copy lives once negative offsets are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Which copy.
    pub copy: CopyId,
    /// File or block device.
    pub path: PathBuf,
    /// Start of the copy.
    pub offset: u64,
    /// Size of the copy.
    pub size: usize,
}

impl Window {
    fn end(&self) -> u64 {
        self.offset + self.size as u64
    }
}

/// The environment as read: the current copy, its variables, and what is wrong with the other.
#[derive(Debug)]
pub struct Snapshot {
    /// The copy the bootloader would load.
    pub current: CopyId,
    /// Its variables.
    pub env: Env,
    /// Problems found with the copies that are not current (a bad CRC after an interrupted
    /// write, a window past the end of the file); the next write repairs a redundant pair.
    pub faults: Vec<CopyFault>,
}

/// The configured environment storage, held under libubootenv's lock for as long as it lives, so
/// that a read-modify-write cannot interleave with `fw_setenv`.
#[derive(Debug)]
pub struct Device {
    config: Config,
    windows: Vec<Window>,
    sysfs_root: PathBuf,
    _lock: Flock<File>,
}

impl Device {
    /// Takes the lock and resolves each copy's window.
    ///
    /// MTD and UBI devices are refused: raw flash needs erase-block handling and, on NOR, the
    /// boolean flag scheme, none of which abup implements.
    pub fn open(config: &Config, options: &OpenOptions) -> Result<Self> {
        for copy in config.copies() {
            let canonical = fs::canonicalize(&copy.path).unwrap_or_else(|_| copy.path.clone());
            for kind in [copy.kind(), DeviceKind::of(&canonical)] {
                if kind != DeviceKind::FileOrBlockDevice {
                    return Err(Error::UnsupportedDevice {
                        path: copy.path.clone(),
                        kind,
                    });
                }
            }
        }
        let lockfile = options
            .lockfile
            .as_deref()
            .unwrap_or_else(|| config.lockfile());
        let lock = take_lock(lockfile)?;
        let windows = config
            .copies()
            .iter()
            .zip([CopyId::First, CopyId::Second])
            .map(|(copy, id)| resolve(copy, id, config.env_size()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Device {
            config: config.clone(),
            windows,
            sysfs_root: options.sysfs_root.clone(),
            _lock: lock,
        })
    }

    /// The configuration this device was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The copies' resolved windows, copy 0 first.
    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    /// Reads the current environment. A copy that cannot be read counts as invalid, as in U-Boot;
    /// when no copy is valid this fails with every copy's fault.
    pub fn read(&self) -> Result<Snapshot> {
        let layout = self.config.layout();
        let endianness = self.config.endianness();
        let mut faults = Vec::new();
        let mut buffers = Vec::new();
        for read in self.read_copies()? {
            match read {
                Ok(bytes) => buffers.push(Some(bytes)),
                Err(fault) => {
                    faults.push(fault);
                    buffers.push(None);
                }
            }
        }
        let copies = buffers
            .iter()
            .map(|b| {
                b.as_deref()
                    .map(|b| RawCopy::parse(b, layout, endianness))
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        for (copy, id) in copies.iter().zip([CopyId::First, CopyId::Second]) {
            if let Some(copy) = copy.filter(|c| !c.is_valid()) {
                faults.push(CopyFault::BadCrc {
                    copy: id,
                    stored: copy.stored_crc(),
                    computed: copy.computed_crc(),
                });
            }
        }
        faults.sort_by_key(CopyFault::copy);
        let valid_flags = |i: usize| {
            let copy = copies.get(i).copied().flatten()?;
            copy.is_valid().then(|| copy.flags().unwrap_or(0))
        };
        let current = match layout {
            Layout::Single => valid_flags(0).map(|_| CopyId::First),
            Layout::Redundant => select_current(valid_flags(0), valid_flags(1)),
        };
        let Some(current) = current else {
            return Err(Error::NoValidEnvironment { faults });
        };
        let Some(Some(copy)) = copies.get(current.index()) else {
            return Err(Error::NoValidEnvironment { faults });
        };
        log::debug!("U-Boot environment: {current} is current");
        Ok(Snapshot {
            current,
            env: Env::from_copy(copy),
            faults,
        })
    }

    /// Stores `env` as the new environment with one write (see [`plan::plan_update`]): the copy
    /// that is not current for a redundant pair, the only copy otherwise. Returns the copy
    /// written. Fails without writing if no copy is valid, if a copy cannot be read (its window
    /// would be the one written), if `env` does not fit, or if the writelist forbids a change.
    pub fn write(&self, env: &Env) -> Result<CopyId> {
        let buffers = self.read_all()?;
        let stored = self.view(&buffers)?;
        if let Some(current) = stored.current_copy() {
            self.config.check_writable(&Env::from_copy(&current), env)?;
        }
        let write = plan::plan_update(&stored, env, FILL)?;
        self.write_copy(&write)?;
        Ok(write.copy)
    }

    /// Writes a first environment into an area without a valid one (see
    /// [`plan::plan_initialize`]); refuses an area that holds a valid environment.
    pub fn initialize(&self, env: &Env) -> Result<()> {
        let buffers = self.read_all()?;
        for write in plan::plan_initialize(&self.view(&buffers)?, env, FILL)? {
            self.write_copy(&write)?;
        }
        Ok(())
    }

    fn read_copies(&self) -> Result<Vec<Result<Vec<u8>, CopyFault>>> {
        self.windows.iter().map(read_copy).collect()
    }

    fn read_all(&self) -> Result<Vec<Vec<u8>>> {
        self.read_copies()?
            .into_iter()
            .map(|read| read.map_err(|fault| Error::CopyUnreadable { fault }))
            .collect()
    }

    fn view<'a>(&self, buffers: &'a [Vec<u8>]) -> Result<RawEnv<'a>> {
        let endianness = self.config.endianness();
        match buffers {
            [single] => RawEnv::single(single, endianness),
            [first, second] => RawEnv::redundant(first, second, endianness),
            _ => Err(Error::CopyCount {
                count: buffers.len(),
            }),
        }
    }

    fn write_copy(&self, write: &PlannedWrite) -> Result<()> {
        let window = self
            .windows
            .get(write.copy.index())
            .ok_or(Error::CopyCount {
                count: self.windows.len(),
            })?;
        let io = |action| {
            move |source| Error::Io {
                action,
                path: window.path.clone(),
                source,
            }
        };
        // Declared before the file so that it is restored after the file is closed.
        let _writable = ForceRo::clear(&self.sysfs_root, &window.path)?;
        let file = FsOpenOptions::new()
            .write(true)
            .open(&window.path)
            .map_err(io("opening for writing"))?;
        let len = storage_len(&file).map_err(io("measuring"))?;
        // Planned writes are always exactly one copy long: they are encoded to the size read.
        debug_assert_eq!(write.bytes.len(), window.size);
        if window.end() > len {
            return Err(Error::WindowPastEnd {
                path: window.path.clone(),
                offset: window.offset,
                end: window.end(),
                len,
            });
        }
        file.write_all_at(&write.bytes, window.offset)
            .map_err(io("writing"))?;
        file.sync_all().map_err(io("syncing"))?;
        log::info!(
            "wrote {} of the U-Boot environment to {} at offset {}",
            write.copy,
            window.path.display(),
            window.offset
        );
        Ok(())
    }
}

/// Takes the exclusive `flock` libubootenv takes, creating the file as it does.
fn take_lock(path: &Path) -> Result<Flock<File>> {
    let lock_error = |source| Error::Lock {
        path: path.to_path_buf(),
        source,
    };
    let file = FsOpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o666)
        .open(path)
        .map_err(lock_error)?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| lock_error(errno.into()))
}

/// Resolves a negative offset against the size of the block device, as libubootenv does, and
/// refuses one on anything else.
fn resolve(copy: &CopyConfig, id: CopyId, size: usize) -> Result<Window> {
    let offset = match u64::try_from(copy.offset) {
        Ok(offset) => offset,
        Err(_) => {
            let io = |action| {
                move |source| Error::Io {
                    action,
                    path: copy.path.clone(),
                    source,
                }
            };
            let file = File::open(&copy.path).map_err(io("opening"))?;
            let meta = file.metadata().map_err(io("inspecting"))?;
            if !meta.file_type().is_block_device() {
                return Err(Error::NegativeOffsetNotBlockDevice {
                    path: copy.path.clone(),
                    offset: copy.offset,
                });
            }
            let device_size = ioctl::block_device_size(&file).map_err(io("measuring"))?;
            device_size
                .checked_sub(copy.offset.unsigned_abs())
                .ok_or(Error::OffsetBeforeStart {
                    path: copy.path.clone(),
                    offset: copy.offset,
                    device_size,
                })?
        }
    };
    Ok(Window {
        copy: id,
        path: copy.path.clone(),
        offset,
        size,
    })
}

/// Length of a regular file, or size of a block device (whose metadata length is 0).
fn storage_len(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        ioctl::block_device_size(file)
    } else {
        Ok(meta.len())
    }
}

/// Reads one copy's window; a window past the end or a failed read is a fault of that copy.
fn read_copy(window: &Window) -> Result<Result<Vec<u8>, CopyFault>> {
    let io = |action| {
        move |source| Error::Io {
            action,
            path: window.path.clone(),
            source,
        }
    };
    let file = File::open(&window.path).map_err(io("opening"))?;
    let len = storage_len(&file).map_err(io("measuring"))?;
    let past_end = || CopyFault::PastEnd {
        copy: window.copy,
        path: window.path.clone(),
        offset: window.offset,
        end: window.end(),
        len,
    };
    if window.end() > len {
        return Ok(Err(past_end()));
    }
    let mut bytes = vec![0u8; window.size];
    Ok(match file.read_exact_at(&mut bytes, window.offset) {
        Ok(()) => Ok(bytes),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(past_end()),
        Err(source) => Err(CopyFault::Io {
            copy: window.copy,
            path: window.path.clone(),
            offset: window.offset,
            source,
        }),
    })
}

/// An eMMC boot partition made writable for one write; dropping it makes it read-only again.
#[derive(Debug)]
struct ForceRo {
    attribute: PathBuf,
}

impl ForceRo {
    /// Clears `force_ro` if `device` is an eMMC boot partition (`mmcblkNbootM`, also through a
    /// symlink) that is read-only now; otherwise does nothing.
    fn clear(sysfs_root: &Path, device: &Path) -> Result<Option<ForceRo>> {
        let Some(name) = fs::canonicalize(device)
            .ok()
            .and_then(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .filter(|n| is_emmc_boot_partition(n))
        else {
            return Ok(None);
        };
        let attribute = sysfs_root.join("class/block").join(name).join("force_ro");
        let current = match fs::read_to_string(&attribute) {
            Ok(value) => value,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Io {
                    action: "reading",
                    path: attribute,
                    source,
                })
            }
        };
        if current.trim() != "1" {
            return Ok(None);
        }
        fs::write(&attribute, "0").map_err(|source| Error::ForceRo {
            path: attribute.clone(),
            value: "0",
            source,
        })?;
        log::debug!("cleared {}", attribute.display());
        Ok(Some(ForceRo { attribute }))
    }
}

impl Drop for ForceRo {
    fn drop(&mut self) {
        if let Err(e) = fs::write(&self.attribute, "1") {
            log::warn!(
                "could not make the eMMC boot partition read-only again ({}): {e}",
                self.attribute.display()
            );
        }
    }
}

/// `mmcblk<N>boot<M>`: the name the kernel gives eMMC boot partitions.
fn is_emmc_boot_partition(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    name.strip_prefix("mmcblk")
        .and_then(|rest| rest.split_once("boot"))
        .is_some_and(|(disk, part)| digits(disk) && digits(part))
}

/// The one place with `unsafe`: the block device size ioctl.
#[allow(unsafe_code)]
mod ioctl {
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;

    // BLKGETSIZE64 is _IOR(0x12, 114, size_t) but the kernel stores a u64: encode the request
    // with size_t's size and pass a u64, so that 32-bit targets get the right request number.
    nix::ioctl_read_bad!(
        blkgetsize64,
        nix::request_code_read!(0x12, 114, std::mem::size_of::<usize>()),
        u64
    );

    /// Size in bytes of the block device open as `file`.
    pub(super) fn block_device_size(file: &File) -> io::Result<u64> {
        let mut size = 0u64;
        // SAFETY: the descriptor stays open for the call, and BLKGETSIZE64 writes exactly one
        // u64 through a pointer to a live local.
        unsafe { blkgetsize64(file.as_raw_fd(), &mut size) }.map_err(io::Error::from)?;
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::{Endianness, Header};

    fn env(pairs: &[(&str, &str)]) -> Env {
        let mut env = Env::new();
        for (n, v) in pairs {
            env.set(n, v).unwrap();
        }
        env
    }

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn options(&self) -> OpenOptions {
            OpenOptions::new()
                .lockfile(self.path("lock"))
                .sysfs_root(self.path("sys"))
        }
    }

    /// A file of pseudo-random bytes, so that any stray write shows.
    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn writes_stay_inside_the_window_and_alternate() {
        let f = Fixture::new();
        let path = f.path("disk.img");
        let original = noise(0x3000);
        fs::write(&path, &original).unwrap();
        let config = Config::new(
            vec![
                CopyConfig::new(&path, 0x1000),
                CopyConfig::new(&path, 0x1800),
            ],
            0x400,
        )
        .unwrap();
        let device = Device::open(&config, &f.options()).unwrap();
        assert!(matches!(
            device.read(),
            Err(Error::NoValidEnvironment { faults }) if faults.len() == 2
        ));
        assert!(matches!(
            device.write(&env(&[("a", "1")])),
            Err(Error::NoValidEnvironment { .. })
        ));
        assert_eq!(fs::read(&path).unwrap(), original, "a failed update wrote");
        device.initialize(&env(&[("a", "1")])).unwrap();
        assert_eq!(device.write(&env(&[("a", "2")])).unwrap(), CopyId::Second);
        assert_eq!(device.write(&env(&[("a", "3")])).unwrap(), CopyId::First);
        let snapshot = device.read().unwrap();
        assert_eq!(snapshot.current, CopyId::First);
        assert_eq!(snapshot.env, env(&[("a", "3")]));
        assert!(snapshot.faults.is_empty());
        let after = fs::read(&path).unwrap();
        assert_eq!(after.len(), original.len());
        assert_eq!(after[..0x1000], original[..0x1000]);
        assert_eq!(after[0x1400..0x1800], original[0x1400..0x1800]);
        assert_eq!(after[0x1C00..], original[0x1C00..]);
        assert_eq!(after[0x1004], 3, "copy 0 holds counter 3");
        assert_eq!(after[0x1804], 2, "copy 1 holds counter 2");
    }

    #[test]
    fn a_file_that_shrank_after_reading_is_not_extended() {
        let f = Fixture::new();
        let path = f.path("uboot.env");
        fs::write(&path, vec![0u8; 0x200]).unwrap();
        let config = Config::new(vec![CopyConfig::new(&path, 0x100)], 0x100).unwrap();
        let device = Device::open(&config, &f.options()).unwrap();
        fs::write(&path, vec![0u8; 0x180]).unwrap();
        let write = PlannedWrite {
            copy: CopyId::First,
            bytes: vec![0u8; 0x100],
        };
        assert!(matches!(
            device.write_copy(&write),
            Err(Error::WindowPastEnd {
                offset: 0x100,
                end: 0x200,
                len: 0x180,
                ..
            })
        ));
        assert_eq!(fs::metadata(&path).unwrap().len(), 0x180);
    }

    #[test]
    fn initialize_refuses_a_valid_environment() {
        let f = Fixture::new();
        let path = f.path("uboot.env");
        let bytes = env(&[("bootcmd", "run x")])
            .encode(Header::Single, 0x100, 0, Endianness::Little)
            .unwrap();
        fs::write(&path, &bytes).unwrap();
        let config = Config::new(vec![CopyConfig::new(&path, 0)], 0x100).unwrap();
        let device = Device::open(&config, &f.options()).unwrap();
        assert!(matches!(
            device.initialize(&Env::new()),
            Err(Error::AlreadyInitialized {
                copy: CopyId::First
            })
        ));
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn a_window_past_the_end_is_an_invalid_copy_and_is_never_extended() {
        let f = Fixture::new();
        let first = f.path("env0");
        let second = f.path("env1");
        fs::write(&first, vec![0u8; 0x100]).unwrap();
        fs::write(&second, vec![0u8; 0x80]).unwrap();
        let config = Config::new(
            vec![CopyConfig::new(&first, 0), CopyConfig::new(&second, 0)],
            0x100,
        )
        .unwrap();
        let device = Device::open(&config, &f.options()).unwrap();
        let bytes = env(&[("a", "1")])
            .encode(Header::Redundant { flags: 5 }, 0x100, 0, Endianness::Little)
            .unwrap();
        fs::write(&first, &bytes).unwrap();
        let snapshot = device.read().unwrap();
        assert_eq!(snapshot.current, CopyId::First);
        assert!(matches!(
            &snapshot.faults[..],
            [CopyFault::PastEnd {
                copy: CopyId::Second,
                len: 0x80,
                end: 0x100,
                ..
            }]
        ));
        let err = device.write(&env(&[("a", "2")])).unwrap_err();
        assert!(matches!(err, Error::CopyUnreadable { .. }), "{err}");
        assert!(err.to_string().contains("never extends"), "{err}");
        assert_eq!(fs::metadata(&second).unwrap().len(), 0x80);
    }

    #[test]
    fn unsupported_and_impossible_locations() {
        let f = Fixture::new();
        let config = Config::new(vec![CopyConfig::new("/dev/mtd3", 0)], 0x100).unwrap();
        let err = Device::open(&config, &f.options()).unwrap_err();
        assert!(err.to_string().contains("not supported by abup"), "{err}");
        let config = Config::new(vec![CopyConfig::new("/dev/ubi0:env", 0)], 0x100).unwrap();
        assert!(matches!(
            Device::open(&config, &f.options()),
            Err(Error::UnsupportedDevice {
                kind: DeviceKind::Ubi,
                ..
            })
        ));
        let file = f.path("file");
        fs::write(&file, vec![0u8; 0x1000]).unwrap();
        let config = Config::new(vec![CopyConfig::new(&file, -0x100)], 0x100).unwrap();
        assert!(matches!(
            Device::open(&config, &f.options()),
            Err(Error::NegativeOffsetNotBlockDevice { offset: -0x100, .. })
        ));
    }

    #[test]
    fn the_lock_is_held_while_the_device_is_open() {
        let f = Fixture::new();
        let file = f.path("env");
        fs::write(&file, vec![0u8; 0x100]).unwrap();
        let config = Config::new(vec![CopyConfig::new(&file, 0)], 0x100).unwrap();
        let device = Device::open(&config, &f.options()).unwrap();
        let try_lock = || {
            let other = File::options().write(true).open(f.path("lock")).unwrap();
            Flock::lock(other, FlockArg::LockExclusiveNonblock).is_ok()
        };
        assert!(
            !try_lock(),
            "the lock must be exclusive while the device is open"
        );
        drop(device);
        assert!(try_lock());
    }

    #[test]
    fn emmc_boot_partition_names() {
        assert!(is_emmc_boot_partition("mmcblk0boot0"));
        assert!(is_emmc_boot_partition("mmcblk12boot1"));
        assert!(!is_emmc_boot_partition("mmcblk0"));
        assert!(!is_emmc_boot_partition("mmcblk0p1"));
        assert!(!is_emmc_boot_partition("mmcblkboot0"));
        assert!(!is_emmc_boot_partition("mmcblk0boot"));
        assert!(!is_emmc_boot_partition("mmcblk0rpmb"));
    }

    #[test]
    fn force_ro_is_cleared_for_the_write_and_restored() {
        let f = Fixture::new();
        let device_path = f.path("mmcblk0boot1");
        fs::write(&device_path, vec![0u8; 0x200]).unwrap();
        let attribute = f.path("sys/class/block/mmcblk0boot1/force_ro");
        fs::create_dir_all(attribute.parent().unwrap()).unwrap();
        fs::write(&attribute, "1\n").unwrap();

        let guard = ForceRo::clear(&f.path("sys"), &device_path).unwrap();
        assert!(guard.is_some());
        assert_eq!(fs::read_to_string(&attribute).unwrap(), "0");
        drop(guard);
        assert_eq!(fs::read_to_string(&attribute).unwrap(), "1");

        // Already writable: left alone.
        fs::write(&attribute, "0\n").unwrap();
        assert!(ForceRo::clear(&f.path("sys"), &device_path)
            .unwrap()
            .is_none());
        assert_eq!(fs::read_to_string(&attribute).unwrap(), "0\n");

        // Through a whole write, via a symlink as /dev/disk/by-* gives.
        fs::write(&attribute, "1\n").unwrap();
        let link = f.path("by-name-env");
        std::os::unix::fs::symlink(&device_path, &link).unwrap();
        let config = Config::new(vec![CopyConfig::new(&link, 0)], 0x200).unwrap();
        let device = Device::open(&config, &f.options()).unwrap();
        device.initialize(&env(&[("k", "v")])).unwrap();
        assert_eq!(fs::read_to_string(&attribute).unwrap(), "1");
        assert_eq!(device.read().unwrap().env, env(&[("k", "v")]));

        // A force_ro that cannot be read or cleared stops the write (root ignores file modes,
        // so make the attribute a directory).
        fs::remove_file(&attribute).unwrap();
        fs::create_dir(&attribute).unwrap();
        assert!(device.write(&env(&[("k", "w")])).is_err());
        assert_eq!(device.read().unwrap().env, env(&[("k", "v")]));
    }

    #[test]
    fn writelist_is_enforced_on_write() {
        let f = Fixture::new();
        let path = f.path("env");
        fs::write(&path, vec![0u8; 0x100]).unwrap();
        let yaml = format!(
            "ns:\n  size: 0x100\n  writelist: [allowed:sw]\n  devices:\n    - path: {}\n",
            path.display()
        );
        let config = Config::parse(&yaml, None).unwrap();
        let device = Device::open(&config, &f.options()).unwrap();
        device.initialize(&env(&[("fixed", "1")])).unwrap();
        device
            .write(&env(&[("fixed", "1"), ("allowed", "x")]))
            .unwrap();
        assert!(matches!(
            device.write(&env(&[("fixed", "2"), ("allowed", "x")])),
            Err(Error::NotWritable { .. })
        ));
    }
}
