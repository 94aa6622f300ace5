//! Delta bundles installed into file-backed slots: rebuilt exactly from the running slot,
//! refused with one line when the running slot is not their base (nothing changed), completed
//! from a fallback full bundle (file or HTTP, within --max-download), reported by --dry-run,
//! and resumed exactly after a power cut at any write.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use common::fixture::{image, Fixture};
use common::{durable_writes, Output};

const SLOT: u64 = 2 << 20;

/// The next release: the running image with runs moved, changed, inserted (new bytes, and
/// the same new bytes again further on), and zeroed.
fn next_release(base: &[u8]) -> Vec<u8> {
    let mut new = Vec::with_capacity(base.len());
    new.extend_from_slice(&base[1_200_000..1_500_000]);
    // Repeated soon after, before the writer would sync it on its own.
    let fresh = image(70_001, 5);
    new.extend_from_slice(&fresh);
    new.extend_from_slice(&base[1_500_000..1_600_000]);
    new.extend_from_slice(&fresh);
    let mut changed = base[..600_000].to_vec();
    for b in changed.iter_mut().step_by(4099) {
        *b ^= 0x5a;
    }
    new.extend_from_slice(&changed);
    new.resize(new.len() + 200_000, 0);
    new.extend_from_slice(&base[600_000..1_100_000]);
    new
}

/// The manifest of a bundle file.
fn manifest(bundle: &std::path::Path) -> abup::bundle::Manifest {
    let bytes = std::fs::read(bundle).unwrap();
    let len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    abup::bundle::Manifest::parse(&bytes[16..16 + len]).unwrap()
}

fn device() -> (Fixture, Vec<u8>, std::path::PathBuf) {
    let f = Fixture::in_memory(SLOT, "");
    let new = next_release(&f.slot("A"));
    let d = f.delta_bundle("delta.abup", &f.slot("A"), &new, "2.0");
    (f, new, d)
}

fn install(f: &Fixture, bundle: &std::path::Path, extra: &[&str]) -> Output {
    let mut args = vec!["install", bundle.to_str().unwrap()];
    args.extend_from_slice(extra);
    f.abup(&args)
}

fn assert_installed(f: &Fixture, new: &[u8]) {
    let s = f.status();
    assert_eq!(s["next_boot"], "B", "{s}");
    assert_eq!(s["slots"][1]["bundle"]["version"], "2.0", "{s}");
    assert_eq!(
        &f.slot("B")[..new.len()],
        new,
        "B holds exactly the new image"
    );
}

/// Slot A and the environment exactly as `saved` has them, and B too: nothing was written.
fn assert_untouched(saved: &[(std::path::PathBuf, Vec<u8>)]) {
    for (p, bytes) in saved {
        let name = p.file_name().unwrap().to_string_lossy();
        if name.starts_with("slot-") || name.starts_with("abupenv") {
            assert!(std::fs::read(p).unwrap() == *bytes, "{name} was written");
        }
    }
}

/// Slot A as a root filesystem mounted read-write once: a byte changed.
fn touch_running_slot(f: &Fixture) {
    let path = f.t.path("slot-a");
    let mut a = std::fs::read(&path).unwrap();
    a[700_000] ^= 1;
    std::fs::write(&path, a).unwrap();
}

