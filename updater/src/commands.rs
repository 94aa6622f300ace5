//! What each subcommand does, on top of the board configuration, the environment backends and
//! the slot state machine.

use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use bootcount::SlotId;

use crate::board::Board;
use crate::booted;
use crate::bootenv::{Assignment, Environment, Location};
use crate::cli::{Cli, Command, EnvArgs, EnvFiles, EnvOp, GenerateOp, HttpArgs, InstallArgs};
use crate::slotstate;
use crate::source::{Network, Source};
use crate::state::floor::{self, Floor};
use crate::state::history::{Entry, Event};
use crate::state::StateDir;

/// What `main` turns into an exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// `env get` of a variable that is not set.
    NotSet,
}

pub fn run(cli: Cli) -> Result<Outcome> {
    match cli.command {
        Command::Status { json, history } => {
            crate::status_cmd::status(&load_board(&cli.config)?, json, history)
        }
        Command::MarkGood(s) => mark(&load_board(&cli.config)?, Mark::Good, &s.slot),
        Command::MarkBad(s) => mark(&load_board(&cli.config)?, Mark::Bad, &s.slot),
        Command::MarkActive(s) => mark(&load_board(&cli.config)?, Mark::Active, &s.slot),
        Command::Env(args) => env(&cli.config, args),
        Command::Install(args) => install(&cli.config, args),
        Command::Provision(args) => provision(&cli.config, args),
        Command::SplitRoot(args) => split_root(&cli.config, args),
        Command::Keygen { secret, public } => crate::bundle_cmd::keygen(&secret, &public),
        Command::Bundle(op) => crate::bundle_cmd::run(op, &cli.config),
        Command::Generate(op) => generate(op),
        Command::SecurityFloor { set } => security_floor(&load_board(&cli.config)?, set),
    }
}

fn load_board(path: &Path) -> Result<Board> {
    Ok(Board::load(path)?)
}

/// How bundles at URLs are fetched: the board's `[http]` (if there is a board) with the
/// command line's flags laid over it; the deadline of `--timeout` starts now.
pub fn network(board: Option<&Board>, args: &HttpArgs) -> Result<Network> {
    let base = board.map(|b| b.http.clone()).unwrap_or_default();
    Ok(Network::new(base.overridden_by(args.config()?)))
}

fn cmdline() -> Result<String> {
    Ok(booted::read_cmdline()?)
}

/// Which slot a command names: `booted`, `other`, or a slot by name.
fn resolve_slot(board: &Board, arg: &str) -> Result<SlotId> {
    match arg {
        "booted" => Ok(booted::detect(board, &cmdline()?)?.0),
        "other" => {
            let (booted, _) = booted::detect(board, &cmdline()?)?;
            let others: Vec<SlotId> = board.slots.ids().filter(|&s| s != booted).collect();
            match others.as_slice() {
                [one] => Ok(*one),
                _ => bail!(
                    "\"other\" is ambiguous on a board with {} slots; name the slot ({})",
                    board.slots.len(),
                    board.slots.names().join(", ")
                ),
            }
        }
        name => board.slots.find(name).ok_or_else(|| {
            anyhow!(
                "no slot named {name:?}; this board has {} (or say booted or other)",
                board.slots.names().join(", ")
            )
        }),
    }
}

#[derive(Debug, Clone, Copy)]
enum Mark {
    Good,
    Bad,
    Active,
}

/// `mark-good`, `mark-bad`, `mark-active`; a `mark-good` or `mark-active` that fails is kept
/// in the history as a refusal.
fn mark(board: &Board, how: Mark, slot_arg: &str) -> Result<Outcome> {
    let result = mark_slot(board, how, slot_arg);
    if let (Mark::Good | Mark::Active, Err(e)) = (how, &result) {
        if let Ok(Some(state)) = StateDir::existing(board) {
            let command = match how {
                Mark::Good => "mark-good",
                Mark::Bad | Mark::Active => "mark-active",
            };
            let message = format!("{command} {slot_arg}: {}", crate::exit::message(e));
            let mut entry = Entry::new(
                Event::Refused,
                false,
                Some(crate::exit::status(e)),
                &message,
            );
            entry.slot = resolve_slot(board, slot_arg)
                .ok()
                .map(|s| board.slots.name(s).to_owned());
            state.record_or_warn(entry);
        }
    }
    result
}

