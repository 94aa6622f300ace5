//! The install's first phase: everything that can be checked before anything is written.
//! The bundle is authenticated first (its manifest is parsed only once its signature checks
//! out), then held against the board, the security floor, the running slot and the target's
//! devices. Nothing here writes, and the bootloader environment is only read.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bootcount::SlotId;

use super::hooks::HookEnv;
use super::progress::Progress;
use super::target::{self, Device};
use super::{hex, refuse, Options};
use crate::board::Board;
use crate::booted;
use crate::bootenv::{Environment, Location};
use crate::bundle::{self, Keyring};
use crate::slotstate;
use crate::source::BundleReader;
use crate::state::floor::Floor;
use crate::state::StateDir;

/// What the later phases need, all of it checked.
#[derive(Debug)]
pub struct Plan {
    pub bundle: bundle::Verified,
    /// SHA-256 of the signed manifest, hex: names the bundle in the journal.
    pub bundle_id: String,
    pub booted: SlotId,
    pub target: SlotId,
    pub target_name: String,
    /// One per image, in manifest order, opened for writing (exclusively for block devices).
    pub devices: Vec<Device>,
    pub hook_env: HookEnv,
    /// The device's security floor when the install was planned.
    pub floor: u64,
}

/// Checks the install `opts` describes and returns its plan and the bundle stream, positioned
/// after the signed front.
pub fn plan(
    board: &Board,
    state: &StateDir,
    opts: &Options,
    progress: &mut Progress,
) -> Result<(Plan, BundleReader)> {
    let keyring_dir = opts.keyring.as_deref().unwrap_or(&board.install.keyring);
    let keyring = Keyring::load(keyring_dir)
        .with_context(|| format!("loading the keyring {}", keyring_dir.display()))?;
    let mut reader = opts.source.open(opts.retry)?;
    progress.phase("verify", 0);
    let source = crate::state::redact(&opts.source.describe());
    let verified = bundle::read_verified(&mut reader, &keyring)
        .map_err(|e| refuse(format!("bundle {source} refused: {e}")))?;
    let manifest = &verified.manifest;
    bundle::check_installable(manifest)
        .map_err(|e| refuse(format!("bundle {source} refused: {e}")))?;

    if manifest.compatible != board.compatible {
        return Err(refuse(format!(
            "bundle is for {:?}, this board is {:?}",
            manifest.compatible, board.compatible
        )));
    }
    // The environment is read (shared lock) for the floor and the running slot's state, and
    // released before anything is written.
    let env = Environment::open(&Location::of_board(board), false)?;
    let floor = Floor::read(Some(state), &env).value(state.floor_expected()?)?;
    if manifest.security_version < floor {
        return Err(refuse(format!(
            "bundle {} has security version {}, below {floor}, the lowest this device accepts",
            manifest.version, manifest.security_version
        )));
    }
    let (booted, _) = booted::detect(board, &booted::read_cmdline()?)?;
    let target = choose_target(board, booted, opts.target.as_deref())?;
    let target_name = board.slots.name(target).to_owned();
    let current = slotstate::read(board, &env)?.state;
    drop(env);
    if !current.status(booted).confirmed {
        bail!(
            "the running slot {} is not confirmed; run `abup mark-good` once it works (an \
             update from an unconfirmed slot could lose the only good system)",
            board.slots.name(booted)
        );
    }

    let busy: Vec<&Path> = board.classes[booted.0]
        .values()
        .map(PathBuf::as_path)
        .chain(std::iter::once(board.device(booted)))
        .collect();
    let mut devices = Vec::new();
    for image in &manifest.images {
        let path = board
            .class_device(target, &image.slot_class)
            .ok_or_else(|| {
                refuse(format!(
                    "bundle has a {} image, but this board's slots have no {} device",
                    image.slot_class, image.slot_class
                ))
            })?;
        target::check_not_in_use(path, &busy)?;
        let device = target::open(path)?;
        if image.size > device.size {
            return Err(refuse(format!(
                "the {} image is {} bytes, slot {target_name} ({}) holds only {}",
                image.slot_class,
                image.size,
                path.display(),
                device.size
            )));
        }
        devices.push(device);
    }

    let hook_env = HookEnv {
        target_slot: target_name.clone(),
        target_device: devices[0].path.display().to_string(),
        booted_slot: board.slots.name(booted).to_owned(),
        bundle_version: manifest.version.clone(),
        bundle_compatible: manifest.compatible.clone(),
        bundle_security_version: manifest.security_version,
        state_dir: state.path().display().to_string(),
        target_mount: None,
    };
    let bundle_id = hex(&verified.manifest_sha256);
    Ok((
        Plan {
            bundle: verified,
            bundle_id,
            booted,
            target,
            target_name,
            devices,
            hook_env,
            floor,
        },
        reader,
    ))
}

/// The slot to write: the one named, or the only one not running.
fn choose_target(board: &Board, booted: SlotId, named: Option<&str>) -> Result<SlotId> {
    if let Some(name) = named {
        let slot = board
            .slots
            .find(name)
            .with_context(|| format!("no slot named {name:?}"))?;
        if slot == booted {
            return Err(refuse(format!(
                "slot {name} is the running slot; an update goes to another slot"
            )));
        }
        return Ok(slot);
    }
    let others: Vec<SlotId> = board.slots.ids().filter(|&s| s != booted).collect();
    match others.as_slice() {
        [one] => Ok(*one),
        _ => bail!(
            "this board has {} slots; name the one to write with --slot",
            board.slots.len()
        ),
    }
}