#[test]
fn a_delta_installs_exactly_reading_the_running_slot() {
    let (f, new, d) = device();
    // Copies, zeros and patches, some of which read the new image's own earlier bytes back.
    let m = manifest(&d);
    let ops: std::collections::BTreeSet<&str> =
        m.images[0].chunks.iter().map(|c| c.op.name()).collect();
    assert!(
        ["copy", "zero", "patch"].iter().all(|o| ops.contains(o)),
        "{ops:?}"
    );
    assert!(m.images[0].reads_target(), "no patch reads the target");
    let slot_a = f.slot("A");
    let full = f.bundle("full.abup", &new, "2.0", 0);
    let (dl, fl) = (
        std::fs::metadata(&d).unwrap().len(),
        std::fs::metadata(&full).unwrap().len(),
    );
    assert!(dl * 4 < fl, "delta {dl} bytes, full bundle {fl}");
    install(&f, &d, &[]).success();
    assert_installed(&f, &new);
    assert_eq!(f.slot("A"), slot_a, "the running slot is only read");
    // The bundle checks out against its base, and says what it is.
    let base = f.t.path("delta.abup.base");
    let keyring = f.keyring.to_str().unwrap();
    let out = f.abup(&[
        "bundle",
        "verify",
        d.to_str().unwrap(),
        "--keyring",
        keyring,
    ]);
    assert!(out.success().stdout_text().contains("give --base"));
    f.abup(&[
        "bundle",
        "verify",
        d.to_str().unwrap(),
        "--keyring",
        keyring,
        "--base",
        base.to_str().unwrap(),
    ])
    .success();
    let info = f.abup(&["bundle", "info", d.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&info.success().stdout_text()).unwrap();
    assert_eq!(v["images"][0]["kind"], "delta");
    assert_eq!(v["images"][0]["base_size"], SLOT);
}

#[test]
fn dry_run_reports_where_bytes_come_from_and_writes_nothing() {
    let (f, _, d) = device();
    let saved = f.save();
    let out = install(&f, &d, &["--dry-run", "--progress=json"]);
    let line = out.success().stdout_text();
    let last: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "result", "{last}");
    assert_eq!(last["ok"], true, "{last}");
    assert_eq!(last["reboot_required"], false, "{last}");
    let v = &last["dry_run"];
    assert!(v["from_base"].as_u64().unwrap() > 1_000_000, "{v}");
    assert_eq!(v["from_fallback"], 0, "{v}");
    assert_eq!(v["mismatched_chunks"], 0, "{v}");
    assert!(v["zeros"].as_u64().unwrap() >= 131_072, "{v}");
    let payload = std::fs::metadata(&d).unwrap().len();
    assert!(v["from_bundle"].as_u64().unwrap() < payload, "{v}");
    assert_untouched(&saved);
    assert!(!f.state.join("install.json").exists());
    let human = install(&f, &d, &["--dry-run"]);
    assert!(
        human
            .success()
            .stdout_text()
            .contains("nothing was written"),
        "{}",
        human.stdout_text()
    );
}

#[test]
fn a_running_slot_that_is_not_the_base_is_refused_in_one_line_and_nothing_changes() {
    let (f, _, d) = device();
    touch_running_slot(&f);
    let saved = f.save();
    let out = install(&f, &d, &[]);
    out.assert_refused_with(
        4,
        &["needs base SHA-256", "which holds SHA-256", "--fallback"],
    );
    assert_untouched(&saved);
    // The dry run says the same.
    install(&f, &d, &["--dry-run"]).assert_refused_with(4, &["needs base SHA-256"]);

    // A delta built against something else altogether.
    let other = image(SLOT as usize, 1234);
    let wrong = f.delta_bundle("wrong.abup", &other, &next_release(&other), "2.0");
    let out = install(&f, &wrong, &[]);
    out.assert_refused_with(4, &["needs base SHA-256"]);
    assert_untouched(&saved);
    assert_eq!(f.status()["next_boot"], "A");
}

#[test]
fn a_fallback_file_supplies_what_the_running_slot_cannot() {
    let (f, new, d) = device();
    touch_running_slot(&f);
    let full = f.bundle("full.abup", &new, "2.0", 0);
    let dry = install(
        &f,
        &d,
        &[
            "--dry-run",
            "--progress=json",
            "--fallback",
            full.to_str().unwrap(),
        ],
    );
    let text = dry.success().stdout_text();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let v = &last["dry_run"];
    let fetched = v["from_fallback"].as_u64().unwrap();
    assert!(fetched > 0, "{v}");
    assert!(
        fetched * 4 < std::fs::metadata(&full).unwrap().len(),
        "only the chunks the base cannot rebuild: {v}"
    );
    install(&f, &d, &["--fallback", full.to_str().unwrap()]).success();
    assert_installed(&f, &new);
}

