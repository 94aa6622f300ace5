//! `abup install`: a signed bundle into the slot that is not running, verified, activated.
//!
//! The install runs as named phases, one function each, in the order below; the journal in
//! the state directory names the phase an interrupted install continues with, and each phase
//! says what a power cut inside it leaves and why the device still boots its running slot.
//!
//! - [`plan`]: every check that needs no write (signature, board, security floor, running
//!   slot, target devices). Nothing written.
//! - [`invalidate`]: the target out of rotation, one environment update.
//! - [`write`]: the payload, hash-checked chunk by chunk, synced and journalled at
//!   checkpoints, read back from the disk as it goes; the first block last.
//! - [`activate`]: the slot record, the post-install hook, then the target first in the boot
//!   order, one environment update.
//!
//! The bootloader environment is locked only inside `invalidate` and `activate` (and read
//! under a shared lock in `plan`), never across the payload or a hook: `abup status`,
//! `fw_printenv` or a hook reading the environment answer at once during an install.

mod hooks;
mod pipeline;
mod plan;
mod progress;
mod sources;

use anyhow::{Context, Result};
use bootcount::SlotId;

use crate::board::Board;
use crate::bootenv::{Environment, Location};
use crate::bundle;
use crate::slotstate;
use crate::source::{BundleReader, Network, Source};
use crate::state::history::{Entry, Event};
use crate::state::journal::Phase;
use crate::state::records::{LastInstall, SlotBundle};
use crate::state::{self, InstallLock, StateDir};

pub use plan::{Plan, Report};
pub use progress::{Mode as ProgressMode, Outcome, Phase as ProgressPhase, Progress};
pub use sources::OverBudget;
pub use state::Busy;

/// The slot's first block stays zeroed until everything else is written and verified, so a
/// half-written slot never carries a valid superblock (ext4 keeps it at 1 KiB, SquashFS and
/// FAT at 0).
pub const FIRST_BLOCK: u64 = 4096;

/// How often written data is synced and the journal advanced, at most: the most an
/// interrupted install redoes, and few enough syncs not to slow the write down (each stops
/// the writes for a flush of the device and two of the state directory; on bench/install's
/// 1 GiB image 64 MiB took about 5% less time than 32). Small images checkpoint every eighth
/// of their size instead, so the read-back, which reads only synced data, starts early.
pub const CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Options {
    pub source: Source,
    /// Overrides the board's keyring directory.
    pub keyring: Option<std::path::PathBuf>,
    /// The slot to write, when the board has more than one that is not running.
    pub target: Option<String>,
    /// Trust, credentials, retries and the deadline for bundles at URLs.
    pub network: Network,
    pub progress: ProgressMode,
    /// The full bundle of the same release, for the chunks a delta cannot rebuild.
    pub fallback: Option<Source>,
    /// The most bytes the fallback may supply.
    pub max_download: Option<u64>,
    /// Only plan: every base range is checked, nothing is written.
    pub dry_run: bool,
}

/// A bundle that is refused before anything is written: bad signature, wrong board, a
/// downgrade, too large. Its own type so the binary can give it its own exit status.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// A pre- or post-install hook that failed: exit status 7.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HookFailed(pub String);

/// The running slot is not confirmed, so installing over the other slot could lose the only
/// good system: exit status 8, so an agent knows to wait for (or run) `abup mark-good`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotConfirmed(pub String);

fn refuse(msg: String) -> anyhow::Error {
    Refused(msg).into()
}

/// A bundle that could not be read and checked, as `what` says: refused (exit status 4) when
/// the fault is the bundle's own, else the error as it is, so that a source that failed keeps
/// its own status (6 for one that may pass).
pub fn refuse_bundle(e: bundle::Error, what: String) -> anyhow::Error {
    if e.is_bundle_fault() {
        refuse(format!("{what}: {e}"))
    } else {
        anyhow::Error::from(e).context(what)
    }
}

/// What was installed where.
#[derive(Debug, Clone)]
pub struct Installed {
    pub target: SlotId,
    pub version: String,
    pub resumed: bool,
}

