//! The command line, as clap sees it. `--help`, the man pages and the shell completions are
//! all generated from these definitions, so the help text is the reference documentation.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit status (docs/exit-status.md):
  0  success
  1  the operation failed; the message says what was left unchanged
  2  the command line is wrong
  3  `env get`: the variable is not set
  4  the bundle is refused or damaged, and trying it again will not help (signature,
     board, security version, size, a chunk that does not match its hash; `install`
     and `bundle verify` alike); a disk `provision` will not overwrite or a board file
     it lacks, a root `split-root` cannot split
  5  another install is running: try again later
  6  the bundle's source is unavailable after abup's retries (network, HTTP 5xx, a
     timeout): the same command later resumes
  7  a pre- or post-install hook failed; the new slot was not activated
  8  the running slot is not confirmed: run `abup mark-good` once it works";

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
    /// Show the booted slot, the state of every slot, and a running or interrupted install.
    #[command(
        long_about = "Show the booted slot, the state of every slot, and a running or \
        interrupted install.\n\n\
        The booted slot comes from abup.slot= on the kernel command line (the board's boot \
        script sets it), else from root=, else from the device mounted at /. Every command \
        that needs the booted slot reads the command line from /proc/cmdline, or from the \
        file the environment variable ABUP_PROC_CMDLINE names: for an initramfs or chroot \
        whose /proc is not the target system's, and for tests. For every slot: \
        its place in the boot order, the tries the bootloader will still make, whether it is \
        good (the bootloader may boot it) and confirmed (the fallback of last resort), and \
        the version of the bundle abup installed or provisioned there. Also the slot the next \
        boot will start, whether a reboot is needed to try an activated slot, a slot that is \
        being tried and not yet confirmed, whether the last installed slot fell back, the \
        security floor, how the last install ended, and an install that runs (its process, \
        phase and percentage) or was interrupted (whether the same command continues it).\n\n\
        It answers at once during an install: it reads the bootloader environment under a \
        shared lock that an install holds only for its two environment updates, and never \
        waits for the install lock."
    )]
    Status {
        /// Print one JSON object (schema version 2, docs/status-json.md) instead of text.
        #[arg(long)]
        json: bool,
        /// Also show the history kept in the state directory (the last 100 installs,
        /// refusals, confirmations and fallbacks, oldest first); with --json, as the
        /// "history" array.
        #[arg(long)]
        history: bool,
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
        below the floor are refused. Refused for a slot below the floor, for the slot an \
        unfinished install is writing, and for a slot other than the booted one that holds no \
        bundle abup installed (slot B of a new device, a slot whose install failed): it could \
        hold anything. The booted slot can always be confirmed, whatever put it there. One \
        environment update."
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
        synced chunk, asking a web server for the rest with a Range request. A server that \
        ignores Range (python's http.server) sends the bundle from its start instead: abup \
        reads it from the start once in the run, checking every chunk against its hash and \
        writing only the chunks not on the slot yet. `abup status` shows the interrupted \
        install; --abort drops it instead (the target stays out of rotation).\n\n\
        URLs are fetched over https with the system's CA store (SSL_CERT_FILE, SSL_CERT_DIR, \
        /etc/ssl/certs) and any private CA (--ca), a client certificate (--cert, --key) and \
        headers (--header) as board.toml's [http] and the flags below say; through the proxy \
        that https_proxy, http_proxy or all_proxy names, except for no_proxy hosts, as curl \
        does. A redirect from https to plain http is refused. Failures that may pass (the \
        network, HTTP 5xx, timeouts) are retried with growing waits, then exit with status 6; \
        the rest (4xx, TLS, a changed bundle) fail at once. See docs/https.md.\n\n\
        A delta bundle (built with `abup bundle create --delta-from`) installs the same way: \
        it reads the running slot (read-only, direct I/O) for the data that did not change, \
        each base range checked against its hash. If the running slot is not the base the \
        delta was built against, a sample of base ranges checked before anything is written \
        shows it and the install is refused (exit status 4) with one line naming the base it \
        needs and the base it found; a base that differs in a few places only (a root that \
        was mounted read-write) stops the install when it reaches them, before anything is \
        activated (exit status 1). With --fallback naming the full bundle of the same \
        release, every base range is checked first and the chunks that cannot be rebuilt are \
        fetched from it instead (HTTP Range requests for a URL), at most --max-download \
        bytes. --dry-run reports how many bytes \
        would come from the bundle, the base and the fallback, and writes nothing.\n\n\
        For OTA agents: --progress=json prints one JSON object a line on standard output \
        and nothing else (docs/progress-json.md): the phase, bytes downloaded and written, a \
        percentage over the whole install and an estimate of the time left, then always a \
        last `result` line with the exit status, the one-line message, the target slot, the \
        bundle version and whether a reboot is needed. A reader that goes away does not stop \
        the install. Messages go to standard error, with syslog priorities when it is the \
        systemd journal."
    )]
    Install(InstallArgs),

    /// Lay out a blank disk as the board describes it and write the first image.
    #[command(
        long_about = "Lay out a blank disk as the board describes it and write the \
        first image.\n\n\
        For the factory. DISK is a block device or an image file (created at the size the \
        layout needs when it does not exist and has no \"rest\" partition). abup writes a GPT \
        with the board's [[partition]] tables (board.toml), creates their vfat and ext4 \
        filesystems, writes BUNDLE's image into the first slot (every slot with --both) \
        through the install's verified pipeline and records its version in the state \
        directory, writes the board's boot script (script-path, compiled with mkimage for \
        U-Boot) and boot files ([[boot-file]]), and creates the bootloader environment with \
        the first slot first and confirmed (on U-Boot, after the defaults from initial-env). \
        Partitions are reached through loop devices over their ranges of DISK and the \
        filesystems mounted in a temporary directory, so it needs root.\n\n\
        A board file that is missing beside board.toml, and a disk that holds a partition \
        table or a filesystem, are refused (exit status 4) before anything is written, the \
        disk unless --force. Cut at any point (power, kill), the same command finishes the job: a \
        disk whose table is exactly the board's layout is taken for one it started, and its \
        journal in the state directory says where it stopped. On a disk it finished, it \
        changes nothing and says so. Ends with one line, or one JSON object with --json."
    )]
    Provision(ProvisionArgs),

    /// Split a lone ext4 root partition into slots A and B, from the initramfs.
    #[command(
        name = "split-root",
        long_about = "Split a lone ext4 root partition into slots A and B, from the \
        initramfs.\n\n\
        For devices in the field whose root partition fills the disk. Run before the root \
        filesystem is mounted (the initramfs hook and busybox script in initramfs/ do). The \
        ext4 filesystem is shrunk in place to the first half of its partition (slot A: the \
        same filesystem, every file unchanged), the GPT gives the freed half to a new \
        partition of the same type (slot B), and the bootloader environment is created with \
        A first and confirmed, so the next `abup install` writes B. The root partition is \
        slot A's device from board.toml, or --disk and --partition.\n\n\
        Refused with nothing changed (exit status 4) when the partition does not hold ext4, \
        the filesystem has errors, it is too full to leave B half the partition (the message \
        says how much to free), or the work directory has no room for the backup of the \
        blocks the shrink changes.\n\n\
        Cut at any point (power, kill), the same command finishes the split: the plan and a \
        marker per finished step are files in --work-dir; before resize2fs runs, every block \
        it is going to change is saved there (found by a dry run on a metadata copy), so a \
        cut shrink is undone by writing them back, then done again. Until the environment exists \
        the bootloader must load the kernel from outside the root filesystem (docs/\
        split-root.md). On a split it finished, it changes nothing and says so."
    )]
    SplitRoot(SplitRootArgs),

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
        replaces a damaged environment with defaults. Use `create` to make a new one. One \
        exception, as in grub-editenv: `set` or `unset` on a single --grub FILE that does not \
        exist creates it (1024 bytes, holding the variables set), byte for byte as \
        `grub-editenv FILE set` does. `get` and `list` never create a file, nor does anything \
        on a pair of --grub files or the board's own environment: they fail with a message \
        naming `create`.\n\n\
        --grub, --uboot-config and --lock-file may come before or after the operation \
        (`abup env --grub FILE set K=V` or `abup env set --grub FILE K=V`).")]
    Env(EnvArgs),
}

