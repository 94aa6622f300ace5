//! Disks as a whole: the board's partition layout, and the GPT that provisioning writes
//! from it.

pub mod layout;
#[cfg(feature = "device")]
pub mod table;
