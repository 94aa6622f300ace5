//! The GRUB environment block, byte-compatible with `grub-editenv` and GRUB's
//! `load_env`/`save_env`, and abup's power-safe pair of blocks.
//!
//! # The format
//!
//! A block is a fixed-size file (1024 bytes from `grub-editenv create`; GRUB accepts any size
//! of at least 26 bytes) that starts with the signature `# GRUB Environment Block\n`. There is
//! no checksum: the signature is all GRUB checks. Then come lines `NAME=VALUE\n`; a line that
//! starts with `#` is a comment, and the unused tail is `#` padding. In values only `\` and
//! newline are escaped, each by a preceding `\` (the newline stays a literal byte); every other
//! byte is stored raw. Space is counted on the escaped length and the last byte can be used.
//!
//! Edits reproduce `grub-editenv`'s bytes exactly: a new variable goes to the start of the
//! padding, an existing one is rewritten where it stands and the rest of the block shifted,
//! with padding refilled at the end; the size never changes, and a change that does not fit is
//! refused with nothing altered. Identical bytes matter because GRUB, `grub-editenv` and abup
//! all edit the same files, and byte-exact output is what makes golden-file and cross-tool
//! tests possible.
//!
//! # Two rules for duplicates
//!
//! A hand-made block can hold a name twice, and the two readers disagree on which one counts:
//!
//! * `grub-editenv set`/`unset` (and [`EnvBlock::set`]/[`EnvBlock::unset`]) edit the FIRST
//!   line for the name;
//! * GRUB's `load_env` sets every line in file order, so at boot the LAST one wins, and
//!   [`EnvBlock::get`] reports that one.
//!
//! So an edit can be invisible at boot. [`EnvBlock::iter`] shows every line, like
//! `grub-editenv list`, and [`EnvPair::plan_update`] refuses an update that a later duplicate
//! would hide.
//!
//! # Why a pair of 512-byte blocks is power-safe
//!
//! GRUB has no redundant environment. `grub-editenv` truncates and rewrites the file, and
//! GRUB's `save_env` rewrites the block in place through the file's block list, so a cut can
//! leave an empty file or, with a 1024-byte block spanning two sectors, one new and one old
//! sector: lines cut or doubled where the shifted tail was half written, in the only copy.
//!
//! abup therefore keeps two block files of equal size, [`PAIR_BLOCK_SIZE`] (512) bytes each,
//! each a normal block carrying a sequence number [`SEQ_VAR`]. The boot script loads the copy
//! with the higher number (copy 0 on ties, and when neither has one), compared with GRUB's own
//! `-gt`, which [`select_copy`] mirrors bit for bit. A block of one sector is written by the
//! storage all or nothing (the assumption the layout rests on), and:
//!
//! * abup writes only the copy that is NOT selected, in place, holding the current copy's
//!   content, the change and the sequence number plus one, then syncs. A cut before the sector
//!   reaches the medium leaves that copy as it was, older or invalid, so GRUB keeps booting the
//!   untouched current copy as if the update had not started; once the sector is written the
//!   new copy is complete and has the higher number. A copy left invalid by an earlier cut
//!   (no signature, no number) is never selected over a valid numbered one, and the next
//!   update simply overwrites it.
//! * GRUB's `save_env` at boot (a try counter going down) rewrites the selected copy in place
//!   and keeps its number. A cut leaves the old or the new counter, never a mix, and the copy
//!   stays selected either way; the other copy is not touched at all.
//!
//! The files never change size and are never sparse ([`write_block`], [`create_block`]),
//! because `save_env` writes through the block list it finds when reading and refuses sparse
//! files, and an in-place write does not reallocate the file's blocks. A selected copy that is
//! damaged is reported ([`EnvPair::current`]), never replaced by defaults, since that would
//! silently lose the slot state.

#![forbid(unsafe_code)]

mod block;
mod error;
mod io;
mod pair;

pub use block::{
    validate_name, Change, EnvBlock, Var, Vars, DEFAULT_BLOCK_SIZE, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE,
    MIN_NEW_BLOCK_SIZE, PAIR_BLOCK_SIZE, SIGNATURE, WARNING_LINE,
};
pub use error::Error;
pub use io::{create_block, read_block, write_block};
pub use pair::{grub_test_int, select_copy, EnvPair, LongWidth, WritePlan, SEQ_VAR};
