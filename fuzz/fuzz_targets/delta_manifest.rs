//! Delta manifests tell a device which bytes of its running slot to read (extents) and what to
//! make of them (copy, patch), so their rules are what keeps an install inside the base and
//! within its memory: any bytes must give a manifest or an error, never a panic; an accepted
//! manifest keeps every promise of validation; and making any of its chunks from a base gives
//! exactly the chunk's bytes or an error, never a panic.
//!
//! The first input byte steers; the rest is read twice:
//! - as is: manifest JSON, then (after a NUL) the payload that stored chunks are taken from;
//! - as choices that build a delta manifest: sizes, kinds, operations, extents and hashes, and
//!   which fields each object has, every number near a limit of the format (a byte 0 always
//!   choosing the ordinary value, so that short inputs give valid manifests). Its JSON is then
//!   parsed like the first; the bytes the choices leave over are the payload.
//!
//! The chunks of an accepted manifest whose images are small are made with `Decoder::make`
//! from a fixed base of `BASE_LEN` bytes: whole, cut short by a chunk (bit 2), or absent (bit
//! 3). With bit 0 each chunk's hash is first fixed up to match its stored bytes, and with bit 1
//! each operation's base hash to match the base bytes it reads, so that making runs past the
//! hashes into the reads and zstd.
#![no_main]

use std::sync::OnceLock;

use abup::bundle::{
    extents_len, Compression, Decoder, Extent, Manifest, Op, ReadAt, MAX_CHUNK_SIZE, MAX_EXTENTS,
    MAX_IMAGE_SIZE, MAX_OP_EXTENTS, MAX_PATCH_WINDOW, MIN_CHUNK_SIZE,
};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

/// Bytes of the base chunks are made from. scripts/gen-fuzz-seeds builds its delta seeds
/// against the same bytes, so that their chunks make without fix-ups.
const BASE_LEN: usize = 200_000;
/// Chunks are made only for images up to this size: 16 chunks of the smallest size.
const MAKE_MAX_IMAGE: u64 = 1 << 20;

/// The base: a 64-bit LCG's top bytes (scripts/gen-fuzz-seeds computes the same).
fn base() -> &'static [u8] {
    static BASE: OnceLock<Vec<u8>> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut x: u64 = 1;
        (0..BASE_LEN)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (x >> 56) as u8
            })
            .collect()
    })
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// What any accepted manifest must satisfy: the promises of validation for delta images.
fn check_manifest(m: &Manifest) {
    m.validate().expect("an accepted manifest is valid");
    let json = m.to_canonical_json();
    let again = Manifest::parse(&json).expect("canonical JSON parses");
    assert_eq!(&again, m);
    assert_eq!(again.to_canonical_json(), json, "one spelling");
    let mut all_extents = 0;
    for img in &m.images {
        let base = img.kind.base();
        if let Some(b) = base {
            assert!(
                b.size > 0 && b.size <= MAX_IMAGE_SIZE,
                "base of {} bytes",
                b.size
            );
        }
        for (k, c) in img.chunks.iter().enumerate() {
            let len = img.chunk_len(k);
            let extents = c.op.extents();
            all_extents += extents.len();
            let inside = |size: u64| {
                assert!((1..=MAX_OP_EXTENTS).contains(&extents.len()));
                for e in extents {
                    assert!(e.len > 0, "an empty extent");
                    let end = e.offset.checked_add(e.len).expect("an extent that wraps");
                    assert!(end <= size, "extent {e:?} past the base's {size} bytes");
                }
            };
            match (&c.op, base) {
                (Op::Data, _) => {
                    assert!(c.stored >= img.compression.min_stored_len(len));
                    assert!(c.stored <= img.compression.max_stored_len(len));
                }
                (_, None) => panic!("a {} chunk in a full image", c.op.name()),
                (Op::Zero, Some(_)) => assert_eq!((c.stored, c.sha256), (0, [0; 32])),
                (Op::Copy { .. }, Some(b)) => {
                    assert_eq!((c.stored, c.sha256), (0, [0; 32]));
                    inside(b.size);
                    assert_eq!(extents_len(extents), u64::from(len), "a copy is its chunk");
                }
                (Op::Patch { target_extents, .. }, Some(b)) => {
                    assert!(c.stored >= 1);
                    assert!(c.stored <= Compression::Zstd.max_stored_len(len));
                    inside(b.size);
                    all_extents += target_extents.len();
                    assert!(extents.len() + target_extents.len() <= MAX_OP_EXTENTS);
                    let start = img.chunk_range(k).start;
                    for e in target_extents {
                        assert!(e.len > 0, "an empty target extent");
                        assert!(e.offset >= u64::from(img.chunk_size), "{e:?} in the first chunk");
                        assert!(e.offset + e.len <= start, "{e:?} not before chunk {k}");
                    }
                    let window = extents_len(extents) + extents_len(target_extents);
                    assert!(window <= MAX_PATCH_WINDOW);
                }
            }
        }
    }
    assert!(all_extents <= MAX_EXTENTS);
}

