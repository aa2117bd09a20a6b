//! The chat example's typed lines and what it says about the answers
//! (`examples/chat/input.rs`), against a real relay: `/admin` with the right code says "you are
//! now admin", with a wrong code (or on a relay with none) says so, and `/help` is its own.

mod common;

#[path = "../examples/chat/input.rs"]
mod input;

use common::{expect, TestRelay};
use input::Input;
use neonet::client::{Client, ClientEvent};
use neonet::relay::RelayHooks;

/// Sends a typed line the relay must answer, and returns what the example prints about it.
fn answer(client: &Client, line: &str) -> String {
    let Input::Command(words) = input::parse(line) else {
        panic!("{line} is not a relay command");
    };
    let req = client.send_command(words.clone()).unwrap();
    match expect(client, line, |e| {
        matches!(e, ClientEvent::RankModified { .. })
            || matches!(e, ClientEvent::Refused { req: r, .. } if *r == req)
    }) {
        ClientEvent::RankModified { user, rank } => input::rank_changed(client.user(), user, rank),
        ClientEvent::Refused { reason, .. } => input::refused(Some(&words), reason),
        _ => unreachable!(),
    }
}

#[test]
fn admin_with_the_right_code_says_you_are_now_admin_and_a_wrong_one_says_wrong_code() {
    let relay = TestRelay::start_config(
        |c| c.admin_code = Some("s3cret".into()),
        RelayHooks::default(),
    );
    let ada = relay.client("ada");
    assert_eq!(
        answer(&ada, "/admin nope"),
        "* refused: wrong admin code (or none configured on the relay)"
    );
    assert_eq!(answer(&ada, "/admin s3cret"), "* you are now admin");
    assert_eq!(
        answer(&ada, "/frobnicate"),
        "* refused: unknown command (/help lists them)"
    );
    ada.close();

    // A relay without an admin code refuses every code the same way.
    let plain = TestRelay::start_with(RelayHooks::default());
    let bob = plain.client("bob");
    assert_eq!(
        answer(&bob, "/admin s3cret"),
        "* refused: wrong admin code (or none configured on the relay)"
    );
    bob.close();
}

#[test]
fn typed_lines_help_usage_and_names_with_spaces() {
    assert_eq!(input::parse("  "), Input::Empty);
    assert_eq!(input::parse("/quit"), Input::Quit);
    assert_eq!(input::parse("/help"), Input::Help);
    assert_eq!(input::parse("/"), Input::Help);
    for cmd in [
        "/name",
        "/admin",
        "/chat clear",
        "/spawn set|clear",
        "/help",
        "/quit",
    ] {
        assert!(input::HELP.contains(cmd), "/help lists {cmd}");
    }
    assert_eq!(input::parse("/admin"), Input::Usage("/admin CODE"));
    assert_eq!(input::parse("/name  "), Input::Usage("/name NEW"));
    assert_eq!(
        input::parse("/name ada lovelace"),
        Input::Command(vec!["name".into(), "ada lovelace".into()])
    );
    assert_eq!(
        input::parse("/spawn set"),
        Input::Command(vec!["spawn".into(), "set".into()])
    );
    assert_eq!(input::parse(" hello "), Input::Chat("hello".into()));
}
