//! The install's first phase: everything that can be checked before anything is written.
//! The bundle is authenticated first (its manifest is parsed only once its signature checks
//! out), then held against the board, the security floor, the running slot and the target's
//! devices. Nothing here writes, and the bootloader environment is only read.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bootcount::SlotId;

use super::hooks::HookEnv;
use super::progress::Progress;
use super::sources::{Fallback, Sources};
use super::{hex, refuse, refuse_bundle, NotConfirmed, Options};
use crate::board::Board;
use crate::booted;
use crate::bootenv::{Environment, Location};
use crate::bundle::{self, Keyring};
use crate::disk::device::{self, Device};
use crate::slotstate;
use crate::source::BundleReader;
use crate::state::floor::Floor;
use crate::state::StateDir;

/// What the later phases need, all of it checked.
#[derive(Debug)]
pub struct Plan {
    pub bundle: bundle::Verified,
    /// SHA-256 of the signed manifest, hex: names the bundle in the journal.
    pub bundle_id: String,
    pub booted: SlotId,
    pub target: SlotId,
    pub target_name: String,
    /// One per image, in manifest order, opened for writing (exclusively for block devices).
    pub devices: Vec<Device>,
    pub hook_env: HookEnv,
    /// The device's security floor when the install was planned.
    pub floor: u64,
    /// Where chunks come from besides the bundle stream: the running slot for a delta, a
    /// fallback bundle.
    pub sources: Sources,
    /// What the install reads from where.
    pub report: Report,
}

/// Bytes an install takes from each source: what `--dry-run` prints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub version: String,
    pub target: String,
    /// The bundle's payload: every stored chunk is read from the stream.
    pub from_bundle: u64,
    /// Base bytes read from the running slot (copies and patch windows that match).
    pub from_base: u64,
    /// Stored bytes fetched from the fallback for the chunks the base cannot rebuild.
    pub from_fallback: u64,
    /// Image bytes that are zeros, read from nowhere.
    pub zeros: u64,
    /// Chunks the base cannot rebuild.
    pub mismatched_chunks: u64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "dry run: {} into slot {}: {} bytes from the bundle, {} bytes read from the running \
             slot, {} bytes from the fallback ({} chunks the running slot cannot rebuild), {} \
             bytes of zeros; nothing was written",
            self.version,
            self.target,
            self.from_bundle,
            self.from_base,
            self.from_fallback,
            self.mismatched_chunks,
            self.zeros
        )
    }
}

impl Report {
    /// The `dry_run` object of the `result` line of `--dry-run --progress=json` (which
    /// names the bundle version and the target itself).
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "from_bundle": self.from_bundle,
            "from_base": self.from_base,
            "from_fallback": self.from_fallback,
            "zeros": self.zeros,
            "mismatched_chunks": self.mismatched_chunks,
        })
    }
}

