//! `abup install`: a signed bundle into the slot that is not running, verified, activated.
//!
//! [`install`] is one straight-line function; each step that writes to a disk says what a
//! power cut right after it leaves, and why the device still boots its running slot and a
//! second run of the same command finishes the job.

mod hooks;
mod journal;
mod lock;
mod pipeline;
mod progress;
pub mod record;
mod target;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bootcount::SlotId;

use crate::board::Board;
use crate::booted;
use crate::bootenv::{Environment, Location};
use crate::bundle::{self, Keyring};
use crate::slotstate;
use crate::source::{Retry, Source};

pub use lock::Busy;
pub use progress::Mode as ProgressMode;

use journal::{Journal, Phase};

/// The slot's first block stays zeroed until everything else is written and verified, so a
/// half-written slot never carries a valid superblock (ext4 keeps it at 1 KiB, SquashFS and
/// FAT at 0).
pub const FIRST_BLOCK: u64 = 4096;

/// How often written data is synced and the journal advanced, at most: the most an
/// interrupted install redoes, and few enough syncs not to slow the write down. Small images
/// checkpoint every eighth of their size instead.
pub const CHECKPOINT_BYTES: u64 = 32 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Options {
    pub source: Source,
    /// Overrides the board's keyring directory.
    pub keyring: Option<PathBuf>,
    /// The slot to write, when the board has more than one that is not running.
    pub target: Option<String>,
    pub retry: Retry,
    pub progress: ProgressMode,
}

/// A bundle that is refused before anything is written: bad signature, wrong board, a
/// downgrade, too large. Its own type so the binary can give it its own exit status.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

fn refuse(msg: String) -> anyhow::Error {
    Refused(msg).into()
}

/// What was installed where.
#[derive(Debug, Clone)]
pub struct Installed {
    pub target: SlotId,
    pub version: String,
    pub resumed: bool,
}

/// Installs the bundle from `opts.source`, recording the outcome for `abup status`.
pub fn install(board: &Board, opts: &Options) -> Result<Installed> {
    let state_dir = &board.install.state_dir;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
    let _lock = lock::InstallLock::acquire(
        state_dir,
        &format!("abup install {}", opts.source.describe()),
    )?;
    let result = run(board, opts);
    let last = record::LastInstall {
        version: 0,
        outcome: if result.is_ok() { "success" } else { "failed" }.into(),
        source: opts.source.describe(),
        target: result
            .as_ref()
            .ok()
            .map(|i| board.slots.name(i.target).to_owned()),
        bundle_version: result.as_ref().ok().map(|i| i.version.clone()),
        error: result.as_ref().err().map(|e| format!("{e:#}")),
        finished: record::now(),
    };
    if let Err(e) = record::set_last_install(state_dir, last) {
        log::warn!("cannot record the install's outcome: {e:#}");
    }
    result
}