/// What `mark-good` keeps in the history: a slot confirmed for the first time (not every
/// boot's confirmation), and a fallback from the last installed slot, once.
fn record_confirmation(
    board: &Board,
    state: &StateDir,
    new: &bootcount::State,
    slot: SlotId,
    was_confirmed: bool,
) {
    let records = state.slots().unwrap_or_default();
    let version = |s: SlotId| records.get(board.slots.name(s)).map(|r| r.version.clone());
    if !was_confirmed {
        let mut entry = Entry::new(
            Event::Confirmed,
            true,
            Some(crate::exit::OK),
            &format!("slot {} confirmed", board.slots.name(slot)),
        );
        entry.slot = Some(board.slots.name(slot).to_owned());
        entry.bundle_version = version(slot);
        state.record_or_warn(entry);
    }
    let last = state.last_install().ok().flatten();
    let booted = booted::detect(board, &cmdline().unwrap_or_default())
        .ok()
        .map(|(s, _)| s);
    let Some(failed) = crate::status_cmd::rolled_back(board, new, last.as_ref(), booted) else {
        return;
    };
    if state.fallback_recorded().unwrap_or(true) {
        return;
    }
    let mut entry = Entry::new(
        Event::Fallback,
        false,
        None,
        &format!(
            "slot {} ({}) ran out of tries without being confirmed; slot {} runs instead",
            board.slots.name(failed),
            version(failed).unwrap_or_else(|| "unknown version".into()),
            board.slots.name(booted.unwrap_or(slot))
        ),
    );
    entry.slot = Some(board.slots.name(failed).to_owned());
    entry.bundle_version = version(failed);
    state.record_or_warn(entry);
}

fn mark_slot(board: &Board, how: Mark, slot_arg: &str) -> Result<Outcome> {
    let slot = resolve_slot(board, slot_arg)?;
    let name = board.slots.name(slot);
    let verb = match how {
        Mark::Good => "marked good",
        Mark::Bad => "marked bad",
        Mark::Active => "marked active",
    };
    // mark-good writes the security floor to the state directory, so it creates it.
    let state = match how {
        Mark::Good => Some(StateDir::open(board)?),
        Mark::Bad | Mark::Active => StateDir::existing(board)?,
    };
    let mut env = Environment::open(&Location::of_board(board), true)?;
    let mut floor = None;
    if !matches!(how, Mark::Bad) {
        if let Some(state) = &state {
            refuse_install_target(state, name)?;
            if let Mark::Good = how {
                refuse_unknown_slot(board, state, slot, name)?;
            }
        }
        floor = Some(FloorChange::plan(board, state.as_ref(), &env, slot, how)?);
    }
    let extra = floor
        .as_ref()
        .map_or(Vec::new(), FloorChange::env_assignment);
    let mut was_confirmed = false;
    let (new, written) = slotstate::transition_with(board, &mut env, &extra, |state| {
        was_confirmed = state.status(slot).confirmed;
        match how {
            Mark::Good => state.mark_good(slot),
            Mark::Bad => state.mark_bad(slot),
            Mark::Active => state.activate(slot),
        }
        for &s in floor.iter().flat_map(|f| &f.revoked) {
            state.mark_bad(s);
        }
        Ok(())
    })
    .with_context(|| format!("slot {name} not {verb}"))?;
    drop(env);
    if let (Some(f), Some(state)) = (&floor, &state) {
        f.write_state(state)?;
    }
    if let (Mark::Good, Some(state)) = (how, &state) {
        record_confirmation(board, state, &new, slot, was_confirmed);
    }
    if !written {
        println!("slot {name} {verb} (no change)");
        return Ok(Outcome::Done);
    }
    println!(
        "slot {name} {verb}: {} tries left, next boot: {}",
        new.status(slot).tries_left,
        board.slots.name(new.next_boot().slot)
    );
    for &s in floor.iter().flat_map(|f| &f.revoked) {
        println!(
            "slot {} is below the security floor {} and no longer boots",
            board.slots.name(s),
            floor.as_ref().map_or(0, |f| f.to)
        );
    }
    Ok(Outcome::Done)
}