#[derive(Debug, Args)]
pub struct ProvisionArgs {
    /// The disk: a block device or an image file.
    #[arg(long, value_name = "DEV|FILE")]
    pub disk: PathBuf,

    /// The bundle whose image the first slot gets: a file, - or an http(s) URL. Without
    /// it, the disk is laid out and the environment created, and the slots stay empty.
    #[arg(value_name = "BUNDLE")]
    pub bundle: Option<String>,

    /// Write the image into every slot, not only the first.
    #[arg(long)]
    pub both: bool,

    /// Overwrite a disk that holds partitions or filesystems, and start over on one an
    /// earlier run began.
    #[arg(long)]
    pub force: bool,

    /// Print one JSON object (with a "version" field) instead of the summary line.
    #[arg(long)]
    pub json: bool,

    /// Check the bundle against this keyring directory instead of the board's.
    #[arg(long, value_name = "DIR")]
    pub keyring: Option<PathBuf>,

    /// How to show the image write's progress (as for install).
    #[arg(long, value_enum, default_value_t = crate::install::ProgressMode::Auto)]
    pub progress: crate::install::ProgressMode,

    #[command(flatten)]
    pub http: HttpArgs,
}

/// How bundles at http(s) URLs are fetched, on top of board.toml's `[http]` (docs/https.md).
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Fetching from http(s) URLs (board.toml [http] gives defaults)")]
pub struct HttpArgs {
    /// Trust the CA certificates in FILE (PEM), besides the system's store (SSL_CERT_FILE,
    /// SSL_CERT_DIR, else /etc/ssl/certs) and board.toml's [http] ca. Repeatable.
    #[arg(long = "ca", value_name = "FILE")]
    pub ca: Vec<PathBuf>,

