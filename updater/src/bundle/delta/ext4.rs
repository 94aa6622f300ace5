//! Where each regular file of an ext2/3/4 image keeps its data, so the delta builder can diff a
//! file of the new image against the same file of the base image rather than against whatever
//! happens to sit at the same offset. It reads a whole image in memory on a build host and
//! never writes.
//!
//! The image comes from outside (a base image is whatever the user points the builder at), so
//! every number read from it is checked before use and the work is bounded by the image's size:
//! a valid filesystem has each metadata block and each directory block read once, so reading
//! more blocks than the image holds can only mean damage, and the parse stops there.

use std::collections::HashSet;

/// One regular file of an ext4 image and where its data lives in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMap {
    /// Absolute path inside the filesystem, e.g. "/usr/lib/modules/6.1.0-18-amd64/kernel/fs/ext4/ext4.ko".
    pub path: String,
    /// i_size in bytes.
    pub size: u64,
    /// The file's data in logical order: (byte offset in the image, byte length) for each
    /// physical extent, block-aligned, covering logical blocks 0.. in order. Holes and
    /// unwritten (uninitialized) extents are left out, and `logical` says where each run starts.
    pub extents: Vec<Extent>,
}

/// One run of a file's data: `len` bytes at `offset` in the image hold the file's bytes from
/// `logical` on. Blocks past the end of the file are not reported, but the last run is
/// block-aligned, so it may reach past `size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset in the file.
    pub logical: u64,
    /// Byte offset in the image.
    pub offset: u64,
    /// Byte length, a multiple of the block size.
    pub len: u64,
}

/// The regular files of the ext4 filesystem in `image` (the whole image in memory), in
/// directory-walk order, or None if `image` is not an ext4 (or ext2/3 with extents or
/// block maps) filesystem this parser understands. Never panics on any input (it will be
/// fuzzed): every offset and length read from the image is bounds-checked; a damaged
/// structure makes the function return None or skip that file, never loop forever (guard
/// directory cycles and extent-tree depth, cap the number of entries).
///
/// The walk lists a directory's files before descending into its subdirectories, which it
/// visits in the order of their entries. A file with several hard links is listed once, under
/// the first path the walk meets. Names that are not UTF-8 are converted lossily: the paths
/// only pair files of two images, and a garbled name at worst pairs nothing.
pub fn files(image: &[u8]) -> Option<Vec<FileMap>> {
    let fs = Fs::open(image)?;
    Walk::new(&fs).run()
}

/// The filesystem block size if `image` is ext2/3/4, else None.
pub fn block_size(image: &[u8]) -> Option<u64> {
    block_size_of(image.get(SUPERBLOCK_OFFSET..SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE)?)
}

const SUPERBLOCK_OFFSET: usize = 1024;
const SUPERBLOCK_SIZE: usize = 1024;
const SUPER_MAGIC: u16 = 0xEF53;
/// 64 KiB, the largest block size Linux mounts.
const MAX_LOG_BLOCK_SIZE: u32 = 6;
const ROOT_INO: u32 = 2;
/// Revision 0 filesystems have no `s_first_ino` and `s_inode_size` fields.
const GOOD_OLD_FIRST_INO: u32 = 11;
const GOOD_OLD_INODE_SIZE: u64 = 128;
/// The kernel's limits for 64-bit group descriptors; outside them it refuses to mount.
const MIN_DESC_SIZE_64BIT: u64 = 64;
const MAX_DESC_SIZE: u64 = 1024;
const DESC_SIZE_32BIT: u64 = 32;

const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
/// Features that change nothing this parser reads (extents, flex_bg, MMP, xattr inodes,
/// checksum seed, 3-level htrees, inline data, casefolded names) or that it handles (file
/// types in entries, meta_bg, 64-bit descriptors). Everything else is refused: compression
/// and encryption hide the data, a journal device holds no files, dirdata changes the entry
/// format, and a journal that needs recovery may hold newer metadata than the image shows.
const INCOMPAT_UNDERSTOOD: u32 = INCOMPAT_FILETYPE
    | INCOMPAT_META_BG
    | 0x40 // extents
    | INCOMPAT_64BIT
    | 0x100 // mmp
    | 0x200 // flex_bg
    | 0x400 // ea_inode
    | 0x2000 // csum_seed
    | 0x4000 // largedir
    | 0x8000 // inline_data
    | 0x2_0000; // casefold
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const COMPAT_SPARSE_SUPER2: u32 = 0x200;

