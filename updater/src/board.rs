//! The board configuration: which slots exist, where they are, which bootloader decides
//! between them and where it keeps its environment. One TOML file per board
//! (`board-configs/<board>/board.toml`), installed on the device as `/etc/abup/board.toml`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bootcount::{Scheme, Slots};
use serde::Deserialize;

/// Where abup looks for the board file unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/abup/board.toml";

/// Where abup keeps what must survive updates (install journal, installed bundle versions,
/// the security version floor): on the data partition, mounted at /data as on the shipped
/// boards, never in a slot (`/var/lib` would be inside the root filesystem a slot holds).
pub const DEFAULT_STATE_DIR: &str = "/data/abup";

/// Public keys that may sign bundles, one PEM file each.
pub const DEFAULT_KEYRING: &str = "/etc/abup/keyring";

/// The slot class of each slot's `device`; bundle images for other classes go to the devices
/// a slot lists under `classes`.
pub const ROOTFS_CLASS: &str = "rootfs";

/// A board file is a few hundred bytes; anything near this is not one.
pub const MAX_SIZE: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read board configuration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "board configuration {path} is too large: more than the {MAX_SIZE} bytes a board file \
         can be; check ABUP_CONFIG or --config"
    )]
    TooLarge { path: PathBuf },
    #[error("board configuration {path} is not UTF-8 text: {source}")]
    NotText {
        path: PathBuf,
        source: std::string::FromUtf8Error,
    },
    #[error("board configuration {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("board configuration {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The bootloader and where its environment lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootloader {
    /// GRUB with abup's pair of 512-byte blocks (power-safe) or, for boards migrating from
    /// RAUC, a single block.
    Grub { env: GrubEnv },
    /// U-Boot, its environment described by a `fw_env.config` or libubootenv YAML file.
    UBoot {
        config: PathBuf,
        /// U-Boot's default environment (`u-boot-initial-env` of its build), relative to the
        /// board file: a saved environment replaces the built-in one, so provisioning must
        /// put the defaults in it beside the slot variables.
        initial_env: Option<PathBuf>,
    },
}

/// Where provisioning writes the boot script (the concatenated `script` parts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptPath {
    /// A path of the running system, on a partition of the layout.
    pub path: PathBuf,
    /// mkimage's `-A` for a compiled U-Boot script (`.scr`): U-Boot's `source` command
    /// reads only a legacy image, so the text is wrapped with `mkimage -T script`.
    pub mkimage_arch: Option<String>,
}

/// A file provisioning copies onto the disk as it is: a bootloader binary, firmware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFile {
    /// Relative to the board file, or absolute: a file of the factory station.
    pub source: PathBuf,
    /// A path of the running system, on a partition of the layout.
    pub destination: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrubEnv {
    Pair([PathBuf; 2]),
    Single(PathBuf),
}

/// A validated board configuration.
#[derive(Debug, Clone)]
pub struct Board {
    pub name: String,
    pub compatible: String,
    pub description: String,
    pub bootloader: Bootloader,
    pub scheme: Scheme,
    pub slots: Slots,
    /// Block device of each slot, in the order of `slots`.
    pub devices: Vec<PathBuf>,
    /// Devices of further slot classes (an application partition, say), per slot.
    pub classes: Vec<BTreeMap<String, PathBuf>>,
    /// The parts of the boot script, relative to the board file; concatenated in order they
    /// are the script the bootloader runs, which provisioning writes to `script_path`.
    pub script: Vec<PathBuf>,
    pub script_path: Option<ScriptPath>,
    pub boot_files: Vec<BootFile>,
    pub install: InstallConfig,
    /// How bundles are fetched over http(s): trust, credentials, retries.
    pub http: HttpConfig,
    /// The disk's partitions, for provisioning; empty when the board file has none.
    pub layout: Vec<crate::disk::layout::Partition>,
}

/// How installs run on this board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallConfig {
    pub state_dir: PathBuf,
    pub keyring: PathBuf,
    /// Runs after the bundle is verified and checked, before anything is written.
    pub pre_install: Option<PathBuf>,
    /// Runs after the slot is written and verified, before it is activated.
    pub post_install: Option<PathBuf>,
    /// Mount the target's root filesystem for the post-install hook.
    pub post_install_mount: bool,
}

/// How bundles are fetched over http(s), from `[http]`; the command line's flags override
/// or extend it ([`HttpConfig::overridden_by`]). Every path is absolute.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HttpConfig {
    /// PEM files of CAs trusted besides the system's store.
    pub ca: Vec<PathBuf>,
    /// A client certificate (PEM, the chain in order) and its private key (PEM).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Sent with every request to the URL's own host.
    pub headers: Vec<Header>,
    /// The most the whole download may take.
    pub timeout: Option<Duration>,
    /// Consecutive network failures retried before giving up.
    pub retries: Option<u32>,
    /// The wait before the first retry; each further one doubles.
    pub retry_wait: Option<Duration>,
}