#[test]
fn max_download_stops_the_fallback_before_anything_is_written() {
    let (f, new, d) = device();
    touch_running_slot(&f);
    let full = f.bundle("full.abup", &new, "2.0", 0);
    let saved = f.save();
    let out = install(
        &f,
        &d,
        &["--fallback", full.to_str().unwrap(), "--max-download", "1K"],
    );
    out.assert_refused(&["--max-download", "1024"]);
    assert_untouched(&saved);
    // A fallback of another release is no fallback.
    let other = f.bundle("other.abup", &image(new.len(), 3), "2.1", 0);
    let out = install(&f, &d, &["--fallback", other.to_str().unwrap()]);
    out.assert_refused_with(4, &["not the full bundle of this release"]);
    assert_untouched(&saved);
}

#[test]
fn a_fallback_url_is_fetched_with_range_requests_for_the_missing_chunks_only() {
    let (f, new, d) = device();
    touch_running_slot(&f);
    let full = f.bundle("full.abup", &new, "2.0", 0);
    let server = common::http::serve(full.clone(), vec![]);
    install(&f, &d, &["--fallback", &server.url]).success();
    assert_installed(&f, &new);
    let ranges = server.ranges.lock().unwrap().clone();
    // The front, then single chunks: `bytes=A-B`, far fewer bytes than the bundle.
    let mut fetched = 0;
    for r in ranges.iter().skip(1) {
        let (a, b) = r
            .strip_prefix("bytes=")
            .and_then(|r| r.split_once('-'))
            .unwrap_or_else(|| panic!("{ranges:?}"));
        fetched += b.parse::<u64>().unwrap() + 1 - a.parse::<u64>().unwrap();
    }
    assert!(ranges.len() >= 2, "{ranges:?}");
    assert!(
        fetched * 4 < std::fs::metadata(&full).unwrap().len(),
        "{fetched} bytes fetched: {ranges:?}"
    );
}

#[test]
fn a_cut_after_any_write_of_a_delta_install_resumes_to_the_exact_image() {
    common::require_fault_injection();
    let (f, new, d) = device();
    let clean = f.save();
    let run = |cut: Option<usize>| {
        let cut = cut.map(|c| c.to_string());
        let env: Vec<(&str, &str)> = cut
            .iter()
            .map(|c| ("ABUP_CUT_AFTER_WRITES", c.as_str()))
            .collect();
        f.abup_env(&["-vv", "install", d.to_str().unwrap()], &env)
    };
    let writes = durable_writes(run(None).success());
    assert!(writes.len() > 10, "{writes:#?}");
    let slot_a = f.slot("A");
    let mut resumed = 0;
    for cut in 1..=writes.len() {
        f.restore(&clean);
        let what = format!("cut {cut} ({})", writes[cut - 1]);
        let out = run(Some(cut));
        assert_eq!(out.code, None, "{what}: the process was stopped");
        let s = f.status();
        if s["next_boot"] == "B" {
            assert_eq!(
                &f.slot("B")[..new.len()],
                &new[..],
                "{what}: B boots half-written"
            );
        } else {
            assert_eq!(s["next_boot"], "A", "{what}: {s}");
        }
        assert_eq!(f.slot("A"), slot_a, "{what}: the running slot was written");
        let again = run(None);
        again.success();
        if again.stdout_text().contains("(resumed)") {
            resumed += 1;
        }
        assert_installed(&f, &new);
    }
    assert!(resumed >= 3, "{resumed} reruns resumed");
    eprintln!("{} cut points, {resumed} reruns resumed", writes.len());
}

