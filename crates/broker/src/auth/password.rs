//! Password hashes in RabbitMQ's format: `base64(salt ++ H(salt ++ utf8(password)))`.

use base64::Engine;
use sha2::Digest;

/// How a user's password hash was made (RabbitMQ's `hashing_algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashingAlgorithm {
    #[default]
    Sha256,
    Sha512,
    Md5,
}

/// A `hashing_algorithm` that is not one of RabbitMQ's three modules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unsupported hashing algorithm '{0}': expected rabbit_password_hashing_sha256, \
     rabbit_password_hashing_sha512 or rabbit_password_hashing_md5"
)]
pub struct UnsupportedHashingAlgorithm(pub String);

impl HashingAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            HashingAlgorithm::Sha256 => "rabbit_password_hashing_sha256",
            HashingAlgorithm::Sha512 => "rabbit_password_hashing_sha512",
            HashingAlgorithm::Md5 => "rabbit_password_hashing_md5",
        }
    }

    /// RabbitMQ's module names; a missing algorithm means MD5 (definitions older than 3.6).
    pub fn parse(name: Option<&str>) -> std::result::Result<Self, UnsupportedHashingAlgorithm> {
        match name {
            None | Some("") | Some("rabbit_password_hashing_md5") => Ok(HashingAlgorithm::Md5),
            Some("rabbit_password_hashing_sha256") => Ok(HashingAlgorithm::Sha256),
            Some("rabbit_password_hashing_sha512") => Ok(HashingAlgorithm::Sha512),
            Some(other) => Err(UnsupportedHashingAlgorithm(other.to_string())),
        }
    }

    pub(super) fn digest(self, salt: &[u8], password: &[u8]) -> Vec<u8> {
        match self {
            HashingAlgorithm::Sha256 => {
                let mut h = sha2::Sha256::new();
                h.update(salt);
                h.update(password);
                h.finalize().to_vec()
            }
            HashingAlgorithm::Sha512 => {
                let mut h = sha2::Sha512::new();
                h.update(salt);
                h.update(password);
                h.finalize().to_vec()
            }
            HashingAlgorithm::Md5 => {
                let mut h = md5::Md5::new();
                h.update(salt);
                h.update(password);
                h.finalize().to_vec()
            }
        }
    }
}

const SALT_LEN: usize = 4;

/// A new salted hash of `password`, base64-encoded as RabbitMQ stores it.
pub fn hash_password(password: &str, alg: HashingAlgorithm) -> String {
    let salt: [u8; SALT_LEN] = rand::random();
    let mut out = salt.to_vec();
    out.extend_from_slice(&alg.digest(&salt, password.as_bytes()));
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// Whether `password` matches a stored hash. An empty hash matches nothing (RabbitMQ's
/// password-less users can only log in by other means, e.g. x509 certificates).
pub fn check_password(hash: &str, alg: HashingAlgorithm, password: &str) -> bool {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(hash.trim()) else {
        return false;
    };
    if raw.len() <= SALT_LEN {
        return false;
    }
    let (salt, expected) = raw.split_at(SALT_LEN);
    let got = alg.digest(salt, password.as_bytes());
    // Constant time in the length of the digest.
    got.len() == expected.len() && got.iter().zip(expected).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
}
