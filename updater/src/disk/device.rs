//! The slot being written: its devices opened for writing after the checks that keep abup
//! away from anything in use, and read back from the disk rather than from the page cache.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use nix::fcntl::{fallocate, posix_fadvise, FallocateFlags, PosixFadviseAdvice};

use crate::bundle::Extent;

/// Direct I/O needs offsets, lengths and memory aligned to the logical block size; 4 KiB
/// covers every device abup meets.
pub const ALIGN: u64 = 4096;

/// One device of the target slot.
#[derive(Debug)]
pub struct Device {
    pub path: PathBuf,
    pub file: File,
    pub size: u64,
    /// The same device opened with O_DIRECT, when it allows it (tmpfs does not): large
    /// aligned writes and reads then go straight to the medium, without filling the page
    /// cache with a gigabyte that will not be read again, and a read-back reads the disk.
    direct: Option<File>,
}

/// Identity of a block device (its device number) or of a file (device and inode), so that
/// two paths for one thing compare equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Identity {
    Block(u64),
    File(u64, u64),
}

fn identity(path: &Path) -> Option<Identity> {
    let m = std::fs::metadata(path).ok()?;
    Some(if m.file_type().is_block_device() {
        Identity::Block(m.rdev())
    } else {
        Identity::File(m.dev(), m.ino())
    })
}

/// Refuses a target device that is the running system, is mounted, or backs a loop device.
/// `busy` are the devices of the booted slot, which abup never opens for writing.
pub fn check_not_in_use(path: &Path, busy: &[&Path]) -> Result<()> {
    let id = identity(path).with_context(|| format!("{} does not exist", path.display()))?;
    for b in busy {
        if identity(b) == Some(id) {
            bail!(
                "{} is a device of the booted slot ({}); abup never writes the running slot",
                path.display(),
                b.display()
            );
        }
    }
    if let Identity::Block(rdev) = id {
        if std::fs::metadata("/").is_ok_and(|m| m.dev() == rdev) {
            bail!("{} holds the running root filesystem", path.display());
        }
        let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
        // Without /proc (an initramfs that has not mounted it) nothing could be checked:
        // refuse rather than assume the device is free. (The exclusive open below also asks
        // the kernel, which knows about mounts and device-mapper.)
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").with_context(|| {
            format!(
                "cannot tell whether {} is mounted: /proc/self/mountinfo is unreadable (mount \
                 /proc first)",
                path.display()
            )
        })?;
        for line in mountinfo.lines() {
            let mut f = line.split(' ');
            let (Some(_), Some(_), Some(devno), Some(_), Some(mount_point)) =
                (f.next(), f.next(), f.next(), f.next(), f.next())
            else {
                continue;
            };
            if devno == format!("{major}:{minor}") {
                bail!(
                    "{} is mounted at {mount_point}; unmount it before installing",
                    path.display()
                );
            }
        }
    }
    if let Some(lo) = loop_backed_by(id)? {
        bail!(
            "slot device {} is in use as the backing file of {lo}; release it (losetup -d {lo}) \
             before installing",
            path.display()
        );
    }
    Ok(())
}

/// The loop device whose backing file or device is `id`, if one is attached. A loop device
/// does not claim what it reads from, so neither an exclusive open nor the mount table shows
/// it. Without /sys nothing could be checked: refused rather than assumed free.
fn loop_backed_by(id: Identity) -> Result<Option<String>> {
    let sys = Path::new("/sys/block");
    let entries = std::fs::read_dir(sys).with_context(|| {
        "cannot tell whether a loop device uses the slot: /sys/block is unreadable (mount /sys \
         first)"
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue;
        };
        if identity(Path::new(backing.trim_end())) == Some(id) {
            return Ok(Some(format!("/dev/{name}")));
        }
    }
    Ok(None)
}

