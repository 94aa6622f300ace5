//! What each subcommand does, on top of the board configuration, the environment backends and
//! the slot state machine.

use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use bootcount::SlotId;
use serde::Serialize;

use crate::board::Board;
use crate::booted::{self, Source};
use crate::bootenv::{Assignment, Environment, Location};
use crate::cli::{Cli, Command, EnvArgs, EnvOp};
use crate::slotstate;

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
        booted_from: booted.map(|(_, src): (SlotId, Source)| src.name()),
        next_boot: board.slots.name(next.slot),
        next_boot_is_fallback: next.fallback,
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
    writeln!(out, "slot  order  tries  state                      device")?;
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
            "{:<5} {:<6} {:<6} {:<26} {}",
            s.name,
            s.priority.map_or("-".to_owned(), |p| p.to_string()),
            format!("{}/{}", s.tries_left, board.slots.tries()),
            words.join(", "),
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