/// Makes every chunk of the small images of `m` from `payload` and the base the control byte
/// chooses, after the fix-ups it asks for.
fn make_chunks(m: &Manifest, payload: &[u8], control: u8) {
    let whole = base();
    let base: &[u8] = if control & 4 != 0 {
        &whole[..BASE_LEN - MIN_CHUNK_SIZE as usize]
    } else {
        whole
    };
    let base = (control & 8 == 0).then_some(&base as &dyn ReadAt);
    let mut decoder = Decoder::new().expect("a zstd context");
    let (mut window, mut out) = (Vec::new(), Vec::new());
    let mut fixed = m.clone();
    // What was made so far of the current image: the target a patch reads back. A chunk
    // that failed leaves zeros, as a device's slot would hold something else there.
    let mut made: Vec<u8> = Vec::new();
    for c in m.chunks() {
        let image = &mut fixed.images[c.image];
        if image.size > MAKE_MAX_IMAGE {
            continue;
        }
        if c.index == 0 {
            made.clear();
        }
        made.resize(c.range.start as usize, 0);
        // As far as the payload goes: a short one is an input `make` must cope with too.
        let start = usize::try_from(c.offset).unwrap_or(usize::MAX);
        let stored = payload.get(start..).unwrap_or_default();
        let stored = &stored[..stored.len().min(c.stored as usize)];
        let chunk = &mut image.chunks[c.index];
        if control & 1 != 0 && chunk.op.stores() {
            chunk.sha256 = sha256(stored);
        }
        if control & 2 != 0 {
            fix_base_hash(&mut chunk.op, whole);
        }
        let op = chunk.op.clone();
        let target = &made.as_slice();
        let result = decoder.make(
            image,
            c.index,
            stored,
            base,
            Some(target as &dyn ReadAt),
            &mut window,
            &mut out,
        );
        let Ok(()) = result else {
            assert!(out.is_empty(), "{result:?}: a failed make leaves nothing");
            continue;
        };
        assert_eq!(out.len() as u64, c.range.end - c.range.start);
        made.extend_from_slice(&out);
        match op {
            Op::Data => {}
            Op::Zero => assert!(out.iter().all(|&b| b == 0)),
            Op::Copy { sha256: h, .. } => {
                assert!(base.is_some(), "a copy made without a base");
                assert_eq!(sha256(&out), h, "a copy is its base bytes");
            }
            Op::Patch { out_sha256, .. } => {
                assert!(base.is_some(), "a patch made without a base");
                assert_eq!(sha256(&out), out_sha256);
            }
        }
    }
}