/// Opens a slot device for writing: never created, never truncated, its size the capacity.
/// A block device is opened exclusively (`O_EXCL`), so the kernel refuses one that is mounted
/// (in any mount namespace) or held by device-mapper, and nothing can claim it while abup
/// writes. (Loop devices do not claim their backing device: `check_not_in_use` looks for
/// them.)
pub fn open(path: &Path) -> Result<Device> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_EXCL.bits())
        .open(path)
        .map_err(|e| {
            let busy = e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32);
            anyhow::Error::new(e).context(if busy {
                format!(
                    "slot device {} is in use (mounted, or held by device-mapper or another \
                     program); release it before installing",
                    path.display()
                )
            } else {
                format!("opening slot device {}", path.display())
            })
        })?;
    let size = file
        .seek(SeekFrom::End(0))
        .with_context(|| format!("finding the size of {}", path.display()))?;
    let direct = open_direct(path, true);
    Ok(Device {
        path: path.to_owned(),
        file,
        size,
        direct,
    })
}

/// `path` opened again with O_DIRECT, or `None` where the filesystem refuses it (tmpfs): the
/// slot then works through the page cache alone.
fn open_direct(path: &Path, write: bool) -> Option<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
        .open(path)
        .map_err(|e| log::debug!("{}: no direct I/O ({e})", path.display()))
        .ok()
}

/// A slot read the way a delta reads it: read-only, and with O_DIRECT when the device allows
/// it. That is the running slot, as a delta's base, and the target slot, read back for
/// patches that refer to the new image's earlier bytes. A mounted filesystem's metadata lives
/// in the block device's page cache and the kernel changes it there without writing it (ext4
/// mounted read-only sets journal checksum features in its in-memory superblock), so a
/// buffered read of the running slot can differ from what the medium holds, and from the
/// image the delta was built against.
pub struct SlotReader {
    pub path: PathBuf,
    file: File,
    direct: Option<File>,
    /// Aligned buffers for direct reads, one per reader at a time (each decoder, and the
    /// plan's check): allocated once, so a read neither allocates nor zeroes memory.
    bounces: Mutex<Vec<memmap2::MmapMut>>,
}

impl std::fmt::Debug for SlotReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotReader")
            .field("path", &self.path)
            .field("direct", &self.direct.is_some())
            .finish_non_exhaustive()
    }
}

/// Bytes one direct read of the base covers at most, so a read costs at most this much
/// memory beside the caller's buffer.
const BASE_PIECE: usize = 1 << 20;

/// Opens `path` as a [`SlotReader`]; the caller says what for in the error's context.
pub fn open_reader(path: &Path) -> std::io::Result<SlotReader> {
    let file = File::open(path)?;
    let direct = open_direct(path, false);
    Ok(SlotReader {
        path: path.to_owned(),
        file,
        direct,
        bounces: Mutex::new(Vec::new()),
    })
}

/// Extents of the base closer than this are read in one request, the gap read and dropped:
/// a request costs more than 64 KiB of sequential reading on any storage abup meets, and a
/// delta's copies are often runs of blocks with small holes between them.
const BASE_GAP: u64 = 64 << 10;