/// A slot an install is writing (running, or interrupted and not finished) is not marked good
/// or active: it may be half written.
fn refuse_install_target(state: &StateDir, name: &str) -> Result<()> {
    // A journal abup cannot read names no target; the next install discards it.
    let writing = state.running_install_target().or_else(|| {
        state
            .journal_target()
            .map_err(|e| log::warn!("{e:#}"))
            .ok()
            .flatten()
    });
    if writing.as_deref() == Some(name) {
        bail!(
            "slot {name} is being written by an install that has not finished; run the install \
             again to finish it"
        );
    }
    Ok(())
}

/// A slot that is not running and holds no bundle abup recorded may hold anything, or nothing
/// (slot B of a new device; a slot whose install failed): confirmed, it would become the
/// fallback of last resort. The booted slot is always confirmed (a factory image, a system
/// from before abup: that it runs is what confirming asserts), so the boot-success service
/// works from the first boot.
fn refuse_unknown_slot(board: &Board, state: &StateDir, slot: SlotId, name: &str) -> Result<()> {
    if state.slots()?.contains_key(name) {
        return Ok(());
    }
    let booted = cmdline().and_then(|c| Ok(booted::detect(board, &c)?.0));
    if booted.as_ref().ok() == Some(&slot) {
        return Ok(());
    }
    bail!(
        "slot {name} holds no bundle abup installed{}, so abup will not make it the fallback of \
         last resort; install a bundle into it, or boot it and confirm it there with \
         `abup mark-good`",
        match booted {
            Ok(_) => " and is not the booted slot".to_owned(),
            Err(e) => format!(" and the booted slot is unknown ({e:#})"),
        }
    )
}

/// What marking a slot good or active does to the security floor.
#[derive(Debug)]
struct FloorChange {
    copies: Floor,
    /// The floor after the change.
    to: u64,
    /// Slots whose bundles are below the new floor: they lose their tries in the same update.
    revoked: Vec<SlotId>,
}

impl FloorChange {
    /// Refuses a slot whose bundle is below the floor; for `mark-good`, raises the floor to
    /// the slot's bundle's security version.
    fn plan(
        board: &Board,
        state: Option<&StateDir>,
        env: &Environment,
        slot: SlotId,
        how: Mark,
    ) -> Result<FloorChange> {
        let copies = Floor::read(state, env);
        let records = match state {
            Some(s) => s.slots()?,
            None => Default::default(),
        };
        let expected = match state {
            Some(s) => s.floor_expected()?,
            None => false,
        };
        let floor = copies.value(expected)?;
        let name = board.slots.name(slot);
        // A slot abup never installed (a factory image) has no known version to hold
        // against the floor.
        let version = records.get(name).map(|r| r.security_version);
        if let Some(version) = version.filter(|&v| v < floor) {
            bail!(
                "slot {name} holds a bundle with security version {version}, below this \
                 device's floor {floor}; install a newer bundle into it"
            );
        }
        let to = match how {
            Mark::Good => floor.max(version.unwrap_or(0)),
            Mark::Bad | Mark::Active => floor,
        };
        let revoked = board
            .slots
            .ids()
            .filter(|&s| s != slot)
            .filter(|&s| {
                records
                    .get(board.slots.name(s))
                    .is_some_and(|r| r.security_version < to)
            })
            .collect();
        Ok(FloorChange {
            copies,
            to,
            revoked,
        })
    }