impl Installed {
    /// The line that says so.
    pub fn summary(&self, board: &Board) -> String {
        format!(
            "installed {} into slot {}{}; it boots next, with {} tries to confirm itself with \
             `abup mark-good`",
            self.version,
            board.slots.name(self.target),
            if self.resumed { " (resumed)" } else { "" },
            board.slots.tries()
        )
    }
}

/// Installs the bundle from `opts.source`, one install at a time, recording the outcome for
/// `abup status` (`last_install` and the history) and reporting progress to `progress`.
pub fn install(board: &Board, opts: &Options, progress: &mut Progress) -> Result<Installed> {
    let state = StateDir::open(board)?;
    let source = state::redact(&opts.source.describe());
    let mut lock = state.lock_install(&format!("abup install {source}"))?;
    progress.report_to(&state, &source);
    let result = run(board, &state, &mut lock, opts, progress);
    let last = LastInstall {
        version: 0,
        outcome: if result.is_ok() { "success" } else { "failed" }.into(),
        source: source.clone(),
        target: result
            .as_ref()
            .ok()
            .map(|i| board.slots.name(i.target).to_owned()),
        bundle_version: result.as_ref().ok().map(|i| i.version.clone()),
        error: result.as_ref().err().map(crate::exit::message),
        finished: state::now(),
    };
    if let Err(e) = state.set_last_install(last) {
        log::warn!("cannot record the install's outcome: {e:#}");
    }
    let mut entry = match &result {
        Ok(done) => Entry::new(
            Event::Install,
            true,
            Some(crate::exit::OK),
            &done.summary(board),
        ),
        Err(e) => {
            let code = crate::exit::status(e);
            // Refused before anything was written: the device is as it was.
            let refused = matches!(code, crate::exit::REFUSED | crate::exit::NOT_CONFIRMED)
                && progress.current() < ProgressPhase::Invalidate;
            let event = if refused {
                Event::Refused
            } else {
                Event::Install
            };
            Entry::new(event, false, Some(code), &crate::exit::message(e))
        }
    };
    entry.slot = progress.target_name().map(str::to_owned);
    entry.bundle_version = progress.bundle_version().map(str::to_owned);
    entry.source = Some(source);
    state.record_or_warn(entry);
    // What an interrupted install left is shown from the journal; nothing else is left.
    if !state.interrupted().is_ok_and(|j| j.is_some()) {
        state.clear_activity();
    }
    result
}

/// `abup install --abort`: drops an interrupted install's journal and held-back blocks, so
/// the next install of any bundle starts over. The target stays out of rotation; nothing
/// else changes. Refused (busy) while an install runs. Returns the slot the dropped journal
/// was writing (`Some(None)` for a journal abup cannot read), `None` if there was none.
pub fn abort(board: &Board) -> Result<Option<Option<String>>> {
    let Some(state) = StateDir::existing(board)? else {
        return Ok(None);
    };
    let _lock = state.lock_install("abup install --abort")?;
    let target = state
        .journal_target()
        .map_err(|e| log::warn!("{e:#}"))
        .ok()
        .flatten();
    let dropped = state.drop_journal()?;
    state.clear_activity();
    Ok(dropped.then_some(target))
}

/// Everything an install checks before writing, and what it would read from where. Nothing
/// is written to a slot, the environment or the state directory's records.
pub fn dry_run(board: &Board, opts: &Options, progress: &mut Progress) -> Result<Report> {
    let state = StateDir::open(board)?;
    let (plan, _) = plan::plan(board, &state, opts, progress)?;
    Ok(plan.report)
}

fn run(
    board: &Board,
    state: &StateDir,
    lock: &mut InstallLock,
    opts: &Options,
    progress: &mut Progress,
) -> Result<Installed> {
    let (plan, reader) = plan::plan(board, state, opts, progress)?;
    lock.set_target(&plan.target_name)?;
    if let Some(hook) = &board.install.pre_install {
        progress.phase(ProgressPhase::PreInstall);
        hooks::run("pre-install", hook, &plan.hook_env)?;
    }
    progress.phase(ProgressPhase::Invalidate);
    invalidate(board, &plan)?;
    let phase = write_or_resume(state, &plan, reader, progress)?;
    activate(board, state, &plan, progress)?;
    Ok(Installed {
        target: plan.target,
        version: plan.bundle.manifest.version.clone(),
        resumed: phase != Phase::START,
    })
}