/// A delta at the limits, built by hand: every chunk of 1 MiB a patch whose window is the
/// largest a patch may read (8 MiB), so every decoder holds a full window. From the third
/// chunk on, every other window starts with up to half its bytes read back from the new
/// image itself (the chunks just before), so those reads are measured too.
fn widest_delta(f: &Fixture, base: &[u8], new: &[u8]) -> std::path::PathBuf {
    use abup::bundle::{self, Base, Chunk, Compression, Extent, Image, ImageKind, Manifest, Op};
    use sha2::{Digest, Sha256};
    use zstd::zstd_safe::{CCtx, CParameter};
    let cs = bundle::MAX_INSTALL_CHUNK_SIZE as usize;
    let window = bundle::MAX_PATCH_WINDOW;
    let (mut chunks, mut payload) = (Vec::new(), Vec::new());
    for (k, data) in new.chunks(cs).enumerate() {
        // Each chunk's window starts somewhere else, so no two decoders share one.
        let own = if k >= 2 && k % 2 == 0 {
            ((k - 1) * cs).min(window as usize / 2)
        } else {
            0
        };
        let target_extents: Vec<Extent> = (own > 0)
            .then(|| Extent {
                offset: (k * cs - own) as u64,
                len: own as u64,
            })
            .into_iter()
            .collect();
        let from_base = window - own as u64;
        let at = (k as u64 * 1_000_000) % (base.len() as u64 - from_base);
        let base_part = &base[at as usize..(at + from_base) as usize];
        let mut prefix = new[k * cs - own..k * cs].to_vec();
        prefix.extend_from_slice(base_part);
        let mut ctx = CCtx::create();
        ctx.set_parameter(CParameter::CompressionLevel(3)).unwrap();
        ctx.set_parameter(CParameter::WindowLog(24)).unwrap();
        ctx.ref_prefix(&prefix).unwrap();
        let mut frame = Vec::with_capacity(2 * cs);
        ctx.compress2(&mut frame, data).unwrap();
        chunks.push(Chunk {
            op: Op::Patch {
                extents: vec![Extent {
                    offset: at,
                    len: from_base,
                }],
                target_extents,
                base_sha256: Sha256::digest(base_part).into(),
                out_sha256: Sha256::digest(data).into(),
            },
            ..Chunk::describe(&frame)
        });
        payload.extend_from_slice(&frame);
    }
    let manifest = Manifest {
        compatible: "abup-test".into(),
        version: "2.0".into(),
        security_version: 0,
        created: 0,
        images: vec![Image {
            slot_class: "rootfs".into(),
            size: new.len() as u64,
            sha256: Sha256::digest(new).into(),
            kind: ImageKind::Delta(Base {
                size: base.len() as u64,
                sha256: Sha256::digest(base).into(),
            }),
            compression: Compression::Zstd,
            chunk_size: cs as u32,
            chunks,
        }],
    };
    let pem = String::from_utf8(std::fs::read(&f.key).unwrap()).unwrap();
    let key = bundle::SecretKey::from_pem(&pem).unwrap();
    let path = f.t.path("widest.abup");
    let mut out = std::fs::File::create(&path).unwrap();
    bundle::write_front(&manifest, &key, &mut out).unwrap();
    std::io::Write::write_all(&mut out, &payload).unwrap();
    path
}