/// Checks the install `opts` describes and returns its plan and the bundle stream, positioned
/// after the signed front.
pub fn plan(
    board: &Board,
    state: &StateDir,
    opts: &Options,
    progress: &mut Progress,
) -> Result<(Plan, BundleReader)> {
    let (verified, reader, keyring) = verify(board, opts, progress)?;
    let manifest = &verified.manifest;
    // The environment is read (shared lock) for the floor and the running slot's state, and
    // released before anything is written.
    let env = Environment::open(&Location::of_board(board), false)?;
    let floor = Floor::read(Some(state), &env).value(state.floor_expected()?)?;
    if manifest.security_version < floor {
        return Err(refuse(format!(
            "bundle {} has security version {}, below {floor}, the lowest this device accepts",
            manifest.version, manifest.security_version
        )));
    }
    let (booted, _) = booted::detect(board, &booted::read_cmdline()?)?;
    let target = choose_target(board, booted, opts.target.as_deref())?;
    let target_name = board.slots.name(target).to_owned();
    progress.target(&target_name);
    let current = slotstate::read(board, &env)?.state;
    drop(env);
    if !current.status(booted).confirmed {
        return Err(NotConfirmed(format!(
            "the running slot {} is not confirmed; run `abup mark-good` once it works (an \
             update from an unconfirmed slot could lose the only good system)",
            board.slots.name(booted)
        ))
        .into());
    }

    let busy: Vec<&Path> = board.classes[booted.0]
        .values()
        .map(PathBuf::as_path)
        .chain(std::iter::once(board.device(booted)))
        .collect();
    let devices = open_targets(board, target, manifest, &busy)?;

    let mut report = Report {
        version: manifest.version.clone(),
        target: target_name.clone(),
        from_bundle: manifest.payload_len(),
        ..Report::default()
    };
    let mut sources = Sources::default();
    for (image, device) in manifest.images.iter().zip(&devices) {
        sources.bases.push(match image.kind.base() {
            Some(_) => Some(open_base(board, booted, image)?),
            None => None,
        });
        sources.targets.push(match image.reads_target() {
            true => Some(device::open_reader(&device.path).with_context(|| {
                format!(
                    "opening the target slot {} to read back what the delta's patches refer to",
                    device.path.display()
                )
            })?),
            false => None,
        });
    }
    // A dry run and a fallback's budget need every base range checked. An install otherwise
    // checks a sample before it writes anything (a delta for another base fails nearly
    // every range, so the sample refuses it with nothing changed) and the rest as it writes
    // them (a base changed in a few places stops the install before activation): reading
    // the whole base twice would make a delta install slower than a full one.
    let every = opts.dry_run || opts.fallback.is_some();
    let mismatched = check_bases(manifest, &sources, every, &mut report, progress)?;
    // The fallback is opened and checked whenever it is given, so that a base that changes
    // while the install writes can still be completed from it.
    if let Some(fallback_source) = &opts.fallback {
        if manifest.images.iter().any(|i| i.kind.base().is_some()) {
            let describe = crate::state::redact(&fallback_source.describe());
            let mut fb_reader = fallback_source.open(&opts.network)?;
            let fb = bundle::read_verified(&mut fb_reader, &keyring)
                .map_err(|e| refuse_bundle(e, format!("fallback bundle {describe} refused")))?;
            let fallback = Fallback::new(fb_reader, fb, manifest, opts.max_download, describe)
                .map_err(|e| refuse(format!("{e:#}")))?;
            sources.fallback = Some(fallback);
        }
    }
    if !mismatched.is_empty() {
        let (i, _) = mismatched[0];
        let needs = describe_mismatch(
            board.slots.name(booted),
            &manifest.images[i],
            &sources,
            &mismatched,
        )?;
        let Some(fallback) = &sources.fallback else {
            return Err(refuse(format!(
                "{needs}; install the full bundle, or give it with --fallback"
            )));
        };
        report.from_fallback = mismatched
            .iter()
            .map(|&(i, k)| fallback.cost(i, &manifest.images[i].chunk_range(k)))
            .sum();
        fallback.check_budget(report.from_fallback)?;
        log::warn!(
            "{needs}; {} bytes come from the fallback",
            report.from_fallback
        );
    }

    let hook_env = HookEnv {
        target_slot: target_name.clone(),
        target_device: devices[0].path.display().to_string(),
        booted_slot: board.slots.name(booted).to_owned(),
        bundle_version: manifest.version.clone(),
        bundle_compatible: manifest.compatible.clone(),
        bundle_security_version: manifest.security_version,
        state_dir: state.path().display().to_string(),
        target_mount: None,
    };
    let bundle_id = hex(&verified.manifest_sha256);
    Ok((
        Plan {
            bundle: verified,
            bundle_id,
            booted,
            target,
            target_name,
            devices,
            hook_env,
            floor,
            sources,
            report,
        },
        reader,
    ))
}