const S_IFMT: u16 = 0xF000;
const S_IFREG: u16 = 0x8000;
const S_IFDIR: u16 = 0x4000;
const EXTENTS_FL: u32 = 0x8_0000;
const INLINE_DATA_FL: u32 = 0x1000_0000;

const EXTENT_MAGIC: u16 = 0xF30A;
const MAX_EXTENT_DEPTH: u16 = 5;
/// An extent longer than this is unwritten; its length is the excess.
const EXT_INIT_MAX_LEN: u64 = 32768;
const EXTENT_ENTRY: usize = 12;
/// Direct pointers in `i_block` before the single, double and triple indirect ones.
const DIRECT_BLOCKS: usize = 12;

const FT_UNKNOWN: u8 = 0;
const FT_REG_FILE: u8 = 1;
const FT_DIR: u8 = 2;
const DIRENT_HEADER: usize = 8;
/// An inline directory's `i_block` starts with its parent's inode number, not an entry.
const INLINE_DOTDOT: usize = 4;
const XATTR_MAGIC: u32 = 0xEA02_0000;
const XATTR_ENTRY: usize = 16;
/// The rest of an inline directory lives in the in-inode attribute "system.data".
const XATTR_INDEX_SYSTEM: u8 = 7;

/// Linux's PATH_MAX: nothing longer can be opened, so only damage makes one.
const MAX_PATH: usize = 4096;
/// Directory entries read in all. Far above any system image; reached, the image is damaged
/// (or hostile) and the parse stops before its lists outgrow memory.
const MAX_ENTRIES: usize = 1 << 24;

/// A damaged structure: `File` costs one file (or directory), `Image` the whole parse.
#[derive(Debug)]
enum Bad {
    File,
    Image,
}

/// `count` blocks of a file from logical block `logical` at image block `physical`.
#[derive(Debug, Clone, Copy)]
struct Run {
    logical: u64,
    physical: u64,
    count: u64,
}

/// How backup superblocks are placed: meta_bg descriptor blocks sit behind them.
#[derive(Debug)]
enum Backups {
    EveryGroup,
    Sparse,
    Two([u64; 2]),
}

/// The superblock facts the walk needs, each checked once here.
#[derive(Debug)]
struct Fs<'a> {
    image: &'a [u8],
    block_size: u64,
    inode_size: u64,
    inodes_count: u32,
    inodes_per_group: u64,
    first_ino: u32,
    first_data_block: u64,
    blocks_per_group: u64,
    group_count: u64,
    desc_size: u64,
    desc_64bit: bool,
    filetype: bool,
    /// `s_first_meta_bg` when meta_bg places descriptor blocks inside their groups.
    first_meta_bg: Option<u64>,
    backups: Backups,
}

