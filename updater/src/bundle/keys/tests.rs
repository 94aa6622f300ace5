use std::path::Path;

use super::*;

fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn pem_round_trip() {
    let sk = generate_key();
    let pem = sk.to_pem();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
    let back = SecretKey::from_pem(&pem).unwrap();
    assert_eq!(back.public_key(), sk.public_key());
    assert_eq!(back.sign(b"m"), sk.sign(b"m"));

    let pk = sk.public_key();
    let pem = pk.to_pem();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
    assert_eq!(PublicKey::from_pem(&pem).unwrap(), pk);
    assert_ne!(generate_key().public_key(), pk, "fresh keys differ");
}

#[test]
fn key_id_is_the_sha256_of_the_raw_public_key() {
    let pk = generate_key().public_key();
    let expected: [u8; 32] = Sha256::digest(pk.to_bytes()).into();
    assert_eq!(pk.key_id(), expected);
    assert!(format!("{pk:?}").contains(&crate::bundle::hex::encode(&expected)));
}

#[test]
fn secret_key_debug_shows_no_secret() {
    let sk = generate_key();
    let shown = format!("{sk:?}");
    assert!(shown.contains(&crate::bundle::hex::encode(&sk.public_key().key_id())));
    assert!(!shown.contains(&crate::bundle::hex::encode(&sk.0.to_bytes())));
}

#[test]
fn signatures_verify_strictly() {
    let sk = generate_key();
    let sig = sk.sign(b"message");
    assert!(sk.public_key().verify(b"message", &sig));
    assert!(!sk.public_key().verify(b"messagE", &sig));
    assert!(!generate_key().public_key().verify(b"message", &sig));
    let mut bad = sig;
    bad[63] ^= 0x80;
    assert!(!sk.public_key().verify(b"message", &bad));
}

#[test]
fn wrong_pem_is_refused() {
    let sk = generate_key();
    let (spem, ppem) = (sk.to_pem(), sk.public_key().to_pem());
    for (what, r) in [
        ("garbage", SecretKey::from_pem("hello").err()),
        ("public as secret", SecretKey::from_pem(&ppem).err()),
        ("empty", SecretKey::from_pem("").err()),
    ] {
        match r {
            Some(Error::KeyPem { what: "secret", .. }) => {}
            e => panic!("{what}: {e:?}"),
        }
    }
    for (what, r) in [
        ("garbage", PublicKey::from_pem("hello").err()),
        ("secret as public", PublicKey::from_pem(&spem).err()),
        (
            "truncated",
            PublicKey::from_pem(&ppem[..ppem.len() - 30]).err(),
        ),
    ] {
        match r {
            Some(e @ Error::KeyPem { what: "public", .. }) => {
                assert!(!e.to_string().contains('\n'), "{e}")
            }
            e => panic!("{what}: {e:?}"),
        }
    }
}

#[test]
fn weak_public_keys_are_refused() {
    // The identity point: every signature "verifies" under a non-strict check.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let weak = PublicKey(VerifyingKey::from_bytes(&identity).unwrap());
    match PublicKey::from_pem(&weak.to_pem()) {
        Err(Error::KeyPem { message, .. }) => assert!(message.contains("weak"), "{message}"),
        r => panic!("{r:?}"),
    }
}

#[test]
fn keyring_loads_pem_files_and_ignores_the_rest() {
    let dir = tmpdir();
    let (a, b) = (generate_key().public_key(), generate_key().public_key());
    std::fs::write(dir.path().join("a.pem"), a.to_pem()).unwrap();
    std::fs::write(dir.path().join("b-2025.pem"), b.to_pem()).unwrap();
    std::fs::write(dir.path().join("a-copy.pem"), a.to_pem()).unwrap();
    std::fs::write(dir.path().join("README"), "not a key").unwrap();
    std::fs::write(dir.path().join("old.pem.disabled"), "not a key").unwrap();
    let ring = Keyring::load(dir.path()).unwrap();
    assert_eq!(ring.len(), 2, "a key in two files counts once");
    assert_eq!(ring.get(&a.key_id()), Some(&a));
    assert_eq!(ring.get(&b.key_id()), Some(&b));
    assert_eq!(ring.get(&[0; 32]), None);
    assert!(!ring.is_empty());
    assert_eq!(ring.keys().count(), 2);

    let empty = tmpdir();
    assert!(Keyring::load(empty.path()).unwrap().is_empty());
    assert!(Keyring::from_keys(vec![]).is_empty());
}