/// The bundle authenticated against the keyring (its manifest parsed only once the signature
/// checks out), installable by this abup and made for this board.
fn verify(
    board: &Board,
    opts: &Options,
    progress: &mut Progress,
) -> Result<(bundle::Verified, BundleReader, Keyring)> {
    let keyring_dir = opts.keyring.as_deref().unwrap_or(&board.install.keyring);
    let keyring = Keyring::load(keyring_dir)
        .with_context(|| format!("loading the keyring {}", keyring_dir.display()))?;
    progress.phase(super::ProgressPhase::Plan);
    let mut reader = opts.source.open(&opts.network)?;
    let source = crate::state::redact(&opts.source.describe());
    let verified = bundle::read_verified(&mut reader, &keyring)
        .map_err(|e| refuse_bundle(e, format!("bundle {source} refused")))?;
    let manifest = &verified.manifest;
    progress.bundle(
        &manifest.version,
        &hex(&verified.manifest_sha256),
        manifest.images.iter().map(|i| i.size).sum(),
        reader.total_len(),
    );
    progress.downloaded(reader.position());
    bundle::check_installable(manifest)
        .map_err(|e| refuse_bundle(e, format!("bundle {source} refused")))?;

    if manifest.compatible != board.compatible {
        return Err(refuse(format!(
            "bundle is for {:?}, this board is {:?}",
            manifest.compatible, board.compatible
        )));
    }
    Ok((verified, reader, keyring))
}

/// Each image's device in slot `target`, opened for writing, checked to be none of `busy`
/// and large enough.
fn open_targets(
    board: &Board,
    target: SlotId,
    manifest: &bundle::Manifest,
    busy: &[&Path],
) -> Result<Vec<Device>> {
    let target_name = board.slots.name(target);
    let mut devices = Vec::new();
    for image in &manifest.images {
        let path = board
            .class_device(target, &image.slot_class)
            .ok_or_else(|| {
                refuse(format!(
                    "bundle has a {} image, but this board's slots have no {} device",
                    image.slot_class, image.slot_class
                ))
            })?;
        device::check_not_in_use(path, busy)?;
        let device = device::open(path)?;
        if image.size > device.size {
            return Err(refuse(format!(
                "the {} image is {} bytes, slot {target_name} ({}) holds only {}",
                image.slot_class,
                image.size,
                path.display(),
                device.size
            )));
        }
        devices.push(device);
    }

    Ok(devices)
}

/// A factory slot: the bundle (full images only: there is no base) written into slot
/// `target` of a disk that runs nothing yet, so no running slot, environment or floor to
/// check.
pub fn plan_provision(
    board: &Board,
    target: SlotId,
    opts: &Options,
    progress: &mut Progress,
) -> Result<(Plan, BundleReader)> {
    let (verified, reader, _) = verify(board, opts, progress)?;
    let manifest = &verified.manifest;
    if let Some(image) = manifest.images.iter().find(|i| i.kind.base().is_some()) {
        return Err(refuse(format!(
            "bundle {} has a delta {} image; provisioning writes full bundles (a delta needs \
             the system it was built against)",
            manifest.version, image.slot_class
        )));
    }
    let devices = open_targets(board, target, manifest, &[])?;
    let target_name = board.slots.name(target).to_owned();
    let hook_env = HookEnv {
        target_slot: target_name.clone(),
        target_device: devices[0].path.display().to_string(),
        booted_slot: String::new(),
        bundle_version: manifest.version.clone(),
        bundle_compatible: manifest.compatible.clone(),
        bundle_security_version: manifest.security_version,
        state_dir: String::new(),
        target_mount: None,
    };
    let bundle_id = hex(&verified.manifest_sha256);
    Ok((
        Plan {
            bundle_id,
            booted: target,
            target,
            target_name,
            devices,
            hook_env,
            floor: 0,
            // Full images only: nothing comes from a base or the target.
            sources: Sources::default(),
            report: Report::default(),
            bundle: verified,
        },
        reader,
    ))
}

