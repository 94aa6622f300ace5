//! Where the environment lives: libubootenv's two configuration formats, `fw_env.config` and its
//! YAML successor, read so that abup and `fw_printenv` always look at the same bytes.

mod cnum;
mod fw_env;
mod yaml;

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use yaml_rust2::parser::{Event, Parser};

use crate::env::Env;
use crate::error::{Error, Result};
use crate::raw::{Endianness, Layout};

/// Largest configuration file read; real ones are a few hundred bytes, so anything bigger is the
/// wrong file and is refused before it is read into memory.
pub const MAX_CONFIG_LEN: usize = 64 * 1024;

/// Largest environment size accepted, checked before any copy is allocated. U-Boot environments
/// are typically 8 KiB to 128 KiB; 16 MiB leaves room for any real board.
pub const MAX_ENV_SIZE: usize = 16 * 1024 * 1024;

/// The lock file libubootenv (and U-Boot's own fw_printenv before it) takes by default.
pub const DEFAULT_LOCKFILE: &str = "/var/lock/fw_printenv.lock";

/// The two configuration formats libubootenv reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConfigFormat {
    /// `device offset size [sectorsize [sectors [disable_lock]]]` lines.
    FwEnvConfig,
    /// Namespaces of `size`, `lockfile`, `writelist` and `devices` (libubootenv 0.3.3 and later).
    Yaml,
}

/// Tells the formats apart: a file whose first YAML document is a mapping is YAML; anything
/// else, including text that is not YAML at all, is `fw_env.config`.
///
/// libubootenv tries its YAML parser first and falls back to the legacy parser when that fails.
/// Deciding on the structure instead means that a YAML file with a mistake is reported as a YAML
/// mistake rather than as an `fw_env.config` without entries; the legacy parser would find no
/// entry in a mapping anyway, since no line of one has a number in its second column.
pub fn detect_format(text: &str) -> ConfigFormat {
    let mut parser = Parser::new_from_str(text);
    loop {
        match parser.next_token() {
            Ok((Event::StreamStart | Event::DocumentStart | Event::Nothing, _)) => continue,
            Ok((Event::MappingStart(..), _)) => return ConfigFormat::Yaml,
            _ => return ConfigFormat::FwEnvConfig,
        }
    }
}

/// What kind of storage a configured path names, by libubootenv's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// A regular file or a block device: the only kind abup reads and writes.
    FileOrBlockDevice,
    /// `/dev/mtd…`: raw flash, which needs erase blocks and (on NOR) the boolean flag scheme.
    Mtd,
    /// `/dev/ubi…`, or `/dev/mtd…:volume`: a UBI volume, written with volume-update ioctls.
    Ubi,
}

impl DeviceKind {
    /// Classifies a path the way libubootenv does, by its prefix alone.
    pub fn of(path: &Path) -> Self {
        let bytes = path.as_os_str().as_bytes();
        if bytes.starts_with(b"/dev/mtd") {
            if bytes.contains(&b':') {
                DeviceKind::Ubi
            } else {
                DeviceKind::Mtd
            }
        } else if bytes.starts_with(b"/dev/ubi") {
            DeviceKind::Ubi
        } else {
            DeviceKind::FileOrBlockDevice
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceKind::FileOrBlockDevice => "file or block",
            DeviceKind::Mtd => "MTD",
            DeviceKind::Ubi => "UBI",
        })
    }
}

/// Where one copy lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyConfig {
    /// File or device holding the copy.
    pub path: PathBuf,
    /// Byte offset of the copy; negative counts back from the end of a block device.
    pub offset: i64,
    /// Erase sector size; only MTD devices use it.
    pub sector_size: Option<u64>,
    /// Number of erase sectors; only NAND uses it.
    pub sectors: Option<u64>,
    /// Whether to skip MTD lock/unlock; only MTD devices use it.
    pub disable_lock: bool,
}

impl CopyConfig {
    /// A copy at `offset` in `path`, without the MTD-only settings.
    pub fn new(path: impl Into<PathBuf>, offset: i64) -> Self {
        CopyConfig {
            path: path.into(),
            offset,
            sector_size: None,
            sectors: None,
            disable_lock: false,
        }
    }

    /// The kind of storage the path names.
    pub fn kind(&self) -> DeviceKind {
        DeviceKind::of(&self.path)
    }
}

/// One entry of the YAML `writelist` (U-Boot's `CONFIG_ENV_WRITEABLE_LIST`): `name:flags`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritelistEntry {
    /// The variable that may be written.
    pub name: String,
    /// Its type and access letters, as U-Boot's `.flags` spells them.
    pub flags: String,
}

/// A validated configuration: one or two copies of one size, and how to lock them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    copies: Vec<CopyConfig>,
    env_size: usize,
    lockfile: Option<PathBuf>,
    writelist: Vec<WritelistEntry>,
    endianness: Endianness,
    namespace: Option<String>,
}

