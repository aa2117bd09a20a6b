//! Auth tokens: signed JWTs ([`JwtTokens`], the relay's [`Authenticator`]) and the pre-JWT
//! HMAC tokens they replace ([`HmacTokens`], still verified during migration).
//!
//! ## JWTs
//! The relay signs with its own Ed25519 key (`EdDSA`), created with ring's system random
//! source on first start in the data folder ([`RELAY_KEY_FILE`], PKCS#8, mode 0600) and reused,
//! so tokens survive restarts; its key id (`kid`) is derived from the public key. It can also
//! trust one **backend key** ([`BackendKey`]): a shared HS256 secret, or an EdDSA or ES256
//! public key, so a game backend's signing secret never reaches the relay. Claims:
//!
//! | claim | meaning |
//! |---|---|
//! | `sub` | the user id, decimal (a backend's in `BACKEND_USER_ID_MIN..=BACKEND_USER_ID_MAX`) |
//! | `name` | display name vouched for (optional; replaces the `Hello` name) |
//! | `rank` | `visitor`, `builder` or `admin` (optional; becomes the user's rank at join) |
//! | `iat`, `exp` | issued at, expires at (Unix seconds; required) |
//! | `nbf` | not before (optional) |
//! | `gen` | the user's token generation (optional; revocation bumps it) |
//!
//! This module checks form, key and signature only; times, revocation and the rest are the
//! core's (`neonet_proto::server::auth`). The header is read before anything else so that
//! `alg: none`, an algorithm the named key is not for, and an unknown `kid` are each refused
//! with their own reason. Each key accepts exactly one algorithm: no algorithm negotiation.
//!
//! ## Legacy tokens (migration)
//! Before JWTs a token was `v1.<user id>.<hex HMAC-SHA256>` under the 32-byte secret in
//! [`SECRET_FILE`]. While that file exists such tokens are still accepted (no expiry); the
//! join that presents one is handed a JWT in its snapshot, so clients move over on their next
//! join. Deleting `token.secret` ends them.

use std::path::{Path, PathBuf};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};

use neonet_proto::server::{Authenticator, TokenClaims, TokenError, TokenGrant, TokenIssuer};
use neonet_proto::types::{Rank, UserId};

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
    /// A signing or verifying key is unusable.
    #[error("{0}")]
    BadKey(String),
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

impl HmacTokens {
    /// Loads the legacy secret from `data_dir/`[`SECRET_FILE`] if it exists (migration only:
    /// a relay that never had one does not make one).
    pub fn load_existing(data_dir: &Path) -> Result<Option<HmacTokens>, AuthError> {
        if data_dir.join(SECRET_FILE).exists() {
            Self::load_or_create(data_dir).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The user a legacy token names, if it is genuine.
    pub fn verify_legacy(&self, token: &str) -> Option<UserId> {
        let (claim, sig) = token.rsplit_once('.')?;
        let user = claim.strip_prefix(TOKEN_PREFIX)?.strip_prefix('.')?;
        let sig = unhex(sig)?;
        hmac::verify(&self.key, claim.as_bytes(), &sig).ok()?;
        user.parse().ok().map(UserId)
    }

    /// A legacy token naming `user` (tests of the migration).
    pub fn issue_legacy(&self, user: UserId) -> String {
        let claim = format!("{TOKEN_PREFIX}.{}", user.0);
        let tag = hmac::sign(&self.key, claim.as_bytes());
        format!("{claim}.{}", hex(tag.as_ref()))
    }
}

/// File holding the relay's Ed25519 signing key (PKCS#8 DER) in the data folder.
pub const RELAY_KEY_FILE: &str = "token.key";
/// Shortest shared HS256 secret accepted from a backend: 32 bytes, HS256's output size (RFC
/// 7518 §3.2 requires a key at least that long).
pub const BACKEND_HS256_SECRET_BYTES_MIN: usize = 32;

/// What a token says, as JSON (see the module documentation).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct JwtClaims {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rank: Option<String>,
    iat: u64,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gen: Option<u32>,
}

/// The header fields read before verification.
#[derive(Debug, serde::Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// A key a game backend signs its players' tokens with, which the relay trusts.
#[derive(Clone)]
pub struct BackendKey {
    /// The key id its tokens carry in `kid`; `None`: its tokens carry none.
    pub kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for BackendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BackendKey {{ kid: {:?}, alg: {:?} }}",
            self.kid, self.alg
        )
    }
}

