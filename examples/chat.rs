//! A terminal chat client.
//!
//! ```text
//! cargo run --release --bin neonet-relay                 # in one terminal
//! cargo run --release --example chat -- --name ada       # in two others (same folder: no flags needed)
//! cargo run --release --example chat -- 10.0.0.5:4433 --cert-sha256 <fingerprint the relay printed>
//! ```
//!
//! Joins, lists who is there, prints chat, joins and leaves as they happen, and sends each line
//! typed (or piped) on stdin. A line starting with `/` is a command (`/name ada`, `/chat clear`,
//! `/admin CODE`; `/help` lists them); `/quit` leaves. When stdin ends (a pipe), it waits for
//! its messages to be acknowledged, then leaves, unless `--stay` is given.
//!
//! It remembers who you are: the relay's token for each `--name` is kept in a file beside the
//! certificate it trusts (`certs/chat-tokens` by default, `--token-file` to choose), so the next
//! run with the same name is the same user, with the rank it was given. A token the relay
//! refuses (another world, a user it forgot) is dropped and the run joins as a new user.
//!
//! It shows the connection's state: a player whose connection was lost ("ada lost connection",
//! then "ada is back" or "ada left"), and its own: "connection lost … reconnecting, attempt N in
//! X s" (what you type meanwhile is sent once back), "reconnected: same session", "offline"
//! after giving up (type anything to try again), or "closed: kicked by moderator" (a kick, a ban
//! or a refusal is never retried).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

use neonet::client::{Client, ClientEvent, ClientOptions, ClientState};
use neonet::proto::types::{EntityId, EntityKind, ReqId};
use neonet::tls::{Fingerprint, Trust};

/// neonet terminal chat.
#[derive(Debug, Parser)]
struct Args {
    /// Relay address.
    #[arg(default_value_t = format!("127.0.0.1:{}", neonet::config::DEFAULT_PORT))]
    addr: String,
    /// Display name [default: $USER, else "player"].
    #[arg(long)]
    name: Option<String>,
    /// Pin the relay's certificate from this file (PEM or DER).
    #[arg(long, value_name = "FILE", conflicts_with = "cert_sha256")]
    cert: Option<PathBuf>,
    /// Pin the relay's certificate by its SHA-256 fingerprint (as the relay prints it).
    #[arg(long, value_name = "HEX")]
    cert_sha256: Option<String>,
    /// Development certificate folder to trust when neither --cert nor --cert-sha256 is given.
    #[arg(long, value_name = "DIR", default_value = "certs")]
    cert_dir: PathBuf,
    /// Accept any certificate: the relay is NOT authenticated.
    #[arg(long)]
    danger_accept_any_cert: bool,
    /// TLS server name.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Where the token for each name is kept, to come back as the same user next run [default:
    /// `chat-tokens` beside the trusted certificate: in --cert-dir, or in the --cert file's
    /// folder].
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Keep running after stdin ends.
    #[arg(long)]
    stay: bool,
}

/// How long to wait for our last messages to be acknowledged after stdin ends.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Frame period of the event loop.
const FRAME: Duration = Duration::from_millis(10);

#[path = "chat/input.rs"]
mod input;
#[path = "chat/tokens.rs"]
mod tokens;

use input::Input;
use tokens::TokenFile;