    fn env_assignment(&self) -> Vec<Assignment> {
        if self.copies.env_needs(self.to) {
            vec![(floor::ENV_VAR.to_owned(), Some(self.to.to_string()))]
        } else {
            Vec::new()
        }
    }

    fn write_state(&self, state: &StateDir) -> Result<()> {
        if self.copies.state_needs(self.to) {
            state.write_floor(self.to)?;
        }
        Ok(())
    }
}

/// `abup security-floor [--set N]`.
fn security_floor(board: &Board, set: Option<u64>) -> Result<Outcome> {
    let state = StateDir::open(board)?;
    let mut env = Environment::open(&Location::of_board(board), set.is_some())?;
    let copies = Floor::read(Some(&state), &env);
    let show = |c: &floor::Copy| match c {
        floor::Copy::Absent => "none".to_owned(),
        floor::Copy::Value(n) => n.to_string(),
        floor::Copy::Damaged(why) => format!("damaged: {why}"),
    };
    let Some(n) = set else {
        println!(
            "security floor: {} (state directory: {}; bootloader environment {}: {})",
            copies
                .value(state.floor_expected()?)
                .map_or_else(|e| format!("unknown ({e})"), |n| n.to_string()),
            show(&copies.state),
            floor::ENV_VAR,
            show(&copies.env)
        );
        return Ok(Outcome::Done);
    };
    let readable = copies.readable();
    if n < readable {
        bail!("the security floor never goes down: a copy of it says {readable}, not {n}");
    }
    let records = state.slots()?;
    let booted = booted::detect(board, &cmdline()?)?.0;
    let below = |s: SlotId| {
        records
            .get(board.slots.name(s))
            .is_some_and(|r| r.security_version < n)
    };
    if below(booted) {
        bail!(
            "the running slot {} holds a bundle below security version {n}; install and \
             confirm a newer one first",
            board.slots.name(booted)
        );
    }
    let revoked: Vec<SlotId> = board.slots.ids().filter(|&s| below(s)).collect();
    let change = FloorChange {
        copies,
        to: n,
        revoked,
    };
    slotstate::transition_with(board, &mut env, &change.env_assignment(), |state| {
        for &s in &change.revoked {
            state.mark_bad(s);
        }
        Ok(())
    })?;
    drop(env);
    change.write_state(&state)?;
    println!("security floor set to {n}");
    Ok(Outcome::Done)
}

fn env_location(config: &Path, files: &EnvFiles) -> Result<Location> {
    // EnvArgs::files has refused every other combination.
    match (files.grub.as_slice(), &files.uboot_config) {
        ([one], _) => Ok(Location::GrubSingle(one.clone())),
        ([a, b, ..], _) => Ok(Location::GrubPair([a.clone(), b.clone()])),
        ([], Some(cfg)) => Ok(Location::UBoot {
            config: cfg.clone(),
            lock_file: files.lock_file.clone(),
        }),
        ([], None) => Ok(Location::of_board(&load_board(config)?)),
    }
}

fn parse_assignment(a: &str) -> Result<Assignment> {
    match a.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), Some(v.to_owned()))),
        _ => bail!("{a:?} is not NAME=VALUE"),
    }
}

/// Where `env` should say how to make the environment instead of failing to open it: GRUB
/// files named with --grub that are not there (for a pair, neither copy; one missing copy is
/// what a cut during `create` leaves, and the next write restores it). The board's own
/// environment is never created here: a missing one is a wrong board.toml or an unmounted
/// partition.
fn missing_grub_files(files: &EnvFiles) -> Result<bool> {
    let mut missing = !files.grub.is_empty();
    for path in &files.grub {
        missing &= !path
            .try_exists()
            .with_context(|| format!("looking for {}", path.display()))?;
    }
    Ok(missing)
}

