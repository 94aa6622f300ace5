//! Signing keys and the keyring of trusted public keys.
//!
//! Keys are ed25519 in standard PEM: a secret key is PKCS#8 (`-----BEGIN PRIVATE KEY-----`),
//! a public key is SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`), exactly what
//! `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` read and write. A key is
//! named by its key id, the SHA-256 of its raw 32-byte public key, which each bundle carries
//! next to its signature.

use std::fmt;
#[cfg(feature = "device")]
use std::io::Read;
#[cfg(feature = "device")]
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::spki::{DecodePublicKey, EncodePublicKey};
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, KeypairBytes};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::hex::Hex;
use super::{Error, Result};
#[cfg(feature = "device")]
use super::{MAX_KEYRING_KEYS, MAX_KEY_FILE_LEN};

/// A secret signing key. Its `Debug` shows the key id only.
pub struct SecretKey(SigningKey);

/// A public key that verifies bundles.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

/// A fresh secret key from the operating system's random generator.
pub fn generate_key() -> SecretKey {
    SecretKey(SigningKey::generate(&mut rand_core::OsRng))
}

impl SecretKey {
    /// PKCS#8 PEM, the form `openssl genpkey -algorithm ed25519` writes (version 1, without the
    /// optional public key). Holds the secret: write it to a file only the signer can read.
    pub fn to_pem(&self) -> String {
        let pair = KeypairBytes {
            secret_key: self.0.to_bytes(),
            public_key: None,
        };
        // Encoding 32 bytes into a fixed DER structure does not fail.
        pair.to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.as_str().to_string())
            .unwrap_or_default()
    }

    /// Reads a PKCS#8 PEM ed25519 secret key (with or without the optional public key).
    pub fn from_pem(pem: &str) -> Result<SecretKey> {
        SigningKey::from_pkcs8_pem(pem)
            .map(SecretKey)
            .map_err(|e| Error::KeyPem {
                what: "secret",
                message: e.to_string(),
            })
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(key id {})", Hex(&self.public_key().key_id()))
    }
}

impl PublicKey {
    /// SubjectPublicKeyInfo PEM, as `openssl pkey -pubout` writes.
    pub fn to_pem(&self) -> String {
        // Encoding 32 bytes into a fixed DER structure does not fail.
        self.0.to_public_key_pem(LineEnding::LF).unwrap_or_default()
    }

    /// Reads a SubjectPublicKeyInfo PEM ed25519 public key. Refuses a secret key (keyrings
    /// hold public keys only) and the weak keys for which a signature proves nothing.
    pub fn from_pem(pem: &str) -> Result<PublicKey> {
        let err = |message: String| Error::KeyPem {
            what: "public",
            message,
        };
        if pem.contains("PRIVATE KEY-----") {
            return Err(err("this is a secret key, not a public key".into()));
        }
        let key = VerifyingKey::from_public_key_pem(pem).map_err(|e| err(e.to_string()))?;
        if key.is_weak() {
            return Err(err("it is a weak (small-order) key".into()));
        }
        Ok(PublicKey(key))
    }

    /// SHA-256 of the raw 32-byte public key: how a bundle names the key that signed it.
    pub fn key_id(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }

    /// The raw 32-byte public key.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Verifies an ed25519 signature strictly (no malleable or small-order signatures).
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.0
            .verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey(key id {})", Hex(&self.key_id()))
    }
}

/// The public keys a device trusts. Keys rotate by adding a file for the new key, shipping
/// bundles signed with it, then removing the old file.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    /// Sorted by key id, no duplicates.
    keys: Vec<([u8; 32], PublicKey)>,
}

