//! `abup keygen` and `abup bundle create | info | verify`: the build-host side of bundles.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::board::{Board, ROOTFS_CLASS};
use crate::bundle::{self, hex, Compression, CreateOptions, ImageSource, Keyring, SecretKey};
use crate::cli::{BundleOp, CreateArgs};
use crate::commands::{network, Outcome};
use crate::install::refuse_bundle;
use crate::source::{Network, Source};

pub fn keygen(secret: &Path, public: &Path) -> Result<Outcome> {
    // Both places are checked first, so a mistake in the second leaves no stray secret key.
    for p in [secret, public] {
        if p.exists() {
            bail!("{} exists; abup keygen never replaces a key", p.display());
        }
        if let Some(dir) = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
        {
            bail!("{} is not a directory (for {})", dir.display(), p.display());
        }
    }
    let key = bundle::generate_key();
    let pubkey = key.public_key();
    write_new(secret, key.to_pem().as_bytes(), 0o600)?;
    write_new(public, pubkey.to_pem().as_bytes(), 0o644)?;
    println!(
        "key {} written: secret {}, public {}",
        hex::encode(&pubkey.key_id()),
        secret.display(),
        public.display()
    );
    Ok(Outcome::Done)
}

/// Creates `path` with `mode`, refusing to replace anything: overwriting a signing key by
/// mistake loses it for good.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// `config` is the board configuration: `info` and `verify` read its `[http]` for a URL, and
/// `verify` its keyring when no `--keyring` is given. A build host has none, and needs none.
pub fn run(op: BundleOp, config: &Path) -> Result<Outcome> {
    match op {
        BundleOp::Create(args) => create(args),
        BundleOp::Info {
            bundle,
            keyring,
            json,
            http,
        } => {
            let source = Source::parse(&bundle);
            let board = match source {
                Source::Url(_) => board_if_present(config)?,
                _ => None,
            };
            info(
                &source,
                keyring.as_deref(),
                json,
                &network(board.as_ref(), &http)?,
            )
        }
        BundleOp::Verify {
            bundle,
            keyring,
            bases,
            http,
        } => {
            let source = Source::parse(&bundle);
            let board = match (&source, &keyring) {
                (Source::Url(_), _) | (_, None) => board_if_present(config)?,
                _ => None,
            };
            let keyring = match (keyring, &board) {
                (Some(k), _) => k,
                (None, Some(b)) => b.install.keyring.clone(),
                (None, None) => bail!(
                    "give --keyring DIR: there is no board configuration {} whose keyring to \
                     use (--config, ABUP_CONFIG)",
                    config.display()
                ),
            };
            verify(&source, &keyring, &bases, &network(board.as_ref(), &http)?)
        }
    }
}

/// The board configuration at `config`, if there is a file there.
fn board_if_present(config: &Path) -> Result<Option<Board>> {
    match config.try_exists() {
        Ok(false) => Ok(None),
        _ => Ok(Some(Board::load(config)?)),
    }
}

/// The newest modification time of the inputs: what a build system reproduces when it
/// reproduces the images, unlike the clock.
fn default_created(paths: &[PathBuf]) -> Result<u64> {
    if let Ok(epoch) = std::env::var("SOURCE_DATE_EPOCH") {
        return epoch
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={epoch:?} is not a number of seconds"));
    }
    let mut newest = 0;
    for p in paths {
        let modified = std::fs::metadata(p)
            .and_then(|m| m.modified())
            .with_context(|| format!("reading the modification time of {}", p.display()))?;
        newest = newest.max(
            modified
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        );
    }
    Ok(newest)
}

