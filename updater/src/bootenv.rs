//! The bootloader environment as the rest of abup sees it: a set of variables that is read
//! once and changed with exactly one write, whichever bootloader keeps it.
//!
//! A logical change (mark a slot good, activate an update) must never be split: two writes
//! that each carry half of it (two `fw_setenv` calls, say) leave a window where a power cut
//! strands the device between two states nobody designed. Every write below carries the
//! whole new state: U-Boot's redundant environment gets one write, of the copy that is not
//! current; abup's GRUB pair gets two, the other copy and then the current one, each a
//! complete state (see [`Environment::update`]).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use grub_env::{Change, EnvBlock, EnvPair, LongWidth};
use nix::fcntl::{Flock, FlockArg};

use crate::board::{Board, Bootloader, GrubEnv};

/// Where an environment lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// abup's power-safe pair of GRUB blocks.
    GrubPair([PathBuf; 2]),
    /// One GRUB block, as `grub-editenv` and RAUC keep it.
    GrubSingle(PathBuf),
    /// A U-Boot environment described by a `fw_env.config` or YAML file.
    UBoot {
        config: PathBuf,
        lock_file: Option<PathBuf>,
    },
}

impl Location {
    pub fn of_board(board: &Board) -> Location {
        match &board.bootloader {
            Bootloader::Grub {
                env: GrubEnv::Pair(p),
            } => Location::GrubPair(p.clone()),
            Bootloader::Grub {
                env: GrubEnv::Single(p),
            } => Location::GrubSingle(p.clone()),
            Bootloader::UBoot { config, .. } => Location::UBoot {
                config: config.clone(),
                lock_file: None,
            },
        }
    }
}

/// One variable change; `None` removes the variable.
pub type Assignment = (String, Option<String>);

/// GRUB's `-gt` compares 32-bit ints on every platform; the platforms differ only for
/// sequence numbers of 2^32 and more, which abup never writes (it refuses past `i32::MAX`).
pub const GRUB_WIDTH: LongWidth = LongWidth::Bits32;

/// An environment opened for reading and, if asked, writing. Holds the lock the backend
/// needs for as long as it lives, so that read-modify-write cannot interleave with another
/// abup, or with `fw_setenv` on U-Boot.
#[derive(Debug)]
pub struct Environment {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    GrubPair {
        paths: [PathBuf; 2],
        files: [Option<File>; 2],
        pair: EnvPair,
        _lock: Flock<File>,
    },
    GrubSingle {
        path: PathBuf,
        file: Flock<File>,
        block: EnvBlock,
    },
    UBoot {
        config: PathBuf,
        device: u_boot_env::Device,
        snapshot: u_boot_env::Snapshot,
    },
}

impl Environment {
    /// Opens and reads the environment. With `write`, the files are opened for writing and
    /// locked exclusively; nothing is written until [`Environment::update`].
    pub fn open(location: &Location, write: bool) -> Result<Environment> {
        let backend = match location {
            Location::GrubPair(paths) => open_grub_pair(paths, write)?,
            Location::GrubSingle(path) => {
                if write {
                    log::warn!(
                        "{} is a single GRUB environment block: a power cut during this write \
                         can tear it; abup's pair of blocks does not have this problem",
                        path.display()
                    );
                }
                let file = open_file(path, write)?;
                let file = lock(file, write)
                    .with_context(|| format!("locking GRUB environment {}", path.display()))?;
                let block = grub_env::read_block(&*file)
                    .with_context(|| format!("reading GRUB environment {}", path.display()))?;
                Backend::GrubSingle {
                    path: path.clone(),
                    file,
                    block,
                }
            }
            Location::UBoot { config, lock_file } => {
                let device = open_uboot(config, lock_file.as_deref())?;
                let snapshot = device.read().with_context(|| {
                    format!("reading the U-Boot environment of {}", config.display())
                })?;
                for fault in &snapshot.faults {
                    log::info!("U-Boot environment: {fault}");
                }
                if write && device.windows().len() == 1 {
                    log::warn!(
                        "{} describes a single-copy U-Boot environment: a power cut during \
                         this write can leave no valid environment; configure a redundant one",
                        config.display()
                    );
                }
                Backend::UBoot {
                    config: config.clone(),
                    device,
                    snapshot,
                }
            }
        };
        Ok(Environment { backend })
    }

