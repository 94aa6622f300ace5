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
use crate::cli::{Cli, Command, EnvArgs, EnvOp, GenerateOp, InstallArgs};
use crate::slotstate;
use crate::source::{Retry, Source};

/// What `main` turns into an exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// `env get` of a variable that is not set.
    NotSet,
}

/// The exit status for an error: refusals and a busy install lock have their own, so an OTA
/// agent can tell "this bundle will never install" from "try again later".
pub fn exit_status(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.is::<crate::install::Refused>()) {
        4
    } else if e.chain().any(|c| c.is::<crate::install::Busy>()) {
        5
    } else {
        1
    }
}

pub fn run(cli: Cli) -> Result<Outcome> {
    match cli.command {
        Command::Status { json } => status(&load_board(&cli.config)?, json),
        Command::MarkGood(s) => mark(&load_board(&cli.config)?, Mark::Good, &s.slot),
        Command::MarkBad(s) => mark(&load_board(&cli.config)?, Mark::Bad, &s.slot),
        Command::MarkActive(s) => mark(&load_board(&cli.config)?, Mark::Active, &s.slot),
        Command::Env(args) => env(&cli.config, args),
        Command::Install(args) => install(&load_board(&cli.config)?, args),
        Command::Keygen { secret, public } => crate::bundle_cmd::keygen(&secret, &public),
        Command::Bundle(op) => crate::bundle_cmd::run(op),
        Command::Generate(op) => generate(op),
    }
}

fn load_board(path: &Path) -> Result<Board> {
    Ok(Board::load(path)?)
}

fn cmdline() -> Result<String> {
    let path = booted::cmdline_path();
    std::fs::read_to_string(&path)
        .with_context(|| format!("reading the kernel command line from {}", path.display()))
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
    let mut env = Environment::open(&Location::of_board(board), true)?;
    let (state, written) = slotstate::transition(board, &mut env, |state| {
        match how {
            Mark::Good => state.mark_good(slot),
            Mark::Bad => state.mark_bad(slot),
            Mark::Active => state.activate(slot),
        }
        Ok(())
    })
    .with_context(|| format!("slot {name} not {verb}"))?;
    if let Mark::Good = how {
        crate::install::confirmed(board, slot).context("raising the security version floor")?;
    }
    if !written {
        println!("slot {name} {verb} (no change)");
        return Ok(Outcome::Done);
    }
    println!(
        "slot {name} {verb}: {} tries left, next boot: {}",
        state.status(slot).tries_left,
        board.slots.name(state.next_boot().slot)
    );
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
    last_install: Option<crate::install::record::LastInstall>,
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
    bundle: Option<crate::install::record::SlotBundle>,
}

const STATUS_VERSION: u32 = 1;

fn status(board: &Board, json: bool) -> Result<Outcome> {
    let env = Environment::open(&Location::of_board(board), false)?;
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
        last_install: crate::install::record::last_install(&board.install.state_dir)
            .unwrap_or_else(|e| {
                log::warn!("{e:#}");
                None
            }),
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
                    bundle: crate::install::slot_bundle(board, board.slots.name(s)),
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
    if !(args.retry_wait.is_finite() && args.retry_wait >= 0.0) {
        bail!(
            "--retry-wait must be a number of seconds, not {}",
            args.retry_wait
        );
    }
    let opts = crate::install::Options {
        source: Source::parse(&args.source),
        keyring: args.keyring,
        target: args.slot,
        retry: Retry {
            attempts: args.retries,
            first_wait: std::time::Duration::from_secs_f64(args.retry_wait),
        },
        progress: args.progress,
    };
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