/// The running slot's device of the delta image's class, opened read-only: the base.
fn open_base(board: &Board, booted: SlotId, image: &bundle::Image) -> Result<device::SlotReader> {
    let path = board
        .class_device(booted, &image.slot_class)
        .ok_or_else(|| {
            refuse(format!(
                "bundle has a delta {} image, but the running slot has no {} device to read its base from",
                image.slot_class, image.slot_class
            ))
        })?;
    device::open_reader(path).with_context(|| {
        format!(
            "opening the running slot {} to read the delta's base",
            path.display()
        )
    })
}

/// Reads every base range a delta reads and checks it against its hash, before anything is
/// written; returns the chunks (image, index) whose base does not match. Counts what comes
/// from where into `report`.
fn check_bases(
    manifest: &bundle::Manifest,
    sources: &Sources,
    every: bool,
    report: &mut Report,
    progress: &mut Progress,
) -> Result<Vec<(usize, usize)>> {
    let readers: Vec<(usize, usize)> = manifest
        .chunks()
        .filter(|c| {
            manifest.images[c.image].chunks[c.index]
                .op
                .base_sha256()
                .is_some()
        })
        .map(|c| (c.image, c.index))
        .collect();
    let reads =
        |(i, k): (usize, usize)| bundle::extents_len(manifest.images[i].chunks[k].op.extents());
    let checked: Vec<(usize, usize)> = if every || readers.len() <= BASE_SAMPLE {
        readers
    } else {
        // The cheapest read of each of BASE_SAMPLE even stretches of the image: spread over
        // the whole base, and a few megabytes instead of as many full windows (whose reads
        // all come again as the chunks are written).
        (0..BASE_SAMPLE)
            .filter_map(|j| {
                let stretch =
                    j * readers.len() / BASE_SAMPLE..(j + 1) * readers.len() / BASE_SAMPLE;
                readers[stretch].iter().copied().min_by_key(|&c| reads(c))
            })
            .collect()
    };
    if manifest.images.iter().any(|i| i.kind.base().is_some()) {
        progress.base_total(checked.iter().map(|&c| reads(c)).sum());
        progress.phase(super::ProgressPhase::BaseCheck);
    }
    for image in &manifest.images {
        for (k, c) in image.chunks.iter().enumerate() {
            if c.op == bundle::Op::Zero {
                report.zeros += u64::from(image.chunk_len(k));
            }
            report.from_base += bundle::extents_len(c.op.extents());
        }
    }
    let mut done = 0;
    let mut buf = Vec::new();
    let mut mismatched = Vec::new();
    for (i, k) in checked {
        let image = &manifest.images[i];
        let op = &image.chunks[k].op;
        let (Some(expected), Some(Some(base))) = (op.base_sha256(), sources.bases.get(i)) else {
            continue;
        };
        match bundle::read_base(image, k, base, op.extents(), expected, &mut buf, 0) {
            Ok(()) => {}
            Err(bundle::Error::BaseMismatch { .. } | bundle::Error::BaseRead { .. }) => {
                report.from_base -= reads((i, k));
                mismatched.push((i, k));
            }
            Err(e) => return Err(e.into()),
        }
        done += reads((i, k));
        progress.base_checked(done);
        progress.tick();
    }
    report.mismatched_chunks = mismatched.len() as u64;
    Ok(mismatched)
}

/// Base-reading chunks an install checks before it writes, when it does not check them all.
const BASE_SAMPLE: usize = 16;