/// Sets the base hash of a copy or patch to that of the bytes its extents read, when they
/// are all inside `base`.
fn fix_base_hash(op: &mut Op, base: &[u8]) {
    let read = |extents: &[Extent]| -> Option<[u8; 32]> {
        let mut h = Sha256::new();
        for e in extents {
            let start = usize::try_from(e.offset).ok()?;
            let end = start.checked_add(usize::try_from(e.len).ok()?)?;
            h.update(base.get(start..end)?);
        }
        Some(h.finalize().into())
    };
    match op {
        Op::Copy { extents, sha256 } => {
            if let Some(h) = read(extents) {
                *sha256 = h;
            }
        }
        Op::Patch {
            extents,
            base_sha256,
            ..
        } => {
            if let Some(h) = read(extents) {
                *base_sha256 = h;
            }
        }
        Op::Data | Op::Zero => {}
    }
}

/// The input read as choices; once it runs out every choice is 0.
struct Choices<'a>(&'a [u8]);

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())]
    }

    fn u16(&mut self) -> u64 {
        u64::from(u16::from_le_bytes([self.byte(), self.byte()]))
    }

    /// One of `anchors` (the first for a 0), moved by 0, +1, -1, +2 or -2, wrapping: the
    /// values on either side of a limit.
    fn near(&mut self, anchors: &[u64]) -> u64 {
        let a = self.pick(anchors);
        a.wrapping_add([0, 1, u64::MAX, 2, u64::MAX - 1][self.below(5)])
    }

    /// Rarely true, and never once the input has run out: a field added where it does not
    /// belong, or left out where it does.
    fn stray(&mut self) -> bool {
        self.byte() >= 0xf0
    }

    fn hash(&mut self) -> String {
        if self.stray() {
            return "zz".repeat(32);
        }
        format!("{:02x}", self.byte()).repeat(32)
    }
}

/// The JSON of a manifest of one or two images, mostly deltas against a base of about
/// `BASE_LEN` bytes.
fn build(c: &mut Choices) -> Vec<u8> {
    let images = 1 + c.below(2);
    let mut json = String::from(
        r#"{"compatible":"fuzz","version":"1","security_version":0,"created":0,"images":["#,
    );
    for i in 0..images {
        if i > 0 {
            json.push(',');
        }
        image(c, i, &mut json);
    }
    json.push_str("]}");
    json.into_bytes()
}

