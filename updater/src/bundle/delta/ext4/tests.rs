//! The parser against images made by the real mke2fs and debugfs, with the host tree they were
//! made from as the truth, and against damaged copies of such an image.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::{symlink, FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{block_size, files, FileMap};
use crate::test_tools::{have, run, run_status};

const MIB: u64 = 1 << 20;

fn debugfs(image: &Path, request: &str) -> String {
    run("debugfs", &["-R", request, path_str(image)])
}

/// Runs a debugfs script that changes the image.
fn debugfs_write(image: &Path, script: &str) {
    let file = image.with_extension("cmds");
    fs::write(&file, script).unwrap();
    run("debugfs", &["-w", "-f", path_str(&file), path_str(image)]);
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Bytes in which no 8-byte word repeats (splitmix64 of a counter is a bijection), so data
/// read from a wrong block can never look right.
fn pattern(seed: u64, len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len as usize + 8);
    let mut state = seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
    while (out.len() as u64) < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len as usize);
    out
}

/// A deterministic source of choices for the damage loop.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn write_at(path: &Path, size: u64, at: u64, data: &[u8]) {
    let file = File::create(path).unwrap();
    file.set_len(size).unwrap();
    file.write_all_at(data, at).unwrap();
}

/// What a root filesystem holds, plus the shapes that stress the maps: 2,000 entries in one
/// directory (an htree once e2fsck -D indexes it), holes, data past the double-indirect
/// range of 1 KiB blocks (at 80 MiB), a 20 MiB file, hard links and symlinks.
fn populate(root: &Path) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::write(root.join("a/b/c/deep.txt"), "deep\n").unwrap();
    fs::write(root.join("a/top.txt"), "top\n").unwrap();
    fs::write(root.join("a/b/mid.bin"), pattern(1, 70_000)).unwrap();
    fs::create_dir(root.join("many")).unwrap();
    for i in 0..2000 {
        let name = format!("entry-{i:04}-{}", "x".repeat(i % 40));
        let body = if i % 10 == 0 {
            String::new()
        } else {
            format!("{i}\n")
        };
        fs::write(root.join("many").join(name), body).unwrap();
    }
    fs::write(root.join("empty"), "").unwrap();
    fs::write(root.join("small.txt"), "hello\n").unwrap();
    write_at(
        &root.join("sparse"),
        10 * MIB,
        5 * MIB,
        &pattern(2, 100_000),
    );
    write_at(&root.join("far"), 81 * MIB, 80 * MIB, &pattern(3, 3000));
    static BIG: OnceLock<Vec<u8>> = OnceLock::new();
    fs::write(
        root.join("big.bin"),
        BIG.get_or_init(|| pattern(4, 20 * MIB)),
    )
    .unwrap();
    fs::create_dir(root.join("hard")).unwrap();
    fs::hard_link(root.join("a/b/mid.bin"), root.join("hard/one")).unwrap();
    fs::hard_link(root.join("a/b/mid.bin"), root.join("hard/two")).unwrap();
    symlink("big.bin", root.join("link")).unwrap();
    symlink("/nowhere/at/all", root.join("a/dangling")).unwrap();
}

struct Built {
    dir: tempfile::TempDir,
    tree: PathBuf,
    image: PathBuf,
}

/// Makes `tree` with `fill` and an image of it with `mkfs -q -F ARGS -d TREE IMAGE SIZE`, in
/// memory (tmpfs) where the machine has it: creating the 2,000 files of /many on a disk takes
/// seconds.
fn build(fill: fn(&Path), mkfs: &str, args: &[&str], size: &str) -> Built {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let tree = dir.path().join("tree");
    fs::create_dir(&tree).unwrap();
    fill(&tree);
    let image = dir.path().join("image");
    let mut all = vec!["-q", "-F"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-d", path_str(&tree), path_str(&image), size]);
    run(mkfs, &all);
    Built { dir, tree, image }
}

/// Indexes large directories (mke2fs -d writes them linear); 1 means "fixed", which -D is.
fn index_directories(image: &Path) {
    run_status("e2fsck", &["-f", "-y", "-D", path_str(image)], &[0, 1]);
}

/// The file's bytes rebuilt from the image, after checking the extents' shape.
fn content(image: &[u8], map: &FileMap, bs: u64) -> Vec<u8> {
    let mut data = vec![0; map.size as usize];
    let mut next = 0;
    for e in &map.extents {
        assert!(
            e.len > 0 && e.logical >= next,
            "{}: {:?}",
            map.path,
            map.extents
        );
        assert!(
            [e.logical, e.offset, e.len].iter().all(|v| v % bs == 0),
            "{e:?}"
        );
        assert!(
            e.logical < map.size,
            "{}: extent past the end: {e:?}",
            map.path
        );
        next = e.logical + e.len;
        let n = e.len.min(map.size - e.logical) as usize;
        let from = e.offset as usize;
        data[e.logical as usize..][..n].copy_from_slice(&image[from..from + n]);
    }
    data
}

/// Host inode number -> path of every regular file under `root`: `find -type f`, one path
/// per hard-linked file.
fn host_files(root: &Path) -> HashMap<u64, PathBuf> {
    let mut found = HashMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                dirs.push(path);
            } else if meta.is_file() {
                found.insert(meta.ino(), path);
            }
        }
    }
    found
}

