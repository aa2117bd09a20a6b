//! Token verification: how admission learns which user a `Hello` token names. The core asks;
//! the driver decides how (the relay verifies signed JWTs: `src/auth.rs`).
//!
//! The split: an [`Authenticator`] checks a token's **form and signature** (which key, which
//! algorithm, whether the bytes were signed by it) and returns its [`TokenClaims`]. The core
//! decides everything that depends on time or on the world: expiry and not-before against its
//! own clock (`ServerConfig::unix_ms_at_zero` + its `now`, never the OS clock), revocation (the
//! user's token generation), bans, and what a rank claim grants. So the simulated network can
//! drive every one of those rules.

use crate::types::{Rank, UserId};

/// Clock skew tolerated between whoever signed a token and the relay, seconds: a backend
/// whose clock is a minute ahead still mints tokens that are valid on arrival. One minute is
/// the usual JWT leeway (and jsonwebtoken's default).
pub const TOKEN_LEEWAY_S: u64 = 60;

/// Lowest user id a **backend**'s token may name: 2^32. Users the relay creates itself count
/// up from 1 and are capped far below it (`USERS_MAX`), so a backend's players can never take
/// over a visitor the relay made (and the other way round).
pub const BACKEND_USER_ID_MIN: u64 = 1 << 32;
/// Highest user id a backend's token may name: 2^53 - 1, the largest integer JavaScript holds
/// exactly (the browser library reads user ids as numbers).
pub const BACKEND_USER_ID_MAX: u64 = (1 << 53) - 1;

/// Who signed a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenIssuer {
    /// The relay's own key (tokens it hands out in snapshots, `neonet-relay token`).
    Relay,
    /// A game backend's key the relay was configured to trust. Its tokens name users in
    /// [`BACKEND_USER_ID_MIN`]..=[`BACKEND_USER_ID_MAX`].
    Backend,
    /// A pre-JWT token (`v1.<user>.<hmac>`), accepted during migration: no expiry, no
    /// generation. The snapshot replaces it with a signed JWT.
    Legacy,
}

/// What a verified token says. Times are Unix seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenClaims {
    /// The user it names (`sub`).
    pub user: UserId,
    /// A display name vouched for by the signer (`name`); it replaces the `Hello` name.
    pub name: Option<String>,
    /// A rank granted by the signer (`rank`): the user's stored rank becomes this at join.
    pub rank: Option<Rank>,
    /// Issued at (`iat`).
    pub issued_at_s: u64,
    /// Not valid before (`nbf`).
    pub not_before_s: Option<u64>,
    /// Not valid after (`exp`); `None` only for legacy tokens.
    pub expires_at_s: Option<u64>,
    /// The user's token generation when it was issued (`gen`): revocation bumps the user's
    /// generation, which refuses every older token. Backend tokens usually carry none; they are
    /// revoked by their `iat` instead.
    pub generation: Option<u32>,
    /// Who signed it.
    pub issuer: TokenIssuer,
}

/// What the core asks an [`Authenticator`] to sign. Times are Unix seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenGrant {
    /// The user.
    pub user: UserId,
    /// A display name to vouch for, if any.
    pub name: Option<String>,
    /// A rank to grant, if any.
    pub rank: Option<Rank>,
    /// Issued at.
    pub issued_at_s: u64,
    /// Expires at.
    pub expires_at_s: u64,
    /// The user's current token generation; `None` for tokens minted outside a session (they
    /// are revoked by their issue time instead).
    pub generation: Option<u32>,
}

impl TokenGrant {
    /// A grant for `user` alone, valid forever (tests, tools with insecure tokens).
    pub fn user(user: UserId) -> TokenGrant {
        TokenGrant {
            user,
            name: None,
            rank: None,
            issued_at_s: 0,
            expires_at_s: u64::MAX,
            generation: None,
        }
    }
}

