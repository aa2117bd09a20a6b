//! What the chat example makes of a typed line and what it says about the answers: `/help`
//! and `/quit` are its own, other `/` lines are the relay's slash commands, the rest is chat.
//! `tests/chat_commands.rs` tests it against a real relay.

use neonet::proto::types::{Rank, UserId};
use neonet::proto::wire::msg::Refusal;

/// What `/help` prints: the commands this client knows (the relay's, and its own).
pub const HELP: &str = "\
* commands:
*   /name NEW          change your display name
*   /admin CODE        become an admin with the relay's admin code (neonet-relay --admin-code)
*   /chat clear        clear the chat (builders and admins)
*   /spawn set|clear   put the world's spawn where you stand, or back at the origin (builders and admins)
*   /kick NAME [reason], /mute NAME [10m|2h|7d], /unmute NAME   (builders, on lower ranks)
*   /ban NAME [1d] [reason], /unban NAME, /rank NAME RANK, /revoke NAME   (admins)
*   /help              this list (the relay's own list for your rank: /help relay)

*   /quit              leave
* any other line is sent as chat";

/// A typed line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Blank: nothing to do.
    Empty,
    /// `/quit`.
    Quit,
    /// `/help`: print [`HELP`].
    Help,
    /// A command missing its argument: print this usage.
    Usage(&'static str),
    /// A slash command for the relay, split into words.
    Command(Vec<String>),
    /// A chat message.
    Chat(String),
}

/// Reads a typed line.
pub fn parse(line: &str) -> Input {
    let line = line.trim();
    let Some(cmd) = line.strip_prefix('/') else {
        return if line.is_empty() {
            Input::Empty
        } else {
            Input::Chat(line.to_string())
        };
    };
    let mut words = cmd.split_whitespace();
    match words.next() {
        Some("quit") => Input::Quit,
        Some("help") if words.next() == Some("relay") => Input::Command(vec!["help".into()]),
        Some("help") | None => Input::Help,
        Some("admin") if words.next().is_none() => Input::Usage("/admin CODE"),
        // A name may hold spaces: everything after `/name` is the new name.
        Some("name") => match cmd["name".len()..].trim() {
            "" => Input::Usage("/name NEW"),
            new => Input::Command(vec!["name".into(), new.into()]),
        },
        Some(_) => Input::Command(cmd.split_whitespace().map(str::to_string).collect()),
    }
}

/// What to say when the relay refused `command` (`None`: a chat message).
pub fn refused(command: Option<&[String]>, reason: Refusal) -> String {
    match (command.and_then(|c| c.first()).map(String::as_str), reason) {
        // The relay refuses a wrong code, and any code when it has none, with `Rank`.
        (Some("admin"), Refusal::Rank) => {
            "* refused: wrong admin code (or none configured on the relay)".into()
        }
        (Some(_), Refusal::UnknownCommand) => {
            "* refused: unknown command (/help lists them)".into()
        }
        _ => format!("* refused: {reason}"),
    }
}

/// What to say when `user`'s rank changed to `rank` (`me`: own user).
pub fn rank_changed(me: Option<UserId>, user: UserId, rank: Rank) -> String {
    let rank = match rank {
        Rank::Visitor => "a visitor",
        Rank::Builder => "a builder",
        Rank::Admin => "admin",
    };
    if me == Some(user) {
        format!("* you are now {rank}")
    } else {
        format!("* user {} is now {rank}", user.0)
    }
}
