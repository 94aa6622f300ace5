//! The U-Boot environment as U-Boot, libubootenv (`fw_printenv`/`fw_setenv`) and `mkenvimage`
//! read and write it: single and redundant copies, their configuration files, and storage at an
//! offset in a file or block device.
//!
//! abup changes the bootloader's variables (boot order, tries left) around every update, so one
//! wrong byte here strands a device. The rules below are therefore those of the bootloader first,
//! then of the Linux tools that must keep agreeing with abup on the same bytes.
//!
//! # The format
//!
//! ```text
//! single:     [CRC-32 u32][data: size - 4 bytes]
//! redundant:  [CRC-32 u32][flags u8][data: size - 5 bytes]      two copies of equal size
//! data:       name=value\0name=value\0 ... \0  <unused tail, any bytes>
//! ```
//!
//! * The CRC is zlib's CRC-32 over the **whole** data area, unused tail included, never over the
//!   flag byte. U-Boot compares it as a native `u32`: little-endian on ARM and x86, which is the
//!   default here; [`Endianness::Big`] serves big-endian targets (`mkenvimage -b`).
//! * The list ends at the first empty entry. The bytes after it are arbitrary yet CRC-covered:
//!   U-Boot zeroes them, mkenvimage pads with 0xFF, and libubootenv leaves uninitialised heap
//!   memory there (fragments of older variables). [`RawCopy::entries`] therefore stops at the
//!   first empty entry; skipping it instead would resurrect stale variables.
//! * An entry is split at its first `=`; entries without one, or with an empty name, are ignored.
//!   A name that occurs twice takes its last value, as both U-Boot and libubootenv import it.
//! * Variables are written sorted bytewise, as U-Boot's `saveenv` and libubootenv do, so encoding
//!   is deterministic and byte-identical to `mkenvimage` given sorted input and the same fill.
//!
//! # Which copy is current: two flag schemes
//!
//! U-Boot has two meanings for the flag byte. The **incremental** scheme, used for block devices,
//! files, NAND and UBI, treats it as a counter: each save writes the copy that is not current with
//! the current counter plus one (mod 256), and a reader takes the valid copy with the newer
//! counter (255 then 0 is a wrap-around; equal counters pick copy 0). It is implemented here
//! ([`select_current`], [`plan_update`]).
//!
//! The **boolean** scheme of parallel NOR flash and DataFlash (flag 1 = active, 0 = obsolete,
//! 0xFF = erased) is out of scope: it exists because NOR can clear single bits of an already
//! written copy in place, which is how the old copy is marked obsolete after the new one is
//! written. Neither a file nor a block device can do that, libubootenv only uses it for MTD NOR
//! devices, and abup does not write MTD at all. Reading a counter-scheme pair with boolean rules
//! (or the reverse) picks the wrong copy, so the scheme must follow the storage, and here the
//! storage is always a file or block device.
//!
//! # Where U-Boot, libubootenv and mkenvimage disagree, and what abup does
//!
//! * **Capacity.** U-Boot and mkenvimage need `Σ(len(name) + 1 + len(value) + 1) + 1` bytes of
//!   data area. libubootenv 0.3 lets the entries fill the area completely and writes its final
//!   NUL past the CRC-covered area. abup refuses what U-Boot would refuse ([`Error::TooLarge`]),
//!   but reads a completely full area the way U-Boot does, as if a NUL followed it.
//! * **Empty values.** libubootenv stores `fw_setenv k ""` as `k=`; U-Boot's import treats `k=`
//!   (and a bare `k`) as a deletion. [`Env::set`] with an empty value deletes; a stored `k=` reads
//!   as present and empty.
//! * **Empty environment.** mkenvimage writes a single NUL; U-Boot's import steps past the first
//!   NUL before it tests for the end, so abup writes two.
//! * **Backslashes, `#` and blanks.** U-Boot's import un-escapes `\X`, skips entries starting
//!   with `#` and strips blanks before a name; libubootenv and mkenvimage store and read raw
//!   bytes. abup follows libubootenv, since that is what the Linux side sees; keep such bytes out
//!   of variables the bootloader must read.
//! * **`.flags`.** libubootenv parses `.flags` into attributes and writes it back regenerated;
//!   abup keeps it as an ordinary variable, byte for byte.
//! * **Order.** mkenvimage keeps its input order and duplicates; U-Boot and libubootenv sort.
//! * **Invalid environment.** U-Boot boots with its built-in default, and `fw_setenv` with a
//!   default file writes that default plus the change. abup never repairs silently: updating an
//!   environment without a valid copy fails ([`Error::NoValidEnvironment`]), and
//!   [`plan_initialize`] / [`Device::initialize`] write a first one only when asked.
//! * **Short files.** When one copy's window reaches past the end of its file, libubootenv fails
//!   to read the whole environment, while U-Boot treats only that copy as unreadable. abup reads
//!   like U-Boot (the other copy, with the fault reported) and refuses to update, because the
//!   write would go to the short copy: libubootenv extends such a file when it writes a default
//!   environment; abup never extends or truncates a file and writes only inside the window.
//! * **eMMC boot partitions.** libubootenv sets `force_ro` back to 1 after writing even if it was
//!   0 before, and recognises only single-digit `mmcblkN`; abup restores the value it found.
//! * **Configuration.** `fw_env.config` is read as libubootenv's `sscanf("%ms %lli %zx %zx %lx
//!   %d")` reads it: the offset in C's automatic base (`0x` hex, leading `0` octal, negative from
//!   the end of a block device), the sizes **always hexadecimal** (`4000` is 0x4000). The YAML
//!   format reads numbers with `strtoull(.., 0)`. See [`Config`].
//!
//! # Layers
//!
//! * [`raw`]: an allocation-free view of stored copies, for an initramfs or a tiny agent.
//! * [`env`](mod@env): the owned environment, sorted, validated, encoded with a strict capacity check.
//! * [`plan`]: pure decisions of what to write where, replayable sector by sector in tests.
//! * [`config`]: `fw_env.config` and YAML.
//! * [`storage`]: the configured copies under libubootenv's lock, read and written in place.
//!
//! ```no_run
//! use std::path::Path;
//! use u_boot_env::{Config, Device, OpenOptions};
//!
//! let config = Config::load(Path::new("/etc/fw_env.config"), None)?;
//! let device = Device::open(&config, &OpenOptions::new())?;
//! let mut env = device.read()?.env;
//! env.set("BOOT_ORDER", "B A")?;
//! device.write(&env)?; // one write: the inactive copy of a redundant pair
//! # Ok::<(), u_boot_env::Error>(())
//! ```

pub mod config;
pub mod env;
mod error;
pub mod plan;
pub mod raw;
pub mod storage;

pub use config::{
    detect_format, Config, ConfigFormat, CopyConfig, DeviceKind, WritelistEntry, DEFAULT_LOCKFILE,
    MAX_CONFIG_LEN, MAX_ENV_SIZE,
};
pub use env::Env;
pub use error::{CopyFault, Error, Result};
pub use plan::{plan_initialize, plan_update, PlannedWrite};
pub use raw::{select_current, CopyId, Endianness, Entries, Header, Layout, RawCopy, RawEnv};
pub use storage::{Device, OpenOptions, Snapshot, Window};
