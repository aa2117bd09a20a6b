//! The chat example's token keeping (`examples/chat/tokens.rs`) against a real relay: a second
//! run with the same name comes back as the same user, and a kept token the relay refuses is
//! dropped for a fresh join.

mod common;

#[path = "../examples/chat/tokens.rs"]
mod tokens;

use common::TestRelay;
use tokens::TokenFile;

#[test]
fn a_second_run_with_the_same_name_is_the_same_user() {
    let relay = TestRelay::start();
    let dir = tempfile::tempdir().unwrap();
    let file = TokenFile::new(dir.path().join("certs").join(tokens::TOKEN_FILE_NAME));
    let addr = relay.addr.to_string();

    let first = tokens::join(&addr, relay.options("ada"), &file).expect("first run joins");
    assert!(first.token_refused.is_none() && first.keep_error.is_none());
    let ada = first.client.user().expect("joined");
    first.client.close();
    assert!(file.path().is_file(), "the token is kept in a file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "only its owner reads a token: {mode:o}");
    }

    // Another name is another user, and does not disturb ada's token.
    let bob = tokens::join(&addr, relay.options("bob"), &file).expect("bob joins");
    assert_ne!(bob.client.user(), Some(ada));
    bob.client.close();

    let second = tokens::join(&addr, relay.options("ada"), &file).expect("second run joins");
    assert!(second.token_refused.is_none());
    assert_eq!(
        second.client.user(),
        Some(ada),
        "came back as the same user"
    );
    second.client.close();
}

#[test]
fn a_refused_token_is_dropped_and_the_run_joins_as_a_new_user() {
    // A token from another relay (another signing key): this relay answers AuthFailed.
    let other = TestRelay::start();
    let relay = TestRelay::start();
    let dir = tempfile::tempdir().unwrap();
    let file = TokenFile::new(dir.path().join(tokens::TOKEN_FILE_NAME));

    let elsewhere = tokens::join(&other.addr.to_string(), other.options("ada"), &file).unwrap();
    let foreign = file.get("ada").expect("kept");
    elsewhere.client.close();

    let here = tokens::join(&relay.addr.to_string(), relay.options("ada"), &file)
        .expect("joins fresh after the refusal");
    assert!(here.token_refused.is_some(), "the refusal is reported");
    assert!(here.client.user().is_some());
    let kept = file.get("ada").expect("the new token is kept");
    assert_ne!(kept, foreign);
    assert_eq!(Some(kept), here.client.token());
    here.client.close();
}