    /// Present this client certificate (PEM, the chain after it) to servers that ask for
    /// one, instead of board.toml's [http] cert. Needs --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,

    /// The client certificate's private key (unencrypted PEM: PKCS#8, RSA or EC).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,

    /// Send this header with every request to the URL's host (not to another host a
    /// redirect leads to), e.g. 'Authorization: TargetToken 4a2c...'. Repeatable; replaces
    /// board.toml's [http] headers of the same name. Its value is never printed or stored,
    /// but a command line is visible to every user of the machine (ps): keep secrets in
    /// board.toml.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,

    /// The most seconds the whole download may take, retries included; past it abup gives
    /// up with exit status 6 and the same command later resumes. Default: board.toml's
    /// [http] timeout, else no limit (a stalled connection is still dropped and retried
    /// after 60 seconds of silence).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,

    /// Consecutive failures that may pass (connection, HTTP 5xx, 408 or 429, a timeout) to
    /// retry before giving up with exit status 6; progress resets the count. Errors that
    /// cannot change (4xx, TLS, a malformed answer, a changed bundle) are never retried.
    /// Default: board.toml's [http] retries, else 5.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=i64::from(crate::board::MAX_RETRIES)))]
    pub retries: Option<u32>,

    /// Seconds before the first retry; each further one waits twice as long, at most 60.
    /// Default: board.toml's [http] retry-wait, else 1.
    #[arg(long, value_name = "SECONDS")]
    pub retry_wait: Option<f64>,
}

