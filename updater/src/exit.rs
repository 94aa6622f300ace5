//! The one mapping from errors to abup's documented exit statuses (`abup --help`, README):
//! an OTA agent branches on them, so each status means one thing everywhere.

/// Success.
pub const OK: u8 = 0;
/// The operation failed; the one-line message says what and what was left unchanged.
pub const FAILED: u8 = 1;
/// `env get` of a variable that is not set.
pub const NOT_SET: u8 = 3;
/// Refused before anything was written, and trying again will not help: a bundle
/// (signature, board, security version, size, or found damaged by `bundle verify`), a disk
/// `provision` will not overwrite or a board file it lacks, a root `split-root` cannot split.
pub const REFUSED: u8 = 4;
/// Another install is running: try again later.
pub const BUSY: u8 = 5;

/// The status for an error, from the typed errors in its chain.
pub fn status(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.is::<crate::install::Refused>()) {
        REFUSED
    } else if e.chain().any(|c| c.is::<crate::state::Busy>()) {
        BUSY
    } else {
        FAILED
    }
}
