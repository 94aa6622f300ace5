//! The command line, as clap sees it. `--help`, the man pages and the shell completions are
//! all generated from these definitions, so the help text is the reference documentation.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  the operation failed; the message says what was left unchanged
  2  the command line is wrong
  3  `env get`: the variable is not set
  4  the bundle was refused before anything was written (signature, board, security
     version, size) or `bundle verify` found it damaged
  5  another install is running";

#[derive(Debug, Parser)]
#[command(
    name = "abup",
    version,
    about = "A/B partition updater for embedded and appliance Linux",
    long_about = "A/B partition updater for embedded and appliance Linux.\n\n\
        abup keeps two root filesystem slots. Updates go to the slot that is not running; the \
        bootloader (GRUB or U-Boot) then tries the new slot a limited number of times, and a \
        boot-success service confirms it with `abup mark-good`. A slot that never confirms \
        falls back to the previous one.\n\n\
        The board configuration (default /etc/abup/board.toml) names the slots, their devices, \
        the bootloader and where its environment lives.",
    after_help = EXIT_CODES,
    after_long_help = EXIT_CODES,
)]
pub struct Cli {
    /// Board configuration file.
    #[arg(
        short,
        long,
        global = true,
        env = "ABUP_CONFIG",
        default_value = crate::board::DEFAULT_PATH,
        value_name = "PATH"
    )]
    pub config: PathBuf,

    /// More log output on standard error (-v: info, -vv: debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the booted slot and the state of every slot.
    #[command(long_about = "Show the booted slot and the state of every slot.\n\n\
        The booted slot comes from abup.slot= on the kernel command line (the board's boot \
        script sets it), else from root=, else from the device mounted at /. For every slot: \
        its place in the boot order, the tries the bootloader will still make, whether it is \
        good (the bootloader may boot it) and confirmed (the fallback of last resort). Also \
        the slot the next boot will start.")]
    Status {
        /// Print one JSON object (stable schema, with a "version" field) instead of text.
        #[arg(long)]
        json: bool,
    },

    /// Confirm a slot: restore its tries and make it the fallback of last resort.
    #[command(
        long_about = "Confirm a slot: restore its tries and make it the fallback of last \
        resort.\n\n\
        Run it from a boot-success service on every boot, once the system is known to work: \
        the bootloader uses up one try per boot, and mark-good gives them back. A slot whose \
        tries run out without a mark-good is abandoned for the next slot in the boot order. \
        It also raises the security floor to the security version of the slot's bundle: slots \
        holding older bundles lose their tries in the same environment update, and installs \
        below the floor are refused. Refused for a slot below the floor and for the slot an \
        unfinished install is writing. One environment update."
    )]
    MarkGood(SlotArg),

    /// Take a slot out of rotation: the bootloader will not boot it.
    #[command(
        long_about = "Take a slot out of rotation: the bootloader will not boot it.\n\n\
        Marking the booted slot bad makes the next boot start the other slot, if that one is \
        good. One environment update."
    )]
    MarkBad(SlotArg),

    /// Make a slot the next to boot, with a full set of tries.
    #[command(
        long_about = "Make a slot the next to boot, with a full set of tries.\n\n\
        The slot goes first in the boot order; it still has to be confirmed by mark-good after \
        it boots, or the bootloader falls back when its tries run out. `mark-active other` \
        switches to the other slot. Refused for a slot below the security floor and for the slot \
        an unfinished install is writing. One environment update."
    )]
    MarkActive(SlotArg),

    /// Install a bundle into the slot that is not running, verify it, activate it.
    #[command(
        long_about = "Install a bundle into the slot that is not running, verify it, \
        activate it.\n\n\
        SOURCE is a file, - for standard input, or an http(s) URL. Before anything is written \
        the bundle's signature is checked against the keyring, its compatible string against \
        the board, its security version against the lowest this device accepts, each image's \
        size against its slot device, and the running slot must be known and confirmed. Then: \
        the target slot is marked bad (one environment update), every chunk is checked against \
        its hash and written, the slot's first block held back until the whole slot has been \
        read back from the disk and matched; the post-install hook runs; the slot is \
        activated with its tries (one environment update). Reboot to try it; its boot-success \
        service confirms it with `abup mark-good`.\n\n\
        Interrupted (network, kill -9, power cut), the same command continues from the last \
        synced chunk, asking a web server for the rest with a Range request."
    )]
    Install(InstallArgs),

    /// Make an ed25519 key pair for signing bundles.
    #[command(long_about = "Make an ed25519 key pair for signing bundles.\n\n\
        Both are PEM files (PKCS#8 and SPKI), readable by `openssl pkey`. Keep the secret key \
        off the devices; put the public key in each device's keyring directory. Keys rotate by \
        adding the new public key to the keyring before bundles are signed with it.")]
    Keygen {
        /// Where to write the secret key (created with mode 0600; must not exist).
        #[arg(long, value_name = "FILE")]
        secret: PathBuf,
        /// Where to write the public key (must not exist).
        #[arg(long, value_name = "FILE")]
        public: PathBuf,
    },

    /// Build, inspect and check bundles.
    #[command(subcommand)]
    Bundle(BundleOp),

    /// Write man pages or shell completions generated from this command line.
    #[command(subcommand)]
    Generate(GenerateOp),

    /// Show the security floor, or raise it deliberately.
    #[command(long_about = "Show the security floor, or raise it deliberately.\n\n\
        The floor is the lowest bundle security version this device installs or boots. \
        mark-good raises it to the confirmed slot's security version; it never goes down. It \
        is kept in the state directory and in the bootloader variable ABUP_SECURITY_FLOOR, and \
        the higher wins. When a copy is damaged, or missing from both places on a device that \
        has installed bundles, abup refuses installs and mark-good/mark-active instead of \
        guessing; if you know the floor, --set N writes it to both places (N may not be below \
        a copy that can still be read, nor above the running slot's bundle), and slots below \
        N lose their tries in the same environment update.")]
    SecurityFloor {
        /// Write the floor N to both places.
        #[arg(long, value_name = "N")]
        set: Option<u64>,
    },

    /// Read and edit a bootloader environment directly.
    #[command(long_about = "Read and edit a bootloader environment directly.\n\n\
        Without --grub or --uboot-config, the board's own environment. With --grub FILE, a GRUB \
        environment block as grub-editenv edits it; with two --grub options, abup's power-safe \
        pair of blocks (the copy that is not current is written, with ABUP_SEQ one higher). \
        With --uboot-config, the U-Boot environment that a fw_env.config or libubootenv YAML \
        file describes, under the same lock as fw_setenv; a redundant environment is written \
        to the copy that is not current.\n\n\
        A write to an environment that cannot be read fails and changes nothing: abup never \
        replaces a damaged environment with defaults. Use `create` to make a new one.")]
    Env(EnvArgs),
}