fn player_name(client: &Client, id: EntityId) -> Option<String> {
    client.with_world(|w| {
        let e = w.entities.get(&id)?;
        (e.kind == EntityKind::Player).then(|| {
            e.props
                .iter()
                .find(|(k, _)| k == "name")
                .map(|(_, v)| String::from_utf8_lossy(&v.0).into_owned())
                .unwrap_or_default()
        })
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let trust = if args.danger_accept_any_cert {
        Trust::DangerAcceptAnyCert
    } else if let Some(hex) = &args.cert_sha256 {
        Trust::Sha256(hex.parse::<Fingerprint>()?)
    } else if let Some(path) = &args.cert {
        Trust::CertFile(path.clone())
    } else {
        Trust::DevCertDir(args.cert_dir.clone())
    };
    let name = args
        .name
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "player".into());
    let token_file = TokenFile::new(args.token_file.clone().unwrap_or_else(|| {
        match &args.cert {
            Some(cert) => cert.parent().unwrap_or(std::path::Path::new("")),
            None => args.cert_dir.as_path(),
        }
        .join(tokens::TOKEN_FILE_NAME)
    }));
    eprintln!("* connecting to {} as {name}…", args.addr);
    let joined = tokens::join(
        args.addr.as_str(),
        ClientOptions {
            name: name.clone(),
            trust,
            server_name: args.server_name.clone(),
            ..ClientOptions::default()
        },
        &token_file,
    )
    .with_context(|| format!("connecting to {}", args.addr))?;
    let client = joined.client;
    println!("* connected to {}", client.remote_addr());
    if let Some(why) = &joined.token_refused {
        println!("* the relay refused the token kept for {name} ({why}): joining as a new user");
    }
    let user = client
        .user()
        .map_or_else(|| "?".into(), |u| u.0.to_string());
    match &joined.keep_error {
        None => println!(
            "* joined as {name} (user {user}); token kept in {}",
            token_file.path().display()
        ),
        Some(e) => println!(
            "* joined as {name} (user {user}); the token could not be kept in {} ({e}): the next run is a new user",
            token_file.path().display()
        ),
    }

    let me = client.player();
    let mut names: HashMap<EntityId, String> = client.world().player_names().into_iter().collect();
    let others: Vec<&str> = names
        .iter()
        .filter(|(id, _)| Some(**id) != me)
        .map(|(_, n)| n.as_str())
        .collect();
    if others.is_empty() {
        println!("* nobody else is here");
    } else {
        println!("* here: {}", others.join(", "));
    }
    for m in client.world().chat {
        println!("<{}> {}", m.from_name, m.body);
    }
    std::io::stdout().flush().ok();

    let (lines_tx, lines_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    // Requests not answered yet: the command's words, or `None` for a chat message.
    let mut pending: HashMap<ReqId, Option<Vec<String>>> = HashMap::new();
    // Players shown as having lost their connection (their `lost` field is set).
    let mut lost: HashSet<EntityId> = HashSet::new();
    let mut eof_at: Option<Instant> = None;
    loop {
        while let Some(ev) = client.poll_event() {
            match ev {
                ClientEvent::Joined { .. } => {
                    // Only after a reconnection: the first join was reported above.
                    println!("* reconnected as a new session (the old one had expired)");
                    names = client.world().player_names().into_iter().collect();
                }
                ClientEvent::Reconnecting {
                    attempt,
                    next_try,
                    reason,
                    detail,
                } => {
                    let wait = next_try.saturating_since(client.core_now());
                    println!(
                        "* connection lost ({reason}: {detail}); reconnecting, attempt {attempt} in {:.1} s (what you type is sent once back)",
                        wait.as_secs_f64()
                    );
                }
                ClientEvent::Resumed { .. } => println!("* reconnected: same session, nothing lost"),
                ClientEvent::Offline { reason, detail } => println!(
                    "* offline: gave up reconnecting ({reason}: {detail}); type anything to try again"
                ),
                ClientEvent::Chat(m) => println!("<{}> {}", m.from_name, m.body),
                ClientEvent::ChatCleared => println!("* chat cleared"),
                ClientEvent::EntityAdded(id) => {
                    if let Some(n) = player_name(&client, id) {
                        println!("* {n} joined");
                        names.insert(id, n);
                    }
                }
                ClientEvent::EntityModified(id) => {
                    let is_lost = client.world().entities.get(&id).is_some_and(|e| {
                        e.props.iter().any(|(k, _)| k == neonet::proto::server::LOST_PROP)
                    });
                    if is_lost != lost.contains(&id) {
                        let n = names.get(&id).cloned().unwrap_or_else(|| "?".into());
                        if is_lost {
                            lost.insert(id);
                            println!("* {n} lost connection");
                        } else {
                            lost.remove(&id);
                            println!("* {n} is back");
                        }
                    }
                    if let Some(n) = player_name(&client, id) {
                        if names.get(&id) != Some(&n) {
                            println!("* {} is now {n}", names.get(&id).map_or("?", |s| s));
                            names.insert(id, n);
                        }
                    }
                }
                ClientEvent::EntityRemoved(id) => {
                    if let Some(n) = names.remove(&id) {
                        println!("* {n} left");
                    }
                }
                ClientEvent::Acked(req) => {
                    pending.remove(&req);
                }
                ClientEvent::Refused { req, reason } => {
                    let sent = pending.remove(&req).flatten();
                    println!("{}", input::refused(sent.as_deref(), reason));
                }
                ClientEvent::RankModified { user, rank } => {
                    println!("{}", input::rank_changed(client.user(), user, rank));
                }
                ClientEvent::CommandReply { text, .. } => {
                    for line in text.lines() {
                        println!("* {line}");
                    }
                }
                ClientEvent::Disconnected { reason, detail } => {
                    println!("* closed: {reason} ({detail})");
                    return Ok(());
                }
                _ => {}
            }
        }
        std::io::stdout().flush().ok();
        loop {
            match lines_rx.try_recv() {
                Ok(line) => {
                    if matches!(client.state(), ClientState::Offline { .. }) {
                        client.reconnect_now();
                    }
                    let (req, command) = match input::parse(&line) {
                        Input::Empty => continue,
                        Input::Quit => {
                            client.close();
                            return Ok(());
                        }
                        Input::Help => {
                            println!("{}", input::HELP);
                            continue;
                        }
                        Input::Usage(usage) => {
                            println!("* usage: {usage}");
                            continue;
                        }
                        Input::Command(words) => (client.send_command(words.clone()), Some(words)),
                        Input::Chat(body) => (client.send_chat(body), None),
                    };
                    match req {
                        Ok(req) => {
                            pending.insert(req, command);
                        }
                        Err(e) => println!("* {e}"),
                    }
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    if args.stay {
                        break;
                    }
                    let at = *eof_at.get_or_insert_with(Instant::now);
                    if pending.is_empty() || at.elapsed() > DRAIN_TIMEOUT {
                        client.close();
                        return Ok(());
                    }
                    break;
                }
            }
        }
        std::thread::sleep(FRAME);
    }
}