impl BackendKey {
    /// A shared HS256 secret (at least [`BACKEND_HS256_SECRET_BYTES_MIN`] bytes).
    pub fn hs256(kid: Option<String>, secret: &[u8]) -> Result<BackendKey, AuthError> {
        if secret.len() < BACKEND_HS256_SECRET_BYTES_MIN {
            return Err(AuthError::BadKey(format!(
                "an HS256 secret must be at least {BACKEND_HS256_SECRET_BYTES_MIN} bytes, not {}",
                secret.len()
            )));
        }
        Ok(BackendKey {
            kid,
            alg: Algorithm::HS256,
            key: DecodingKey::from_secret(secret),
        })
    }

    /// A public key in PEM for `alg` (`EdDSA` or `ES256`): the backend keeps the private half.
    pub fn public_pem(kid: Option<String>, alg: &str, pem: &[u8]) -> Result<BackendKey, AuthError> {
        let bad =
            |e: jsonwebtoken::errors::Error| AuthError::BadKey(format!("{alg} public key: {e}"));
        let (alg, key) = match alg {
            "EdDSA" => (
                Algorithm::EdDSA,
                DecodingKey::from_ed_pem(pem).map_err(bad)?,
            ),
            "ES256" => (
                Algorithm::ES256,
                DecodingKey::from_ec_pem(pem).map_err(bad)?,
            ),
            other => {
                return Err(AuthError::BadKey(format!(
                    "backend key algorithm {other:?}: expected EdDSA or ES256 (or an HS256 secret)"
                )))
            }
        };
        Ok(BackendKey { kid, alg, key })
    }

    /// Reads a backend key from a file: `alg` `HS256` (the file's bytes are the secret, a
    /// trailing newline dropped), `EdDSA` or `ES256` (a PEM public key).
    pub fn from_file(kid: Option<String>, alg: &str, path: &Path) -> Result<BackendKey, AuthError> {
        let bytes = std::fs::read(path).map_err(|source| AuthError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        match alg {
            "HS256" => {
                let secret = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
                let secret = secret.strip_suffix(b"\r").unwrap_or(secret);
                Self::hs256(kid, secret)
            }
            _ => Self::public_pem(kid, alg, &bytes),
        }
    }
}

/// The relay's [`Authenticator`]: signed JWTs. See the module documentation.
pub struct JwtTokens {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    backend: Option<BackendKey>,
    legacy: Option<HmacTokens>,
}

impl std::fmt::Debug for JwtTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtTokens")
            .field("kid", &self.kid)
            .field("backend", &self.backend)
            .field("legacy", &self.legacy.is_some())
            .finish()
    }
}

impl JwtTokens {
    /// Tokens under an explicit Ed25519 key (PKCS#8 DER).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<JwtTokens, AuthError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|e| AuthError::BadKey(format!("relay key: {e}")))?;
        let public = pair.public_key().as_ref();
        let digest = ring::digest::digest(&ring::digest::SHA256, public);
        Ok(JwtTokens {
            kid: format!("relay-{}", hex(&digest.as_ref()[..8])),
            encoding: EncodingKey::from_ed_der(pkcs8),
            decoding: DecodingKey::from_ed_der(public),
            backend: None,
            legacy: None,
        })
    }

    /// Loads the relay's key from `data_dir/`[`RELAY_KEY_FILE`], creating the folder and a
    /// fresh key if absent; also picks up a legacy [`SECRET_FILE`] if one is there.
    pub fn load_or_create(data_dir: &Path) -> Result<JwtTokens, AuthError> {
        let path = data_dir.join(RELAY_KEY_FILE);
        let pkcs8 = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data_dir).map_err(|source| AuthError::Io {
                    path: data_dir.to_path_buf(),
                    source,
                })?;
                let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                    .map_err(|_| AuthError::Random)?;
                crate::tls::write_private(&path, doc.as_ref()).map_err(|e| AuthError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                doc.as_ref().to_vec()
            }
            Err(source) => return Err(AuthError::Io { path, source }),
        };
        let mut t = Self::from_pkcs8(&pkcs8)?;
        t.legacy = HmacTokens::load_existing(data_dir)?;
        Ok(t)
    }

    /// Also trusts tokens signed by a game backend's key.
    pub fn with_backend(mut self, key: Option<BackendKey>) -> JwtTokens {
        self.backend = key;
        self
    }

    /// Also accepts legacy `v1.` tokens under `legacy` (migration).
    pub fn with_legacy(mut self, legacy: Option<HmacTokens>) -> JwtTokens {
        self.legacy = legacy;
        self
    }

    /// The relay key's id (`kid` of the tokens it signs).
    pub fn key_id(&self) -> &str {
        &self.kid
    }

    fn header(token: &str) -> Result<RawHeader, TokenError> {
        let head = token
            .split('.')
            .next()
            .ok_or_else(|| TokenError::Malformed("empty".into()))?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(head)
            .map_err(|e| TokenError::Malformed(format!("header: {e}")))?;
        serde_json::from_slice(&bytes).map_err(|e| TokenError::Malformed(format!("header: {e}")))
    }
}