impl SlotReader {
    /// Reads `range` of the base and hands it to `sink` in order, as (offset, bytes) pieces of
    /// at most [`BASE_PIECE`], straight from the direct-I/O buffer.
    fn read_span(
        &self,
        range: std::ops::Range<u64>,
        mut sink: impl FnMut(u64, &[u8]),
    ) -> std::io::Result<()> {
        let Some(direct) = &self.direct else {
            let mut buf = vec![0u8; (range.end - range.start).min(BASE_PIECE as u64) as usize];
            let mut at = range.start;
            while at < range.end {
                let piece = &mut buf[..(range.end - at).min(BASE_PIECE as u64) as usize];
                self.file.read_exact_at(piece, at)?;
                sink(at, piece);
                at += piece.len() as u64;
            }
            return Ok(());
        };
        let taken = self.bounces.lock().ok().and_then(|mut b| b.pop());
        let mut bounce = match taken {
            Some(b) => b,
            None => memmap2::MmapMut::map_anon(BASE_PIECE + ALIGN as usize)?,
        };
        let result = (|| {
            let mut at = range.start;
            while at < range.end {
                let aligned = at / ALIGN * ALIGN;
                let skip = (at - aligned) as usize;
                let want = ((range.end - at) as usize).min(BASE_PIECE - skip);
                let len = (skip + want).div_ceil(ALIGN as usize) * ALIGN as usize;
                let piece = &mut bounce[..len];
                // The device may end inside the last aligned block: a short read is fine as
                // long as it covers what was asked for.
                let mut got = 0;
                while got < len {
                    match direct.read_at(&mut piece[got..], aligned + got as u64) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                if got < skip + want {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                sink(at, &piece[skip..skip + want]);
                at += want as u64;
            }
            Ok(())
        })();
        if let Ok(mut b) = self.bounces.lock() {
            b.push(bounce);
        }
        result
    }
}

impl crate::bundle::ReadAt for SlotReader {
    fn read_extents(&self, extents: &[Extent], buf: &mut [u8]) -> std::io::Result<()> {
        // Where each extent goes in `buf`, in the order of the base.
        let mut order: Vec<(u64, u64, usize)> = Vec::with_capacity(extents.len());
        let mut at = 0;
        for e in extents {
            order.push((e.offset, e.len, at));
            at += e.len as usize;
        }
        order.sort_unstable();
        let mut i = 0;
        while i < order.len() {
            let start = order[i].0;
            let mut end = start + order[i].1;
            let mut j = i + 1;
            while j < order.len()
                && order[j].0 <= end + BASE_GAP
                && end.max(order[j].0 + order[j].1) - start <= BASE_PIECE as u64
            {
                end = end.max(order[j].0 + order[j].1);
                j += 1;
            }
            let group = &order[i..j];
            self.read_span(start..end, |piece_at, piece| {
                let piece_end = piece_at + piece.len() as u64;
                for &(offset, len, dst) in group {
                    let (a, b) = (offset.max(piece_at), (offset + len).min(piece_end));
                    if a < b {
                        let to = dst + (a - offset) as usize;
                        buf[to..to + (b - a) as usize].copy_from_slice(
                            &piece[(a - piece_at) as usize..(b - piece_at) as usize],
                        );
                    }
                }
            })?;
            i = j;
        }
        Ok(())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.read_span(offset..offset + buf.len() as u64, |at, piece| {
            let to = (at - offset) as usize;
            buf[to..to + piece.len()].copy_from_slice(piece);
        })
    }
}

/// Zeros that a device cannot zero itself are written this many bytes at a time.
const ZEROS_PIECE: u64 = 2 << 20;

/// Memory aligned for direct I/O (an anonymous mapping is page-aligned).
pub fn aligned_buffer(len: usize) -> Result<memmap2::MmapMut> {
    memmap2::MmapMut::map_anon(len).context("allocating an I/O buffer")
}

impl Device {
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        crate::failpoint::unsynced_write(&self.file, offset, data.len());
        self.file
            .write_all_at(data, offset)
            .with_context(|| format!("writing {} at byte {offset}", self.path.display()))?;
        crate::failpoint::wrote(&format!("{} at {offset}", self.path.display()));
        Ok(())
    }

    /// Writes `data` (from an [`aligned_buffer`]) at `offset`: the aligned part directly,
    /// any unaligned tail through the page cache.
    pub fn write_aligned(&self, offset: u64, data: &[u8]) -> Result<()> {
        let direct_len = match &self.direct {
            Some(_) if offset % ALIGN == 0 => (data.len() as u64 / ALIGN * ALIGN) as usize,
            _ => 0,
        };
        if let (Some(direct), true) = (&self.direct, direct_len > 0) {
            crate::failpoint::unsynced_write(&self.file, offset, direct_len);
            direct
                .write_all_at(&data[..direct_len], offset)
                .with_context(|| format!("writing {} at byte {offset}", self.path.display()))?;
            crate::failpoint::wrote(&format!("{} at {offset}", self.path.display()));
        }
        if direct_len < data.len() {
            self.write_at(offset + direct_len as u64, &data[direct_len..])?;
        }
        Ok(())
    }

    /// Zeros `len` bytes at `offset`. The device does it itself where it can, without being
    /// sent them: a block device with write-zeroes (or the kernel writes its zero page), a
    /// file-backed slot with an unwritten extent. What it cannot zero (tmpfs, an unaligned
    /// end) is written as zeros. Like a direct write, it is on the medium after the next
    /// [`Device::sync`].
    pub fn zero_out(&self, offset: u64, len: u64) -> Result<()> {
        let whole = len / ALIGN * ALIGN;
        let zeroed = match self.zero_range(offset, whole) {
            Ok(()) => whole,
            Err(e) => {
                log::debug!(
                    "{}: cannot zero a range ({e}); writing zeros",
                    self.path.display()
                );
                0
            }
        };
        let (mut at, mut left) = (offset + zeroed, len - zeroed);
        if left == 0 {
            return Ok(());
        }
        let zeros = aligned_buffer(left.min(ZEROS_PIECE) as usize)?;
        while left > 0 {
            let n = left.min(ZEROS_PIECE) as usize;
            self.write_aligned(at, &zeros[..n])?;
            at += n as u64;
            left -= n as u64;
        }
        Ok(())
    }

    /// `fallocate`'s zero range over `len` bytes at `offset`, both multiples of [`ALIGN`]; on
    /// a block device this is BLKZEROOUT's operation (Linux 4.9 and later).
    fn zero_range(&self, offset: u64, len: u64) -> std::io::Result<()> {
        if offset % ALIGN != 0 || len % ALIGN != 0 {
            return Err(std::io::ErrorKind::InvalidInput.into());
        }
        let (Ok(at), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(std::io::ErrorKind::InvalidInput.into());
        };
        crate::failpoint::unsynced_write(&self.file, offset, len as usize);
        fallocate(
            &self.file,
            FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            at,
            n,
        )?;
        crate::failpoint::wrote(&format!(
            "{} zeroed at {offset} ({len} bytes)",
            self.path.display()
        ));
        Ok(())
    }

    /// Reads into `buf` (from an [`aligned_buffer`]) at `offset` from the medium: directly
    /// when aligned, else through the page cache after dropping it.
    pub fn read_aligned(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let direct_len = match &self.direct {
            Some(_) if offset % ALIGN == 0 => (buf.len() as u64 / ALIGN * ALIGN) as usize,
            _ => 0,
        };
        if let (Some(direct), true) = (&self.direct, direct_len > 0) {
            direct
                .read_exact_at(&mut buf[..direct_len], offset)
                .with_context(|| {
                    format!("reading back {} at byte {offset}", self.path.display())
                })?;
        }
        if direct_len < buf.len() {
            self.drop_cache();
            self.read_at(offset + direct_len as u64, &mut buf[direct_len..])?;
        }
        Ok(())
    }

    /// Everything written so far, through either descriptor, on the medium (fsync also
    /// flushes the device's volatile write cache).
    pub fn sync(&self) -> Result<()> {
        if let Some(d) = &self.direct {
            d.sync_data()
                .with_context(|| format!("syncing {}", self.path.display()))?;
        }
        self.file
            .sync_data()
            .with_context(|| format!("syncing {}", self.path.display()))?;
        crate::failpoint::synced(&self.file);
        Ok(())
    }

    /// Drops the device's cached pages so the next reads come from the medium: a read-back
    /// from the page cache would only check memory.
    pub fn drop_cache(&self) {
        if let Err(e) = posix_fadvise(&self.file, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED) {
            log::debug!("{}: cannot drop cached pages: {e}", self.path.display());
        }
    }

    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .with_context(|| format!("reading back {} at byte {offset}", self.path.display()))
    }
}