/// The most retries `[http] retries` and `--retries` allow: with the waits doubling up to a
/// minute, more would keep a failing install going for hours.
pub const MAX_RETRIES: u32 = 100;

/// The longest first wait between retries, in seconds.
pub const MAX_RETRY_WAIT: f64 = 60.0;

impl HttpConfig {
    /// These settings with `cli`'s laid over them: CAs add up; a client certificate, the
    /// timeout and the retry settings replace the board's; a header replaces the board's
    /// headers of the same name and adds to the rest.
    pub fn overridden_by(&self, cli: HttpConfig) -> HttpConfig {
        let mut headers: Vec<Header> = self
            .headers
            .iter()
            .filter(|h| !cli.headers.iter().any(|c| c.same_name(h)))
            .cloned()
            .collect();
        headers.extend(cli.headers);
        HttpConfig {
            ca: self.ca.iter().cloned().chain(cli.ca).collect(),
            client_cert: cli.client_cert.or_else(|| self.client_cert.clone()),
            headers,
            timeout: cli.timeout.or(self.timeout),
            retries: cli.retries.or(self.retries),
            retry_wait: cli.retry_wait.or(self.retry_wait),
        }
    }
}

/// One HTTP request header, `Name: value`. Its value is a secret as far as abup knows (an
/// `Authorization` token): `Debug` shows only the name, and nothing prints the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ***", self.name)
    }
}

/// Headers abup sets itself on every request: one given again would break the download.
const OWN_HEADERS: &[&str] = &[
    "range",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "accept-encoding",
    "if-range",
];

impl Header {
    /// `Name: value`, as curl's `-H` takes it. The name is an HTTP token, the value printable
    /// ASCII (spaces and tabs inside); a header abup sends itself (`Range`, `Host`, ...) is
    /// refused. Errors never repeat the value.
    pub fn parse(text: &str) -> Result<Header, String> {
        let Some((name, value)) = text.split_once(':') else {
            return Err(
                "a header is \"Name: value\" (e.g. \"Authorization: Bearer ...\"), with a colon \
                 after the name; this one has none"
                    .into(),
            );
        };
        let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(tchar) {
            return Err(format!(
                "header name {name:?} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"
            ));
        }
        if OWN_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "header {name} is one abup sets itself on every request; drop it"
            ));
        }
        let value = value.trim_matches([' ', '\t']);
        if !value
            .chars()
            .all(|c| c == ' ' || c == '\t' || c.is_ascii_graphic())
        {
            return Err(format!(
                "the value of header {name} holds a character other than printable ASCII \
                 (a line break, a control character or non-ASCII text)"
            ));
        }
        Ok(Header {
            name: name.to_owned(),
            value: value.to_owned(),
        })
    }

    /// Header names are case-insensitive.
    pub fn same_name(&self, other: &Header) -> bool {
        self.name.eq_ignore_ascii_case(&other.name)
    }
}

/// Seconds as a [`Duration`]: finite, and not below `min` nor above `max`.
pub fn seconds(what: &str, value: f64, min: f64, max: f64) -> Result<Duration, String> {
    if !(value.is_finite() && value >= min && value <= max) {
        return Err(format!(
            "{what} must be a number of seconds from {min} to {max}, not {value}"
        ));
    }
    Ok(Duration::from_secs_f64(value))
}

/// The longest `timeout` there is: a week, more than any download can need.
pub const MAX_TIMEOUT: f64 = 7.0 * 24.0 * 3600.0;