impl<'a> Fs<'a> {
    fn open(image: &'a [u8]) -> Option<Self> {
        let sb = image.get(SUPERBLOCK_OFFSET..SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE)?;
        let block_size = block_size_of(sb)?;
        let incompat = le32(sb, 0x60)?;
        if incompat & !INCOMPAT_UNDERSTOOD != 0 {
            log::debug!("ext4: unsupported incompatible features {incompat:#x}");
            return None;
        }
        let desc_64bit = incompat & INCOMPAT_64BIT != 0;
        let (inode_size, first_ino) = if le32(sb, 0x4C)? == 0 {
            (GOOD_OLD_INODE_SIZE, GOOD_OLD_FIRST_INO)
        } else {
            (u64::from(le16(sb, 0x58)?), le32(sb, 0x54)?)
        };
        if inode_size < GOOD_OLD_INODE_SIZE
            || !inode_size.is_power_of_two()
            || inode_size > block_size
        {
            return None;
        }
        let blocks_hi = if desc_64bit { le32(sb, 0x150)? } else { 0 };
        let blocks_count = u64::from(le32(sb, 0x4)?) | u64::from(blocks_hi) << 32;
        let first_data_block = u64::from(le32(sb, 0x14)?);
        let blocks_per_group = u64::from(le32(sb, 0x20)?);
        let inodes_per_group = u64::from(le32(sb, 0x28)?);
        let inodes_count = le32(sb, 0x0)?;
        if blocks_per_group == 0 || inodes_per_group == 0 || first_data_block >= blocks_count {
            return None;
        }
        let group_count = (blocks_count - first_data_block).div_ceil(blocks_per_group);
        if u64::from(inodes_count) > group_count.checked_mul(inodes_per_group)? {
            return None;
        }
        let desc_size = if desc_64bit {
            let size = u64::from(le16(sb, 0xFE)?);
            if !(MIN_DESC_SIZE_64BIT..=MAX_DESC_SIZE).contains(&size) || !size.is_power_of_two() {
                return None;
            }
            size
        } else {
            DESC_SIZE_32BIT
        };
        let first_meta_bg =
            (incompat & INCOMPAT_META_BG != 0).then_some(u64::from(le32(sb, 0x104)?));
        let backups = if le32(sb, 0x5C)? & COMPAT_SPARSE_SUPER2 != 0 {
            Backups::Two([u64::from(le32(sb, 0x24C)?), u64::from(le32(sb, 0x250)?)])
        } else if le32(sb, 0x64)? & RO_COMPAT_SPARSE_SUPER != 0 {
            Backups::Sparse
        } else {
            Backups::EveryGroup
        };
        Some(Fs {
            image,
            block_size,
            inode_size,
            inodes_count,
            inodes_per_group,
            first_ino,
            first_data_block,
            blocks_per_group,
            group_count,
            desc_size,
            desc_64bit,
            filetype: incompat & INCOMPAT_FILETYPE != 0,
            first_meta_bg,
            backups,
        })
    }

    /// Block `n` of the image, if the image holds all of it.
    fn block(&self, n: u64) -> Option<&'a [u8]> {
        let start = usize::try_from(n.checked_mul(self.block_size)?).ok()?;
        let len = usize::try_from(self.block_size).ok()?;
        self.image.get(start..start.checked_add(len)?)
    }

    fn blocks_in_image(&self) -> u64 {
        self.image.len() as u64 / self.block_size
    }

    /// Whether `group` starts with a superblock copy, as the kernel's `ext4_bg_has_super`.
    fn has_super(&self, group: u64) -> bool {
        fn power_of(mut n: u64, base: u64) -> bool {
            while n > 1 && n % base == 0 {
                n /= base;
            }
            n == 1
        }
        match self.backups {
            _ if group == 0 => true,
            Backups::Two(groups) => groups.contains(&group),
            Backups::EveryGroup => true,
            Backups::Sparse => {
                group == 1 || (group % 2 == 1 && [3, 5, 7].iter().any(|&b| power_of(group, b)))
            }
        }
    }

    /// The descriptor of `group`, located as the kernel's `descriptor_loc` does.
    fn group_desc(&self, group: u64) -> Option<&'a [u8]> {
        if group >= self.group_count {
            return None;
        }
        let per_block = self.block_size / self.desc_size;
        let index = group / per_block;
        let block = match self.first_meta_bg {
            Some(first) if index >= first => {
                let first_group = index.checked_mul(per_block)?;
                let start = first_group
                    .checked_mul(self.blocks_per_group)?
                    .checked_add(self.first_data_block)?;
                // With 1 KiB blocks the superblock is block 1 even when s_first_data_block
                // is 0 (bigalloc), and group 0's descriptors follow it.
                let shift = u64::from(self.has_super(first_group))
                    + u64::from(
                        index == 0 && self.block_size == 1024 && self.first_data_block == 0,
                    );
                start.checked_add(shift)?
            }
            _ => (SUPERBLOCK_OFFSET as u64 / self.block_size) + 1 + index,
        };
        let start = self
            .block(block)?
            .get(usize::try_from((group % per_block) * self.desc_size).ok()?..)?;
        start.get(..usize::try_from(self.desc_size).ok()?)
    }

    fn inode(&self, ino: u32) -> Option<Inode<'a>> {
        if ino == 0 || ino > self.inodes_count {
            return None;
        }
        let index = u64::from(ino - 1);
        let desc = self.group_desc(index / self.inodes_per_group)?;
        let table_hi = if self.desc_64bit {
            le32(desc, 0x28)?
        } else {
            0
        };
        let table = u64::from(le32(desc, 0x8)?) | u64::from(table_hi) << 32;
        let start = table
            .checked_mul(self.block_size)?
            .checked_add((index % self.inodes_per_group).checked_mul(self.inode_size)?)?;
        let start = usize::try_from(start).ok()?;
        let raw = self
            .image
            .get(start..start.checked_add(usize::try_from(self.inode_size).ok()?)?)?;
        Inode::parse(raw)
    }
}