impl Keyring {
    /// Loads every `*.pem` file of `dir` whose name does not start with a dot (other files are
    /// ignored, so a README or an editor's backup can sit next to the keys). Anyone who can
    /// write to a keyring can sign updates, so a directory writable by group or others is
    /// refused, and so is a `*.pem` that is not a regular file only its owner can write (a
    /// FIFO, a device, a symbolic link: each is opened without following links and without
    /// blocking, and checked once open). A file that is not a public key is an error, not
    /// skipped: a typo or an intruder in a trusted directory should be seen. At most
    /// [`MAX_KEYRING_KEYS`] files of at most [`MAX_KEY_FILE_LEN`] bytes each.
    #[cfg(feature = "device")]
    pub fn load(dir: &Path) -> Result<Keyring> {
        use std::os::unix::fs::PermissionsExt;

        let dir_err = |source| Error::Keyring {
            path: dir.to_path_buf(),
            source,
        };
        let mode = std::fs::metadata(dir)
            .map_err(dir_err)?
            .permissions()
            .mode();
        if mode & 0o022 != 0 {
            return Err(Error::KeyringWritable {
                path: dir.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
        let mut paths: Vec<PathBuf> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(dir_err)? {
            let name = entry.map_err(dir_err)?.file_name();
            let path = Path::new(&name);
            let hidden = name.as_encoded_bytes().starts_with(b".");
            if hidden || path.extension().is_none_or(|e| e != "pem") {
                continue;
            }
            if paths.len() == MAX_KEYRING_KEYS {
                return Err(Error::KeyringTooLarge {
                    path: dir.to_path_buf(),
                });
            }
            paths.push(dir.join(path));
        }
        paths.sort();
        let mut keys = Vec::with_capacity(paths.len());
        for path in paths {
            let key = load_public_key(&path)?;
            log::debug!("keyring: {} is key {}", path.display(), Hex(&key.key_id()));
            keys.push(key);
        }
        Ok(Keyring::from_keys(keys))
    }

    /// A keyring of the given keys; a key given twice is kept once.
    pub fn from_keys(keys: Vec<PublicKey>) -> Keyring {
        let mut keys: Vec<([u8; 32], PublicKey)> =
            keys.into_iter().map(|k| (k.key_id(), k)).collect();
        keys.sort_by_key(|a| a.0);
        keys.dedup_by(|a, b| a.0 == b.0);
        Keyring { keys }
    }

    /// The key with this key id.
    pub fn get(&self, id: &[u8; 32]) -> Option<&PublicKey> {
        self.keys
            .binary_search_by(|(k, _)| k.cmp(id))
            .ok()
            .map(|i| &self.keys[i].1)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The keys, in key id order.
    pub fn keys(&self) -> impl Iterator<Item = &PublicKey> {
        self.keys.iter().map(|(_, k)| k)
    }
}

/// Reads one key file of a keyring: opened without following a symbolic link and without
/// blocking (a FIFO would otherwise wait for a writer forever), then checked to be a regular
/// file no one but its owner can write, then read with the length limit enforced while
/// reading.
#[cfg(feature = "device")]
fn load_public_key(path: &Path) -> Result<PublicKey> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};

    use nix::fcntl::OFlag;

    let file_err = |source: Error| Error::KeyFile {
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    let io_err = |source| Error::Keyring {
        path: path.to_path_buf(),
        source,
    };
    let not_regular = |kind| Error::KeyFileNotRegular {
        path: path.to_path_buf(),
        kind,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits())
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(code) if code == nix::errno::Errno::ELOOP as i32 => not_regular("a symbolic link"),
            _ => io_err(e),
        })?;
    let meta = file.metadata().map_err(io_err)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        return Err(not_regular(if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_block_device() || kind.is_char_device() {
            "a device"
        } else {
            "not a file"
        }));
    }
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(Error::KeyFileWritable {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(Error::KeyFileTooLarge {
            path: path.to_path_buf(),
        });
    }
    let text = String::from_utf8_lossy(&bytes);
    if text.contains("PRIVATE KEY-----") {
        return Err(Error::SecretKeyInKeyring {
            path: path.to_path_buf(),
        });
    }
    PublicKey::from_pem(&text).map_err(file_err)
}

#[cfg(test)]
mod tests;