/// Which slot a mark command acts on.
#[derive(Debug, Args)]
pub struct SlotArg {
    /// "booted", "other" (the one slot that is not booted) or a slot name.
    #[arg(default_value = "booted", value_name = "SLOT")]
    pub slot: String,
}

#[derive(Debug, Args)]
pub struct EnvArgs {
    /// A GRUB environment block; give it twice for abup's pair of blocks (copy 0, copy 1).
    #[arg(long, value_name = "FILE", conflicts_with = "uboot_config", action = clap::ArgAction::Append)]
    pub grub: Vec<PathBuf>,

    /// A fw_env.config or libubootenv YAML file describing a U-Boot environment.
    #[arg(long, value_name = "FILE")]
    pub uboot_config: Option<PathBuf>,

    /// The lock file shared with fw_printenv/fw_setenv (default: the one the configuration
    /// names, else /var/lock/fw_printenv.lock).
    #[arg(long, value_name = "FILE", requires = "uboot_config")]
    pub lock_file: Option<PathBuf>,

    #[command(subcommand)]
    pub op: EnvOp,
}

#[derive(Debug, Subcommand)]
pub enum EnvOp {
    /// Print a variable's value and a newline; exit status 3 if it is not set.
    Get {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Set variables, all in one update; an empty value removes a U-Boot variable.
    Set {
        #[arg(value_name = "NAME=VALUE", required = true)]
        assignments: Vec<String>,
    },
    /// Remove variables, all in one update; absent names are not an error.
    Unset {
        #[arg(value_name = "NAME", required = true)]
        names: Vec<String>,
    },
    /// Print every variable as NAME=VALUE, one per line.
    List,
    /// Write a new environment holding only the given variables.
    #[command(
        long_about = "Write a new environment holding only the given variables.\n\n\
        GRUB: creates the block file(s), which must not exist yet (512 bytes each for a pair, \
        1024 for a single block, unless --size). U-Boot: writes every copy the configuration \
        names; refused while a valid environment is there unless --force, because it replaces \
        U-Boot's variables (bootcmd and the rest) with exactly what is given."
    )]
    Create {
        /// Block size in bytes (GRUB only).
        #[arg(long, value_name = "BYTES")]
        size: Option<usize>,
        /// Replace a valid U-Boot environment.
        #[arg(long)]
        force: bool,
        #[arg(value_name = "NAME=VALUE")]
        assignments: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// A bundle file, - for standard input, or an http:// or https:// URL.
    #[arg(value_name = "SOURCE")]
    pub source: String,

    /// Directory of public keys to accept (default: the board's keyring).
    #[arg(long, value_name = "DIR")]
    pub keyring: Option<PathBuf>,

    /// The slot to write, on boards with more than one slot besides the running one.
    #[arg(long, value_name = "NAME")]
    pub slot: Option<String>,

    /// Progress reports: a bar on a terminal, or one JSON object a line on standard output
    /// (`{"version":1,"phase":...,"done":...,"total":...,"verified":...}`: bytes written,
    /// or read back in the `check` phase, of `total`; `verified`, the bytes read back so far,
    /// which overlaps the writing) for OTA agents.
    #[arg(long, value_enum, default_value_t = crate::install::ProgressMode::Auto)]
    pub progress: crate::install::ProgressMode,

    /// Consecutive network failures to retry before giving up.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub retries: u32,

    /// Seconds before the first retry; each further one waits twice as long (at most 60).
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    pub retry_wait: f64,
}