fn block_size_of(sb: &[u8]) -> Option<u64> {
    if le16(sb, 0x38)? != SUPER_MAGIC {
        return None;
    }
    let log = le32(sb, 0x18)?;
    (log <= MAX_LOG_BLOCK_SIZE).then(|| 1024 << log)
}

#[derive(Debug, Clone, Copy)]
struct Inode<'a> {
    raw: &'a [u8],
    mode: u16,
    flags: u32,
    size: u64,
    /// The 60 bytes that hold the extent tree root, the block pointers or inline data.
    i_block: &'a [u8],
}

impl<'a> Inode<'a> {
    fn parse(raw: &'a [u8]) -> Option<Self> {
        Some(Inode {
            raw,
            mode: le16(raw, 0x0)?,
            flags: le32(raw, 0x20)?,
            size: u64::from(le32(raw, 0x4)?) | u64::from(le32(raw, 0x6C)?) << 32,
            i_block: raw.get(0x28..0x64)?,
        })
    }

    fn is(&self, kind: u16) -> bool {
        self.mode & S_IFMT == kind
    }

    fn inline(&self) -> bool {
        self.flags & INLINE_DATA_FL != 0
    }

    /// The value of the in-inode attribute "system.data": the part of inline data that did
    /// not fit in `i_block`.
    fn inline_xattr(&self) -> Option<&'a [u8]> {
        let extra = usize::from(le16(self.raw, 0x80)?);
        let region = self.raw.get(0x80usize.checked_add(extra)?..)?;
        if le32(region, 0)? != XATTR_MAGIC {
            return None;
        }
        // Value offsets count from the first entry, just after the magic.
        let entries = region.get(4..)?;
        let mut at = 0usize;
        loop {
            let entry = entries.get(at..at.checked_add(XATTR_ENTRY)?)?;
            if le32(entry, 0)? == 0 {
                return None;
            }
            let name_len = usize::from(entry[0]);
            let name = entries.get(at + XATTR_ENTRY..at + XATTR_ENTRY + name_len)?;
            if entry[1] == XATTR_INDEX_SYSTEM && name == b"data" && le32(entry, 4)? == 0 {
                let offset = usize::from(le16(entry, 2)?);
                let len = usize::try_from(le32(entry, 8)?).ok()?;
                return entries.get(offset..offset.checked_add(len)?);
            }
            at += (XATTR_ENTRY + name_len + 3) & !3;
        }
    }
}

/// One directory entry, borrowed from the image.
#[derive(Debug)]
struct Entry<'a> {
    inode: u32,
    file_type: u8,
    name: &'a [u8],
}

/// The walk's state, with the limits that keep a hostile image from making it run long.
#[derive(Debug)]
struct Walk<'f, 'a> {
    fs: &'f Fs<'a>,
    /// Extent-tree, indirect and directory blocks still allowed to be read.
    blocks_left: u64,
    /// Runs still allowed to be reported; each covers at least one block of its own.
    runs_left: u64,
    entries_left: usize,
}

