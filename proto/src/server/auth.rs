//! Token verification: how admission learns which user a `Hello` token names. The core asks;
//! the driver decides how (the relay signs tokens with a server secret).

use crate::types::UserId;

/// Verifies and issues auth tokens.
pub trait Authenticator: Send {
    /// The user a token names, or `None` if it is invalid.
    fn verify(&self, token: &str) -> Option<UserId>;
    /// A token naming `user`.
    fn issue(&self, user: UserId) -> String;
}

/// Tokens that are the user id in plain text. For tests and the simulated network only: anyone
/// can forge them.
#[derive(Debug, Default, Clone)]
pub struct InsecureTokens;

impl Authenticator for InsecureTokens {
    fn verify(&self, token: &str) -> Option<UserId> {
        token.strip_prefix("user:")?.parse().ok().map(UserId)
    }
    fn issue(&self, user: UserId) -> String {
        format!("user:{}", user.0)
    }
}