/// Checks `maps` against the tree the image was made from: one path for each regular file,
/// hard links counted once, every size and every byte. Returns the maps by host inode.
fn check_against_tree<'m>(
    image: &[u8],
    maps: &'m [FileMap],
    tree: &Path,
) -> HashMap<u64, &'m FileMap> {
    let bs = block_size(image).unwrap();
    let mut by_inode = HashMap::new();
    for map in maps {
        let host = tree.join(map.path.strip_prefix('/').unwrap());
        let meta = fs::symlink_metadata(&host).unwrap_or_else(|e| panic!("{}: {e}", map.path));
        assert!(meta.is_file(), "{} is not a regular file", map.path);
        assert!(
            by_inode.insert(meta.ino(), map).is_none(),
            "{} listed twice",
            map.path
        );
        assert_eq!(map.size, meta.len(), "{}", map.path);
        assert!(
            content(image, map, bs) == fs::read(&host).unwrap(),
            "{}: wrong data",
            map.path
        );
    }
    let expected = host_files(tree);
    let missing: Vec<_> = expected
        .iter()
        .filter(|(ino, _)| !by_inode.contains_key(ino))
        .collect();
    assert!(missing.is_empty(), "not listed: {missing:?}");
    assert_eq!(by_inode.len(), expected.len());
    by_inode
}

/// Logical block -> image block of the data of `path`, from the BLOCKS or EXTENTS list of
/// `debugfs stat`, without indirect and extent-tree blocks and without unwritten extents.
fn debugfs_blocks(image: &Path, path: &str) -> BTreeMap<u64, u64> {
    let stat = debugfs(image, &format!("stat {path}"));
    let list: String = stat
        .lines()
        .skip_while(|line| !matches!(line.trim(), "BLOCKS:" | "EXTENTS:"))
        .skip(1)
        .take_while(|line| !line.starts_with("TOTAL"))
        .collect();
    let range = |text: &str| -> (u64, u64) {
        match text.split_once('-') {
            Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
            None => (text.parse().unwrap(), text.parse().unwrap()),
        }
    };
    let mut blocks = BTreeMap::new();
    for item in list
        .split(", ")
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let (logical, physical) = item.split_once(':').unwrap();
        let logical = logical.trim_matches(['(', ')']);
        if logical.contains(['I', 'E', '[']) {
            continue; // IND, DIND, TIND, ETBn, or unwritten ("3-9[u]")
        }
        let ((first, last), (start, _)) = (range(logical), range(physical));
        for i in 0..=last - first {
            blocks.insert(first + i, start + i);
        }
    }
    blocks
}

fn our_blocks(map: &FileMap, bs: u64) -> BTreeMap<u64, u64> {
    let mut blocks = BTreeMap::new();
    for e in &map.extents {
        for i in 0..e.len / bs {
            blocks.insert(e.logical / bs + i, e.offset / bs + i);
        }
    }
    blocks
}

/// Written extents of `path` per `debugfs dump_extents -l`: one line per leaf entry.
fn debugfs_extent_count(image: &Path, path: &str) -> usize {
    debugfs(image, &format!("dump_extents -l {path}"))
        .lines()
        .filter(|line| !line.starts_with("Level") && !line.trim().is_empty())
        .filter(|line| !line.contains("Uninit"))
        .count()
}

/// Compares the maps of `paths` with what debugfs says, block by block and, for extent-mapped
/// files, extent by extent.
fn cross_check(
    built: &Built,
    image: &[u8],
    by_inode: &HashMap<u64, &FileMap>,
    paths: &[&str],
    extents: bool,
) {
    let bs = block_size(image).unwrap();
    for path in paths {
        let ino = fs::symlink_metadata(built.tree.join(&path[1..]))
            .unwrap()
            .ino();
        let map = by_inode[&ino];
        assert_eq!(
            our_blocks(map, bs),
            debugfs_blocks(&built.image, path),
            "{path}"
        );
        if extents {
            assert_eq!(
                map.extents.len(),
                debugfs_extent_count(&built.image, path),
                "{path}"
            );
        }
    }
}

