use std::io;

/// Everything that can go wrong while reading, editing or writing GRUB environment blocks.
///
/// Variants carry the offending values so that the binary can tell the user what to fix without
/// re-deriving them. Names and values are kept as raw bytes because GRUB stores any byte; the
/// messages show them with non-printable bytes escaped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// GRUB refuses anything shorter than its signature plus one byte.
    #[error(
        "not a GRUB environment block: it is {size} bytes long, the minimum is {min}; \
         recreate it with `grub-editenv FILE create` or `abup` provisioning"
    )]
    TooSmall {
        /// Size of the rejected data or requested block.
        size: u64,
        /// Smallest size accepted here.
        min: usize,
    },

    /// Refused before allocating so that a wrong path (a disk, a log file) cannot exhaust memory.
    #[error(
        "the environment block is {size} bytes long, more than the {max} bytes accepted; \
         check that the configured path really points at a GRUB environment file"
    )]
    TooLarge {
        /// Size of the rejected data or requested block.
        size: u64,
        /// [`MAX_BLOCK_SIZE`](crate::MAX_BLOCK_SIZE).
        max: usize,
    },

    /// The first bytes are not `# GRUB Environment Block\n`; GRUB's `load_env` fails on it too.
    #[error(
        "not a GRUB environment block: the {size}-byte file does not start with \
         \"# GRUB Environment Block\"; it is corrupt or not an environment file"
    )]
    BadSignature {
        /// Size of the rejected data.
        size: u64,
    },

    /// The block cannot be edited without corrupting it (hand-edited or damaged).
    #[error(
        "the environment block is damaged at byte {offset}: {problem}; editing it could \
         corrupt other variables, so recreate it (grub-editenv FILE create) and set the \
         variables again"
    )]
    Broken {
        /// Offset of the offending line or byte within the block.
        offset: usize,
        /// What is wrong there.
        problem: &'static str,
    },

    /// GRUB cannot store variables whose name has these bytes (or would hide them).
    #[error("invalid variable name \"{}\": {reason}", name.escape_ascii())]
    InvalidName {
        /// The rejected name.
        name: Vec<u8>,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// GRUB keeps values as C strings, so a NUL would silently cut the value short.
    #[error(
        "the value for \"{}\" contains a NUL byte at offset {offset}; GRUB would cut the value \
         there, remove the NUL",
        name.escape_ascii()
    )]
    NulInValue {
        /// Name of the variable being set.
        name: Vec<u8>,
        /// Offset of the first NUL within the value.
        offset: usize,
    },

    /// Same refusal as `grub-editenv`'s "environment block too small"; nothing was changed.
    #[error(
        "environment block too small: setting \"{}\" needs {needed} more bytes but only {free} \
         are free; unset variables that are no longer used or use a larger block",
        name.escape_ascii()
    )]
    NoSpace {
        /// Name of the variable that did not fit.
        name: Vec<u8>,
        /// Bytes of free space the change needs.
        needed: usize,
        /// Bytes of free space the block has.
        free: usize,
    },

    /// Asked for text, but GRUB stores raw bytes.
    #[error("the value of \"{}\" is not valid UTF-8", name.escape_ascii())]
    NotUtf8 {
        /// Name of the variable.
        name: Vec<u8>,
    },

    /// Writing in place must never change the file's size (GRUB's `save_env` and abup rely on it).
    #[error(
        "the file is {found} bytes long but the environment block is {expected} bytes; \
         refusing to write it in place (the file must already have the block's size)"
    )]
    SizeMismatch {
        /// Size of the block to write.
        expected: usize,
        /// Size of the existing file.
        found: u64,
    },

    /// A new block file is only ever written into an empty file, so nothing is overwritten.
    #[error("refusing to create an environment block in a file that already has {size} bytes")]
    NotEmpty {
        /// Size of the existing file.
        size: u64,
    },

    /// The copy GRUB boots from is unreadable; abup never falls back to defaults.
    #[error(
        "copy {index} of the environment pair is the one GRUB uses but it is not a valid \
         environment block ({reason}); restore it or re-provision the pair"
    )]
    NoValidCopy {
        /// Index (0 or 1) of the copy GRUB selects.
        index: usize,
        /// Why that copy is not usable.
        reason: String,
    },

    /// The other copy cannot be read, so neither its size nor its content is known.
    #[error(
        "copy {index} of the environment pair cannot be read ({reason}); it would be \
         overwritten by this update, so fix the I/O problem or re-provision the pair"
    )]
    CopyUnreadable {
        /// Index (0 or 1) of the copy.
        index: usize,
        /// The read error.
        reason: String,
    },

    /// Both copies must have the same size so that either can hold the other's content.
    #[error(
        "copy {index} of the environment pair is {found} bytes long but the current copy is \
         {expected} bytes; both copies must have the same size, re-provision the pair"
    )]
    CopySizeMismatch {
        /// Index (0 or 1) of the copy that would be written.
        index: usize,
        /// Size of the current copy.
        expected: usize,
        /// Size of the other copy.
        found: u64,
    },

    /// GRUB compares 32-bit integers; one more update would wrap around and lose the ordering.
    #[error(
        "the sequence number of the environment pair has reached {current}, the largest value \
         GRUB can compare; re-provision the pair to restart it at 0"
    )]
    SequenceExhausted {
        /// Sequence number of the current copy, as GRUB reads it.
        current: i32,
    },

    /// The sequence variable is owned by [`EnvPair`](crate::EnvPair).
    #[error(
        "the variable \"{}\" is managed by abup's environment pair and cannot be changed \
         directly",
        name.escape_ascii()
    )]
    ReservedName {
        /// The reserved name.
        name: Vec<u8>,
    },

    /// A later duplicate line (hand-made block) would hide the change from GRUB.
    #[error(
        "the environment block holds \"{}\" more than once and GRUB reads the last one, which \
         this change does not touch; remove the duplicate lines (re-provision the pair)",
        name.escape_ascii()
    )]
    Shadowed {
        /// Name of the duplicated variable.
        name: Vec<u8>,
    },

    /// Reading or writing the file failed.
    #[error("I/O error on the environment block: {0}")]
    Io(#[from] io::Error),
}