fn run(board: &Board, opts: &Options) -> Result<Installed> {
    let state_dir = &board.install.state_dir;
    let mut progress = progress::Progress::new(opts.progress);

    // Authenticate before anything else: the manifest is parsed only once its signature
    // checks out, and nothing below trusts a byte the manifest does not vouch for.
    let keyring_dir = opts.keyring.as_deref().unwrap_or(&board.install.keyring);
    let keyring = Keyring::load(keyring_dir)
        .with_context(|| format!("loading the keyring {}", keyring_dir.display()))?;
    let mut reader = opts.source.open(opts.retry)?;
    progress.phase("verify", 0);
    let verified = bundle::read_verified(&mut reader, &keyring)
        .map_err(|e| refuse(format!("bundle {} refused: {e}", opts.source.describe())))?;
    let manifest = &verified.manifest;
    let bundle_id = hex(&verified.manifest_sha256);

    // Checks that need no write: the right board, no downgrade, a known running slot, a
    // target that exists, is big enough and is not in use.
    if manifest.compatible != board.compatible {
        return Err(refuse(format!(
            "bundle is for {:?}, this board is {:?}",
            manifest.compatible, board.compatible
        )));
    }
    let floor = record::security_floor(state_dir)?;
    if manifest.security_version < floor {
        return Err(refuse(format!(
            "bundle {} has security version {}, below {floor}, the lowest this device accepts",
            manifest.version, manifest.security_version
        )));
    }
    let cmdline = std::fs::read_to_string(booted::cmdline_path())
        .context("reading the kernel command line")?;
    let (booted, _) = booted::detect(board, &cmdline)?;
    let target = choose_target(board, booted, opts.target.as_deref())?;
    let target_name = board.slots.name(target).to_owned();
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

    let mut env = Environment::open(&Location::of_board(board), true)?;
    let current = slotstate::read(board, &env)?.state;
    if !current.status(booted).confirmed {
        bail!(
            "the running slot {} is not confirmed; run `abup mark-good` once it works (an \
             update from an unconfirmed slot could lose the only good system)",
            board.slots.name(booted)
        );
    }

    let resume = Journal::resume(state_dir, &bundle_id, &target_name)?;
    let hook_env = hooks::HookEnv {
        target_slot: target_name.clone(),
        target_device: devices[0].path.display().to_string(),
        booted_slot: board.slots.name(booted).to_owned(),
        bundle_version: manifest.version.clone(),
        bundle_compatible: manifest.compatible.clone(),
        bundle_security_version: manifest.security_version,
        state_dir: state_dir.display().to_string(),
        target_mount: None,
    };
    if let Some(hook) = &board.install.pre_install {
        hooks::run("pre-install", hook, &hook_env)?;
    }

    // Step 1, one environment update: the target gets no tries, so no boot can pick it while
    // it is half written. A cut before it: nothing has changed. After it: the target is out
    // of rotation, the running slot boots as before. Idempotent, so a resumed install writes
    // nothing here (unless the cut came between the two writes of a GRUB pair: then this
    // completes them).
    slotstate::transition(board, &mut env, |s| s.begin_install(target, booted))
        .with_context(|| format!("marking slot {target_name} bad before writing it"))?;

    let phase = match resume {
        Some(j) => {
            log::info!(
                "resuming the install of {} into slot {target_name}",
                manifest.version
            );
            j.phase
        }
        None => {
            // Step 2: zero each image's first block, so even an old system in the target is
            // no longer recognisable, then start the journal. A cut in between: the journal
            // is missing, the next run starts over.
            for d in &devices {
                d.write_at(0, &vec![0; FIRST_BLOCK.min(d.size) as usize])?;
                d.sync()?;
            }
            Journal::clear(state_dir, manifest.images.len())?;
            let phase = Phase::Writing {
                image: 0,
                next_chunk: 0,
            };
            Journal::new(bundle_id.clone(), target_name.clone(), phase).save(state_dir)?;
            phase
        }
    };
    let resumed = phase
        != (Phase::Writing {
            image: 0,
            next_chunk: 0,
        });

    if let Phase::Writing { image, next_chunk } = phase {
        // Step 3: the payload, chunk by chunk, each checked against its hash before it is
        // written; synced and journalled every CHECKPOINT_BYTES. A cut: the journal names the
        // last synced chunk; the next run continues there (file: seek; URL: Range request).
        // Step 4, alongside: every synced region is read back from the disk into the image's
        // SHA-256 (on a resumed run, what earlier runs wrote too), the held-back first block
        // standing in for the zeros on disk; at the end it must match the manifest. A
        // mismatch starts the next run from scratch.
        reader
            .skip_to(verified.payload_offset + manifest.chunk_offset(image, next_chunk))
            .context("moving to where the interrupted install stopped")?;
        let checkpoint = |image, next_chunk| {
            Journal::new(
                bundle_id.clone(),
                target_name.clone(),
                Phase::Writing { image, next_chunk },
            )
            .save(state_dir)
        };
        if let Err(e) = pipeline::write_payload(
            &verified,
            &devices,
            reader,
            (image, next_chunk),
            state_dir,
            checkpoint,
            &mut progress,
        ) {
            if e.is::<pipeline::Mismatch>() {
                Journal::clear(state_dir, manifest.images.len())?;
            }
            return Err(e);
        }

        // Step 5: the first blocks, synced and read back; then the journal says Verified.
        for (i, d) in devices.iter().enumerate() {
            let held = std::fs::read(journal::held_block_path(state_dir, i))
                .context("reading the held-back first block")?;
            d.write_at(0, &held)?;
            d.sync()?;
            d.drop_cache();
            let mut back = vec![0; held.len()];
            d.read_at(0, &mut back)?;
            if back != held {
                bail!(
                    "the first block of {} did not read back as written",
                    d.path.display()
                );
            }
        }
        Journal::new(bundle_id.clone(), target_name.clone(), Phase::Verified).save(state_dir)?;
    }

    // Step 6: remember what the slot now holds (before activation, so status never shows an
    // active slot with an unknown bundle), then the board's post-install hook.
    record::set_slot(
        state_dir,
        &target_name,
        Some(record::SlotBundle {
            version: manifest.version.clone(),
            compatible: manifest.compatible.clone(),
            security_version: manifest.security_version,
            bundle: bundle_id.clone(),
            installed: record::now(),
        }),
    )?;
    if let Some(hook) = &board.install.post_install {
        progress.phase("hook", 0);
        let mounted = if board.install.post_install_mount {
            Some(hooks::Mounted::new(
                &devices[0].path,
                &state_dir.join(format!("mnt-{target_name}")),
            )?)
        } else {
            None
        };
        let env = hooks::HookEnv {
            target_mount: mounted.as_ref().map(|m| m.dir().display().to_string()),
            ..hook_env
        };
        hooks::run("post-install", hook, &env)?;
    }

    // Step 7, one environment update: the target first in the boot order with its tries. A
    // cut before it: the journal says Verified, the next run only activates. After it: the
    // next boot tries the new slot, and falls back if it never confirms.
    progress.phase("activate", 0);
    slotstate::transition(board, &mut env, |s| {
        s.activate(target);
        Ok(())
    })
    .with_context(|| format!("activating slot {target_name}"))?;
    Journal::clear(state_dir, manifest.images.len())?;
    progress.finish();
    Ok(Installed {
        target,
        version: manifest.version.clone(),
        resumed,
    })
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

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The record of the slot `name`, for status.
pub fn slot_bundle(board: &Board, name: &str) -> Option<record::SlotBundle> {
    record::slots(&board.install.state_dir)
        .ok()
        .and_then(|s| s.slots.get(name).cloned())
}

/// After `mark-good`: a confirmed slot's security version becomes the floor.
pub fn confirmed(board: &Board, slot: SlotId) -> Result<()> {
    if let Some(b) = slot_bundle(board, board.slots.name(slot)) {
        record::raise_security_floor(&board.install.state_dir, b.security_version)?;
    }
    Ok(())
}