fn create(args: CreateArgs) -> Result<Outcome> {
    // The format allows chunks up to MAX_CHUNK_SIZE, but no device running this abup installs
    // more than MAX_INSTALL_CHUNK_SIZE (its memory budget): such a bundle would be refused by
    // every device, so it is refused here, before hours of compression.
    if args.chunk_size > bundle::MAX_INSTALL_CHUNK_SIZE {
        bail!(
            "--chunk-size {} is more than the {} bytes a device installs (an install holds a \
             dozen chunks in memory at once): every device would refuse the bundle; use {} or less",
            args.chunk_size,
            bundle::MAX_INSTALL_CHUNK_SIZE,
            bundle::MAX_INSTALL_CHUNK_SIZE
        );
    }
    let named: Vec<(String, PathBuf)> = args.images.iter().map(|s| class_spec(s)).collect();
    let mut bases: Vec<(String, Vec<u8>)> = Vec::new();
    for spec in &args.delta_from {
        let (class, path) = class_spec(spec);
        if !named.iter().any(|(c, _)| *c == class) {
            bail!(
                "--delta-from {spec}: the bundle has no {class} image; give it with --image {class}=FILE"
            );
        }
        if bases.iter().any(|(c, _)| *c == class) {
            bail!("--delta-from names two bases for the {class} image");
        }
        let bytes = std::fs::read(&path)
            .with_context(|| format!("reading the base image {}", path.display()))?;
        bases.push((class, bytes));
    }
    let key_pem = read_bounded(&args.key, bundle::MAX_KEY_FILE_LEN)?;
    let key = SecretKey::from_pem(&key_pem)
        .with_context(|| format!("reading the secret key {}", args.key.display()))?;
    let paths: Vec<PathBuf> = named.iter().map(|(_, p)| p.clone()).collect();
    let opts = CreateOptions {
        compatible: args.compatible,
        version: args.version,
        security_version: args.security_version,
        created: match args.created {
            Some(c) => c,
            None => default_created(&paths)?,
        },
        chunk_size: args.chunk_size,
        compression: if args.no_compression {
            Compression::None
        } else {
            Compression::Zstd
        },
        level: args.level.unwrap_or(if bases.is_empty() {
            bundle::DEFAULT_LEVEL
        } else {
            bundle::DEFAULT_DELTA_LEVEL
        }),
        threads: 0,
    };
    let mut files = Vec::new();
    for (_, p) in &named {
        files.push(ReadAhead::new(
            File::open(p).with_context(|| format!("opening image {}", p.display()))?,
        ));
    }
    let mut sources: Vec<ImageSource<'_>> = named
        .iter()
        .zip(files.iter_mut())
        .map(|((class, _), f)| ImageSource {
            slot_class: class.clone(),
            reader: f,
            base: bases
                .iter()
                .find(|(c, _)| c == class)
                .map(|(_, b)| b.as_slice()),
        })
        .collect();
    // The payload is compressed into a scratch file first, because the manifest (with every
    // chunk's hash) goes in front of it; the bundle appears under its name only when complete.
    let dir = match args.output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut scratch = tempfile::tempfile_in(&dir)
        .with_context(|| format!("creating a scratch file in {}", dir.display()))?;
    // A bundle is public (signed, not secret) and usually served by a web server running as
    // another user: it gets the mode any new file gets, 0666 less the umask, not the 0600 of a
    // temporary file.
    let mut out = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(&dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let manifest = {
        let mut w = std::io::BufWriter::new(out.as_file_mut());
        let m = bundle::create(&opts, &mut sources, &key, &mut scratch, &mut w)?;
        w.flush()?;
        m
    };
    out.as_file().sync_all()?;
    out.persist(&args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let stored: u64 = manifest.payload_len();
    let size: u64 = manifest.images.iter().map(|i| i.size).sum();
    println!(
        "bundle {} written: {} {} for {}, {} image(s), {} bytes of images stored in {} ({:.1}%), signed by {}",
        args.output.display(),
        manifest.version,
        format_args!("(security version {})", manifest.security_version),
        manifest.compatible,
        manifest.images.len(),
        size,
        stored,
        if size == 0 { 100.0 } else { stored as f64 * 100.0 / size as f64 },
        hex::encode(&key.public_key().key_id()),
    );
    Ok(Outcome::Done)
}

/// `CLASS=FILE`, or `FILE` for the rootfs class.
fn class_spec(spec: &str) -> (String, PathBuf) {
    match spec.split_once('=') {
        Some((c, p)) if !c.is_empty() && !c.contains('/') => (c.to_owned(), PathBuf::from(p)),
        _ => (ROOTFS_CLASS.to_owned(), PathBuf::from(spec)),
    }
}

/// Reads a small text file, refusing one larger than `max` bytes: the limit holds while
/// reading, whatever size the file claims.
fn read_bounded(path: &Path, max: u64) -> Result<String> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|f| f.take(max + 1).read_to_end(&mut bytes))
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > max {
        bail!(
            "{} is larger than {max} bytes, larger than a key file can be",
            path.display()
        );
    }
    String::from_utf8(bytes).with_context(|| format!("{} is not a PEM key", path.display()))
}

fn info(source: &Source, keyring: Option<&Path>, json: bool, net: &Network) -> Result<Outcome> {
    let shown = source.describe();
    let keyring = match keyring {
        Some(dir) => Some(
            Keyring::load(dir).with_context(|| format!("loading the keyring {}", dir.display()))?,
        ),
        None => None,
    };
    let mut r = BufReader::new(source.open_front(net)?);
    let (value, manifest, key_id, verified) = match &keyring {
        Some(keyring) => {
            let v = bundle::read_verified(&mut r, keyring)
                .map_err(|e| refuse_bundle(e, format!("bundle {shown} refused")))?;
            (v.info_json(), v.manifest, v.key_id, true)
        }
        None => {
            let u = bundle::read_unverified(&mut r)
                .map_err(|e| refuse_bundle(e, format!("bundle {shown}")))?;
            (u.info_json(), u.manifest, u.key_id, false)
        }
    };
    if json {
        println!("{value}");
        return Ok(Outcome::Done);
    }
    let created = std::time::UNIX_EPOCH + std::time::Duration::from_secs(manifest.created);
    println!("bundle:           {shown}");
    println!("compatible:       {}", manifest.compatible);
    println!("version:          {}", manifest.version);
    println!("security version: {}", manifest.security_version);
    println!(
        "created:          {}",
        humantime::format_rfc3339_seconds(created)
    );
    println!(
        "signed by key:    {} ({})",
        hex::encode(&key_id),
        if verified {
            "signature verified"
        } else {
            "signature NOT checked: give --keyring"
        }
    );
    for image in &manifest.images {
        if let Some(base) = image.kind.base() {
            let count = |name: &str| image.chunks.iter().filter(|c| c.op.name() == name).count();
            println!(
                "image {}: delta against a base of {} bytes with sha256 {}: {} copy, {} patch, {} data, {} zero chunks",
                image.slot_class,
                base.size,
                hex::encode(&base.sha256),
                count("copy"),
                count("patch"),
                count("data"),
                count("zero"),
            );
        }
        println!(
            "image {}: {} bytes, sha256 {}, {} chunks of {} bytes, {}, {} bytes stored",
            image.slot_class,
            image.size,
            hex::encode(&image.sha256),
            image.chunks.len(),
            image.chunk_size,
            image.compression.as_str(),
            image.payload_len()
        );
    }
    Ok(Outcome::Done)
}