/// The budget: a delta install peaks at or under 64 MiB, whatever delta abup accepts. The
/// widest delta has every decoder hold an 8 MiB window; a machine with fewer cores than the
/// four decoders an install starts at most is projected to four, each holding a window and
/// its chunk buffers. The budget is for the release build; the unoptimised test build is
/// allowed 8 MiB more (as for full installs).
#[test]
fn a_delta_install_with_the_widest_windows_stays_within_64_mib() {
    if !common::have("/usr/bin/time") {
        return;
    }
    let slot = 24u64 << 20;
    let f = Fixture::new(slot, "");
    let base = f.slot("A");
    // The new image: the base's second half, changed every 1,000 bytes.
    let mut new = base[12 << 20..].to_vec();
    for b in new.iter_mut().step_by(1000) {
        *b ^= 0x33;
    }
    let d = widest_delta(&f, &base, &new);
    let (out, peak) = f.install_peak_rss(&d);
    out.success();
    assert!(f.slot("B")[..new.len()] == new[..], "B holds the new image");
    let kib = peak >> 10;
    let decoders = std::thread::available_parallelism().map_or(1, |n| n.get().min(4)) as u64;
    // Per decoder: its window, a stored and a decoded chunk.
    let per_decoder = abup::bundle::MAX_PATCH_WINDOW + 2 * (1 << 20);
    let projected = (kib << 10) + (4 - decoders) * per_decoder;
    let budget: u64 = if cfg!(debug_assertions) {
        72 << 20
    } else {
        64 << 20
    };
    eprintln!(
        "peak RSS of a delta install with 8 MiB windows and {decoders} decoder(s): {kib} KiB; \
         with four: {} KiB; budget {} KiB",
        projected >> 10,
        budget >> 10
    );
    assert!(
        projected <= budget,
        "a delta install would peak at {} KiB with four decoders, over {} KiB",
        projected >> 10,
        budget >> 10
    );
}

#[test]
fn a_delta_installs_from_standard_input_and_from_a_url_that_drops() {
    let (f, new, d) = device();
    let saved = f.save();
    let out = f.install_stdin(&d);
    out.success();
    // The base check is a phase of its own in the progress lines.
    assert!(out.stdout_text().contains("\"phase\":\"base-check\""));
    assert_installed(&f, &new);

    // Over HTTP, with the connection dropped twice: resumed with Range requests.
    f.restore(&saved);
    let len = std::fs::metadata(&d).unwrap().len();
    let server = common::http::serve(d.clone(), vec![len / 3, len / 2]);
    f.abup(&["install", &server.url]).success();
    assert_installed(&f, &new);
    let ranges = server.ranges.lock().unwrap().clone();
    assert!(
        ranges.len() >= 3 && ranges[1].starts_with("bytes="),
        "{ranges:?}"
    );
}

/// A write to the slot that fails (here a full filesystem under a file-backed slot; on a
/// device, a bad medium) stops the install with that write's error: a full bundle, and a delta
/// whose patches wait to read back bytes the writer will now never write. The running slot
/// stays the one that boots, and the target, bootable before, is out of rotation.
#[test]
fn a_failed_slot_write_stops_the_install_with_its_error() {
    if !common::is_root() {
        return;
    }
    for delta in [false, true] {
        let f = Fixture::new(SLOT, "").with_b_bootable();
        let slot_a = f.slot("A");
        let new = next_release(&slot_a);
        let b = match delta {
            true => f.delta_bundle("b.abup", &slot_a, &new, "2.0"),
            false => f.bundle("b.abup", &new, "2.0", 0),
        };
        assert_eq!(manifest(&b).images[0].reads_target(), delta);
        let small = f.t.path("small");
        std::fs::create_dir(&small).unwrap();
        let (dir, size) = (small.to_str().unwrap(), "size=256k");
        common::run_ok("mount", &["-t", "tmpfs", "-o", size, "tmpfs", dir]);
        struct Unmount(std::path::PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(&self.0).status();
            }
        }
        let _unmount = Unmount(small.clone());
        let slot_b = small.join("slot-b");
        std::fs::File::create(&slot_b)
            .unwrap()
            .set_len(SLOT)
            .unwrap();
        f.set_slot_device("B", &slot_b);

        let cmd = f.command(&["install", b.to_str().unwrap()]);
        let limit = std::time::Duration::from_secs(120);
        let out = common::within(&f.t.path(""), cmd, "abup install", limit);
        assert_eq!(out.code, Some(1), "{}", out.stderr_text());
        let err = out.stderr_text();
        assert!(
            err.contains(&format!("writing {}", slot_b.display())) && err.contains("No space left"),
            "{err}"
        );
        let s = f.status();
        assert_eq!(s["next_boot"], "A", "{s}");
        assert_eq!(s["slots"][1]["good"], false, "{s}");
        assert_eq!(f.slot("A"), slot_a, "the running slot is never written");
    }
}