fn image(c: &mut Choices, i: usize, json: &mut String) {
    let kind = match c.below(16) {
        15 => "rsync",
        12..=14 => "full",
        _ => "delta",
    };
    let chunk_size = c.near(&[
        u64::from(MIN_CHUNK_SIZE),
        u64::from(MIN_CHUNK_SIZE) * 2,
        u64::from(MAX_CHUNK_SIZE),
    ]);
    let cs = chunk_size.clamp(1, u64::from(MAX_CHUNK_SIZE));
    let count = 1 + c.below(4) as u64;
    let size = (count - 1) * cs + 1 + c.u16() % cs;
    let size = if c.stray() { c.near(&[size, 0]) } else { size };
    let base_size = c.near(&[BASE_LEN as u64, 1, cs, MAX_IMAGE_SIZE, 0]);
    let compression = c.pick(&["zstd", "zstd", "none"]);
    json.push_str(&format!(
        r#"{{"slot_class":"c{i}","size":{size},"sha256":"{}","kind":"{kind}","#,
        c.hash()
    ));
    if !c.stray() {
        json.push_str(&format!(r#""base_size":{base_size},"#));
    }
    if !c.stray() {
        json.push_str(&format!(r#""base_sha256":"{}","#, c.hash()));
    }
    json.push_str(&format!(
        r#""compression":"{compression}","chunk_size":{chunk_size},"chunks":["#
    ));
    let chunks = count + u64::from(c.stray());
    for k in 0..chunks {
        if k > 0 {
            json.push(',');
        }
        let len = size.saturating_sub(k * cs).clamp(1, cs);
        chunk(c, (k * cs, cs), len, base_size, compression == "zstd", json);
    }
    json.push_str("]}");
}

/// One chunk of `len` bytes at `start` in an image of `cs`-byte chunks. Fields come in the
/// canonical order; a stray one goes last.
fn chunk(
    c: &mut Choices,
    (start, cs): (u64, u64),
    len: u64,
    base_size: u64,
    zstd: bool,
    json: &mut String,
) {
    let op = match c.below(17) {
        16 => "bsdiff",
        n => ["copy", "patch", "zero", "data"][n % 4],
    };
    let mut fields: Vec<String> = Vec::new();
    if matches!(op, "copy" | "patch") {
        let total = match op {
            "copy" => c.near(&[len]),
            _ => c.near(&[len, base_size, MAX_PATCH_WINDOW, len / 2 + 1]),
        };
        fields.push(format!(r#""extents":{}"#, extents(c, total, base_size)));
    }
    if op == "patch" && c.below(4) == 0 {
        // The image's own earlier bytes: at the limits of after the first chunk and before
        // this one.
        let offset = c.near(&[cs, start.saturating_sub(cs), 0, start]);
        let len = c.near(&[start.saturating_sub(offset), 1, cs]);
        fields.push(format!(r#""target_extents":[[{offset},{len}]]"#));
    }
    if op == "patch" {
        fields.push(format!(r#""base_sha256":"{}""#, c.hash()));
    }
    if matches!(op, "patch" | "data") {
        let max = Compression::Zstd.max_stored_len(len.min(u64::from(MAX_CHUNK_SIZE)) as u32);
        let typical = if zstd || op == "patch" {
            1 + c.u16() % len
        } else {
            len
        };
        let stored = c.near(&[typical, 1, len, u64::from(max)]);
        fields.push(format!(r#""stored":{stored}"#));
    }
    if op != "zero" {
        fields.push(format!(r#""sha256":"{}""#, c.hash()));
    }
    if op == "patch" {
        fields.push(format!(r#""out_sha256":"{}""#, c.hash()));
    }
    if c.stray() && !fields.is_empty() {
        let at = c.below(fields.len());
        fields.remove(at);
    }
    if c.stray() {
        let zeros = "0".repeat(64);
        let (name, value) = c.pick(&[
            ("stored", "0"),
            ("extents", "[[0,1]]"),
            ("base_sha256", &zeros),
            ("out_sha256", &zeros),
            ("sha256", &zeros),
            ("delta", "true"),
        ]);
        let key = format!(r#""{name}":"#);
        if !fields.iter().any(|f| f.starts_with(&key)) {
            let quote = if value == zeros { "\"" } else { "" };
            fields.push(format!("{key}{quote}{value}{quote}"));
        }
    }
    json.push_str(&format!(r#"{{"op":"{op}""#));
    for f in fields {
        json.push(',');
        json.push_str(&f);
    }
    json.push('}');
}

/// Extents holding `total` bytes, in 1 to 3 pieces (rarely none, or one more than an
/// operation may list), each placed near the start, the end, or past the end of the base.
fn extents(c: &mut Choices, total: u64, base_size: u64) -> String {
    let n = match c.below(64) {
        62 => 0,
        63 => MAX_OP_EXTENTS as u64 + 1,
        n => 1 + n as u64 % 3,
    };
    let mut out = String::from("[");
    let mut left = total;
    for j in 0..n {
        let len = if j + 1 == n { left } else { left / (n - j) };
        left -= len;
        let anywhere = (c.u16() << 2) % base_size.max(1);
        let offset = c.near(&[anywhere, 0, base_size.wrapping_sub(len), u64::MAX - len]);
        if j > 0 {
            out.push(',');
        }
        out.push_str(&format!("[{offset},{len}]"));
    }
    out.push(']');
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };

    // The bytes as they are.
    let (text, payload) = match rest.iter().position(|&b| b == 0) {
        Some(nul) => (&rest[..nul], &rest[nul + 1..]),
        None => (rest, &[][..]),
    };
    if let Ok(m) = Manifest::parse(text) {
        check_manifest(&m);
        make_chunks(&m, payload, control);
    }

    // The bytes as choices.
    let mut choices = Choices(rest);
    let json = build(&mut choices);
    let payload = choices.0;
    if let Ok(m) = Manifest::parse(&json) {
        check_manifest(&m);
        make_chunks(&m, payload, control);
    }
});
