//! What each subcommand does, on top of the board configuration, the environment backends and
//! the slot state machine.

use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use bootcount::SlotId;
use serde::Serialize;

use crate::board::Board;
use crate::booted::{self, Method};
use crate::bootenv::{Assignment, Environment, Location};
use crate::cli::{Cli, Command, EnvArgs, EnvOp, GenerateOp, HttpArgs, InstallArgs};
use crate::slotstate;
use crate::source::{Network, Source};
use crate::state::floor::{self, Floor};
use crate::state::records::{LastInstall, SlotBundle};
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
        Command::Status { json } => status(&load_board(&cli.config)?, json),
        Command::MarkGood(s) => mark(&load_board(&cli.config)?, Mark::Good, &s.slot),
        Command::MarkBad(s) => mark(&load_board(&cli.config)?, Mark::Bad, &s.slot),
        Command::MarkActive(s) => mark(&load_board(&cli.config)?, Mark::Active, &s.slot),
        Command::Env(args) => env(&cli.config, args),
        Command::Install(args) => install(&load_board(&cli.config)?, args),
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

fn mark(board: &Board, how: Mark, slot_arg: &str) -> Result<Outcome> {
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
        }
        floor = Some(FloorChange::plan(board, state.as_ref(), &env, slot, how)?);
    }
    let extra = floor
        .as_ref()
        .map_or(Vec::new(), FloorChange::env_assignment);
    let (new, written) = slotstate::transition_with(board, &mut env, &extra, |state| {
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

/// `abup status --json`; `version` changes only when a field changes meaning or disappears.
#[derive(Serialize)]
struct StatusReport<'a> {
    version: u32,
    board: &'a str,
    compatible: &'a str,
    bootloader: &'static str,
    scheme: &'static str,
    environment: String,
    booted: Option<&'a str>,
    booted_from: Option<&'static str>,
    next_boot: &'a str,
    next_boot_is_fallback: bool,
    last_install: Option<LastInstall>,
    slots: Vec<SlotReport<'a>>,
}

#[derive(Serialize)]
struct SlotReport<'a> {
    name: &'a str,
    device: String,
    booted: bool,
    priority: Option<usize>,
    tries_left: u8,
    good: bool,
    confirmed: bool,
    /// What abup installed there, if it did.
    bundle: Option<SlotBundle>,
}

const STATUS_VERSION: u32 = 1;

fn status(board: &Board, json: bool) -> Result<Outcome> {
    let env = Environment::open(&Location::of_board(board), false)?;
    let state = StateDir::existing(board)?;
    let warn = |e: anyhow::Error| log::warn!("{e:#}");
    let last_install = state
        .as_ref()
        .and_then(|s| s.last_install().map_err(warn).ok().flatten());
    let records = state
        .as_ref()
        .and_then(|s| s.slots().map_err(warn).ok())
        .unwrap_or_default();
    let state = slotstate::read(board, &env)?.state;
    let booted = match booted::detect(board, &cmdline()?) {
        Ok(b) => Some(b),
        Err(e) => {
            log::warn!("{e}");
            None
        }
    };
    let next = state.next_boot();
    let report = StatusReport {
        version: STATUS_VERSION,
        board: &board.name,
        compatible: &board.compatible,
        bootloader: board.bootloader_name(),
        scheme: board.scheme.name(),
        environment: env.describe(),
        booted: booted.map(|(s, _)| board.slots.name(s)),
        booted_from: booted.map(|(_, how): (SlotId, Method)| how.name()),
        next_boot: board.slots.name(next.slot),
        next_boot_is_fallback: next.fallback,
        last_install,
        slots: board
            .slots
            .ids()
            .map(|s| {
                let st = state.status(s);
                SlotReport {
                    name: board.slots.name(s),
                    device: board.device(s).display().to_string(),
                    booted: booted.map(|(b, _)| b) == Some(s),
                    priority: st.priority,
                    tries_left: st.tries_left,
                    good: st.good,
                    confirmed: st.confirmed,
                    bundle: records.get(board.slots.name(s)).cloned(),
                }
            })
            .collect(),
    };
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
        return Ok(Outcome::Done);
    }
    writeln!(out, "board:       {} ({})", report.board, report.compatible)?;
    writeln!(
        out,
        "bootloader:  {}, scheme {}, {} tries",
        report.bootloader,
        report.scheme,
        board.slots.tries()
    )?;
    writeln!(out, "environment: {}", report.environment)?;
    match (report.booted, report.booted_from) {
        (Some(b), Some(from)) => writeln!(out, "booted:      {b} (from {from})")?,
        _ => writeln!(out, "booted:      unknown")?,
    }
    writeln!(
        out,
        "next boot:   {}{}",
        report.next_boot,
        if report.next_boot_is_fallback {
            " (no slot has tries left: last confirmed slot, uncounted)"
        } else {
            ""
        }
    )?;
    if let Some(last) = &report.last_install {
        let when = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(last.finished),
        );
        match (
            &last.outcome[..],
            &last.bundle_version,
            &last.target,
            &last.error,
        ) {
            ("success", Some(v), Some(t), _) => {
                writeln!(out, "last install: {v} into slot {t}, {when}")?
            }
            (_, _, _, Some(e)) => writeln!(out, "last install: failed {when}: {e}")?,
            (o, ..) => writeln!(out, "last install: {o} {when}")?,
        }
    }
    writeln!(
        out,
        "slot  order  tries  state                      bundle      device"
    )?;
    for s in &report.slots {
        let mut words = vec![if s.good { "good" } else { "bad" }];
        if s.confirmed {
            words.push("confirmed");
        }
        if s.booted {
            words.push("booted");
        }
        writeln!(
            out,
            "{:<5} {:<6} {:<6} {:<26} {:<11} {}",
            s.name,
            s.priority.map_or("-".to_owned(), |p| p.to_string()),
            format!("{}/{}", s.tries_left, board.slots.tries()),
            words.join(", "),
            s.bundle.as_ref().map_or("-", |b| b.version.as_str()),
            s.device
        )?;
    }
    Ok(Outcome::Done)
}