impl<'f, 'a> Walk<'f, 'a> {
    fn new(fs: &'f Fs<'a>) -> Self {
        Walk {
            fs,
            blocks_left: fs.blocks_in_image(),
            runs_left: fs.blocks_in_image(),
            entries_left: MAX_ENTRIES,
        }
    }

    fn run(mut self) -> Option<Vec<FileMap>> {
        let root = self.fs.inode(ROOT_INO).filter(|i| i.is(S_IFDIR))?;
        let mut files = Vec::new();
        let mut seen_dirs = HashSet::from([ROOT_INO]);
        let mut seen_files = HashSet::new();
        let mut pending = vec![(root, String::new())];
        while let Some((dir, dir_path)) = pending.pop() {
            let entries = match self.dir_entries(&dir) {
                Ok(entries) => entries,
                Err(Bad::File) if !dir_path.is_empty() => {
                    log::debug!("ext4: skipping damaged directory {dir_path}");
                    continue;
                }
                Err(_) => return None,
            };
            let mut subdirs = Vec::new();
            for entry in entries {
                // Inodes below s_first_ino other than the root are the filesystem's own
                // (journal, resize inode): an entry naming one is damage, not a file.
                if matches!(entry.name, b"." | b"..")
                    || entry.name.contains(&b'/')
                    || entry.name.contains(&0)
                    || (entry.inode < self.fs.first_ino && entry.inode != ROOT_INO)
                {
                    continue;
                }
                let hint = if self.fs.filetype {
                    entry.file_type
                } else {
                    FT_UNKNOWN
                };
                if !matches!(hint, FT_UNKNOWN | FT_REG_FILE | FT_DIR) {
                    continue;
                }
                let path = format!("{dir_path}/{}", String::from_utf8_lossy(entry.name));
                if path.len() > MAX_PATH {
                    continue;
                }
                let Some(inode) = self.fs.inode(entry.inode) else {
                    continue;
                };
                // An entry whose type contradicts the inode's mode is damage: skip it rather
                // than read a directory's blocks as a file's or the other way round.
                if inode.is(S_IFREG) && hint != FT_DIR {
                    if !seen_files.insert(entry.inode) {
                        continue;
                    }
                    match self.file(&inode, path) {
                        Ok(Some(file)) => files.push(file),
                        Ok(None) | Err(Bad::File) => {}
                        Err(Bad::Image) => return None,
                    }
                } else if inode.is(S_IFDIR) && hint != FT_REG_FILE && seen_dirs.insert(entry.inode)
                {
                    subdirs.push((inode, path));
                }
            }
            pending.extend(subdirs.into_iter().rev());
        }
        Some(files)
    }

    /// The map of a regular file; None for inline data, which has no blocks of its own.
    fn file(&mut self, inode: &Inode<'a>, path: String) -> Result<Option<FileMap>, Bad> {
        if inode.inline() {
            return Ok(None);
        }
        let block_size = self.fs.block_size;
        let runs = self.map(inode).inspect_err(|_| {
            log::debug!("ext4: skipping {path}: damaged extent tree or block map");
        })?;
        let bytes = |blocks: u64| blocks.checked_mul(block_size).ok_or(Bad::File);
        let extents = runs
            .iter()
            .map(|run| {
                Ok(Extent {
                    logical: bytes(run.logical)?,
                    offset: bytes(run.physical)?,
                    len: bytes(run.count)?,
                })
            })
            .collect::<Result<_, Bad>>()?;
        Ok(Some(FileMap {
            path,
            size: inode.size,
            extents,
        }))
    }

    /// The runs holding `inode`'s data, cut at its size: blocks past the end (preallocated,
    /// or fs-verity's tree) are not the file's content.
    fn map(&mut self, inode: &Inode<'a>) -> Result<Vec<Run>, Bad> {
        let end = inode.size.div_ceil(self.fs.block_size);
        let mut runs = Vec::new();
        if inode.flags & EXTENTS_FL != 0 {
            let mut next = 0;
            self.extent_node(inode.i_block, None, end, &mut next, &mut runs)?;
        } else {
            self.block_map(inode.i_block, end, &mut runs)?;
        }
        Ok(runs)
    }