#[test]
fn keyring_errors_name_the_file() {
    let dir = tmpdir();
    std::fs::write(
        dir.path().join("good.pem"),
        generate_key().public_key().to_pem(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("typo.pem"),
        "-----BEGIN PUBLIC KEY-----\nxx\n",
    )
    .unwrap();
    match Keyring::load(dir.path()) {
        Err(e @ Error::KeyFile { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("typo.pem"), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
        r => panic!("{r:?}"),
    }

    let dir = tmpdir();
    std::fs::write(dir.path().join("signer.pem"), generate_key().to_pem()).unwrap();
    match Keyring::load(dir.path()) {
        Err(Error::SecretKeyInKeyring { path }) => assert!(path.ends_with("signer.pem")),
        r => panic!("{r:?}"),
    }

    let dir = tmpdir();
    let mut big = generate_key().public_key().to_pem();
    big.push_str(&" ".repeat(MAX_KEY_FILE_LEN as usize));
    std::fs::write(dir.path().join("big.pem"), big).unwrap();
    assert!(matches!(
        Keyring::load(dir.path()),
        Err(Error::KeyFileTooLarge { .. })
    ));

    let dir = tmpdir();
    std::fs::create_dir(dir.path().join("dir.pem")).unwrap();
    assert!(matches!(
        Keyring::load(dir.path()),
        Err(Error::KeyFileNotRegular {
            kind: "a directory",
            ..
        })
    ));

    let missing = dir.path().join("missing");
    match Keyring::load(&missing) {
        Err(Error::Keyring { path, .. }) => assert_eq!(path, missing),
        r => panic!("{r:?}"),
    }
}

#[test]
fn keyring_file_count_is_bounded() {
    let dir = tmpdir();
    let pem = generate_key().public_key().to_pem();
    for i in 0..MAX_KEYRING_KEYS {
        std::fs::write(dir.path().join(format!("{i}.pem")), &pem).unwrap();
    }
    assert_eq!(Keyring::load(dir.path()).unwrap().len(), 1);
    std::fs::write(dir.path().join("one-more.pem"), &pem).unwrap();
    assert!(matches!(
        Keyring::load(dir.path()),
        Err(Error::KeyringTooLarge { .. })
    ));
}

/// `f()` on another thread, or a failure after a few seconds instead of a test that hangs.
fn within_seconds<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()));
    rx.recv_timeout(std::time::Duration::from_secs(5))
        .expect("it hung: a FIFO was opened or read blocking")
}

fn write_mode(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_fifo_is_refused_without_waiting_for_a_writer() {
    let dir = tmpdir();
    std::fs::write(
        dir.path().join("good.pem"),
        generate_key().public_key().to_pem(),
    )
    .unwrap();
    let fifo = dir.path().join("x.pem");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    // The file itself, then the directory: each must answer at once.
    let f = fifo.clone();
    match within_seconds(move || load_public_key(&f)) {
        Err(Error::KeyFileNotRegular { path, kind }) => {
            assert_eq!((path, kind), (fifo, "a FIFO"))
        }
        r => panic!("{r:?}"),
    }
    let d = dir.path().to_path_buf();
    match within_seconds(move || Keyring::load(&d)) {
        Err(e @ Error::KeyFileNotRegular { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("x.pem") && msg.contains("FIFO"), "{msg}");
        }
        r => panic!("{r:?}"),
    }
}

#[test]
fn a_symbolic_link_is_not_followed() {
    let dir = tmpdir();
    let elsewhere = tmpdir();
    let target = elsewhere.path().join("evil.pem");
    std::fs::write(&target, generate_key().public_key().to_pem()).unwrap();
    let link = dir.path().join("evil.pem");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    match load_public_key(&link) {
        Err(Error::KeyFileNotRegular { kind, .. }) => assert_eq!(kind, "a symbolic link"),
        r => panic!("{r:?}"),
    }
    match Keyring::load(dir.path()) {
        Err(e @ Error::KeyFileNotRegular { .. }) => {
            assert!(e.to_string().contains("evil.pem"), "{e}")
        }
        r => panic!("{r:?}"),
    }
}

#[test]
fn hidden_files_are_ignored() {
    let dir = tmpdir();
    let good = generate_key().public_key();
    std::fs::write(dir.path().join("good.pem"), good.to_pem()).unwrap();
    let hidden = generate_key().public_key();
    std::fs::write(dir.path().join(".hidden.pem"), hidden.to_pem()).unwrap();
    // Not even opened: a hidden FIFO does not matter either.
    nix::unistd::mkfifo(
        &dir.path().join(".fifo.pem"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let d = dir.path().to_path_buf();
    let ring = within_seconds(move || Keyring::load(&d)).unwrap();
    assert_eq!(ring.len(), 1);
    assert_eq!(ring.get(&good.key_id()), Some(&good));
    assert_eq!(ring.get(&hidden.key_id()), None);
}

#[test]
fn writable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmpdir();
    write_mode(
        &dir.path().join("good.pem"),
        &generate_key().public_key().to_pem(),
        0o644,
    );
    for mode in [0o755, 0o700, 0o555, 0o1755] {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        assert_eq!(Keyring::load(dir.path()).unwrap().len(), 1, "mode {mode:o}");
    }
    for mode in [0o775, 0o757, 0o777, 0o1777] {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        match Keyring::load(dir.path()) {
            Err(e @ Error::KeyringWritable { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
                assert!(msg.contains("chmod go-w"), "{msg}");
                assert!(!msg.contains('\n'), "{msg}");
            }
            r => panic!("mode {mode:o}: {r:?}"),
        }
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for mode in [0o664, 0o646, 0o666] {
        write_mode(
            &dir.path().join("good.pem"),
            &generate_key().public_key().to_pem(),
            mode,
        );
        match Keyring::load(dir.path()) {
            Err(e @ Error::KeyFileWritable { .. }) => {
                assert!(e.to_string().contains("good.pem"), "{e}")
            }
            r => panic!("mode {mode:o}: {r:?}"),
        }
    }
}