fn env_location(config: &Path, args: &EnvArgs) -> Result<Location> {
    match (args.grub.as_slice(), &args.uboot_config) {
        ([], None) => Ok(Location::of_board(&load_board(config)?)),
        ([one], None) => Ok(Location::GrubSingle(one.clone())),
        ([a, b], None) => Ok(Location::GrubPair([a.clone(), b.clone()])),
        ([], Some(cfg)) => Ok(Location::UBoot {
            config: cfg.clone(),
            lock_file: args.lock_file.clone(),
        }),
        _ => bail!("give --grub once (one block) or twice (a pair), or --uboot-config once"),
    }
}

fn parse_assignment(a: &str) -> Result<Assignment> {
    match a.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), Some(v.to_owned()))),
        _ => bail!("{a:?} is not NAME=VALUE"),
    }
}

fn env(config: &Path, args: EnvArgs) -> Result<Outcome> {
    let location = env_location(config, &args)?;
    match args.op {
        EnvOp::Get { name } => {
            let env = Environment::open(&location, false)?;
            match env.get(&name)? {
                Some(v) => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&v)?;
                    out.write_all(b"\n")?;
                    Ok(Outcome::Done)
                }
                None => Ok(Outcome::NotSet),
            }
        }
        EnvOp::List => {
            let env = Environment::open(&location, false)?;
            let mut out = std::io::stdout().lock();
            for (k, v) in env.list()? {
                out.write_all(&k)?;
                out.write_all(b"=")?;
                out.write_all(&v)?;
                out.write_all(b"\n")?;
            }
            Ok(Outcome::Done)
        }
        EnvOp::Set { assignments } => {
            let changes = assignments
                .iter()
                .map(|a| parse_assignment(a))
                .collect::<Result<Vec<_>>>()?;
            Environment::open(&location, true)?.update(&changes)?;
            Ok(Outcome::Done)
        }
        EnvOp::Unset { names } => {
            let changes: Vec<Assignment> = names.into_iter().map(|n| (n, None)).collect();
            Environment::open(&location, true)?.update(&changes)?;
            Ok(Outcome::Done)
        }
        EnvOp::Create {
            size,
            force,
            assignments,
        } => {
            let vars = assignments
                .iter()
                .map(|a| parse_assignment(a))
                .collect::<Result<Vec<_>>>()?;
            crate::provision::create_env(&location, size, force, &vars)?;
            Ok(Outcome::Done)
        }
    }
}

fn install(board: &Board, args: InstallArgs) -> Result<Outcome> {
    let opts = crate::install::Options {
        source: Source::parse(&args.source),
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
        let report = crate::install::dry_run(board, &opts)?;
        if args.progress == crate::install::ProgressMode::Json {
            println!("{}", report.json());
        } else {
            println!("{report}");
        }
        return Ok(Outcome::Done);
    }
    let done = crate::install::install(board, &opts)?;
    let name = board.slots.name(done.target);
    if args.progress != crate::install::ProgressMode::Json {
        println!(
            "installed {} into slot {name}{}; it boots next, with {} tries to confirm itself \
             with `abup mark-good`",
            done.version,
            if done.resumed { " (resumed)" } else { "" },
            board.slots.tries()
        );
    }
    Ok(Outcome::Done)
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
