//! Auth tokens signed with HMAC-SHA256 (ring), implementing [`Authenticator`].
//!
//! A token is `v1.<user id>.<signature>` where the signature is the hex HMAC-SHA256 of
//! `v1.<user id>` under a 32-byte server secret. The secret is generated with ring's system
//! random source on first start into the data folder ([`SECRET_FILE`], mode 0600) and reused, so
//! tokens survive restarts; deleting the file invalidates every token.
//!
//! Why not `jsonwebtoken`: the token carries one claim, is issued and checked by the same
//! process, and uses one fixed algorithm. A JWT library would add a JSON/base64 layer and
//! algorithm negotiation (a classic source of JWT bugs) for nothing; ring is already in the tree
//! and its `hmac::verify` compares in constant time.

use std::path::{Path, PathBuf};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use neonet_proto::server::Authenticator;
use neonet_proto::types::UserId;

/// File holding the token secret in the data folder.
pub const SECRET_FILE: &str = "token.secret";
/// Bytes of the token secret: SHA-256's output size, the minimum key length RFC 2104
/// recommends for HMAC; far beyond brute force.
pub const SECRET_BYTES: usize = 32;
/// Version prefix of tokens, so the format can change deliberately.
const TOKEN_PREFIX: &str = "v1";

/// Why the token secret could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Reading or writing the secret file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The secret file has the wrong size (corrupt or foreign).
    #[error("{path}: expected {SECRET_BYTES} bytes, found {len}")]
    BadSecret {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: usize,
    },
    /// The OS random source failed.
    #[error("the system random source failed")]
    Random,
}

/// Issues and verifies HMAC-SHA256 tokens. See the module documentation.
pub struct HmacTokens {
    key: hmac::Key,
}

impl std::fmt::Debug for HmacTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacTokens { key: <secret> }")
    }
}

impl HmacTokens {
    /// Tokens under an explicit secret (tests, or a secret managed elsewhere).
    pub fn from_secret(secret: &[u8]) -> HmacTokens {
        HmacTokens {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// Loads the secret from `data_dir/`[`SECRET_FILE`], creating the folder and a fresh secret
    /// if absent.
    pub fn load_or_create(data_dir: &Path) -> Result<HmacTokens, AuthError> {
        let path = data_dir.join(SECRET_FILE);
        let io = |source| AuthError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() == SECRET_BYTES => return Ok(Self::from_secret(&bytes)),
            Ok(bytes) => {
                return Err(AuthError::BadSecret {
                    path,
                    len: bytes.len(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        std::fs::create_dir_all(data_dir).map_err(|source| AuthError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let mut secret = [0u8; SECRET_BYTES];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| AuthError::Random)?;
        crate::tls::write_private(&path, &secret).map_err(|e| match e {
            crate::tls::TlsError::Io { path, source } => AuthError::Io { path, source },
            other => AuthError::Io {
                path: path.clone(),
                source: std::io::Error::other(other.to_string()),
            },
        })?;
        Ok(Self::from_secret(&secret))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

impl Authenticator for HmacTokens {
    fn verify(&self, token: &str) -> Option<UserId> {
        let (claim, sig) = token.rsplit_once('.')?;
        let user = claim.strip_prefix(TOKEN_PREFIX)?.strip_prefix('.')?;
        let sig = unhex(sig)?;
        hmac::verify(&self.key, claim.as_bytes(), &sig).ok()?;
        user.parse().ok().map(UserId)
    }

    fn issue(&self, user: UserId) -> String {
        let claim = format!("{TOKEN_PREFIX}.{}", user.0);
        let tag = hmac::sign(&self.key, claim.as_bytes());
        format!("{claim}.{}", hex(tag.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_forgeries_do_not() {
        let a = HmacTokens::from_secret(&[1; 32]);
        let b = HmacTokens::from_secret(&[2; 32]);
        let t = a.issue(UserId(42));
        assert_eq!(a.verify(&t), Some(UserId(42)));
        assert_eq!(b.verify(&t), None);
        let forged = t.replace("v1.42.", "v1.43.");
        assert_eq!(a.verify(&forged), None);
        for junk in ["", "v1", "v1.42", "v1.42.zz", "user:42", "v1.42.é1"] {
            assert_eq!(a.verify(junk), None, "{junk}");
        }
    }

    #[test]
    fn secret_persists() {
        let dir = tempfile::tempdir().unwrap();
        let t = HmacTokens::load_or_create(dir.path())
            .unwrap()
            .issue(UserId(7));
        let again = HmacTokens::load_or_create(dir.path()).unwrap();
        assert_eq!(again.verify(&t), Some(UserId(7)));
    }
}