impl Config {
    /// A configuration of one copy (single layout) or two (redundant), each `env_size` bytes.
    pub fn new(copies: Vec<CopyConfig>, env_size: usize) -> Result<Self> {
        if !(1..=2).contains(&copies.len()) {
            return Err(Error::CopyCount {
                count: copies.len(),
            });
        }
        let layout = layout_for(copies.len());
        if env_size < layout.min_copy_len() || env_size > MAX_ENV_SIZE {
            return Err(Error::EnvSizeOutOfRange {
                size: env_size as u64,
                min: layout.min_copy_len(),
                max: MAX_ENV_SIZE,
            });
        }
        Ok(Config {
            copies,
            env_size,
            lockfile: None,
            writelist: Vec::new(),
            endianness: Endianness::Little,
            namespace: None,
        })
    }

    /// Sets the CRC byte order; neither configuration format records it, and little-endian is
    /// the default because that is what ARM and x86 targets use.
    pub fn with_endianness(mut self, endianness: Endianness) -> Self {
        self.endianness = endianness;
        self
    }

    /// Sets the lock file, as the YAML `lockfile` key does.
    pub fn with_lockfile(mut self, path: impl Into<PathBuf>) -> Self {
        self.lockfile = Some(path.into());
        self
    }

    /// Parses either format, telling them apart with [`detect_format`]. `namespace` picks a YAML
    /// namespace (default: the first, as fw_printenv does without `-m`); asking for one in an
    /// `fw_env.config` fails, as it does with fw_printenv.
    pub fn parse(text: &str, namespace: Option<&str>) -> Result<Self> {
        if text.len() > MAX_CONFIG_LEN {
            return Err(Error::ConfigTooLarge {
                len: text.len() as u64,
                max: MAX_CONFIG_LEN,
            });
        }
        match detect_format(text) {
            ConfigFormat::Yaml => yaml::parse(text, namespace),
            ConfigFormat::FwEnvConfig => match namespace {
                Some(name) => Err(Error::NamespaceNotFound {
                    name: name.to_string(),
                    available: Vec::new(),
                }),
                None => fw_env::parse(text),
            },
        }
    }

    /// Reads and parses a configuration file, refusing one larger than [`MAX_CONFIG_LEN`] before
    /// reading it.
    pub fn load(path: &Path, namespace: Option<&str>) -> Result<Self> {
        let io = |action| {
            move |source| Error::Io {
                action,
                path: path.to_path_buf(),
                source,
            }
        };
        let file = File::open(path).map_err(io("opening"))?;
        let len = file.metadata().map_err(io("inspecting"))?.len();
        let mut bytes = Vec::new();
        file.take(MAX_CONFIG_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io("reading"))?;
        if len > MAX_CONFIG_LEN as u64 || bytes.len() > MAX_CONFIG_LEN {
            return Err(Error::ConfigTooLarge {
                len: len.max(bytes.len() as u64),
                max: MAX_CONFIG_LEN,
            });
        }
        let text = String::from_utf8(bytes).map_err(|e| Error::ConfigNotText {
            path: path.to_path_buf(),
            offset: e.utf8_error().valid_up_to(),
        })?;
        Self::parse(&text, namespace)
    }

    /// The copies, copy 0 first.
    pub fn copies(&self) -> &[CopyConfig] {
        &self.copies
    }

    /// Size of each copy, header included.
    pub fn env_size(&self) -> usize {
        self.env_size
    }

    /// Single with one copy, redundant with two.
    pub fn layout(&self) -> Layout {
        layout_for(self.copies.len())
    }

    /// The lock file to take: the configured one, else libubootenv's default.
    pub fn lockfile(&self) -> &Path {
        self.lockfile
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_LOCKFILE))
    }

    /// The YAML writelist; empty means every variable may be written.
    pub fn writelist(&self) -> &[WritelistEntry] {
        &self.writelist
    }

    /// Byte order of the stored CRC.
    pub fn endianness(&self) -> Endianness {
        self.endianness
    }

    /// The YAML namespace this configuration came from.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// Checks that every variable that differs between `current` and `new` (set, changed or
    /// removed) is in the writelist, as libubootenv checks each `fw_setenv`; with no writelist
    /// everything may change.
    pub fn check_writable(&self, current: &Env, new: &Env) -> Result<()> {
        if self.writelist.is_empty() {
            return Ok(());
        }
        let names: BTreeSet<&[u8]> = current.iter().chain(new.iter()).map(|(n, _)| n).collect();
        for name in names {
            if current.get(name) != new.get(name)
                && !self.writelist.iter().any(|w| w.name.as_bytes() == name)
            {
                return Err(Error::NotWritable {
                    name: String::from_utf8_lossy(name).into_owned(),
                });
            }
        }
        Ok(())
    }
}

fn layout_for(copies: usize) -> Layout {
    if copies == 2 {
        Layout::Redundant
    } else {
        Layout::Single
    }
}

