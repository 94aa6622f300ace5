//! One error type for the crate, so that callers match on a single enum and every message names
//! the object at fault and what to do about it.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::raw::CopyId;

/// Why an operation on a U-Boot environment failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A copy is too small to hold its header and the shortest possible environment.
    #[error("an environment copy of {len} bytes is too small: this layout needs at least {min} bytes (check the size in the configuration)")]
    CopyTooSmall {
        /// Bytes given.
        len: usize,
        /// Bytes needed.
        min: usize,
    },

    /// The two copies of a redundant environment differ in size.
    #[error("the two environment copies differ in size ({first} and {second} bytes): U-Boot and libubootenv require equal sizes")]
    CopySizesDiffer {
        /// Size of copy 0.
        first: usize,
        /// Size of copy 1.
        second: usize,
    },

    /// A single copy was decoded on its own and its CRC does not match its data.
    #[error("environment CRC mismatch: stored 0x{stored:08x}, data has 0x{computed:08x} (wrong size, layout or endianness in the configuration, or a corrupted environment)")]
    BadCrc {
        /// CRC stored in the header.
        stored: u32,
        /// CRC computed over the data area.
        computed: u32,
    },

    /// No copy holds a valid environment, so there is nothing to read or to update from.
    #[error("no valid U-Boot environment ({}): if this area was never written, initialise it explicitly; otherwise check the configuration (offset, size, number of copies) before restoring it", FaultList(.faults))]
    NoValidEnvironment {
        /// What is wrong with each copy.
        faults: Vec<CopyFault>,
    },

    /// An update would have to write a copy that could not be read.
    #[error("cannot update the environment: {fault}; abup writes only inside an existing window and never extends a file")]
    CopyUnreadable {
        /// Why the copy could not be read.
        fault: CopyFault,
    },

    /// Explicit initialisation was asked for an area that already holds a valid environment.
    #[error("{copy} already holds a valid environment: refusing to initialise over it (update it instead)")]
    AlreadyInitialized {
        /// The valid copy.
        copy: CopyId,
    },

    /// A variable name that U-Boot could not store or read back.
    #[error("invalid variable name {name:?}: {reason}")]
    InvalidName {
        /// The name, lossily converted for display.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A value containing a NUL byte, which would end the entry early.
    #[error("the value of {name:?} contains a NUL byte at offset {offset}: U-Boot values cannot contain NUL")]
    InvalidValue {
        /// The variable's name, lossily converted for display.
        name: String,
        /// Offset of the first NUL in the value.
        offset: usize,
    },

    /// The variables do not fit into the environment's data area.
    #[error("the environment needs {needed} bytes but the data area holds {available}: remove or shorten variables")]
    TooLarge {
        /// Bytes needed including the terminating empty entry.
        needed: usize,
        /// Size of the data area (environment size minus header).
        available: usize,
    },

    /// A configuration larger than [`crate::MAX_CONFIG_LEN`].
    #[error("the configuration is {len} bytes, more than the {max} bytes abup accepts: is it the right file?")]
    ConfigTooLarge {
        /// Its length.
        len: u64,
        /// The limit.
        max: usize,
    },

    /// A configuration file that is not UTF-8 text.
    #[error("configuration {path} is not UTF-8 text (invalid byte at offset {offset})")]
    ConfigNotText {
        /// The file.
        path: PathBuf,
        /// Offset of the first invalid byte.
        offset: usize,
    },

    /// A bad line in `fw_env.config`.
    #[error("fw_env.config line {line} ({text:?}): {reason}")]
    ConfigLine {
        /// 1-based line number.
        line: usize,
        /// The line as written.
        text: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A YAML configuration that libubootenv would not accept, or that abup refuses.
    #[error("YAML configuration, line {line} column {column}: {reason}")]
    Yaml {
        /// 1-based line number.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        reason: String,
    },

    /// A configuration with neither one nor two copies.
    #[error("the configuration names {count} environment copies: a U-Boot environment has one, or two when redundant")]
    CopyCount {
        /// Copies named.
        count: usize,
    },

    /// A configuration that names no environment copy at all.
    #[error("the configuration names no environment copy: fw_env.config needs a line `device offset size`, the YAML format a namespace with `size` and `devices`")]
    ConfigEmpty,

    /// The requested YAML namespace does not exist.
    #[error("namespace {name:?} not found in the configuration (available: {available:?})")]
    NamespaceNotFound {
        /// The namespace asked for.
        name: String,
        /// The namespaces the file defines (none for fw_env.config).
        available: Vec<String>,
    },

    /// An environment size outside what abup accepts.
    #[error("environment size {size} is out of range: it must be between {min} and {max} bytes")]
    EnvSizeOutOfRange {
        /// The configured size.
        size: u64,
        /// Smallest accepted.
        min: usize,
        /// Largest accepted ([`crate::MAX_ENV_SIZE`]).
        max: usize,
    },

    /// The configuration names an MTD or UBI device.
    #[error("{path} is an {kind} device: MTD and UBI environments are not supported by abup (use fw_setenv, or keep the environment on a block device or in a file)")]
    UnsupportedDevice {
        /// The device.
        path: PathBuf,
        /// MTD or UBI.
        kind: crate::config::DeviceKind,
    },

    /// A negative offset on something that is not a block device.
    #[error("{path}: negative offset {offset} counts from the end of a block device, but this is not one (libubootenv refuses it too); use a positive offset")]
    NegativeOffsetNotBlockDevice {
        /// The file.
        path: PathBuf,
        /// The configured offset.
        offset: i64,
    },

    /// A negative offset that reaches before the start of the device.
    #[error("{path}: offset {offset} from the end lies before the start of the {device_size}-byte device")]
    OffsetBeforeStart {
        /// The device.
        path: PathBuf,
        /// The configured offset.
        offset: i64,
        /// The device's size.
        device_size: u64,
    },

    /// A write would reach past the end of the file or device.
    #[error("{path}: the window [{offset}, {end}) reaches past the end ({len} bytes); abup never extends a file: create it with its full size first, or fix the offset and size")]
    WindowPastEnd {
        /// The file or device.
        path: PathBuf,
        /// Start of the window.
        offset: u64,
        /// End of the window (exclusive).
        end: u64,
        /// Length of the file or device.
        len: u64,
    },

    /// The configuration restricts writable variables (YAML `writelist`) and this one is not listed.
    #[error("variable {name:?} is not in the configuration's writelist, so libubootenv would refuse to change it; add it there or leave it unchanged")]
    NotWritable {
        /// The variable.
        name: String,
    },

    /// Taking the lock that libubootenv's tools also take.
    #[error("cannot lock {path} (the lock fw_printenv/fw_setenv take): {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// Switching an eMMC boot partition between read-only and writable.
    #[error("cannot set {path} to {value:?} (eMMC boot partitions are read-only until force_ro is cleared): {source}")]
    ForceRo {
        /// The sysfs attribute.
        path: PathBuf,
        /// The value being written.
        value: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// Any other I/O failure, with what was being done and to which file.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("opening", "writing", ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Why one copy of the environment cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CopyFault {
    /// The copy's CRC does not match its data: never written, torn by a power cut, or corrupted.
    #[error("{copy}: stored CRC 0x{stored:08x}, data has 0x{computed:08x}")]
    BadCrc {
        /// Which copy.
        copy: CopyId,
        /// CRC stored in the header.
        stored: u32,
        /// CRC computed over the data area.
        computed: u32,
    },
    /// The copy's window reaches past the end of its file or device.
    #[error("{copy}: {path} has {len} bytes, the window [{offset}, {end}) reaches past its end")]
    PastEnd {
        /// Which copy.
        copy: CopyId,
        /// The file or device.
        path: PathBuf,
        /// Start of the window.
        offset: u64,
        /// End of the window (exclusive).
        end: u64,
        /// Length of the file or device.
        len: u64,
    },
    /// Reading the copy failed.
    #[error("{copy}: reading {path} at {offset}: {source}")]
    Io {
        /// Which copy.
        copy: CopyId,
        /// The file or device.
        path: PathBuf,
        /// Start of the window.
        offset: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl CopyFault {
    /// The copy this fault belongs to.
    pub fn copy(&self) -> CopyId {
        match self {
            CopyFault::BadCrc { copy, .. }
            | CopyFault::PastEnd { copy, .. }
            | CopyFault::Io { copy, .. } => *copy,
        }
    }
}

/// Formats the faults of all copies on one line for [`Error::NoValidEnvironment`].
struct FaultList<'a>(&'a [CopyFault]);

impl fmt::Display for FaultList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, fault) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{fault}")?;
        }
        Ok(())
    }
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