/// One image of the full tree, checked against the host tree and against debugfs.
fn full_tree(mkfs: &str, args: &[&str], extents: bool) {
    if !have(&[mkfs, "e2fsck", "debugfs"]) {
        return;
    }
    let built = build(populate, mkfs, args, "64M");
    index_directories(&built.image);
    let flags = debugfs(&built.image, "stat /many");
    let flags = flags
        .split("Flags: 0x")
        .nth(1)
        .and_then(|s| s.split_whitespace().next());
    let flags = u32::from_str_radix(flags.unwrap(), 16).unwrap();
    assert!(
        flags & 0x1000 != 0,
        "/many is not an htree directory: {flags:#x}"
    );

    let image = fs::read(&built.image).unwrap();
    let maps = files(&image).expect("a real image parses");
    let by_inode = check_against_tree(&image, &maps, &built.tree);
    let paths = [
        "/big.bin",
        "/sparse",
        "/far",
        "/a/b/mid.bin",
        "/many/entry-0007-xxxxxxx",
        "/small.txt",
        "/empty",
    ];
    cross_check(&built, &image, &by_inode, &paths, extents);
    let big = maps.iter().find(|m| m.path == "/big.bin").unwrap();
    assert!(!big.extents.is_empty());
}

#[test]
fn ext4_64bit_4k() {
    full_tree("mkfs.ext4", &["-O", "64bit"], true);
}

/// 1 MiB groups: with 32 descriptors per block, groups from 32 on have theirs inside their
/// meta group, and -N spreads the inodes over all 64 groups.
#[test]
fn ext4_1k_32bit_meta_bg() {
    full_tree(
        "mkfs.ext4",
        &[
            "-b",
            "1024",
            "-g",
            "1024",
            "-N",
            "2560",
            "-O",
            "^64bit,meta_bg,^resize_inode",
        ],
        true,
    );
}

#[test]
fn ext4_block_maps() {
    full_tree("mkfs.ext4", &["-O", "^extent,^64bit"], false);
}

/// 1 KiB blocks put /far's data behind the triple-indirect pointer.
#[test]
fn ext2_triple_indirect() {
    full_tree("mkfs.ext2", &["-b", "1024"], false);
}

fn populate_inline(root: &Path) {
    fs::create_dir_all(root.join("s/t")).unwrap();
    fs::write(root.join("s/alpha"), pattern(10, 5000)).unwrap();
    fs::write(root.join("s/t/deep"), pattern(11, 9000)).unwrap();
    fs::write(root.join("tiny"), "inline\n").unwrap();
}

/// Inline directories are read; inline files have no blocks and are left out.
#[test]
fn inline_data() {
    if !have(&["mkfs.ext4", "debugfs"]) {
        return;
    }
    let built = build(populate_inline, "mkfs.ext4", &["-O", "inline_data"], "8M");
    for path in ["/s", "/s/t", "/tiny"] {
        let stat = debugfs(&built.image, &format!("stat {path}"));
        assert!(
            stat.contains("Flags: 0x10000000"),
            "{path} is not inline: {stat}"
        );
    }
    let image = fs::read(&built.image).unwrap();
    let maps = files(&image).unwrap();
    fs::remove_file(built.tree.join("tiny")).unwrap();
    check_against_tree(&image, &maps, &built.tree);
}

