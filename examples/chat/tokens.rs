//! The chat example's memory of who it is: the relay's token for each display name, kept in a
//! small file so that the next run with the same `--name` comes back as the same user (and
//! keeps a rank it was given, admin say). `tests/chat_tokens.rs` tests it against a real relay.
//!
//! The file holds one `NAME<TAB>TOKEN` line per name. Names never hold a tab or a newline (the
//! relay refuses control characters in names) and tokens are printable, so the lines need no
//! escaping. It is written whole through a temporary file and a rename, readable by its owner
//! only (on Unix): a token is a credential.

use std::io::Write;
use std::path::{Path, PathBuf};

use neonet::client::{Client, ClientOptions, ConnectError};
use neonet::proto::wire::msg::CloseReason;

/// The file's name beside the trusted certificate.
pub const TOKEN_FILE_NAME: &str = "chat-tokens";

/// The token file.
#[derive(Clone, Debug)]
pub struct TokenFile {
    path: PathBuf,
}

impl TokenFile {
    /// The file at `path` (created when a token is first kept).
    pub fn new(path: impl Into<PathBuf>) -> TokenFile {
        TokenFile { path: path.into() }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every `(name, token)` line (none when the file is missing or unreadable).
    fn entries(&self) -> Vec<(String, String)> {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(n, t)| (n.to_string(), t.trim().to_string()))
            .filter(|(_, t)| !t.is_empty())
            .collect()
    }

    /// The token kept for `name`.
    pub fn get(&self, name: &str) -> Option<String> {
        self.entries()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
    }

    /// Keeps `token` for `name`, or forgets `name`'s token with `None`.
    pub fn set(&self, name: &str, token: Option<&str>) -> std::io::Result<()> {
        if name.chars().any(char::is_control) || token.is_some_and(|t| t.contains(['\t', '\n'])) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a name or token with control characters cannot be kept",
            ));
        }
        let mut entries = self.entries();
        entries.retain(|(n, _)| n != name);
        if let Some(t) = token {
            entries.push((name.to_string(), t.to_string()));
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("tmp");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        for (n, t) in &entries {
            writeln!(f, "{n}\t{t}")?;
        }
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &self.path)
    }
}

/// How [`join`] went.
pub struct Joined {
    /// The joined client.
    pub client: Client,
    /// The relay refused the kept token (`AuthFailed`: another world, or a user it no longer
    /// knows), which was dropped before joining as a new user: why, as the relay said it.
    pub token_refused: Option<String>,
    /// The new token could not be written (the next run will be a new user).
    pub keep_error: Option<std::io::Error>,
}

/// Joins `addr` as `options.name` with the token kept for that name, if any (unless `options`
/// brings its own). When the relay refuses the kept token (`AuthFailed`), forgets it and joins
/// as a new user, unless the user is banned (the refusal is then returned). Afterwards keeps the
/// session's token for the name.
pub fn join(
    addr: &str,
    mut options: ClientOptions,
    tokens: &TokenFile,
) -> Result<Joined, ConnectError> {
    let name = options.name.clone();
    let kept = options.token.is_none().then(|| tokens.get(&name)).flatten();
    if kept.is_some() {
        options.token = kept.clone();
    }
    let mut token_refused = None;
    let client = match Client::connect(addr, options.clone()) {
        Err(ConnectError::Refused {
            reason: CloseReason::AuthFailed,
            detail,
        }) if kept.is_some() => {
            // Forget it either way, like the browser client: a banned user stays out of this
            // run, and a token the relay does not know would fail every run.
            let _ = tokens.set(&name, None);
            if detail.starts_with("banned") {
                return Err(ConnectError::Refused {
                    reason: CloseReason::AuthFailed,
                    detail,
                });
            }
            token_refused = Some(detail);
            options.token = None;
            Client::connect(addr, options)?
        }
        r => r?,
    };
    let mut keep_error = None;
    if let Some(t) = client.token() {
        if kept.as_deref() != Some(t.as_str()) {
            keep_error = tokens.set(&name, Some(&t)).err();
        }
    }
    Ok(Joined {
        client,
        token_refused,
        keep_error,
    })
}