/// The payload into the target, or, if the journal says an earlier run wrote this bundle
/// there already, the rest of it; then the slot read back whole. Returns the phase the run
/// started in.
fn write_or_resume(
    state: &StateDir,
    plan: &Plan,
    reader: BundleReader,
    progress: &mut Progress,
) -> Result<Phase> {
    let phase = match state.resumable_journal(&plan.bundle_id, &plan.target_name) {
        Some(j) => {
            log::info!(
                "resuming the install of {} into slot {}",
                plan.bundle.manifest.version,
                plan.target_name
            );
            j.phase
        }
        None => begin(state, plan)?,
    };
    match phase {
        Phase::Write { image, next_chunk } => {
            write(state, plan, reader, (image, next_chunk), progress)?
        }
        // A journal is never trusted further than the bytes it describes: the slot is read
        // back whole before it is recorded or activated.
        Phase::Activate => pipeline::verify_written(&plan.bundle.manifest, &plan.devices, progress)
            .or_else(|e| forget_on_mismatch(state, plan, e))?,
    }
    Ok(phase)
}

/// Slot `target` of a disk that runs nothing yet (factory provisioning): the bundle written,
/// read back and recorded like an install's, resumable the same way, but nothing to
/// invalidate or activate: provisioning creates the environment afterwards.
pub fn provision_slot(
    board: &Board,
    state: &StateDir,
    opts: &Options,
    target: SlotId,
) -> Result<Installed> {
    let mut progress = Progress::new(opts.progress);
    let (plan, reader) = plan::plan_provision(board, target, opts, &mut progress)?;
    let phase = write_or_resume(state, &plan, reader, &mut progress)?;
    // A recorded bundle makes the floor expected (`StateDir::floor_expected`), so it goes in
    // first: the lowest, which the first `mark-good` raises to the slot's security version.
    state.ensure_floor(plan.floor)?;
    record(state, &plan)?;
    state.clear_journal(plan.bundle.manifest.images.len())?;
    progress.finish();
    Ok(Installed {
        target,
        version: plan.bundle.manifest.version.clone(),
        resumed: phase != Phase::START,
    })
}

/// One environment update: the target gets no tries, so no boot can pick it while it is half
/// written, and if it was the last confirmed slot, the running slot takes that role. A cut
/// before it: nothing has changed. After it: the target is out of rotation, the running slot
/// boots as before. Idempotent, so a resumed install writes nothing here (unless the cut came
/// between the two writes of a GRUB pair: then this completes them).
fn invalidate(board: &Board, plan: &Plan) -> Result<()> {
    let mut env = Environment::open(&Location::of_board(board), true)?;
    slotstate::transition(board, &mut env, |s| {
        s.begin_install(plan.target, plan.booted)
    })
    .with_context(|| format!("marking slot {} bad before writing it", plan.target_name))?;
    Ok(())
}

/// A fresh start: the target's record forgotten, each image's first block zeroed, so even an
/// old system in the target is no longer recognisable, then the journal. A cut in between: no
/// journal, the next run starts over.
fn begin(state: &StateDir, plan: &Plan) -> Result<Phase> {
    state.forget_slot(&plan.target_name)?;
    for d in &plan.devices {
        d.write_at(0, &vec![0; FIRST_BLOCK.min(d.size) as usize])?;
        d.sync()?;
    }
    let images = plan.bundle.manifest.images.len();
    state.clear_journal(images)?;
    state.save_journal(&plan.bundle_id, &plan.target_name, Phase::START)?;
    Ok(Phase::START)
}

