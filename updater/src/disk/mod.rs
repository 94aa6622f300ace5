//! Disks: the board's partition layout and the GPT that provisioning writes from it, and the
//! slot devices installs write: claimed only when nothing uses them, written and read back
//! with direct I/O.

#[cfg(feature = "device")]
pub mod device;
pub mod layout;
#[cfg(feature = "device")]
pub mod table;