impl HttpArgs {
    /// The flags as settings to lay over board.toml's (`HttpConfig::overridden_by`). A bad
    /// header is named without its value.
    pub fn config(&self) -> anyhow::Result<crate::board::HttpConfig> {
        use crate::board::{seconds, Header, MAX_RETRY_WAIT, MAX_TIMEOUT};
        let headers = self
            .headers
            .iter()
            .map(|h| Header::parse(h).map_err(|e| anyhow::anyhow!("--header: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let secs = |what: &str, v: Option<f64>, min: f64, max: f64| {
            v.map(|v| seconds(what, v, min, max))
                .transpose()
                .map_err(anyhow::Error::msg)
        };
        Ok(crate::board::HttpConfig {
            ca: self.ca.clone(),
            client_cert: self.cert.clone().zip(self.key.clone()),
            headers,
            timeout: secs(
                "--timeout",
                self.timeout,
                crate::board::MIN_TIMEOUT,
                MAX_TIMEOUT,
            )?,
            retries: self.retries,
            retry_wait: secs("--retry-wait", self.retry_wait, 0.0, MAX_RETRY_WAIT)?,
        })
    }
}

#[derive(Debug, Args)]
pub struct SplitRootArgs {
    /// Where the plan, the step markers and the backup of the blocks the shrink changes
    /// live: a directory on another filesystem than the root partition's (e.g. on the ESP),
    /// with room for the backup (the metadata the shrink rewrites: a few MiB per GiB).
    #[arg(long, value_name = "DIR")]
    pub work_dir: PathBuf,

    /// The disk, when the root partition is not slot A's device: a block device or an
    /// image file.
    #[arg(long, value_name = "DEV|FILE", requires = "partition")]
    pub disk: Option<PathBuf>,

    /// The root partition's number on the disk (1-based).
    #[arg(long, value_name = "N")]
    pub partition: Option<u32>,

    /// The GPT name of the new partition (default: the board's [[partition]] of the second
    /// slot, else rootfs-b).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Print one JSON object (with a "version" field) instead of the summary line.
    #[arg(long)]
    pub json: bool,
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
    #[command(flatten)]
    pub files: EnvFiles,

    #[command(subcommand)]
    pub op: EnvOp,
}

/// Which environment `abup env` works on. Each operation accepts the same options, so they
/// may come before or after it (`abup env --grub FILE set K=V`, `abup env set --grub FILE
/// K=V`); the two places are taken together.
#[derive(Debug, Clone, Default, Args)]
pub struct EnvFiles {
    /// A GRUB environment block; give it twice for abup's pair of blocks (copy 0, copy 1).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "uboot_config",
        action = clap::ArgAction::Append
    )]
    pub grub: Vec<PathBuf>,

    /// A fw_env.config or libubootenv YAML file describing a U-Boot environment.
    #[arg(long, value_name = "FILE")]
    pub uboot_config: Option<PathBuf>,

    /// The lock file shared with fw_printenv/fw_setenv (default: the one the configuration
    /// names, else /var/lock/fw_printenv.lock). Only with --uboot-config.
    #[arg(long, value_name = "FILE")]
    pub lock_file: Option<PathBuf>,
}

/// A command line that clap accepts but that says contradictory things (`env` options before
/// and after the operation that do not fit together): exit status 2, as for clap's own errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