/// Why a token was refused. Each is a distinct close detail the client sees (`AuthFailed`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token at all (not three base64url parts, bad JSON, a required claim missing).
    #[error("token malformed: {0}")]
    Malformed(String),
    /// The header says `alg: none`: an unsigned token, never accepted.
    #[error("token refused: unsigned (alg none)")]
    AlgorithmNone,
    /// Signed with an algorithm the named key is not for (an HS256 token against an EdDSA key,
    /// say: the classic key-confusion attack).
    #[error("token refused: algorithm {0} not allowed for its key")]
    AlgorithmNotAllowed(String),
    /// The header names a key id (`kid`) this relay does not know, or none where one is needed.
    #[error("token refused: unknown signing key {0:?}")]
    UnknownKey(String),
    /// The signature does not verify under the named key.
    #[error("token refused: bad signature")]
    BadSignature,
    /// Past its `exp`.
    #[error("token expired")]
    Expired,
    /// Before its `nbf` (or issued in the future).
    #[error("token not yet valid")]
    NotYetValid,
    /// Older than the user's last revocation.
    #[error("token revoked")]
    Revoked,
    /// Names a user this world does not know (and carries no name to create it with).
    #[error("token names no user of this world")]
    UnknownUser,
    /// A backend token naming a user id outside the backend's range.
    #[error("token refused: user id outside the backend's range")]
    UserOutOfRange,
}

/// Verifies and issues auth tokens. See the module documentation for who decides what.
pub trait Authenticator: Send {
    /// The claims of a token whose form and signature are good, or why not. Does not check
    /// times or revocation: the core does.
    fn verify(&self, token: &str) -> Result<TokenClaims, TokenError>;
    /// A token for `grant`, signed with the relay's own key.
    fn issue(&self, grant: &TokenGrant) -> String;
}

/// Tokens that are the user id in plain text. For tests and the simulated network only: anyone
/// can forge them. `user:N` names user N with no expiry; `user:N:exp:S` expires at Unix second
/// S, `user:N:gen:G` carries generation G (for the core's time and revocation tests).
#[derive(Debug, Default, Clone)]
pub struct InsecureTokens;

impl Authenticator for InsecureTokens {
    fn verify(&self, token: &str) -> Result<TokenClaims, TokenError> {
        let bad = || TokenError::Malformed("expected user:N".into());
        let mut parts = token.strip_prefix("user:").ok_or_else(bad)?.split(':');
        let user = parts.next().and_then(|u| u.parse().ok()).ok_or_else(bad)?;
        let mut claims = TokenClaims {
            user: UserId(user),
            name: None,
            rank: None,
            issued_at_s: 0,
            not_before_s: None,
            expires_at_s: None,
            generation: None,
            issuer: TokenIssuer::Relay,
        };
        while let (Some(k), Some(v)) = (parts.next(), parts.next()) {
            let v: u64 = v.parse().map_err(|_| bad())?;
            match k {
                "exp" => claims.expires_at_s = Some(v),
                "nbf" => claims.not_before_s = Some(v),
                "iat" => claims.issued_at_s = v,
                "gen" => claims.generation = Some(v.min(u32::MAX as u64) as u32),
                _ => return Err(bad()),
            }
        }
        Ok(claims)
    }
    fn issue(&self, grant: &TokenGrant) -> String {
        match grant.generation {
            Some(g) if g > 0 => format!("user:{}:gen:{g}", grant.user.0),
            _ => format!("user:{}", grant.user.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_tokens_round_trip_and_carry_test_claims() {
        let t = InsecureTokens.issue(&TokenGrant::user(UserId(4)));
        assert_eq!(InsecureTokens.verify(&t).unwrap().user, UserId(4));
        let c = InsecureTokens.verify("user:5:exp:100:gen:2").unwrap();
        assert_eq!(c.expires_at_s, Some(100));
        assert_eq!(c.generation, Some(2));
        assert!(InsecureTokens.verify("user:x").is_err());
        assert!(InsecureTokens.verify("admin").is_err());
    }
}