    fn take_block(&mut self) -> Result<(), Bad> {
        self.blocks_left = self.blocks_left.checked_sub(1).ok_or(Bad::Image)?;
        Ok(())
    }

    fn push(&mut self, runs: &mut Vec<Run>, run: Run, merge: bool) -> Result<(), Bad> {
        let end = run.physical.checked_add(run.count).ok_or(Bad::File)?;
        if end > self.fs.blocks_in_image() {
            return Err(Bad::File);
        }
        if let Some(last) = runs.last_mut().filter(|_| merge) {
            if last.logical + last.count == run.logical
                && last.physical + last.count == run.physical
            {
                last.count += run.count;
                return Ok(());
            }
        }
        self.runs_left = self.runs_left.checked_sub(1).ok_or(Bad::Image)?;
        runs.push(run);
        Ok(())
    }

    /// One node of an extent tree. `depth` is what the parent's depth implies, so a node
    /// cannot claim more levels below it than the root allowed; `next` is the first logical
    /// block not yet covered, so extents must come in order and cannot overlap.
    fn extent_node(
        &mut self,
        node: &[u8],
        depth: Option<u16>,
        end: u64,
        next: &mut u64,
        runs: &mut Vec<Run>,
    ) -> Result<(), Bad> {
        let header = |at| le16(node, at).ok_or(Bad::File);
        let (magic, entries, max, node_depth) = (header(0)?, header(2)?, header(4)?, header(6)?);
        if magic != EXTENT_MAGIC
            || entries > max
            || node_depth > MAX_EXTENT_DEPTH
            || depth.is_some_and(|d| d != node_depth)
        {
            return Err(Bad::File);
        }
        let body = node
            .get(EXTENT_ENTRY..EXTENT_ENTRY * (1 + usize::from(entries)))
            .ok_or(Bad::File)?;
        let entries = body.chunks_exact(EXTENT_ENTRY);
        let field = |e: &[u8], at| le32(e, at).map(u64::from).ok_or(Bad::File);
        let half = |e: &[u8], at| le16(e, at).map(u64::from).ok_or(Bad::File);
        if node_depth == 0 {
            for e in entries {
                let logical = field(e, 0)?;
                let raw_len = half(e, 4)?;
                let physical = half(e, 6)? << 32 | field(e, 8)?;
                let (len, written) = if raw_len > EXT_INIT_MAX_LEN {
                    (raw_len - EXT_INIT_MAX_LEN, false)
                } else {
                    (raw_len, true)
                };
                if len == 0 || logical < *next {
                    return Err(Bad::File);
                }
                *next = logical + len;
                if written && logical < end {
                    let count = len.min(end - logical);
                    let run = Run {
                        logical,
                        physical,
                        count,
                    };
                    self.push(runs, run, false)?;
                }
            }
            return Ok(());
        }
        let mut previous = None;
        for e in entries.clone() {
            let first = field(e, 0)?;
            if previous.is_some_and(|p| p >= first) {
                return Err(Bad::File);
            }
            previous = Some(first);
        }
        for e in entries {
            if field(e, 0)? >= end {
                break;
            }
            let child = half(e, 8)? << 32 | field(e, 4)?;
            self.take_block()?;
            let block = self.fs.block(child).ok_or(Bad::File)?;
            self.extent_node(block, Some(node_depth - 1), end, next, runs)?;
        }
        Ok(())
    }

    /// The ext2/3 map: 12 direct pointers, then single, double and triple indirect blocks.
    fn block_map(&mut self, i_block: &[u8], end: u64, runs: &mut Vec<Run>) -> Result<(), Bad> {
        let pointer = |at| le32(i_block, at * 4).ok_or(Bad::File);
        for index in 0..DIRECT_BLOCKS {
            self.map_block(runs, index as u64, pointer(index)?, end)?;
        }
        let per_block = self.fs.block_size / 4;
        let mut first = DIRECT_BLOCKS as u64;
        let mut span = 1;
        for level in 1..=3 {
            span *= per_block;
            self.indirect(runs, pointer(DIRECT_BLOCKS + level - 1)?, level, first, end)?;
            first += span;
        }
        Ok(())
    }