/// Checks a parsed size against the layout's minimum and [`MAX_ENV_SIZE`], explaining a refusal.
fn check_env_size(size: u64, copies: usize) -> Result<(), String> {
    let min = layout_for(copies).min_copy_len() as u64;
    if size < min || size > MAX_ENV_SIZE as u64 {
        return Err(format!(
            "environment size {size} (0x{size:x}) is outside the accepted {min}..={MAX_ENV_SIZE} bytes"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_kinds_follow_libubootenv_prefixes() {
        let kind = |p: &str| DeviceKind::of(Path::new(p));
        assert_eq!(kind("/dev/mtd3"), DeviceKind::Mtd);
        assert_eq!(kind("/dev/mtdblock3"), DeviceKind::Mtd);
        assert_eq!(kind("/dev/mtd0:env"), DeviceKind::Ubi);
        assert_eq!(kind("/dev/ubi0_1"), DeviceKind::Ubi);
        assert_eq!(kind("/dev/ubi0:env"), DeviceKind::Ubi);
        assert_eq!(kind("/dev/mmcblk0boot1"), DeviceKind::FileOrBlockDevice);
        assert_eq!(kind("/boot/uboot.env"), DeviceKind::FileOrBlockDevice);
    }

    #[test]
    fn detection() {
        assert_eq!(
            detect_format("/dev/mmcblk0 0x0 0x4000\n"),
            ConfigFormat::FwEnvConfig
        );
        assert_eq!(
            detect_format("# c\n/dev/a 0 4000\n/dev/a 4000 4000\n"),
            ConfigFormat::FwEnvConfig
        );
        assert_eq!(
            detect_format("/dev/ubi0:env 0 1f000\n"),
            ConfigFormat::FwEnvConfig
        );
        assert_eq!(
            detect_format("\t/dev/a\t0\t4000\n"),
            ConfigFormat::FwEnvConfig
        );
        assert_eq!(detect_format(""), ConfigFormat::FwEnvConfig);
        assert_eq!(
            detect_format("uboot:\n  size: 0x4000\n"),
            ConfigFormat::Yaml
        );
        assert_eq!(detect_format("---\nuboot: {size: 1}\n"), ConfigFormat::Yaml);
        assert_eq!(detect_format("uboot:\n\tsize: 1\n"), ConfigFormat::Yaml);
    }

    #[test]
    fn namespace_with_fw_env_config_is_not_found() {
        assert!(matches!(
            Config::parse("/dev/a 0 4000\n", Some("uboot")),
            Err(Error::NamespaceNotFound { .. })
        ));
    }

    #[test]
    fn limits() {
        let big = "#".repeat(MAX_CONFIG_LEN + 1);
        assert!(matches!(
            Config::parse(&big, None),
            Err(Error::ConfigTooLarge { .. })
        ));
        assert!(matches!(
            Config::new(vec![CopyConfig::new("/x", 0)], MAX_ENV_SIZE + 1),
            Err(Error::EnvSizeOutOfRange { .. })
        ));
        assert!(matches!(
            Config::new(vec![], 0x100),
            Err(Error::CopyCount { count: 0 })
        ));
        let three = vec![CopyConfig::new("/x", 0); 3];
        assert!(matches!(
            Config::new(three, 0x100),
            Err(Error::CopyCount { count: 3 })
        ));
    }

    #[test]
    fn load_refuses_large_and_binary_files() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'#'; MAX_CONFIG_LEN + 10]).unwrap();
        assert!(matches!(
            Config::load(&big, None),
            Err(Error::ConfigTooLarge { len, .. }) if len == MAX_CONFIG_LEN as u64 + 10
        ));
        let bin = dir.path().join("bin");
        std::fs::write(&bin, b"/dev/a 0 4000 # \xff\n").unwrap();
        assert!(matches!(
            Config::load(&bin, None),
            Err(Error::ConfigNotText { offset: 16, .. })
        ));
        let good = dir.path().join("fw_env.config");
        std::fs::write(&good, "/dev/a 0 4000\n").unwrap();
        assert_eq!(Config::load(&good, None).unwrap().env_size(), 0x4000);
    }

    #[test]
    fn writelist_restricts_changes() {
        let mut config = Config::new(vec![CopyConfig::new("/x", 0)], 0x100).unwrap();
        let mut current = Env::new();
        current.set("fixed", "1").unwrap();
        current.set("free", "1").unwrap();
        let mut new = current.clone();
        new.set("free", "2").unwrap();
        config.check_writable(&current, &new).unwrap();
        config.writelist = vec![WritelistEntry {
            name: "free".into(),
            flags: "sw".into(),
        }];
        config.check_writable(&current, &new).unwrap();
        new.set("fixed", "").unwrap();
        assert!(matches!(
            config.check_writable(&current, &new),
            Err(Error::NotWritable { name }) if name == "fixed"
        ));
        let mut added = current.clone();
        added.set("other", "x").unwrap();
        assert!(config.check_writable(&current, &added).is_err());
    }
}