fn verify(
    source: &Source,
    keyring_dir: &Path,
    base_specs: &[String],
    net: &Network,
) -> Result<Outcome> {
    let shown = source.describe();
    let keyring = Keyring::load(keyring_dir)
        .with_context(|| format!("loading the keyring {}", keyring_dir.display()))?;
    let mut bases = Vec::new();
    for spec in base_specs {
        let (class, path) = class_spec(spec);
        let bytes = std::fs::read(&path)
            .with_context(|| format!("reading the base image {}", path.display()))?;
        bases.push((class, bytes));
    }
    let base_refs: Vec<(&str, &[u8])> = bases
        .iter()
        .map(|(c, b)| (c.as_str(), b.as_slice()))
        .collect();
    let mut r = BufReader::with_capacity(1 << 20, source.open(net)?);
    let (v, unchecked) = bundle::verify_all(&mut r, &keyring, &base_refs)
        .map_err(|e| refuse_bundle(e, format!("bundle {shown} is not valid")))?;
    for class in &unchecked {
        println!(
            "delta image {class}: stored chunks checked; give --base {class}=FILE to rebuild it and check its hash"
        );
    }
    println!(
        "bundle {shown} is valid: {} for {}, signed by {}",
        v.manifest.version,
        v.manifest.compatible,
        hex::encode(&v.key_id)
    );
    Ok(Outcome::Done)
}

/// An image file read with the kernel asked to keep [`READ_AHEAD`] bytes ahead of the reader.
/// `bundle create` reads and hashes the image on one thread. With the kernel's own
/// read-ahead alone (8 MiB on the benchmark's disk), a 512 MiB image not in the page cache
/// took 1.1 to 1.45 s instead of about 0.9 s in half the runs or more. A pipe or a device
/// that takes no advice is read as it is.
struct ReadAhead {
    file: File,
    /// How far the file has been read, and how far the kernel has been asked to read.
    at: u64,
    advised: u64,
}

/// Far enough ahead to cover the hashing of a few chunks; small enough to be a trivial
/// share of the page cache.
const READ_AHEAD: u64 = 16 << 20;

impl ReadAhead {
    fn new(file: File) -> ReadAhead {
        ReadAhead {
            file,
            at: 0,
            advised: 0,
        }
    }
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.advised < self.at + READ_AHEAD {
            let from = self.advised.max(self.at);
            // Advice only: a file that takes none is still read correctly.
            let _ = nix::fcntl::posix_fadvise(
                &self.file,
                from as i64,
                (self.at + 2 * READ_AHEAD - from) as i64,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
            );
            self.advised = self.at + 2 * READ_AHEAD;
        }
        let n = self.file.read(buf)?;
        self.at += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte arrives in order, through reads that cross the advised windows.
    #[test]
    fn read_ahead_reads_the_file_as_it_is() {
        let len = 3 * READ_AHEAD as usize + 12345;
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
        let mut file = tempfile::tempfile().expect("temp file");
        file.write_all(&data).expect("write");
        std::io::Seek::rewind(&mut file).expect("rewind");
        let mut got = Vec::new();
        let mut buf = vec![0u8; (1 << 20) + 17];
        let mut reader = ReadAhead::new(file);
        loop {
            let n = reader.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert!(
            got == data,
            "read {} bytes, not the file's {len}",
            got.len()
        );
        assert_eq!(reader.at, len as u64);
    }

    /// A pipe takes no advice (ESPIPE) and is read all the same.
    #[test]
    fn read_ahead_reads_a_pipe() {
        let (rx, tx) = nix::unistd::pipe().expect("pipe");
        let writer = std::thread::spawn(move || {
            let mut tx = File::from(tx);
            tx.write_all(b"an image from a pipe").expect("write");
        });
        let mut got = String::new();
        ReadAhead::new(File::from(rx))
            .read_to_string(&mut got)
            .expect("read");
        writer.join().expect("writer");
        assert_eq!(got, "an image from a pipe");
    }
}