/// mke2fs and debugfs never spill an inline directory into its "system.data" attribute (only
/// the kernel does, once i_block is full), so that part is checked on a hand-made inode.
#[test]
fn inline_directory_attribute() {
    fn dirent(ino: u32, rec_len: u16, file_type: u8, name: &[u8]) -> Vec<u8> {
        let mut entry = ino.to_le_bytes().to_vec();
        entry.extend_from_slice(&rec_len.to_le_bytes());
        entry.extend_from_slice(&[name.len() as u8, file_type]);
        entry.extend_from_slice(name);
        entry.resize(usize::from(rec_len), 0);
        entry
    }
    let mut raw = vec![0u8; 256];
    raw[0..2].copy_from_slice(&0o40755u16.to_le_bytes());
    raw[0x20..0x24].copy_from_slice(&super::INLINE_DATA_FL.to_le_bytes());
    raw[0x28..0x2C].copy_from_slice(&2u32.to_le_bytes());
    raw[0x2C..0x64].copy_from_slice(&dirent(12, 56, 1, b"alpha"));
    raw[0x80..0x82].copy_from_slice(&32u16.to_le_bytes());
    let xattr = 0x80 + 32;
    raw[xattr..xattr + 4].copy_from_slice(&super::XATTR_MAGIC.to_le_bytes());
    // One entry (16 bytes + "data") and the 4-byte end mark, then the value at offset 24.
    let entry = xattr + 4;
    raw[entry..entry + 4].copy_from_slice(&[4, super::XATTR_INDEX_SYSTEM, 24, 0]);
    raw[entry + 8..entry + 12].copy_from_slice(&28u32.to_le_bytes());
    raw[entry + 16..entry + 20].copy_from_slice(b"data");
    raw[entry + 24..entry + 52]
        .copy_from_slice(&[dirent(13, 16, 2, b"bravo"), dirent(14, 12, 1, b"c")].concat());

    let fs = super::Fs {
        image: &[],
        block_size: 4096,
        inode_size: 256,
        inodes_count: 64,
        inodes_per_group: 64,
        first_ino: 11,
        first_data_block: 0,
        blocks_per_group: 32768,
        group_count: 1,
        desc_size: 32,
        desc_64bit: false,
        filetype: true,
        first_meta_bg: None,
        backups: super::Backups::Sparse,
    };
    let inode = super::Inode::parse(&raw).unwrap();
    let entries = super::Walk::new(&fs).dir_entries(&inode).unwrap();
    let found: Vec<_> = entries
        .iter()
        .map(|e| (e.inode, e.file_type, e.name))
        .collect();
    assert_eq!(
        found,
        [(12, 1, &b"alpha"[..]), (13, 2, b"bravo"), (14, 1, b"c")]
    );
}

/// 64 KiB blocks fold the top bits of record lengths into the low ones.
#[test]
fn block_size_64k() {
    if !have(&["mkfs.ext4", "debugfs"]) {
        return;
    }
    let built = build(
        populate_inline,
        "mkfs.ext4",
        &["-b", "65536", "-O", "^inline_data"],
        "32M",
    );
    let image = fs::read(&built.image).unwrap();
    assert_eq!(block_size(&image), Some(65536));
    let maps = files(&image).unwrap();
    let by_inode = check_against_tree(&image, &maps, &built.tree);
    cross_check(
        &built,
        &image,
        &by_inode,
        &["/s/alpha", "/s/t/deep", "/tiny"],
        true,
    );
}

fn populate_fragments(root: &Path) {
    fs::create_dir(root.join("frag")).unwrap();
    for i in 0..1200 {
        fs::write(root.join(format!("frag/x{i:04}")), pattern(100 + i, 1024)).unwrap();
    }
    fs::write(root.join("prealloc"), "hi\n").unwrap();
}

/// A 4 MiB image whose /big has a two-level extent tree (every other 1 KiB block of /frag
/// freed, then /big written into the holes) and whose /prealloc has unwritten extents inside
/// its size. The tree is changed to match.
fn fragmented() -> Built {
    let built = build(
        populate_fragments,
        "mkfs.ext4",
        &["-b", "1024", "-N", "2048"],
        "4M",
    );
    let big = built.dir.path().join("big");
    fs::write(&big, pattern(5, 600_000)).unwrap();
    let mut script = String::new();
    for i in (1..1200).step_by(2) {
        script += &format!("rm /frag/x{i:04}\n");
        fs::remove_file(built.tree.join(format!("frag/x{i:04}"))).unwrap();
    }
    script += &format!("write {} /big\n", path_str(&big));
    script += "fallocate /prealloc 3 9\nsif /prealloc size 40960\n";
    debugfs_write(&built.image, &script);
    fs::rename(&big, built.tree.join("big")).unwrap();
    File::options()
        .write(true)
        .open(built.tree.join("prealloc"))
        .unwrap()
        .set_len(40960)
        .unwrap();
    built
}

#[test]
fn fragmented_and_unwritten() {
    if !have(&["mkfs.ext4", "debugfs"]) {
        return;
    }
    let built = fragmented();
    let tree = debugfs(&built.image, "dump_extents /big");
    assert!(
        tree.lines()
            .any(|line| line.trim_start().starts_with("2/ 2")),
        "{tree}"
    );
    let unwritten = debugfs(&built.image, "dump_extents /prealloc");
    assert!(unwritten.contains("Uninit"), "{unwritten}");

    let image = fs::read(&built.image).unwrap();
    let maps = files(&image).unwrap();
    let by_inode = check_against_tree(&image, &maps, &built.tree);
    cross_check(
        &built,
        &image,
        &by_inode,
        &["/big", "/prealloc", "/frag/x0002"],
        true,
    );
    let prealloc = maps.iter().find(|m| m.path == "/prealloc").unwrap();
    assert_eq!(
        prealloc.extents.len(),
        1,
        "unwritten extents reported: {prealloc:?}"
    );
}