/// A loop device over slot A's file, with the filesystem on it mounted read-only: the running
/// root filesystem of a real device. Detached when dropped.
struct MountedSlot {
    loop_dev: String,
    mnt: std::path::PathBuf,
}

impl Drop for MountedSlot {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.mnt).status();
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.loop_dev])
            .status();
    }
}

fn ext4_image(f: &Fixture, name: &str, files: &[(&str, &[u8])], size: u64) -> Vec<u8> {
    let dir = f.t.path(&format!("{name}.d"));
    std::fs::create_dir(&dir).unwrap();
    for (p, bytes) in files {
        std::fs::write(dir.join(p), bytes).unwrap();
    }
    let img = f.t.path(&format!("{name}.ext4"));
    let mkfs = "mkfs.ext4";
    common::run_ok(
        mkfs,
        &[
            "-q",
            "-F",
            "-U",
            "6f1b3d2e-1111-4a4a-9b9b-0123456789ab",
            "-E",
            "hash_seed=6f1b3d2e-2222-4a4a-9b9b-0123456789ab",
            "-d",
            dir.to_str().unwrap(),
            img.to_str().unwrap(),
            &format!("{}k", size >> 10),
        ],
    );
    std::fs::read(img).unwrap()
}

/// The base is read as the medium holds it. A mounted ext4 (even read-only) changes its
/// superblock and journal in the block device's page cache without writing them, so a
/// buffered read of the running slot differs from the image the delta was built against;
/// abup reads the base with direct I/O and the delta installs.
#[test]
fn the_base_is_read_from_the_medium_not_from_a_mounted_filesystems_cache() {
    if !(common::is_root() && common::have("mkfs.ext4") && common::have("losetup")) {
        return;
    }
    let size = 16u64 << 20;
    let f = Fixture::new(size, "");
    let lib = image(3_000_000, 8);
    let v1 = ext4_image(&f, "v1", &[("lib.so", &lib), ("motd", b"v1\n")], size);
    let mut lib2 = lib.clone();
    lib2[1_000_000..1_000_100].fill(7);
    let v2 = ext4_image(&f, "v2", &[("lib.so", &lib2), ("motd", b"v2\n")], size);
    std::fs::write(f.t.path("slot-a"), &v1).unwrap();
    let d = f.delta_bundle("ext4.abup", &v1, &v2, "2.0");

    let loop_dev = common::run_ok(
        "losetup",
        &["-f", "--show", f.t.path("slot-a").to_str().unwrap()],
    )
    .trim()
    .to_string();
    let mnt = f.t.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = MountedSlot { loop_dev, mnt };
    common::run_ok(
        "mount",
        &["-o", "ro", &mounted.loop_dev, mounted.mnt.to_str().unwrap()],
    );
    f.set_slot_device("A", std::path::Path::new(&mounted.loop_dev));

    // What a buffered read sees is not the image: the test means something.
    let cached = std::fs::read(&mounted.loop_dev).unwrap();
    assert!(
        cached[..v1.len()] != v1[..],
        "the mount changed nothing in the page cache"
    );
    install(&f, &d, &[]).success();
    assert_installed(&f, &v2);
    drop(mounted);
    assert_eq!(f.slot("A"), v1, "the running slot was only read");
}