/// A base that stopped matching while the install wrote (it changed, or only the sample was
/// checked before): the one line naming the base the delta needs and what the running slot
/// holds. The target stays out of rotation; nothing was activated.
pub fn explain_base_mismatch(plan: &Plan, e: anyhow::Error) -> anyhow::Error {
    let Some(bundle::Error::BaseMismatch {
        slot_class, chunk, ..
    }) = e.chain().find_map(|c| c.downcast_ref::<bundle::Error>())
    else {
        return e;
    };
    let Some(i) = plan
        .bundle
        .manifest
        .images
        .iter()
        .position(|img| &img.slot_class == slot_class)
    else {
        return e;
    };
    match describe_mismatch(
        &plan.hook_env.booted_slot,
        &plan.bundle.manifest.images[i],
        &plan.sources,
        &[(i, *chunk)],
    ) {
        Ok(needs) => anyhow::anyhow!(
            "{needs}; slot {} stays out of rotation and nothing was activated: install the \
             full bundle, or give it with --fallback",
            plan.target_name
        ),
        Err(_) => e,
    }
}

/// One line naming the base a delta needs and the base the running slot holds (its SHA-256
/// over the base's length, read for this message only).
fn describe_mismatch(
    booted: &str,
    image: &bundle::Image,
    sources: &Sources,
    mismatched: &[(usize, usize)],
) -> Result<String> {
    use sha2::Digest;
    let Some(base) = image.kind.base() else {
        return Ok(String::new());
    };
    let path = sources
        .bases
        .get(mismatched[0].0)
        .and_then(Option::as_ref)
        .map(|d| d.path.display().to_string())
        .unwrap_or_default();
    // Read as the install reads it, a piece at a time, up to the base's length or the end
    // of the device.
    let mut hasher = sha2::Sha256::new();
    let mut read = 0u64;
    if let Some(Some(dev)) = sources.bases.get(mismatched[0].0) {
        let mut buf = vec![0u8; 1 << 20];
        while read < base.size {
            let n = (base.size - read).min(buf.len() as u64) as usize;
            if bundle::ReadAt::read_exact_at(dev, &mut buf[..n], read).is_err() {
                // Past the device's end: hash what there is, a block at a time.
                let mut block = [0u8; 512];
                while read < base.size
                    && bundle::ReadAt::read_exact_at(dev, &mut block, read).is_ok()
                {
                    hasher.update(&block[..(base.size - read).min(512) as usize]);
                    read += (base.size - read).min(512);
                }
                break;
            }
            hasher.update(&buf[..n]);
            read += n as u64;
        }
    }
    let found: [u8; 32] = hasher.finalize().into();
    if read == base.size && found == base.sha256 {
        return Ok(format!(
            "the running slot {booted} holds the delta's base (SHA-256 {}), but {} of the \
             delta's chunks read base bytes that do not match their hashes: the bundle was \
             built wrongly",
            hex(&found),
            mismatched.len()
        ));
    }
    let found = hex(&found);
    let held = if read < base.size {
        format!("only {read} bytes, SHA-256 {found}")
    } else {
        format!("SHA-256 {found}")
    };
    Ok(format!(
        "the delta needs base SHA-256 {} ({} bytes) in the {} device of the running slot \
         {booted} ({path}), which holds {held}: {} of the chunks checked cannot be rebuilt",
        hex(&base.sha256),
        base.size,
        image.slot_class,
        mismatched.len()
    ))
}

/// The slot to write: the one named, or the only one not running.
fn choose_target(board: &Board, booted: SlotId, named: Option<&str>) -> Result<SlotId> {
    if let Some(name) = named {
        let slot = board
            .slots
            .find(name)
            .with_context(|| format!("no slot named {name:?}"))?;
        if slot == booted {
            return Err(refuse(format!(
                "slot {name} is the running slot; an update goes to another slot"
            )));
        }
        return Ok(slot);
    }
    let others: Vec<SlotId> = board.slots.ids().filter(|&s| s != booted).collect();
    match others.as_slice() {
        [one] => Ok(*one),
        _ => bail!(
            "this board has {} slots; name the one to write with --slot",
            board.slots.len()
        ),
    }
}