/// A directory hard-linked into its own subtree (debugfs ln allows it) is walked once.
#[test]
fn directory_cycle() {
    if !have(&["mkfs.ext4", "debugfs"]) {
        return;
    }
    let built = build(populate_inline, "mkfs.ext4", &[], "8M");
    debugfs_write(&built.image, "ln /s /s/t/loop\nln / /s/t/root\n");
    let listing = debugfs(&built.image, "ls /s/t");
    assert!(
        listing.contains("loop") && listing.contains("root"),
        "{listing}"
    );
    let image = fs::read(&built.image).unwrap();
    let maps = files(&image).unwrap();
    check_against_tree(&image, &maps, &built.tree);
}

/// Everything a damaged image can make `files` report must still be inside the image.
fn check_sane(image: &[u8], maps: &[FileMap]) {
    for map in maps {
        for e in &map.extents {
            assert!(e
                .offset
                .checked_add(e.len)
                .is_some_and(|end| end <= image.len() as u64));
        }
    }
}

#[test]
fn garbage_and_truncated_images() {
    let mut rng = XorShift(0x5EED);
    let mut garbage: Vec<u8> = (0..256 * 1024).map(|_| rng.next() as u8).collect();
    assert_eq!(files(&garbage), None);
    assert_eq!(block_size(&garbage), None);
    // A superblock magic on garbage: every later field is nonsense.
    for log in 0..8u8 {
        garbage[1024 + 0x38..][..2].copy_from_slice(&0xEF53u16.to_le_bytes());
        garbage[1024 + 0x18..][..4].copy_from_slice(&u32::from(log).to_le_bytes());
        assert_eq!(block_size(&garbage), (log <= 6).then(|| 1024 << log));
        if let Some(maps) = files(&garbage) {
            check_sane(&garbage, &maps);
        }
    }
    assert_eq!(files(&[]), None);

    if !have(&["mkfs.ext4", "debugfs"]) {
        return;
    }
    let built = fragmented();
    let image = fs::read(&built.image).unwrap();
    for len in [
        0,
        1,
        1023,
        1024,
        1080,
        2047,
        2048,
        3072,
        4096,
        8192,
        65536,
        1 << 20,
        2 << 20,
    ] {
        if let Some(maps) = files(&image[..len]) {
            check_sane(&image[..len], &maps);
        }
    }
    for cut in 1..64 {
        let len = image.len() - cut * 1024 - cut;
        if let Some(maps) = files(&image[..len]) {
            check_sane(&image[..len], &maps);
        }
    }
}

/// Bytes flipped in the metadata of a real image (every block that is neither file data nor
/// zero: superblock, descriptors, bitmaps, inode table, directories, extent-tree blocks).
#[test]
fn damaged_metadata_never_panics() {
    if !have(&["mkfs.ext4", "debugfs"]) {
        return;
    }
    let built = fragmented();
    let mut image = fs::read(&built.image).unwrap();
    let maps = files(&image).unwrap();
    let bs = block_size(&image).unwrap() as usize;
    let data: HashSet<usize> = maps
        .iter()
        .flat_map(|m| &m.extents)
        .flat_map(|e| {
            (e.offset as usize / bs..(e.offset + e.len) as usize / bs).collect::<Vec<_>>()
        })
        .collect();
    let metadata: Vec<usize> = (0..image.len() / bs)
        .filter(|b| !data.contains(b) && image[b * bs..][..bs].iter().any(|&v| v != 0))
        .collect();
    assert!(metadata.len() > 50, "{} metadata blocks", metadata.len());

    let mut rng = XorShift(0xDEC0DE);
    let mut parsed = 0;
    for _ in 0..400 {
        let flips: Vec<(usize, u8)> = (0..1 + rng.below(4))
            .map(|_| {
                let block = metadata[rng.below(metadata.len() as u64) as usize];
                (
                    block * bs + rng.below(bs as u64) as usize,
                    1 + rng.below(255) as u8,
                )
            })
            .collect();
        for &(at, mask) in &flips {
            image[at] ^= mask;
        }
        if let Some(maps) = files(&image) {
            check_sane(&image, &maps);
            parsed += 1;
        }
        for &(at, mask) in flips.iter().rev() {
            image[at] ^= mask;
        }
    }
    // Most flips hit something the walk does not read; the loop must not only see failures.
    assert!(parsed > 40, "{parsed}");
}
