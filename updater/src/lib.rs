//! abup, the A/B partition updater: the library behind the `abup` binary.
//!
//! The layout follows an update's path: the board configuration ([`board`]), which slot is
//! running ([`booted`]), the bootloader environment that decides what boots next
//! ([`bootenv`], [`provision`]) and the slot state it holds ([`slotstate`]), and the commands that tie them together ([`commands`]).

pub mod board;
pub mod booted;
pub mod bootenv;
pub mod bundle;
pub mod bundle_cmd;
pub mod cli;
pub mod commands;
pub mod failpoint;
pub mod install;
pub mod provision;
pub mod slotstate;
pub mod source;
pub mod statefile;