#[derive(Debug, Subcommand)]
pub enum BundleOp {
    /// Build a signed bundle from one or more slot images.
    #[command(long_about = "Build a signed bundle from one or more slot images.\n\n\
        Each image is cut into chunks compressed independently with zstd, so devices can \
        decode on every core and resume an interrupted download at any chunk. The same \
        images, options and key always give the same bytes: the creation time is \
        --created, else $SOURCE_DATE_EPOCH, else the newest image's modification time.")]
    Create(CreateArgs),
    /// Show what a bundle contains (checked against a keyring when one is given).
    Info {
        #[arg(value_name = "BUNDLE")]
        bundle: PathBuf,
        /// Check the signature against these public keys.
        #[arg(long, value_name = "DIR")]
        keyring: Option<PathBuf>,
        /// One JSON object (with a "version" field) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check a whole bundle: signature, every chunk, every image hash.
    Verify {
        #[arg(value_name = "BUNDLE")]
        bundle: PathBuf,
        /// Directory of public keys to accept.
        #[arg(long, value_name = "DIR", required = true)]
        keyring: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Secret key to sign with (PEM, from `abup keygen` or `openssl genpkey -algorithm ed25519`).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The board string the bundle is for (1 to 128 printable ASCII characters); devices
    /// refuse other strings.
    #[arg(long, value_name = "STRING")]
    pub compatible: String,
    /// The version shown to people: 1 to 128 printable ASCII characters.
    #[arg(long, value_name = "STRING")]
    pub version: String,
    /// Anti-rollback counter: devices refuse bundles below the highest they have confirmed.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub security_version: u64,
    /// Creation time in seconds since 1970 (default: $SOURCE_DATE_EPOCH, else the newest
    /// image's modification time).
    #[arg(long, value_name = "SECONDS")]
    pub created: Option<u64>,
    /// Uncompressed bytes per chunk (a power of two from 64 KiB to 1 MiB, the most a device
    /// installs).
    #[arg(long, default_value_t = 1024 * 1024, value_name = "BYTES")]
    pub chunk_size: u32,
    /// zstd level (1 fastest to 19 smallest).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub level: i32,
    /// Store chunks uncompressed.
    #[arg(long)]
    pub no_compression: bool,
    /// An image and its slot class: CLASS=FILE, or FILE for the rootfs class. Repeat for
    /// several images.
    #[arg(long = "image", value_name = "[CLASS=]FILE", required = true)]
    pub images: Vec<String>,
    /// Where to write the bundle.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum GenerateOp {
    /// Man pages for abup and each subcommand, into DIR.
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// A completion script for SHELL, on standard output.
    Completions {
        #[arg(value_enum, value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
}
