//! Interoperability with the reference tools a third party would use: keys written and read
//! by `openssl`, bundle signatures checked and made by `openssl pkeyutl`, chunks decoded by the
//! `zstd` command. Each test prints `skipping: ...` when its tool is missing, and fails in CI.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::Cursor;
use std::path::Path;
use std::process::Command;

use abup::bundle::{
    self, generate_key, read_verified, Compression, CreateOptions, Error, ImageSource, Keyring,
    PublicKey, SecretKey, HEADER_LEN, MIN_CHUNK_SIZE, SIGNATURE_LEN,
};

mod common;

use common::have;

/// Runs `args[0]` with the rest, requires success, returns stdout.
fn run(args: &[&str]) -> Vec<u8> {
    common::run_bytes(args[0], &args[1..])
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn openssl_keys_load() {
    if !have("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sk_path = dir.path().join("sk.pem");
    run(&[
        "openssl",
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        s(&sk_path),
    ]);
    let sk = SecretKey::from_pem(&std::fs::read_to_string(&sk_path).unwrap()).unwrap();
    let pub_pem = run(&["openssl", "pkey", "-in", s(&sk_path), "-pubout"]);
    let pk = PublicKey::from_pem(std::str::from_utf8(&pub_pem).unwrap()).unwrap();
    assert_eq!(sk.public_key(), pk);
    assert_eq!(
        pk.to_pem().as_bytes(),
        &pub_pem[..],
        "byte-identical public PEM"
    );
    assert_eq!(
        sk.to_pem(),
        std::fs::read_to_string(&sk_path).unwrap(),
        "byte-identical secret PEM"
    );

    // openssl's public key in a keyring directory.
    let ring_dir = dir.path().join("keyring");
    std::fs::create_dir(&ring_dir).unwrap();
    std::fs::write(ring_dir.join("release-2025.pem"), &pub_pem).unwrap();
    let ring = Keyring::load(&ring_dir).unwrap();
    assert!(ring.get(&sk.public_key().key_id()).is_some());
    // ... and its secret key there by mistake.
    std::fs::copy(&sk_path, ring_dir.join("oops.pem")).unwrap();
    assert!(matches!(
        Keyring::load(&ring_dir),
        Err(Error::SecretKeyInKeyring { .. })
    ));
}

#[test]
fn our_keys_are_read_by_openssl() {
    if !have("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sk = generate_key();
    let (sk_path, pk_path) = (dir.path().join("sk.pem"), dir.path().join("pk.pem"));
    std::fs::write(&sk_path, sk.to_pem()).unwrap();
    std::fs::write(&pk_path, sk.public_key().to_pem()).unwrap();
    let derived = run(&["openssl", "pkey", "-in", s(&sk_path), "-pubout"]);
    assert_eq!(derived, sk.public_key().to_pem().as_bytes());
    let der = run(&[
        "openssl",
        "pkey",
        "-pubin",
        "-in",
        s(&pk_path),
        "-outform",
        "DER",
    ]);
    assert_eq!(der.len(), 44, "SubjectPublicKeyInfo of an ed25519 key");
    assert_eq!(der[12..], sk.public_key().to_bytes());
    // The key id is the SHA-256 of those 32 bytes.
    std::fs::write(dir.path().join("raw"), &der[12..]).unwrap();
    let digest = run(&[
        "openssl",
        "dgst",
        "-sha256",
        "-r",
        s(&dir.path().join("raw")),
    ]);
    assert_eq!(
        &digest[..64],
        bundle::hex::encode(&sk.public_key().key_id()).as_bytes()
    );
}

fn small_bundle(key: &SecretKey) -> Vec<u8> {
    let data: Vec<u8> = (0..MIN_CHUNK_SIZE as usize * 2 + 10)
        .map(|i| (i / 100) as u8)
        .collect();
    let mut reader = data.as_slice();
    let mut sources = [ImageSource {
        slot_class: "rootfs".into(),
        reader: &mut reader,
        base: None,
    }];
    let opts = CreateOptions {
        compatible: "board".into(),
        version: "1".into(),
        chunk_size: MIN_CHUNK_SIZE,
        compression: Compression::Zstd,
        ..CreateOptions::default()
    };
    let mut out = Vec::new();
    bundle::create(
        &opts,
        &mut sources,
        key,
        &mut Cursor::new(Vec::new()),
        &mut out,
    )
    .unwrap();
    out
}

#[test]
fn openssl_checks_and_makes_bundle_signatures() {
    if !have("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sk_path = dir.path().join("sk.pem");
    let pk_path = dir.path().join("pk.pem");
    run(&[
        "openssl",
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        s(&sk_path),
    ]);
    run(&[
        "openssl",
        "pkey",
        "-in",
        s(&sk_path),
        "-pubout",
        "-out",
        s(&pk_path),
    ]);
    let key = SecretKey::from_pem(&std::fs::read_to_string(&sk_path).unwrap()).unwrap();
    let b = small_bundle(&key);

    // What a third party does: the signed bytes are everything before the signature block.
    let manifest_len = u32::from_le_bytes(b[12..16].try_into().unwrap()) as usize;
    let signed_len = HEADER_LEN + manifest_len;
    let (signed, sig) = (dir.path().join("signed"), dir.path().join("sig"));
    std::fs::write(&signed, &b[..signed_len]).unwrap();
    std::fs::write(&sig, &b[signed_len + 32..signed_len + SIGNATURE_LEN]).unwrap();
    let verify = |signed: &Path| {
        Command::new("openssl")
            .args([
                "pkeyutl",
                "-verify",
                "-pubin",
                "-inkey",
                s(&pk_path),
                "-rawin",
            ])
            .args(["-in", s(signed), "-sigfile", s(&sig)])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(verify(&signed), "openssl verifies abup's signature");
    let mut tampered = b[..signed_len].to_vec();
    tampered[signed_len - 2] ^= 1;
    let tampered_path = dir.path().join("tampered");
    std::fs::write(&tampered_path, &tampered).unwrap();
    assert!(!verify(&tampered_path));

    // ed25519 is deterministic: openssl's signature over the same bytes is abup's.
    let theirs = run(&[
        "openssl",
        "pkeyutl",
        "-sign",
        "-inkey",
        s(&sk_path),
        "-rawin",
        "-in",
        s(&signed),
    ]);
    assert_eq!(theirs, &b[signed_len + 32..signed_len + SIGNATURE_LEN]);

    // A bundle signed by openssl, with a key id computed by hand, reads back.
    let mut resigned = b.clone();
    resigned[signed_len + 32..signed_len + SIGNATURE_LEN].copy_from_slice(&theirs);
    let pk = PublicKey::from_pem(&std::fs::read_to_string(&pk_path).unwrap()).unwrap();
    read_verified(&mut resigned.as_slice(), &Keyring::from_keys(vec![pk])).unwrap();
}

#[test]
fn zstd_command_decodes_chunks() {
    if !have("zstd") {
        return;
    }
    let key = generate_key();
    let b = small_bundle(&key);
    let v = read_verified(
        &mut b.as_slice(),
        &Keyring::from_keys(vec![key.public_key()]),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for c in v.manifest.chunks() {
        let at = (v.payload_offset + c.offset) as usize;
        let frame = dir.path().join(format!("chunk{}.zst", c.index));
        std::fs::write(&frame, &b[at..at + c.stored as usize]).unwrap();
        let decoded = run(&["zstd", "-d", "-c", s(&frame)]);
        let mut ours = Vec::new();
        bundle::decode_chunk(
            &v.manifest.images[0],
            c.index,
            &b[at..at + c.stored as usize],
            &mut ours,
        )
        .unwrap();
        assert_eq!(decoded, ours);
        assert_eq!(decoded.len() as u64, c.range.end - c.range.start);
    }
}