/// The shortest `timeout`: a millisecond (zero would fail every download at once).
pub const MIN_TIMEOUT: f64 = 0.001;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    board: BoardSection,
    bootloader: BootloaderSection,
    slot: Vec<SlotSection>,
    #[serde(default)]
    install: InstallSection,
    #[serde(default)]
    http: HttpSection,
    #[serde(default)]
    partition: Vec<crate::disk::layout::PartitionSection>,
    #[serde(default, rename = "boot-file")]
    boot_file: Vec<BootFileSection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BootFileSection {
    source: PathBuf,
    destination: PathBuf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct InstallSection {
    state_dir: Option<PathBuf>,
    keyring: Option<PathBuf>,
    pre_install: Option<PathBuf>,
    post_install: Option<PathBuf>,
    #[serde(default)]
    post_install_mount: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct HttpSection {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    #[serde(default)]
    headers: Vec<String>,
    timeout: Option<f64>,
    retries: Option<u32>,
    retry_wait: Option<f64>,
}

impl HttpSection {
    fn check(self) -> Result<HttpConfig, String> {
        for (what, p) in [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)] {
            if let Some(p) = p.as_ref().filter(|p| !p.is_absolute()) {
                return Err(format!(
                    "[http] {what} {} must be an absolute path",
                    p.display()
                ));
            }
        }
        let client_cert = match (self.cert, self.key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                return Err("[http] cert needs the certificate's private key: key = \"...\"".into())
            }
            (None, Some(_)) => {
                return Err(
                    "[http] key needs the client certificate it belongs to: cert = \"...\"".into(),
                )
            }
        };
        let headers = self
            .headers
            .iter()
            .map(|h| Header::parse(h).map_err(|e| format!("[http] headers: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(r) = self.retries.filter(|&r| r > MAX_RETRIES) {
            return Err(format!("[http] retries is {r}; at most {MAX_RETRIES}"));
        }
        Ok(HttpConfig {
            ca: self.ca.into_iter().collect(),
            client_cert,
            headers,
            timeout: self
                .timeout
                .map(|t| seconds("[http] timeout", t, MIN_TIMEOUT, MAX_TIMEOUT))
                .transpose()?,
            retries: self.retries,
            retry_wait: self
                .retry_wait
                .map(|w| seconds("[http] retry-wait", w, 0.0, MAX_RETRY_WAIT))
                .transpose()?,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BoardSection {
    name: String,
    compatible: String,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct BootloaderSection {
    #[serde(rename = "type")]
    kind: BootloaderKind,
    #[serde(default = "default_scheme")]
    scheme: SchemeName,
    tries: Option<u8>,
    #[serde(default)]
    script: Vec<PathBuf>,
    grubenv: Option<Vec<PathBuf>>,
    fw_env_config: Option<PathBuf>,
    script_path: Option<PathBuf>,
    mkimage_arch: Option<String>,
    initial_env: Option<PathBuf>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum BootloaderKind {
    Grub,
    UBoot,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum SchemeName {
    Abup,
    RaucGrub,
}

fn default_scheme() -> SchemeName {
    SchemeName::Abup
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SlotSection {
    name: String,
    device: PathBuf,
    #[serde(default)]
    classes: BTreeMap<String, PathBuf>,
}

/// RAUC's default; enough to ride out a crash or two of a good system, few enough that a
/// broken update falls back within minutes.
const DEFAULT_TRIES: u8 = 3;

impl Board {
    /// Reads and validates a board file, refusing anything larger than [`MAX_SIZE`]. The limit
    /// holds while reading (at most one byte more is read), not by the size the file claims
    /// beforehand: a file that grows meanwhile, or `/dev/zero`, would defeat that.
    pub fn load(path: &Path) -> Result<Board, Error> {
        let read_err = |source| Error::Read {
            path: path.to_owned(),
            source,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .map_err(read_err)?
            .take(MAX_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if bytes.len() as u64 > MAX_SIZE {
            return Err(Error::TooLarge {
                path: path.to_owned(),
            });
        }
        let text = String::from_utf8(bytes).map_err(|source| Error::NotText {
            path: path.to_owned(),
            source,
        })?;
        Board::parse(&text, path)
    }

    /// Parses board-file text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Board, Error> {
        let file: File = toml::from_str(text).map_err(|e| Error::Syntax {
            path: path.to_owned(),
            message: e.message().to_owned() + &line_of(text, e.span()),
        })?;
        let invalid = |message: String| Error::Invalid {
            path: path.to_owned(),
            message,
        };
        let bl = file.bootloader;
        let scheme = match bl.scheme {
            SchemeName::Abup => Scheme::Abup,
            SchemeName::RaucGrub => Scheme::RaucGrub,
        };
        let tries = bl.tries.unwrap_or(match scheme {
            Scheme::Abup => DEFAULT_TRIES,
            Scheme::RaucGrub => 1,
        });
        let names: Vec<&str> = file.slot.iter().map(|s| s.name.as_str()).collect();
        let slots = Slots::new(&names, tries, scheme).map_err(|e| invalid(e.to_string()))?;
        let layout = crate::disk::layout::parse(file.partition, &names).map_err(invalid)?;

        let bootloader = match bl.kind {
            BootloaderKind::Grub => {
                if bl.fw_env_config.is_some() {
                    return Err(invalid(
                        "fw-env-config is for U-Boot boards; GRUB boards name their grubenv".into(),
                    ));
                }
                if bl.initial_env.is_some() {
                    return Err(invalid(
                        "initial-env is U-Boot's default environment; drop it from a GRUB board"
                            .into(),
                    ));
                }
                let env =
                    match bl.grubenv.as_deref() {
                        Some([one]) => GrubEnv::Single(one.clone()),
                        Some([a, b]) => GrubEnv::Pair([a.clone(), b.clone()]),
                        _ => return Err(invalid(
                            "a GRUB board needs grubenv = [\"<copy 0>\", \"<copy 1>\"] (abup's \
                             power-safe pair) or one path (a RAUC-style single block)"
                                .into(),
                        )),
                    };
                if let GrubEnv::Pair([a, b]) = &env {
                    if a == b {
                        return Err(invalid(format!(
                            "the two grubenv copies must be different files, both are {}",
                            a.display()
                        )));
                    }
                }
                Bootloader::Grub { env }
            }
            BootloaderKind::UBoot => {
                if scheme == Scheme::RaucGrub {
                    return Err(invalid(
                        "scheme rauc-grub is RAUC's GRUB variables; U-Boot boards use scheme \
                         abup (RAUC's U-Boot variable names)"
                            .into(),
                    ));
                }
                if bl.grubenv.is_some() {
                    return Err(invalid(
                        "grubenv is for GRUB boards; U-Boot boards name their fw-env-config".into(),
                    ));
                }
                let config = bl.fw_env_config.ok_or_else(|| {
                    invalid(
                        "a U-Boot board needs fw-env-config = \"/etc/fw_env.config\" (or a \
                         libubootenv YAML file)"
                            .into(),
                    )
                })?;
                Bootloader::UBoot {
                    config,
                    initial_env: bl.initial_env,
                }
            }
        };

        for s in &file.slot {
            for (class, device) in std::iter::once((ROOTFS_CLASS, &s.device))
                .chain(s.classes.iter().map(|(c, d)| (c.as_str(), d)))
            {
                if !device.is_absolute() {
                    return Err(invalid(format!(
                        "slot {}: {class} device {} must be an absolute path",
                        s.name,
                        device.display()
                    )));
                }
            }
            if s.classes.contains_key(ROOTFS_CLASS) {
                return Err(invalid(format!(
                    "slot {}: the {ROOTFS_CLASS} class is the slot's device; list only other classes",
                    s.name
                )));
            }
            if s.classes.keys().ne(file.slot[0].classes.keys()) {
                return Err(invalid(format!(
                    "slot {} has the classes {:?} but slot {} has {:?}: every slot needs the same",
                    s.name,
                    s.classes.keys().collect::<Vec<_>>(),
                    file.slot[0].name,
                    file.slot[0].classes.keys().collect::<Vec<_>>()
                )));
            }
        }
        let script_path = script_path(
            bl.script_path,
            bl.mkimage_arch,
            !bl.script.is_empty(),
            &bootloader,
        )
        .map_err(invalid)?;
        let boot_files: Vec<BootFile> = file
            .boot_file
            .into_iter()
            .map(|f| BootFile {
                source: f.source,
                destination: f.destination,
            })
            .collect();
        let mut written: Vec<&Path> = script_path.iter().map(|s| s.path.as_path()).collect();
        for f in &boot_files {
            if f.source.as_os_str().is_empty() {
                return Err(invalid(format!(
                    "boot-file {}: source is empty; name the file to copy",
                    f.destination.display()
                )));
            }
            check_running_path("boot-file destination", &f.destination).map_err(invalid)?;
            if written.contains(&f.destination.as_path()) {
                return Err(invalid(format!(
                    "two files are written to {}: give each boot-file its own destination",
                    f.destination.display()
                )));
            }
            written.push(&f.destination);
        }
        if !layout.is_empty() {
            for p in written {
                if !layout
                    .iter()
                    .filter_map(|l| l.mount.as_deref())
                    .any(|m| p.starts_with(m))
                {
                    return Err(invalid(format!(
                        "{} is on none of the [[partition]] mounts: give the partition that \
                         holds it a mount = \"...\"",
                        p.display()
                    )));
                }
            }
        }
        let http = file.http.check().map_err(invalid)?;
        let install = file.install;
        for (what, p) in [
            ("pre-install", &install.pre_install),
            ("post-install", &install.post_install),
        ] {
            if let Some(p) = p.as_ref().filter(|p| !p.is_absolute()) {
                return Err(invalid(format!(
                    "{what} hook {} must be an absolute path",
                    p.display()
                )));
            }
        }
        let mut seen: Vec<&Path> = Vec::new();
        for s in &file.slot {
            for d in std::iter::once(&s.device).chain(s.classes.values()) {
                if seen.contains(&d.as_path()) {
                    return Err(invalid(format!("slots share the device {}", d.display())));
                }
                seen.push(d);
            }
        }
        if file.board.name.trim().is_empty() || file.board.compatible.trim().is_empty() {
            return Err(invalid(
                "board name and compatible must not be empty".into(),
            ));
        }

        Ok(Board {
            name: file.board.name,
            compatible: file.board.compatible,
            description: file.board.description,
            bootloader,
            scheme,
            slots,
            classes: file.slot.iter().map(|s| s.classes.clone()).collect(),
            devices: file.slot.into_iter().map(|s| s.device).collect(),
            script: bl.script,
            script_path,
            boot_files,
            install: InstallConfig {
                state_dir: install
                    .state_dir
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
                keyring: install
                    .keyring
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_KEYRING)),
                pre_install: install.pre_install,
                post_install: install.post_install,
                post_install_mount: install.post_install_mount,
            },
            http,
            layout,
        })
    }

    pub fn device(&self, slot: bootcount::SlotId) -> &Path {
        &self.devices[slot.0]
    }

    /// The device of `slot` that holds images of `class`.
    pub fn class_device(&self, slot: bootcount::SlotId, class: &str) -> Option<&Path> {
        if class == ROOTFS_CLASS {
            Some(self.device(slot))
        } else {
            self.classes[slot.0].get(class).map(PathBuf::as_path)
        }
    }

    /// The bootloader's name as `abup status` reports it.
    pub fn bootloader_name(&self) -> &'static str {
        match self.bootloader {
            Bootloader::Grub { .. } => "grub",
            Bootloader::UBoot { .. } => "u-boot",
        }
    }
}

/// mkimage's names for `-A` (`mkimage -A list` in U-Boot 2023.01), so a typo is caught when
/// the board file is read rather than at the factory.
const MKIMAGE_ARCHES: &[&str] = &[
    "alpha",
    "arc",
    "arm",
    "arm64",
    "avr32",
    "blackfin",
    "ia64",
    "m68k",
    "microblaze",
    "mips",
    "mips64",
    "nds32",
    "nios2",
    "or1k",
    "powerpc",
    "riscv",
    "s390",
    "sandbox",
    "sh",
    "sparc",
    "sparc64",
    "x86",
    "x86_64",
    "xtensa",
];

/// `script-path` and `mkimage-arch`: a path ending in `.scr` is a compiled U-Boot script and
/// needs the architecture; anything else is written as text and must not name one.
fn script_path(
    path: Option<PathBuf>,
    arch: Option<String>,
    has_script: bool,
    bootloader: &Bootloader,
) -> Result<Option<ScriptPath>, String> {
    let Some(path) = path else {
        return match arch {
            Some(_) => Err(
                "mkimage-arch is for a script-path ending in .scr; add one or drop \
                            mkimage-arch"
                    .into(),
            ),
            None => Ok(None),
        };
    };
    check_running_path("script-path", &path)?;
    if !has_script {
        return Err(format!(
            "script-path {} needs the parts to write there: script = [\"...\"]",
            path.display()
        ));
    }
    let compiled = path.extension().is_some_and(|e| e == "scr");
    let mkimage_arch = match (compiled, arch, bootloader) {
        (true, _, Bootloader::Grub { .. }) => {
            return Err(format!(
                "script-path {} ends in .scr, U-Boot's compiled script; a GRUB board's script \
                 is written as it is (grub.cfg)",
                path.display()
            ))
        }
        (true, None, _) => {
            return Err(format!(
                "script-path {} ends in .scr, which mkimage compiles: give its architecture, \
                 mkimage-arch = \"arm64\" (or arm, x86, riscv, ...)",
                path.display()
            ))
        }
        (true, Some(a), _) if !MKIMAGE_ARCHES.contains(&a.as_str()) => {
            return Err(format!(
                "mkimage-arch {a:?} is not one of mkimage's architectures: {}",
                MKIMAGE_ARCHES.join(", ")
            ))
        }
        (false, Some(_), _) => {
            return Err(format!(
                "mkimage-arch is for a script-path ending in .scr, and {} is written as text: \
                 drop mkimage-arch",
                path.display()
            ))
        }
        (_, arch, _) => arch,
    };
    Ok(Some(ScriptPath { path, mkimage_arch }))
}

/// A path of the running system that provisioning maps onto a partition: absolute, and
/// without `..`, which could lead out of the partition it is mapped onto.
fn check_running_path(what: &str, path: &Path) -> Result<(), String> {
    if !path.is_absolute()
        || path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(format!(
            "{what} {} must be an absolute path of the running system, without ..",
            path.display()
        ));
    }
    Ok(())
}

/// " (line N)" for a TOML error span, so a one-line error still points at the place.
fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(r) => {
            let line = text[..r.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRUB: &str = r#"
[board]
name = "b"
compatible = "c"
[bootloader]
type = "grub"
grubenv = ["/e/0", "/e/1"]
[[slot]]
name = "A"
device = "/dev/a"
[[slot]]
name = "B"
device = "/dev/b"
"#;

    fn parse(text: &str) -> Result<Board, Error> {
        Board::parse(text, Path::new("board.toml"))
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let b = parse(GRUB).unwrap();
        assert_eq!(b.scheme, Scheme::Abup);
        assert_eq!(b.slots.tries(), 3);
        assert_eq!(
            b.bootloader,
            Bootloader::Grub {
                env: GrubEnv::Pair(["/e/0".into(), "/e/1".into()])
            }
        );
        assert_eq!(b.devices, [PathBuf::from("/dev/a"), "/dev/b".into()]);
    }

    #[test]
    fn rauc_defaults_to_one_try() {
        let b = parse(&GRUB.replace("type = \"grub\"", "type = \"grub\"\nscheme = \"rauc-grub\""))
            .unwrap();
        assert_eq!(b.slots.tries(), 1);
    }

    #[test]
    fn errors_name_the_problem_and_the_line() {
        assert_eq!(
            err(&GRUB.replace("grubenv", "grubenvv")),
            "board configuration board.toml: unknown field `grubenvv`, expected one of `type`, \
             `scheme`, `tries`, `script`, `grubenv`, `fw-env-config`, `script-path`, \
             `mkimage-arch`, `initial-env` (line 7)"
        );
        assert!(err(&GRUB.replace("\"/e/1\"", "\"/e/0\"")).contains("different files"));
        assert!(err(&GRUB.replace("[\"/e/0\", \"/e/1\"]", "[]")).contains("needs grubenv"));
        assert!(err(&GRUB.replace("/dev/b", "/dev/a")).contains("share the device /dev/a"));
        assert!(err(&GRUB.replace("/dev/b", "dev/b")).contains("absolute path"));
        assert!(err(&GRUB.replace("name = \"B\"", "name = \"B-1\"")).contains("\"B-1\""));
        assert!(
            err(&GRUB.replace("type = \"grub\"", "type = \"grub\"\ntries = 12"))
                .contains("between 1 and 9")
        );
        assert!(err(&GRUB.replace("type = \"grub\"", "type = \"u-boot\""))
            .contains("grubenv is for GRUB"));
        assert!(err("[board]\nname=").contains("line 2"));
    }

    #[test]
    fn http_section_and_command_line_overrides() {
        assert_eq!(parse(GRUB).unwrap().http, HttpConfig::default());
        let b = parse(&format!(
            "{GRUB}[http]\nca = \"/etc/abup/ca.pem\"\ncert = \"/etc/abup/c.pem\"\n\
             key = \"/etc/abup/c.key\"\nheaders = [\"Authorization: TargetToken t0k\", \
             \"X-Id:  7 \"]\ntimeout = 600\nretries = 3\nretry-wait = 0.5\n"
        ))
        .unwrap();
        let h = &b.http;
        assert_eq!(h.ca, [PathBuf::from("/etc/abup/ca.pem")]);
        assert_eq!(
            h.client_cert,
            Some(("/etc/abup/c.pem".into(), "/etc/abup/c.key".into()))
        );
        assert_eq!(h.headers[1].value, "7");
        assert_eq!(h.timeout, Some(Duration::from_secs(600)));
        assert_eq!(h.retry_wait, Some(Duration::from_millis(500)));
        assert!(
            !format!("{h:?}").contains("t0k"),
            "Debug hides header values"
        );

        let cli = HttpConfig {
            ca: vec!["extra.pem".into()],
            headers: vec![Header::parse("AUTHORIZATION: other").unwrap()],
            retries: Some(0),
            ..HttpConfig::default()
        };
        let merged = h.overridden_by(cli);
        assert_eq!(merged.ca.len(), 2, "CAs add up");
        assert_eq!(merged.client_cert, h.client_cert, "kept unless given");
        let names: Vec<(&str, &str)> = merged
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str()))
            .collect();
        assert_eq!(names, [("X-Id", "7"), ("AUTHORIZATION", "other")]);
        assert_eq!((merged.retries, merged.timeout), (Some(0), h.timeout));

        for (bad, says) in [
            ("ca = \"rel.pem\"", "must be an absolute path"),
            ("key = \"/k\"", "key needs the client certificate"),
            ("headers = [\"Bad Name: x\"]", "not an HTTP header name"),
            ("headers = [\"Host: x\"]", "abup sets itself"),
            ("headers = [\"X: a\\u0007b\"]", "printable ASCII"),
            ("timeout = -1", "[http] timeout must be a number of seconds"),
            ("retry-wait = 61", "[http] retry-wait must be"),
            ("retries = 101", "at most 100"),
        ] {
            let e = err(&format!("{GRUB}[http]\n{bad}\n"));
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn install_section_and_slot_classes() {
        let b = parse(GRUB).unwrap();
        assert_eq!(b.install.state_dir, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(b.install.keyring, Path::new(DEFAULT_KEYRING));
        assert_eq!(
            b.class_device(bootcount::SlotId(1), ROOTFS_CLASS),
            Some(Path::new("/dev/b"))
        );
        assert_eq!(b.class_device(bootcount::SlotId(1), "appfs"), None);

        let text = GRUB.replace("device = \"/dev/a\"", "device = \"/dev/a\"\nclasses = { appfs = \"/dev/a2\" }")
            .replace("device = \"/dev/b\"", "device = \"/dev/b\"\nclasses = { appfs = \"/dev/b2\" }")
            + "[install]\nstate-dir = \"/data/abup\"\npost-install = \"/usr/lib/abup/post\"\npost-install-mount = true\n";
        let b = parse(&text).unwrap();
        assert_eq!(
            b.class_device(bootcount::SlotId(1), "appfs"),
            Some(Path::new("/dev/b2"))
        );
        assert_eq!(b.install.state_dir, Path::new("/data/abup"));
        assert!(b.install.post_install_mount);

        assert!(err(&text.replace("/dev/b2", "/dev/a2")).contains("share the device /dev/a2"));
        assert!(err(&text.replace("classes = { appfs = \"/dev/b2\" }", ""))
            .contains("every slot needs the same"));
        assert!(
            err(&text.replace("appfs = \"/dev/a2\"", "rootfs = \"/dev/a2\""))
                .contains("the rootfs class is the slot's device")
        );
        assert!(err(&text.replace("\"/usr/lib/abup/post\"", "\"post\"")).contains("absolute path"));
    }

    const UBOOT: &str = r#"
[board]
name = "b"
compatible = "c"
[bootloader]
type = "u-boot"
script = ["boot.cmd"]
fw-env-config = "/etc/fw_env.config"
script-path = "/boot/firmware/boot.scr"
mkimage-arch = "arm64"
initial-env = "u-boot-initial-env"
[[slot]]
name = "A"
device = "/dev/a"
[[slot]]
name = "B"
device = "/dev/b"
[[boot-file]]
source = "u-boot.bin"
destination = "/boot/firmware/u-boot.bin"
"#;

    /// The GRUB board with a one-part script written to `path`.
    fn grub_with_script(path: &str) -> String {
        GRUB.replace(
            "grubenv =",
            &format!("script = [\"a\"]\nscript-path = \"{path}\"\ngrubenv ="),
        )
    }

    #[test]
    fn boot_script_boot_files_and_initial_env() {
        let b = parse(UBOOT).unwrap();
        assert_eq!(
            b.script_path,
            Some(ScriptPath {
                path: "/boot/firmware/boot.scr".into(),
                mkimage_arch: Some("arm64".into())
            })
        );
        assert_eq!(
            b.bootloader,
            Bootloader::UBoot {
                config: "/etc/fw_env.config".into(),
                initial_env: Some("u-boot-initial-env".into())
            }
        );
        assert_eq!(
            b.boot_files,
            [BootFile {
                source: "u-boot.bin".into(),
                destination: "/boot/firmware/u-boot.bin".into()
            }]
        );
        let b = parse(&grub_with_script("/boot/efi/grub/grub.cfg")).unwrap();
        assert_eq!(
            b.script_path,
            Some(ScriptPath {
                path: "/boot/efi/grub/grub.cfg".into(),
                mkimage_arch: None
            })
        );
        assert!(b.boot_files.is_empty());
        assert_eq!(parse(GRUB).unwrap().script_path, None);
    }

    #[test]
    fn boot_file_errors_say_what_to_change() {
        // With a layout, every file must land on a partition that provisioning mounts.
        let layout = "[[partition]]\nname = \"boot\"\ntype = \"esp\"\nsize = \"32MiB\"\n\
                      filesystem = \"vfat\"\nmount = \"/boot/firmware\"\n\
                      [[partition]]\nname = \"a\"\ntype = \"linux\"\nsize = \"1MiB\"\nslot = \"A\"\n\
                      [[partition]]\nname = \"b\"\ntype = \"linux\"\nsize = \"1MiB\"\nslot = \"B\"\n";
        parse(&(UBOOT.to_owned() + layout)).unwrap();
        // (board text, what its error must say)
        let cases = [
            (
                UBOOT.replace("mkimage-arch = \"arm64\"\n", ""),
                "give its architecture",
            ),
            (
                UBOOT.replace("\"arm64\"", "\"aarch64\""),
                "mkimage-arch \"aarch64\" is not one of mkimage's architectures",
            ),
            (UBOOT.replace("boot.scr", "boot.txt"), "drop mkimage-arch"),
            (
                UBOOT.replace("script-path = \"/boot/firmware/boot.scr\"\n", ""),
                "mkimage-arch is for a script-path ending in .scr",
            ),
            (
                UBOOT.replace("script = [\"boot.cmd\"]", ""),
                "needs the parts to write there",
            ),
            (
                UBOOT.replace("\"/boot/firmware/boot.scr\"", "\"boot.scr\""),
                "script-path boot.scr must be an absolute path",
            ),
            (
                UBOOT.replace("/boot/firmware/u-boot.bin", "/boot/firmware/../../etc/x"),
                "without ..",
            ),
            (UBOOT.replace("\"u-boot.bin\"", "\"\""), "source is empty"),
            (
                UBOOT.replace("u-boot.bin\"\n", "boot.scr\"\n"),
                "two files are written to /boot/firmware/boot.scr",
            ),
            (
                UBOOT.replace("destination =", "dest ="),
                "unknown field `dest`",
            ),
            (
                grub_with_script("/boot/efi/grub/boot.scr"),
                "a GRUB board's script is written as it is",
            ),
            (
                GRUB.replace("grubenv =", "initial-env = \"e\"\ngrubenv ="),
                "drop it from a GRUB board",
            ),
            (
                UBOOT.replace("/boot/firmware/u-boot.bin", "/opt/u-boot.bin") + layout,
                "/opt/u-boot.bin is on none of the [[partition]] mounts",
            ),
        ];
        for (text, expected) in cases {
            let e = err(&text);
            assert!(e.contains(expected), "expected {expected:?} in: {e}");
        }
    }

    #[test]
    fn too_large_is_refused_while_reading() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("board.toml");
        std::fs::write(&p, vec![b'#'; MAX_SIZE as usize + 1]).unwrap();
        assert!(matches!(Board::load(&p), Err(Error::TooLarge { .. })));
        // A file with no size of its own, and no end.
        match Board::load(Path::new("/dev/zero")) {
            Err(e @ Error::TooLarge { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("/dev/zero") && msg.contains("too large"),
                    "{msg}"
                );
                assert!(!msg.contains('\n'), "{msg}");
            }
            r => panic!("{r:?}"),
        }
        // At the limit: read, then parsed (a comment is a valid, if empty, TOML document).
        std::fs::write(&p, vec![b'#'; MAX_SIZE as usize]).unwrap();
        assert!(matches!(Board::load(&p), Err(Error::Syntax { .. })));
        std::fs::write(&p, b"name = \"\xff\"").unwrap();
        assert!(matches!(Board::load(&p), Err(Error::NotText { .. })));
    }

    proptest::proptest! {
        /// Any text: a board or a one-line error, never a panic.
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            if let Err(e) = parse(&text) {
                proptest::prop_assert!(!e.to_string().contains('\n'));
            }
        }

        /// Generated boards parse to what they say.
        #[test]
        fn generated_boards_parse_to_their_fields(
            names in proptest::collection::hash_set("[A-Za-z0-9_]{1,6}", 2..=4),
            tries in 1u8..=9,
            pair in proptest::bool::ANY,
        ) {
            let names: Vec<String> = names.into_iter().collect();
            let env = if pair { r#"grubenv = ["/b/0", "/b/1"]"# } else { r#"grubenv = ["/b/e"]"# };
            let mut text = format!(
                "[board]\nname = \"n\"\ncompatible = \"c\"\n[bootloader]\ntype = \"grub\"\ntries = {tries}\n{env}\n"
            );
            for (i, n) in names.iter().enumerate() {
                text += &format!("[[slot]]\nname = \"{n}\"\ndevice = \"/dev/s{i}\"\n");
            }
            let b = parse(&text).unwrap();
            proptest::prop_assert_eq!(b.slots.names(), names.as_slice());
            proptest::prop_assert_eq!(b.slots.tries(), tries);
            proptest::prop_assert_eq!(b.devices.len(), names.len());
            proptest::prop_assert_eq!(matches!(b.bootloader, Bootloader::Grub { env: GrubEnv::Pair(_) }), pair);
        }
    }

    /// Every board shipped in board-configs/ parses and lays out its disk: each slot has a
    /// partition, and a slot device named by partition label names that partition.
    #[test]
    fn shipped_boards_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../board-configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path().join("board.toml");
            if p.exists() {
                let b = Board::load(&p).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(
                    Some(b.name.as_str()),
                    p.parent().unwrap().file_name().unwrap().to_str()
                );
                for (slot, device) in b.slots.names().iter().zip(&b.devices) {
                    let part = b
                        .layout
                        .iter()
                        .find(|l| l.slot.as_deref() == Some(slot.as_str()))
                        .unwrap_or_else(|| panic!("{}: slot {slot} has no partition", b.name));
                    if let Ok(label) = device.strip_prefix("/dev/disk/by-partlabel") {
                        assert_eq!(label, Path::new(&part.name), "{}", b.name);
                    }
                }
                n += 1;
            }
        }
        assert!(n >= 6, "found {n} boards");
    }
}