    /// An indirect block `level` steps above the data, whose first block is logical `first`.
    fn indirect(
        &mut self,
        runs: &mut Vec<Run>,
        block: u32,
        level: usize,
        first: u64,
        end: u64,
    ) -> Result<(), Bad> {
        if block == 0 || first >= end {
            return Ok(());
        }
        self.take_block()?;
        let data = self.fs.block(u64::from(block)).ok_or(Bad::File)?;
        let span = (self.fs.block_size / 4).pow(level as u32 - 1);
        for (index, pointer) in data.chunks_exact(4).enumerate() {
            let logical = first + index as u64 * span;
            if logical >= end {
                break;
            }
            let pointer = le32(pointer, 0).ok_or(Bad::File)?;
            if level == 1 {
                self.map_block(runs, logical, pointer, end)?;
            } else {
                self.indirect(runs, pointer, level - 1, logical, end)?;
            }
        }
        Ok(())
    }

    fn map_block(
        &mut self,
        runs: &mut Vec<Run>,
        logical: u64,
        pointer: u32,
        end: u64,
    ) -> Result<(), Bad> {
        if pointer == 0 || logical >= end {
            return Ok(());
        }
        let run = Run {
            logical,
            physical: u64::from(pointer),
            count: 1,
        };
        self.push(runs, run, true)
    }

    /// Every entry of a directory in on-disk order. An htree directory reads as a linear one:
    /// its index hides inside entries with inode 0 or inside "..", which the caller skips.
    fn dir_entries(&mut self, dir: &Inode<'a>) -> Result<Vec<Entry<'a>>, Bad> {
        let mut entries = Vec::new();
        if dir.inline() {
            self.dirents(
                dir.i_block.get(INLINE_DOTDOT..).unwrap_or_default(),
                &mut entries,
            )?;
            if let Some(rest) = dir.inline_xattr() {
                self.dirents(rest, &mut entries)?;
            }
            return Ok(entries);
        }
        for run in self.map(dir)? {
            for block in run.physical..run.physical + run.count {
                self.take_block()?;
                let data = self.fs.block(block).ok_or(Bad::File)?;
                self.dirents(data, &mut entries)?;
            }
        }
        Ok(entries)
    }

    /// The entries of one directory block (or inline area). A bad record length ends the
    /// block, not the directory: the other blocks are still good.
    fn dirents(&mut self, area: &'a [u8], entries: &mut Vec<Entry<'a>>) -> Result<(), Bad> {
        let mut at = 0usize;
        while let Some(header) = area.get(at..at + DIRENT_HEADER) {
            let (Some(inode), Some(raw_len)) = (le32(header, 0), le16(header, 4)) else {
                break;
            };
            let rec_len = rec_len(raw_len, self.fs.block_size);
            let name_len = usize::from(header[6]);
            if rec_len < DIRENT_HEADER
                || rec_len % 4 != 0
                || DIRENT_HEADER + name_len > rec_len
                || at + rec_len > area.len()
            {
                break;
            }
            if inode != 0 && name_len != 0 {
                self.entries_left = self.entries_left.checked_sub(1).ok_or(Bad::Image)?;
                entries.push(Entry {
                    inode,
                    file_type: header[7],
                    name: &area[at + DIRENT_HEADER..at + DIRENT_HEADER + name_len],
                });
            }
            at += rec_len;
        }
        Ok(())
    }
}

/// Decodes a record length: 64 KiB blocks need 17 bits, so the kernel folds the top ones into
/// the low two bits, which lengths (multiples of 4) never use.
fn rec_len(raw: u16, block_size: u64) -> usize {
    let len = usize::from(raw);
    if block_size < 65536 {
        len
    } else if raw == u16::MAX || raw == 0 {
        65536
    } else {
        (len & 65532) | ((len & 3) << 16)
    }
}

fn le16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        bytes.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn le32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests;
