//! Writing a bootloader environment for the first time: at the factory, when a board is
//! converted to abup, or by `abup env ... create`.

pub mod boot_files;
pub mod disk;
pub mod split_root;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use grub_env::{Change, EnvBlock, EnvPair};

use crate::bootenv::{Assignment, Location};

/// Creates the environment at `location` holding exactly `vars`.
///
/// GRUB files must not exist yet. A U-Boot area that holds
/// a valid environment is only replaced with `force`, and then with one write to the copy
/// that is not current, like any update.
pub fn create_env(
    location: &Location,
    size: Option<usize>,
    force: bool,
    vars: &[Assignment],
) -> Result<()> {
    let changes: Vec<Change<'_>> = vars
        .iter()
        .map(|(k, v)| match v {
            Some(v) => Change::set(k.as_str(), v.as_str()),
            None => Change::unset(k.as_str()),
        })
        .collect();
    match location {
        Location::GrubPair(paths) => {
            let size = size.unwrap_or(grub_env::PAIR_BLOCK_SIZE);
            let pair = EnvPair::create(size, crate::bootenv::GRUB_WIDTH)?;
            let mut block = pair.current()?.clone();
            block
                .apply(&changes)
                .context("the variables do not fit in the new blocks")?;
            for path in paths {
                refuse_existing(path)?;
            }
            for path in paths {
                create_file(path, &block)?;
            }
        }
        Location::GrubSingle(path) => {
            let mut block = EnvBlock::new(size.unwrap_or(grub_env::DEFAULT_BLOCK_SIZE))?;
            block
                .apply(&changes)
                .context("the variables do not fit in the new block")?;
            refuse_existing(path)?;
            create_file(path, &block)?;
        }
        Location::UBoot { config, lock_file } => {
            if size.is_some() {
                bail!("--size is for GRUB blocks; a U-Boot environment's size is in its configuration");
            }
            let device = crate::bootenv::open_uboot(config, lock_file.as_deref())?;
            let mut env = u_boot_env::Env::new();
            crate::bootenv::apply_uboot(&mut env, vars)?;
            match device.read() {
                Ok(_) if !force => bail!(
                    "{} already holds a valid U-Boot environment; add --force to replace all \
                     of its variables",
                    config.display()
                ),
                Ok(_) => {
                    device.write(&env)?;
                }
                Err(u_boot_env::Error::NoValidEnvironment { .. }) => device.initialize(&env)?,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

fn refuse_existing(path: &Path) -> Result<()> {
    if path.exists() {
        bail!(
            "{} exists; abup creates environment files only where there are none",
            path.display()
        );
    }
    Ok(())
}

/// Every byte is written (never sparse, as GRUB's save_env requires), under a temporary name
/// first, so a cut never leaves a half-written block under the real name.
fn create_file(path: &Path, block: &EnvBlock) -> Result<()> {
    crate::state::replace(path, block.as_bytes())
}

/// Creates the environment at `location` holding exactly `vars`, replacing what a cut run
/// left half made (GRUB files, which `create_env` refuses to overwrite, are removed first).
pub fn recreate_env(location: &Location, vars: &[Assignment]) -> Result<()> {
    let files: Vec<&PathBuf> = match location {
        Location::GrubPair(p) => p.iter().collect(),
        Location::GrubSingle(p) => vec![p],
        Location::UBoot { .. } => Vec::new(),
    };
    for f in files {
        if let Some(dir) = f.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        match std::fs::remove_file(f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", f.display()))
            }
            _ => {}
        }
    }
    create_env(location, None, true, vars).context("creating the bootloader environment")
}

/// Runs a tool and returns its standard output; its standard error is the error.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