/// A delta's zero chunks, and a full bundle's data chunks that decode to zeros, are zeroed
/// by the device (fallocate on the block device: the device's write-zeroes, or the kernel's
/// zero page), not sent through the write path; where a slot cannot (a file on tmpfs), they
/// are written as zeros. Either way slot B held other data before, and the read-back finds
/// exactly the new image.
#[test]
fn zero_chunks_are_zeroed_on_the_target_whatever_it_held() {
    if !(common::is_root() && common::have("losetup")) {
        return;
    }
    for (on_loop, delta) in [(true, true), (false, true), (true, false)] {
        let f = if on_loop {
            Fixture::new(SLOT, "")
        } else {
            Fixture::in_memory(SLOT, "")
        };
        let new = next_release(&f.slot("A"));
        let d = if delta {
            f.delta_bundle("delta.abup", &f.slot("A"), &new, "2.0")
        } else {
            f.bundle("full.abup", &new, "2.0", 0)
        };
        let zeros = manifest(&d).images[0]
            .chunks
            .iter()
            .filter(|c| c.op == abup::bundle::Op::Zero)
            .count();
        if delta {
            assert!(zeros >= 2, "the delta has a run of zero chunks ({zeros})");
        } else {
            assert_eq!(zeros, 0, "a full image stores its zeros as data");
        }
        std::fs::write(f.t.path("slot-b"), image(SLOT as usize, 7)).unwrap();
        let _attached = on_loop.then(|| {
            let dev = common::run_ok(
                "losetup",
                &["-f", "--show", f.t.path("slot-b").to_str().unwrap()],
            )
            .trim()
            .to_string();
            f.set_slot_device("B", std::path::Path::new(&dev));
            Attached(dev)
        });
        let out = install(&f, &d, &["-vv"]);
        out.success();
        let zeroed = durable_writes(&out)
            .iter()
            .filter(|w| w.contains(" zeroed at "))
            .count();
        if on_loop {
            assert!(
                zeroed >= 1,
                "no range was zeroed by the device: {}",
                out.stderr_text()
            );
        } else {
            assert_eq!(zeroed, 0, "tmpfs cannot zero a range");
        }
        assert_eq!(f.status()["next_boot"], "B");
        assert_eq!(
            &f.slot("B")[..new.len()],
            &new[..],
            "B holds exactly the new image"
        );
    }
}

/// A loop device, detached when the test ends.
struct Attached(String);

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

/// The running slot changes after the install checked it (or where only a sample was
/// checked): the chunk that reads it fails its hash while the install writes, and the
/// install stops there, before activating anything, with the same one line naming the base
/// it needs and what the slot holds. A stays the running, confirmed slot; B is not
/// bootable. Given the fallback, the same install then completes.
#[test]
fn a_base_that_changes_during_the_install_stops_it_before_activation() {
    let (f, new, d) = device();
    let out = f.install_paused(&d, 1, || {
        let path = f.t.path("slot-a");
        let mut a = std::fs::read(&path).unwrap();
        a[700_000] ^= 1;
        std::fs::write(&path, a).unwrap();
    });
    // The pause's own line, then the error.
    let err = out.stderr_text();
    let last = err.lines().last().unwrap();
    assert_eq!(out.code, Some(1), "{err}");
    for w in [
        "needs base SHA-256",
        "which holds SHA-256",
        "nothing was activated",
    ] {
        assert!(last.contains(w), "{w:?} missing: {err}");
    }
    let s = f.status();
    assert_eq!(s["next_boot"], "A", "{s}");
    assert_eq!(s["slots"][0]["confirmed"], true, "{s}");
    assert_eq!(s["slots"][1]["good"], false, "{s}");
    let full = f.bundle("full.abup", &new, "2.0", 0);
    install(&f, &d, &["--fallback", full.to_str().unwrap()]).success();
    assert_installed(&f, &new);

    // Given the fallback from the start, a base that changes under the install is completed
    // from it in the same run.
    let (f, new, d) = device();
    let full = f.bundle("full.abup", &new, "2.0", 0);
    let out = f.install_paused_with(&d, &["--fallback", full.to_str().unwrap()], 1, || {
        let path = f.t.path("slot-a");
        let mut a = std::fs::read(&path).unwrap();
        a[700_000] ^= 1;
        std::fs::write(&path, a).unwrap();
    });
    assert_eq!(out.code, Some(0), "{}", out.stderr_text());
    assert_installed(&f, &new);
}