    /// The value the bootloader sees (for GRUB with a duplicated name: the last one).
    pub fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(match &self.backend {
            Backend::GrubPair { paths, pair, .. } => {
                grub_current(paths, pair)?.get(name).map(|v| v.into_owned())
            }
            Backend::GrubSingle { block, .. } => block.get(name).map(|v| v.into_owned()),
            Backend::UBoot { snapshot, .. } => snapshot.env.get(name).map(<[u8]>::to_vec),
        })
    }

    /// Every variable in storage order (GRUB: file order, duplicates included, as
    /// `grub-editenv list`; U-Boot: sorted, as `fw_printenv`).
    pub fn list(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(match &self.backend {
            Backend::GrubPair { paths, pair, .. } => grub_vars(grub_current(paths, pair)?),
            Backend::GrubSingle { block, .. } => grub_vars(block),
            Backend::UBoot { snapshot, .. } => snapshot
                .env
                .iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect(),
        })
    }

    /// Applies all `changes` and waits until they are on the disk: one write of the whole new
    /// state (two for abup's GRUB pair, each of the whole new state, so that GRUB's in-place
    /// save never falls back to an older one). Nothing is written if any change is refused (a
    /// bad name, no room, an unreadable environment).
    pub fn update(&mut self, changes: &[Assignment]) -> Result<()> {
        let grub_changes: Vec<Change<'_>> = changes
            .iter()
            .map(|(k, v)| match v {
                Some(v) => Change::set(k.as_str(), v.as_str()),
                None => Change::unset(k.as_str()),
            })
            .collect();
        match &mut self.backend {
            Backend::GrubPair {
                paths, files, pair, ..
            } => {
                // First the copy that is not current (a cut leaves the current one), then the
                // other one with the same variables: at rest both copies hold the same state,
                // so when GRUB's own in-place save tears the current copy, the copy GRUB falls
                // back to boots the same way instead of undoing this change.
                write_grub_copy(paths, files, pair, &grub_changes)?;
                write_grub_copy(paths, files, pair, &[])?;
            }
            Backend::GrubSingle { path, file, block } => {
                let mut new = block.clone();
                new.apply(&grub_changes)
                    .with_context(|| format!("updating GRUB environment {}", path.display()))?;
                grub_env::write_block(file, &new)
                    .with_context(|| format!("writing GRUB environment {}", path.display()))?;
                crate::failpoint::wrote(&format!("GRUB environment {}", path.display()));
                *block = new;
            }
            Backend::UBoot {
                config,
                device,
                snapshot,
            } => {
                let mut env = snapshot.env.clone();
                apply_uboot(&mut env, changes)?;
                let copy = device.write(&env).with_context(|| {
                    format!("writing the U-Boot environment of {}", config.display())
                })?;
                log::info!("wrote U-Boot environment {copy}");
                crate::failpoint::wrote(&format!("U-Boot environment {copy}"));
                // The copy just written is now the current one, and the other is the valid
                // previous environment.
                *snapshot = u_boot_env::Snapshot {
                    current: copy,
                    env,
                    faults: Vec::new(),
                };
            }
        }
        Ok(())
    }

    /// Whether a torn write of the current copy by the bootloader itself would fall back to
    /// the same variables. Only abup's GRUB pair can disagree (GRUB rewrites its current copy
    /// in place): after a power cut between the two writes of an update, or a GRUB boot.
    pub fn settled(&self) -> bool {
        match &self.backend {
            Backend::GrubPair { pair, .. } => pair.copies_agree(),
            Backend::GrubSingle { .. } | Backend::UBoot { .. } => true,
        }
    }

    /// A short description for `abup status`: which file, which copy is current.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::GrubPair { paths, pair, .. } => {
                let i = pair.selected();
                let seq = pair
                    .sequence(i)
                    .map(|s| String::from_utf8_lossy(&s).into_owned())
                    .unwrap_or_else(|| "none".into());
                format!(
                    "GRUB pair {} + {} (copy {i} current, {} {seq})",
                    paths[0].display(),
                    paths[1].display(),
                    grub_env::SEQ_VAR
                )
            }
            Backend::GrubSingle { path, .. } => format!("GRUB block {}", path.display()),
            Backend::UBoot {
                config,
                device,
                snapshot,
            } => {
                let redundant = device.windows().len() == 2;
                format!(
                    "U-Boot {} ({}, {} current)",
                    config.display(),
                    if redundant {
                        "redundant"
                    } else {
                        "single copy"
                    },
                    snapshot.current
                )
            }
        }
    }
}