/// Whether `env` creates the environment instead of opening it. `grub-editenv FILE set` and
/// `unset` create a missing FILE (a blank 1024-byte block, then the change), and scripts
/// written for it rely on that, so a write to a single --grub block that is not there creates
/// it the same way, byte for byte. Reads create nothing, and neither does abup's pair (there
/// are no grub-editenv scripts for it, and a pair that vanished is more likely a wrong path):
/// both are refused with a message naming `env create`.
fn creates_env(location: &Location, files: &EnvFiles, write: bool) -> Result<bool> {
    if !missing_grub_files(files)? {
        return Ok(false);
    }
    if write && matches!(location, Location::GrubSingle(_)) {
        return Ok(true);
    }
    let names: Vec<String> = files.grub.iter().map(|p| p.display().to_string()).collect();
    let what = if names.len() == 1 {
        "a GRUB environment block (set and unset also create it, as grub-editenv does)"
    } else {
        "abup's pair of GRUB environment blocks"
    };
    bail!(
        "{} does not exist; `abup env --grub {} create [NAME=VALUE...]` creates {what}",
        names.join(" and "),
        names.join(" --grub ")
    )
}

fn read_env(location: &Location, files: &EnvFiles) -> Result<Environment> {
    creates_env(location, files, false)?;
    Environment::open(location, false)
}

/// One update of `changes` ([`creates_env`] says whether to a new block).
fn update_env(location: &Location, files: &EnvFiles, changes: &[Assignment]) -> Result<()> {
    if creates_env(location, files, true)? {
        return crate::provision::create_env(location, None, false, changes);
    }
    Environment::open(location, true)?.update(changes)
}

fn env(config: &Path, args: EnvArgs) -> Result<Outcome> {
    let files = args.files()?;
    let location = env_location(config, &files)?;
    match &args.op {
        EnvOp::Get { name, .. } => {
            let env = read_env(&location, &files)?;
            match env.get(name)? {
                Some(v) => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&v)?;
                    out.write_all(b"\n")?;
                    Ok(Outcome::Done)
                }
                None => Ok(Outcome::NotSet),
            }
        }
        EnvOp::List { .. } => {
            let env = read_env(&location, &files)?;
            let mut out = std::io::stdout().lock();
            for (k, v) in env.list()? {
                out.write_all(&k)?;
                out.write_all(b"=")?;
                out.write_all(&v)?;
                out.write_all(b"\n")?;
            }
            Ok(Outcome::Done)
        }
        EnvOp::Set { assignments, .. } => {
            let changes = assignments
                .iter()
                .map(|a| parse_assignment(a))
                .collect::<Result<Vec<_>>>()?;
            update_env(&location, &files, &changes)?;
            Ok(Outcome::Done)
        }
        EnvOp::Unset { names, .. } => {
            let changes: Vec<Assignment> = names.iter().map(|n| (n.clone(), None)).collect();
            update_env(&location, &files, &changes)?;
            Ok(Outcome::Done)
        }
        EnvOp::Create {
            size,
            force,
            assignments,
            ..
        } => {
            let vars = assignments
                .iter()
                .map(|a| parse_assignment(a))
                .collect::<Result<Vec<_>>>()?;
            crate::provision::create_env(&location, *size, *force, &vars)?;
            Ok(Outcome::Done)
        }
    }
}

/// `abup install`: whatever happens, with `--progress=json` the last line on standard output
/// is the `result`, carrying the exit status `main` gives the error.
fn install(config: &Path, args: InstallArgs) -> Result<Outcome> {
    let mut progress = crate::install::Progress::new(args.progress);
    let json = args.progress == crate::install::ProgressMode::Json;
    let result = install_or_abort(config, args, &mut progress);
    let outcome = match &result {
        Ok(done) => crate::install::Outcome {
            ok: true,
            exit_code: crate::exit::OK,
            message: done.message.clone(),
            reboot_required: done.reboot_required,
            dry_run: done.dry_run.clone(),
        },
        Err(e) => crate::install::Outcome {
            ok: false,
            exit_code: crate::exit::status(e),
            message: crate::exit::message(e),
            reboot_required: false,
            dry_run: None,
        },
    };
    progress.result(&outcome);
    let done = result?;
    if !json {
        // Nobody reading any more is no reason to fail an install that is done.
        let _ = writeln!(std::io::stdout(), "{}", done.message);
    }
    Ok(Outcome::Done)
}