impl EnvArgs {
    /// The environment options given before and after the operation, together.
    pub fn files(&self) -> Result<EnvFiles, Usage> {
        let (before, after) = (&self.files, self.op.files());
        let once = |a: &Option<PathBuf>, b: &Option<PathBuf>, name: &str| match (a, b) {
            (Some(_), Some(_)) => Err(Usage(format!("give --{name} once"))),
            _ => Ok(a.clone().or_else(|| b.clone())),
        };
        let files = EnvFiles {
            grub: before.grub.iter().chain(&after.grub).cloned().collect(),
            uboot_config: once(&before.uboot_config, &after.uboot_config, "uboot-config")?,
            lock_file: once(&before.lock_file, &after.lock_file, "lock-file")?,
        };
        match (&files.grub[..], &files.uboot_config, &files.lock_file) {
            ([_, _, _, ..], _, _) => Err(Usage(
                "give --grub once (one block) or twice (a pair of blocks)".to_owned(),
            )),
            ([_, ..], Some(_), _) => {
                Err(Usage("give --grub or --uboot-config, not both".to_owned()))
            }
            (_, None, Some(_)) => Err(Usage(
                "--lock-file is for a U-Boot environment: give --uboot-config too".to_owned(),
            )),
            _ => Ok(files),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum EnvOp {
    /// Print a variable's value and a newline; exit status 3 if it is not set.
    Get {
        #[arg(value_name = "NAME")]
        name: String,
        #[command(flatten)]
        files: EnvFiles,
    },
    /// Set variables, all in one update; an empty value removes a U-Boot variable.
    Set {
        #[arg(value_name = "NAME=VALUE", required = true)]
        assignments: Vec<String>,
        #[command(flatten)]
        files: EnvFiles,
    },
    /// Remove variables, all in one update; absent names are not an error.
    Unset {
        #[arg(value_name = "NAME", required = true)]
        names: Vec<String>,
        #[command(flatten)]
        files: EnvFiles,
    },
    /// Print every variable as NAME=VALUE, one per line.
    List {
        #[command(flatten)]
        files: EnvFiles,
    },
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
        #[command(flatten)]
        files: EnvFiles,
    },
}

impl EnvOp {
    /// The environment options given after the operation.
    pub fn files(&self) -> &EnvFiles {
        match self {
            EnvOp::Get { files, .. }
            | EnvOp::Set { files, .. }
            | EnvOp::Unset { files, .. }
            | EnvOp::List { files }
            | EnvOp::Create { files, .. } => files,
        }
    }
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// A bundle file, - for standard input, or an http:// or https:// URL.
    #[arg(value_name = "SOURCE", required_unless_present = "abort")]
    pub source: Option<String>,

    /// Drop an interrupted install instead of continuing it: its journal and held-back
    /// blocks go, so the next install starts over; the slot it was writing stays out of
    /// rotation and nothing else changes. Exit status 5 while an install runs; nothing to
    /// do (and status 0) when there is no interrupted install.
    #[arg(long, conflicts_with_all = ["source", "fallback", "dry_run", "slot"])]
    pub abort: bool,

    /// Directory of public keys to accept (default: the board's keyring).
    #[arg(long, value_name = "DIR")]
    pub keyring: Option<PathBuf>,

    /// The slot to write, on boards with more than one slot besides the running one.
    #[arg(long, value_name = "NAME")]
    pub slot: Option<String>,

    /// For a delta bundle: the full bundle of the same release (a file or an http(s) URL),
    /// from which the chunks that the running slot cannot rebuild are fetched, each checked
    /// against that bundle's signed manifest. Without it a base that does not match stops the
    /// install before anything is written.
    #[arg(long, value_name = "SOURCE")]
    pub fallback: Option<String>,

    /// The most bytes the fallback may supply (suffixes K, M, G: powers of 1024); an install
    /// that would need more stops before writing, or, if the base changes under it, before
    /// activating anything.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub max_download: Option<u64>,

    /// Check everything an install checks (signature, board, security floor, target, and
    /// every base range of a delta, not only a sample) and report how many bytes would come from the bundle, the
    /// running slot and the fallback; write nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Progress reports: a bar on a terminal (auto), or for OTA agents one JSON object a
    /// line on standard output, schema version 2 (docs/progress-json.md): `version`,
    /// `event` ("progress", and "result" for the last line), `phase` (plan, base-check,
    /// pre-install, invalidate, write, read-back, post-install, activate),
    /// `bytes_downloaded`, `download_total`, `bytes_written`, `write_total`,
    /// `bytes_read_back`, `percent` (0 to 100 over the whole install, never going back),
    /// `eta_s`, `time`; the result adds `ok`, `exit_code`, `message`, `target`,
    /// `bundle_version` and `reboot_required`.
    #[arg(long, value_enum, default_value_t = crate::install::ProgressMode::Auto)]
    pub progress: crate::install::ProgressMode,

    #[command(flatten)]
    pub http: HttpArgs,
}

/// A byte count as board files write them too: digits, optionally followed by K, M, G or T
/// (powers of 1024).
fn parse_bytes(s: &str) -> Result<u64, String> {
    crate::disk::layout::parse_bytes(s)
        .ok_or_else(|| format!("{s:?} is not a byte count like 50000000, 512K, 40M or 2G"))
}

#[derive(Debug, Subcommand)]
pub enum BundleOp {
    /// Build a signed bundle from one or more slot images.
    #[command(long_about = "Build a signed bundle from one or more slot images.\n\n\
        Each image is cut into chunks compressed independently with zstd, so devices can \
        decode on every core and resume an interrupted download at any chunk. The same \
        images, options and key always give the same bytes: the creation time is \
        --created, else $SOURCE_DATE_EPOCH, else the newest image's modification time.\n\n\
        With --delta-from, an image becomes a delta against the image a device's running \
        slot holds (the base): each chunk is then zeros, a copy of base bytes found anywhere \
        in the base, a zstd frame patched against a window of base bytes (at most 8 MiB: \
        for ext4 images, the old version of each file the chunk holds, paired by path or by \
        path with its version numbers changed; and the new image's own earlier bytes where \
        they repeat), or plain data. Devices holding that base \
        download only what changed; a device whose slot does not match the base refuses \
        the delta before writing anything (or completes it from a full bundle given with \
        `abup install --fallback`). Building a delta reads both images into memory and \
        compresses at level 19 by default: for a pair of 1.5 GiB ext4 root filesystems it \
        takes 3.7 to 4.3 GiB of memory and 1.5 to 6 minutes on two cores, depending on \
        how much changed (see the README's performance section). Build the base from exactly the image the devices were \
        given; a delta checks every byte it reads from the base.")]
    Create(CreateArgs),
    /// Show what a bundle contains (checked against a keyring when one is given).
    #[command(
        long_about = "Show what a bundle contains (checked against a keyring when one \
        is given).\n\n\
        BUNDLE is a file, - for standard input, or an http(s) URL. Only the bundle's front is \
        read (header, manifest and signature): from a URL with Range requests, so the payload \
        is not downloaded (a server that ignores Range is read only as far as the front). \
        Fetching follows board.toml's [http] when a board configuration exists, and the \
        flags below."
    )]
    Info {
        /// A bundle file, - for standard input, or an http:// or https:// URL.
        #[arg(value_name = "BUNDLE")]
        bundle: String,
        /// Check the signature against these public keys.
        #[arg(long, value_name = "DIR")]
        keyring: Option<PathBuf>,
        /// One JSON object (with a "version" field) instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        http: HttpArgs,
    },
    /// Check a whole bundle: signature, every chunk, every image hash.
    #[command(
        long_about = "Check a whole bundle: signature, every chunk, every image \
        hash.\n\n\
        BUNDLE is a file, - for standard input, or an http(s) URL, read once front to back. \
        The signature is checked against --keyring, else the board's keyring (board.toml's \
        [install] keyring, as install uses it). A damaged or refused bundle exits with status \
        4, as install does; a URL that cannot be read after the retries, with 6."
    )]
    Verify {
        /// A bundle file, - for standard input, or an http:// or https:// URL.
        #[arg(value_name = "BUNDLE")]
        bundle: String,
        /// Directory of public keys to accept (default: the board's keyring).
        #[arg(long, value_name = "DIR")]
        keyring: Option<PathBuf>,
        /// The base a delta image was built against (CLASS=FILE, or FILE for rootfs): the
        /// image is then rebuilt and its hash checked. Without it only a delta's stored
        /// chunks are checked.
        #[arg(long = "base", value_name = "[CLASS=]FILE")]
        bases: Vec<String>,
        #[command(flatten)]
        http: HttpArgs,
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
    /// zstd level (1 fastest to 19 smallest; default 3, and 19 for deltas).
    #[arg(long, value_name = "N")]
    pub level: Option<i32>,
    /// Store chunks uncompressed.
    #[arg(long)]
    pub no_compression: bool,
    /// An image and its slot class: CLASS=FILE, or FILE for the rootfs class. Repeat for
    /// several images.
    #[arg(long = "image", value_name = "[CLASS=]FILE", required = true)]
    pub images: Vec<String>,
    /// Build the image of the same class as a delta against OLD, the image the devices'
    /// running slot holds: CLASS=OLD, or OLD for the rootfs class. Repeat for several
    /// images; an image without one stays full.
    #[arg(long = "delta-from", value_name = "[CLASS=]OLD")]
    pub delta_from: Vec<String>,
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