/// The payload, chunk by chunk from `start`, each chunk checked against its hash before it is
/// written; synced and journalled every `CHECKPOINT_BYTES`. A cut: the journal names the last
/// synced chunk; the next run continues there (file: seek; URL: Range request; a server that
/// ignores Range sends the bundle from its start: its front must be the one planned with, and
/// the chunks before `start` are read and checked against their hashes, not written). Alongside,
/// every synced region is read back from the disk into the image's SHA-256 (on a resumed run,
/// what earlier runs wrote too). Then the first blocks, exactly the bytes that were hashed,
/// synced and read back, and the journal says the slot is verified.
fn write(
    state: &StateDir,
    plan: &Plan,
    mut reader: BundleReader,
    start: (usize, usize),
    progress: &mut Progress,
) -> Result<()> {
    let manifest = &plan.bundle.manifest;
    let resume_at = plan.bundle.payload_offset + manifest.chunk_offset(start.0, start.1);
    let at = reader
        .skip_to(resume_at)
        .context("moving to where the interrupted install stopped")?;
    let read_from = if at == resume_at {
        start
    } else {
        let front = bundle::read_unverified(&mut reader)
            .context("reading the bundle again from its start")?;
        if front.manifest_sha256 != plan.bundle.manifest_sha256 {
            anyhow::bail!(
                "the bundle changed on the server since this install began (another manifest); \
                 start the install again"
            );
        }
        (0, 0)
    };
    let checkpoint = |image, next_chunk| {
        state.save_journal(
            &plan.bundle_id,
            &plan.target_name,
            Phase::Write { image, next_chunk },
        )
    };
    let held = pipeline::write_payload(
        &plan.bundle,
        &plan.sources,
        &plan.devices,
        reader,
        (read_from, start),
        state,
        checkpoint,
        progress,
    )
    .or_else(|e| forget_on_mismatch(state, plan, e))
    .map_err(|e| plan::explain_base_mismatch(plan, e))?;
    for (d, held) in plan.devices.iter().zip(&held) {
        d.write_at(0, held)?;
        d.sync()?;
        d.drop_cache();
        let mut back = vec![0; held.len()];
        d.read_at(0, &mut back)?;
        if &back != held {
            anyhow::bail!(
                "the first block of {} did not read back as written",
                d.path.display()
            );
        }
    }
    state.save_journal(&plan.bundle_id, &plan.target_name, Phase::Activate)
}

/// A slot that does not read back as the bundle says is written again from the start by the
/// next run: its journal is dropped.
fn forget_on_mismatch<T>(state: &StateDir, plan: &Plan, e: anyhow::Error) -> Result<T> {
    if e.is::<pipeline::Mismatch>() {
        state.clear_journal(plan.bundle.manifest.images.len())?;
    }
    Err(e)
}

/// What the slot now holds is recorded (before activation, so status never shows an active
/// slot with an unknown bundle), the post-install hook runs, then one environment update puts
/// the target first in the boot order with its tries. A cut before that update: the journal
/// says `activate`, the next run reads the slot back and activates it. After it: the next
/// boot tries the new slot, and falls back if it never confirms.
fn activate(board: &Board, state: &StateDir, plan: &Plan, progress: &mut Progress) -> Result<()> {
    let manifest = &plan.bundle.manifest;
    state.ensure_floor(plan.floor)?;
    record(state, plan)?;
    if let Some(hook) = &board.install.post_install {
        progress.phase(ProgressPhase::PostInstall);
        let mounted = if board.install.post_install_mount {
            let dir = state.subdir(&format!("mnt-{}", plan.target_name))?;
            Some(hooks::Mounted::new(&plan.devices[0].path, &dir)?)
        } else {
            None
        };
        let env = hooks::HookEnv {
            target_mount: mounted.as_ref().map(|m| m.dir().display().to_string()),
            ..plan.hook_env.clone()
        };
        hooks::run("post-install", hook, &env)?;
    }
    progress.phase(ProgressPhase::Activate);
    let mut env = Environment::open(&Location::of_board(board), true)?;
    slotstate::transition(board, &mut env, |s| {
        s.activate(plan.target);
        Ok(())
    })
    .with_context(|| format!("activating slot {}", plan.target_name))?;
    drop(env);
    state.clear_journal(manifest.images.len())?;
    Ok(())
}

/// What the slot now holds, for `abup status` and the next install.
fn record(state: &StateDir, plan: &Plan) -> Result<()> {
    let manifest = &plan.bundle.manifest;
    state.set_slot(
        &plan.target_name,
        Some(SlotBundle {
            version: manifest.version.clone(),
            compatible: manifest.compatible.clone(),
            security_version: manifest.security_version,
            bundle: plan.bundle_id.clone(),
            installed: state::now(),
        }),
    )
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