/// Writes `changes` applied to the current copy, with the next sequence number, over the
/// other copy, which then becomes the current one.
fn write_grub_copy(
    paths: &[PathBuf; 2],
    files: &[Option<File>; 2],
    pair: &mut EnvPair,
    changes: &[Change<'_>],
) -> Result<()> {
    let plan = pair.plan_update(changes).with_context(|| {
        format!(
            "updating the GRUB environment pair {} + {}",
            paths[0].display(),
            paths[1].display()
        )
    })?;
    let path = &paths[plan.index];
    let Some(file) = &files[plan.index] else {
        bail!(
            "cannot write GRUB environment copy {}: it could not be opened",
            path.display()
        );
    };
    grub_env::write_block(file, &plan.block)
        .with_context(|| format!("writing GRUB environment copy {}", path.display()))?;
    log::info!("wrote GRUB environment copy {}", path.display());
    crate::failpoint::wrote(&format!("GRUB environment {}", path.display()));
    pair.commit(plan);
    Ok(())
}

fn grub_current<'a>(paths: &[PathBuf; 2], pair: &'a EnvPair) -> Result<&'a EnvBlock> {
    pair.current().with_context(|| {
        format!(
            "reading the GRUB environment pair {} + {}",
            paths[0].display(),
            paths[1].display()
        )
    })
}

/// Sets and unsets `changes` in a U-Boot environment held in memory.
pub(crate) fn apply_uboot(env: &mut u_boot_env::Env, changes: &[Assignment]) -> Result<()> {
    for (k, v) in changes {
        match v {
            Some(v) => env
                .set(k, v)
                .with_context(|| format!("setting U-Boot variable {k}"))?,
            None => {
                env.remove(k);
            }
        }
    }
    Ok(())
}

/// The U-Boot environment a configuration file describes, under libubootenv's lock (or
/// `lock_file`) until the device is dropped.
pub fn open_uboot(config: &Path, lock_file: Option<&Path>) -> Result<u_boot_env::Device> {
    let cfg = u_boot_env::Config::load(config, None).with_context(|| {
        format!(
            "reading U-Boot environment configuration {}",
            config.display()
        )
    })?;
    let mut options = u_boot_env::OpenOptions::new();
    if let Some(lock_file) = lock_file {
        options = options.lockfile(lock_file);
    }
    u_boot_env::Device::open(&cfg, &options)
        .with_context(|| format!("opening the U-Boot environment of {}", config.display()))
}

fn grub_vars(block: &EnvBlock) -> Vec<(Vec<u8>, Vec<u8>)> {
    block
        .iter()
        .map(|v| (v.name.to_vec(), v.value.into_owned()))
        .collect()
}

fn open_file(path: &Path, write: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .with_context(|| format!("opening GRUB environment {}", path.display()))
}

fn lock(file: File, exclusive: bool) -> std::io::Result<Flock<File>> {
    let arg = if exclusive {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockShared
    };
    Flock::lock(file, arg).map_err(|(_, errno)| std::io::Error::from(errno))
}

/// A copy that is missing or unreadable is a normal state after a cut during its creation; it
/// is the copy the next update writes if it can be opened, and an error names it otherwise.
fn open_grub_pair(paths: &[PathBuf; 2], write: bool) -> Result<Backend> {
    // abup instances serialise on the directory holding copy 0 rather than on a copy, because
    // either copy may be missing or damaged, and a lock file would be one more write to the
    // boot partition.
    let dir = match paths[0].parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let dir_file =
        File::open(dir).with_context(|| format!("opening directory {}", dir.display()))?;
    let dir_lock = lock(dir_file, write).with_context(|| format!("locking {}", dir.display()))?;
    let mut files = [None, None];
    let copies: [Result<EnvBlock, grub_env::Error>; 2] = std::array::from_fn(|i| {
        let copy = OpenOptions::new()
            .read(true)
            .write(write)
            .open(&paths[i])
            .map_err(grub_env::Error::from)
            .and_then(|f| {
                let block = grub_env::read_block(&f);
                files[i] = Some(f);
                block
            });
        if let Err(e) = &copy {
            log::info!("GRUB environment copy {}: {e}", paths[i].display());
        }
        copy
    });
    let [copy0, copy1] = copies;
    Ok(Backend::GrubPair {
        paths: paths.clone(),
        files,
        pair: EnvPair::new(copy0, copy1, GRUB_WIDTH),
        _lock: dir_lock,
    })
}