fn rank_name(rank: Rank) -> &'static str {
    match rank {
        Rank::Visitor => "visitor",
        Rank::Builder => "builder",
        Rank::Admin => "admin",
    }
}

/// A rank as a token's `rank` claim names it.
pub fn parse_rank(s: &str) -> Option<Rank> {
    match s {
        "visitor" => Some(Rank::Visitor),
        "builder" => Some(Rank::Builder),
        "admin" => Some(Rank::Admin),
        _ => None,
    }
}

impl Authenticator for JwtTokens {
    fn verify(&self, token: &str) -> Result<TokenClaims, TokenError> {
        if token.starts_with("v1.") {
            let user = self
                .legacy
                .as_ref()
                .and_then(|l| l.verify_legacy(token))
                .ok_or(TokenError::BadSignature)?;
            return Ok(TokenClaims {
                user,
                name: None,
                rank: None,
                issued_at_s: 0,
                not_before_s: None,
                expires_at_s: None,
                generation: None,
                issuer: TokenIssuer::Legacy,
            });
        }
        if token.split('.').count() != 3 {
            return Err(TokenError::Malformed(
                "not three dot-separated parts".into(),
            ));
        }
        let header = Self::header(token)?;
        if header.alg.eq_ignore_ascii_case("none") {
            return Err(TokenError::AlgorithmNone);
        }
        let (issuer, alg, key) = match (&header.kid, &self.backend) {
            (Some(kid), _) if *kid == self.kid => {
                (TokenIssuer::Relay, Algorithm::EdDSA, &self.decoding)
            }
            (kid, Some(b)) if *kid == b.kid => (TokenIssuer::Backend, b.alg, &b.key),
            (kid, _) => return Err(TokenError::UnknownKey(kid.clone().unwrap_or_default())),
        };
        if header.alg != format!("{alg:?}") {
            return Err(TokenError::AlgorithmNotAllowed(header.alg));
        }
        let mut validation = Validation::new(alg);
        // Time is the core's to judge (its clock, its leeway): only form and signature here.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["sub", "exp"]);
        let data =
            jsonwebtoken::decode::<JwtClaims>(token, key, &validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::InvalidSignature => TokenError::BadSignature,
                    ErrorKind::InvalidAlgorithm => {
                        TokenError::AlgorithmNotAllowed(header.alg.clone())
                    }
                    _ => TokenError::Malformed(e.to_string()),
                }
            })?;
        let c = data.claims;
        let user = c
            .sub
            .parse()
            .map(UserId)
            .map_err(|_| TokenError::Malformed("sub is not a user id".into()))?;
        let rank = match c.rank.as_deref() {
            None => None,
            Some(r) => {
                Some(parse_rank(r).ok_or_else(|| TokenError::Malformed(format!("rank {r:?}")))?)
            }
        };
        Ok(TokenClaims {
            user,
            name: c.name,
            rank,
            issued_at_s: c.iat,
            not_before_s: c.nbf,
            expires_at_s: Some(c.exp),
            generation: c.gen,
            issuer,
        })
    }

    fn issue(&self, grant: &TokenGrant) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let claims = JwtClaims {
            sub: grant.user.0.to_string(),
            name: grant.name.clone(),
            rank: grant.rank.map(|r| rank_name(r).to_string()),
            iat: grant.issued_at_s,
            exp: grant.expires_at_s,
            nbf: None,
            gen: grant.generation,
        };
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .expect("an Ed25519 key from ring signs any claims")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_forgeries_do_not() {
        let a = HmacTokens::from_secret(&[1; 32]);
        let b = HmacTokens::from_secret(&[2; 32]);
        let t = a.issue_legacy(UserId(42));
        assert_eq!(a.verify_legacy(&t), Some(UserId(42)));
        assert_eq!(b.verify_legacy(&t), None);
        let forged = t.replace("v1.42.", "v1.43.");
        assert_eq!(a.verify_legacy(&forged), None);
        for junk in ["", "v1", "v1.42", "v1.42.zz", "user:42", "v1.42.é1"] {
            assert_eq!(a.verify_legacy(junk), None, "{junk}");
        }
    }

    #[test]
    fn secret_persists() {
        let dir = tempfile::tempdir().unwrap();
        let t = HmacTokens::load_or_create(dir.path())
            .unwrap()
            .issue_legacy(UserId(7));
        let again = HmacTokens::load_or_create(dir.path()).unwrap();
        assert_eq!(again.verify_legacy(&t), Some(UserId(7)));
    }

    fn grant(user: u64) -> TokenGrant {
        TokenGrant {
            user: UserId(user),
            name: Some("n".into()),
            rank: Some(Rank::Builder),
            issued_at_s: 100,
            expires_at_s: 200,
            generation: Some(3),
        }
    }

    #[test]
    fn relay_tokens_round_trip_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let t = JwtTokens::load_or_create(dir.path())
            .unwrap()
            .issue(&grant(9));
        let again = JwtTokens::load_or_create(dir.path()).unwrap();
        let c = again.verify(&t).unwrap();
        assert_eq!(
            (
                c.user,
                c.name.as_deref(),
                c.rank,
                c.issued_at_s,
                c.expires_at_s,
                c.generation
            ),
            (
                UserId(9),
                Some("n"),
                Some(Rank::Builder),
                100,
                Some(200),
                Some(3)
            )
        );
        assert_eq!(c.issuer, TokenIssuer::Relay);
        let other = tempfile::tempdir().unwrap();
        let stranger = JwtTokens::load_or_create(other.path()).unwrap();
        assert!(matches!(
            stranger.verify(&t),
            Err(TokenError::UnknownKey(_))
        ));
    }

    #[test]
    fn legacy_tokens_verify_while_their_secret_exists() {
        let dir = tempfile::tempdir().unwrap();
        let old = HmacTokens::load_or_create(dir.path())
            .unwrap()
            .issue_legacy(UserId(4));
        let tokens = JwtTokens::load_or_create(dir.path()).unwrap();
        let c = tokens.verify(&old).unwrap();
        assert_eq!((c.user, c.issuer), (UserId(4), TokenIssuer::Legacy));
        assert_eq!(
            tokens.verify(&old.replace("v1.4.", "v1.5.")),
            Err(TokenError::BadSignature)
        );
        // Without the old secret they are refused.
        let fresh = tempfile::tempdir().unwrap();
        let tokens = JwtTokens::load_or_create(fresh.path()).unwrap();
        assert_eq!(tokens.verify(&old), Err(TokenError::BadSignature));
    }

    #[test]
    fn an_eddsa_backend_key_verifies_its_tokens_by_public_key_only() {
        // The backend's key pair; the relay gets only the public half, as PEM.
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        let mut spki = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        spki.extend_from_slice(pair.public_key().as_ref());
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&spki)
        );
        let key = BackendKey::public_pem(Some("b1".into()), "EdDSA", pem.as_bytes()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let relay = JwtTokens::load_or_create(dir.path())
            .unwrap()
            .with_backend(Some(key));
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("b1".into());
        let claims = JwtClaims {
            sub: (1u64 << 32).to_string(),
            name: Some("pat".into()),
            rank: None,
            iat: 1,
            exp: 2,
            nbf: None,
            gen: None,
        };
        let t = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(doc.as_ref()))
            .unwrap();
        let c = relay.verify(&t).unwrap();
        assert_eq!((c.user.0, c.issuer), (1 << 32, TokenIssuer::Backend));
        // The same claims under another kid, or HS256 under this kid, are refused.
        header.kid = Some("b2".into());
        let t2 = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(doc.as_ref()))
            .unwrap();
        assert!(matches!(relay.verify(&t2), Err(TokenError::UnknownKey(_))));
        let mut hs = Header::new(Algorithm::HS256);
        hs.kid = Some("b1".into());
        let t3 = jsonwebtoken::encode(&hs, &claims, &EncodingKey::from_secret(b"x")).unwrap();
        assert_eq!(
            relay.verify(&t3),
            Err(TokenError::AlgorithmNotAllowed("HS256".into()))
        );
    }
}
