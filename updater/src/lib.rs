//! abup, the A/B partition updater: the library behind the `abup` binary.
//!
//! The layout follows an update's path: the board configuration ([`board`]), which slot is
//! running ([`booted`]), the bootloader environment that decides what boots next
//! ([`bootenv`], [`provision`]) and the slot state it holds ([`slotstate`]), and the commands that tie them together ([`commands`]).

pub mod board;
#[cfg(feature = "device")]
pub mod booted;
#[cfg(feature = "device")]
pub mod bootenv;
pub mod bundle;
#[cfg(feature = "device")]
pub mod bundle_cmd;
#[cfg(feature = "device")]
pub mod cli;
#[cfg(feature = "device")]
pub mod commands;
pub mod disk;
#[cfg(feature = "device")]
pub mod exit;
#[cfg(feature = "device")]
pub mod failpoint;
#[cfg(feature = "device")]
pub mod install;
#[cfg(feature = "device")]
pub mod provision;
#[cfg(feature = "device")]
pub mod slotstate;
#[cfg(feature = "device")]
pub mod source;
#[cfg(feature = "device")]
pub mod state;
#[cfg(feature = "device")]
pub mod status_cmd;
#[cfg(test)]
mod test_tools;