/// How an install command ended well.
struct InstallDone {
    message: String,
    reboot_required: bool,
    dry_run: Option<serde_json::Value>,
}

fn install_or_abort(
    config: &Path,
    args: InstallArgs,
    progress: &mut crate::install::Progress,
) -> Result<InstallDone> {
    let board = load_board(config)?;
    let board = &board;
    if args.abort {
        let message = match crate::install::abort(board)? {
            Some(target) => format!(
                "dropped the interrupted install{}; it stays out of rotation until an install \
                 completes, and the next install starts over",
                target.map_or(String::new(), |t| format!(" of slot {t}"))
            ),
            None => "no interrupted install to abort; nothing changed".to_owned(),
        };
        return Ok(InstallDone {
            message,
            reboot_required: false,
            dry_run: None,
        });
    }
    let Some(source) = args.source.as_deref() else {
        bail!("name the bundle to install, or give --abort");
    };
    let opts = crate::install::Options {
        source: Source::parse(source),
        keyring: args.keyring,
        target: args.slot,
        network: network(Some(board), &args.http)?,
        progress: args.progress,
        fallback: args.fallback.as_deref().map(Source::parse),
        max_download: args.max_download,
        dry_run: args.dry_run,
    };
    if matches!(opts.fallback, Some(Source::Stdin)) {
        bail!("--fallback must be a file or an http(s) URL: its chunks are fetched out of order");
    }
    if opts.dry_run {
        let report = crate::install::dry_run(board, &opts, progress)?;
        return Ok(InstallDone {
            message: report.to_string(),
            reboot_required: false,
            dry_run: Some(report.json()),
        });
    }
    let done = crate::install::install(board, &opts, progress)?;
    Ok(InstallDone {
        message: done.summary(board),
        reboot_required: true,
        dry_run: None,
    })
}

fn provision(config: &Path, args: crate::cli::ProvisionArgs) -> Result<Outcome> {
    let board = load_board(config)?;
    let board_dir = config.parent().unwrap_or(Path::new("."));
    let opts = crate::provision::disk::Options {
        disk: args.disk,
        bundle: args.bundle.as_deref().map(Source::parse),
        both: args.both,
        force: args.force,
        keyring: args.keyring,
        network: network(Some(&board), &args.http)?,
        progress: if args.json {
            crate::install::ProgressMode::None
        } else {
            args.progress
        },
    };
    let summary = crate::provision::disk::provision(&board, board_dir, &opts)?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!("{summary}");
    }
    Ok(Outcome::Done)
}

fn split_root(config: &Path, args: crate::cli::SplitRootArgs) -> Result<Outcome> {
    let board = load_board(config)?;
    let opts = crate::provision::split_root::Options {
        board_dir: config.parent().unwrap_or(Path::new(".")).to_owned(),
        disk: args.disk,
        partition: args.partition,
        work_dir: args.work_dir,
        name: args.name,
    };
    let summary = crate::provision::split_root::split_root(&board, &opts)?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!("{summary}");
    }
    Ok(Outcome::Done)
}

fn generate(op: GenerateOp) -> Result<Outcome> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    match op {
        GenerateOp::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            write_man_pages(&cmd, "abup", &dir)?;
        }
        GenerateOp::Completions { shell } => {
            let mut cmd = cmd;
            clap_complete::generate(shell, &mut cmd, "abup", &mut std::io::stdout());
        }
    }
    Ok(Outcome::Done)
}

/// One page per command and subcommand, named the way man(1) looks them up
/// (`man abup-install`).
fn write_man_pages(cmd: &clap::Command, name: &str, dir: &Path) -> Result<()> {
    let cmd = cmd.clone().name(name.to_owned());
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}
