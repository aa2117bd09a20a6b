//! The core's identity and moderation rules, driven directly (no network): token time and
//! revocation checks with their distinct details, the admin code's lockout per address,
//! moderation commands and their rank rules, bans enforced at join, `/help`, the DefaultRank
//! announcement, the token refresh before expiry, and `USERS_MAX` for users a backend's token
//! creates as for tokenless ones.

use std::net::IpAddr;
use std::time::Duration;

use neonet_proto::server::admin_code::ADMIN_CODE_FREE_FAILURES_PER_ADDR;
use neonet_proto::server::{
    ConnId, InsecureTokens, ServerConfig, ServerCore, Transmit, TransportKind, World,
};
use neonet_proto::time::Time;
use neonet_proto::types::*;
use neonet_proto::wire::codec;
use neonet_proto::wire::msg::{
    Channel, ClientMsg, CloseReason, Refusal, ServerMsg, PROTOCOL_VERSION,
};

/// Unix time of the core's `Time::ZERO`, ms: tokens' times are judged against it.
const EPOCH_MS: u64 = 1_700_000_000_000;

struct Harness {
    core: ServerCore,
    now: Time,
    next_conn: u64,
    next_req: u32,
    inboxes: std::collections::BTreeMap<ConnId, Inbox>,
}

/// What one connection received, decoded.
#[derive(Default, Debug)]
struct Inbox {
    msgs: Vec<ServerMsg>,
    closed: Option<(CloseReason, String)>,
}

impl Harness {
    fn new(world: World, config: ServerConfig) -> Harness {
        let config = ServerConfig {
            unix_ms_at_zero: EPOCH_MS,
            admin_code: Some("open-sesame".into()),
            // These tests jump hours ahead: connections stay up without pings.
            idle_timeout: Duration::from_secs(30 * 24 * 3600),
            join_timeout: Duration::from_secs(30 * 24 * 3600),
            // Commands here come faster than a person's; the rate limits by kind are proved in
            // tests/adversarial_limits.rs (the admin code's lockout is its own and stays).
            limits: neonet_proto::server::LimitsConfig::unlimited_rates(),
            ..config
        };
        Harness {
            core: ServerCore::new(config, world, Box::new(InsecureTokens), Time::ZERO),
            now: Time::ZERO,
            next_conn: 1,
            next_req: 1,
            inboxes: Default::default(),
        }
    }

    /// What `conn` received since the last call (other connections' transmits are kept).
    fn drain(&mut self, conn: ConnId) -> Inbox {
        while let Some(t) = self.core.poll_transmit() {
            let inbox = self.inboxes.entry(t.conn()).or_default();
            match t {
                Transmit::Frame { frame, .. } => {
                    inbox.msgs.push(codec::decode_server(&frame[4..]).unwrap())
                }
                Transmit::Close { reason, detail, .. } => inbox.closed = Some((reason, detail)),
                Transmit::Datagram { .. } => {}
            }
        }
        self.inboxes.remove(&conn).unwrap_or_default()
    }

    fn drop_outputs(&mut self) {
        while self.core.poll_transmit().is_some() {}
        self.inboxes.clear();
        while self.core.poll_event().is_some() {}
        while self.core.poll_effect().is_some() {}
    }

    /// Connects from `addr` and says hello; returns the connection and what it got.
    fn join(&mut self, name: &str, token: Option<String>, addr: [u8; 4]) -> (ConnId, Inbox) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.core
            .handle_connect_from(conn, TransportKind::Sim, Some(IpAddr::from(addr)), self.now);
        self.send(
            conn,
            &ClientMsg::Hello {
                protocol_version: PROTOCOL_VERSION,
                name: name.into(),
                token,
            },
        );
        let inbox = self.drain(conn);
        (conn, inbox)
    }

    fn send(&mut self, conn: ConnId, msg: &ClientMsg) {
        let body = codec::encode(msg);
        self.core.handle_frame(conn, msg.channel(), &body, self.now);
    }

    /// Runs `/args` from `conn`; returns its replies' text and the answer.
    fn command(&mut self, conn: ConnId, args: &[&str]) -> (String, Result<(), Refusal>, Inbox) {
        let req = ReqId(self.next_req);
        self.next_req += 1;
        self.send(
            conn,
            &ClientMsg::Command {
                req,
                args: args.iter().map(|s| s.to_string()).collect(),
            },
        );
        let inbox = self.drain(conn);
        let mut text = String::new();
        let mut answer = None;
        for m in &inbox.msgs {
            match m {
                ServerMsg::CommandReply { req: r, text: t } if *r == req => text.push_str(t),
                ServerMsg::Ack { req: r } if *r == req => answer = Some(Ok(())),
                ServerMsg::Refused { req: r, reason } if *r == req => answer = Some(Err(*reason)),
                _ => {}
            }
        }
        (text, answer.expect("every command is answered"), inbox)
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.core.handle_timeout(self.now);
    }
}

fn user(id: u64, name: &str, rank: Rank) -> User {
    User {
        id: UserId(id),
        name: name.into(),
        rank,
        muted: false,
        banned: false,
        last_position: None,
        standing: Standing::default(),
    }
}

fn world_with(users: &[User]) -> World {
    let mut w = World::default();
    for u in users {
        w.users.insert(u.id, u.clone());
    }
    w
}

fn token(id: u64) -> Option<String> {
    Some(format!("user:{id}"))
}

fn closed_with(inbox: &Inbox) -> (CloseReason, String) {
    inbox.closed.clone().expect("closed")
}

#[test]
fn expired_not_yet_valid_unknown_and_revoked_tokens_are_refused_with_distinct_details() {
    let mut revoked = user(3, "old", Rank::Visitor);
    revoked.standing.token_generation = 2;
    let mut h = Harness::new(
        world_with(&[user(1, "ann", Rank::Visitor), revoked]),
        ServerConfig::default(),
    );
    let now_s = EPOCH_MS / 1000;
    let cases = [
        (format!("user:1:exp:{}", now_s - 3600), "token expired"),
        (
            format!("user:1:nbf:{}", now_s + 3600),
            "token not yet valid",
        ),
        (
            format!("user:1:iat:{}", now_s + 3600),
            "token not yet valid",
        ),
        ("user:99".to_string(), "token names no user of this world"),
        ("user:3:gen:1".to_string(), "token revoked"),
        ("garbage".to_string(), "token malformed: expected user:N"),
    ];
    for (t, detail) in cases {
        let (_, inbox) = h.join("x", Some(t.clone()), [10, 0, 0, 1]);
        assert_eq!(
            closed_with(&inbox),
            (CloseReason::AuthFailed, detail.to_string()),
            "{t}"
        );
    }
    // Within the leeway, and at the current generation, tokens pass.
    let (_, inbox) = h.join(
        "x",
        Some(format!("user:1:exp:{}", now_s - 30)),
        [10, 0, 0, 1],
    );
    assert!(inbox.closed.is_none(), "{inbox:?}");
    let (_, inbox) = h.join("x", Some("user:3:gen:2".into()), [10, 0, 0, 1]);
    assert!(inbox.closed.is_none(), "{inbox:?}");
}

#[test]
fn admin_code_guessing_is_locked_out_per_address_across_reconnects() {
    let mut h = Harness::new(World::default(), ServerConfig::default());
    let attacker = [192, 0, 2, 7];
    let mut refusals = Vec::new();
    for attempt in 0..(ADMIN_CODE_FREE_FAILURES_PER_ADDR + 3) {
        // A fresh connection (and user) every attempt: the count is the address's.
        let (c, _) = h.join(&format!("guess{attempt}"), None, attacker);
        let (_, answer, _) = h.command(c, &["admin", &format!("guess-{attempt}")]);
        refusals.push(answer.unwrap_err());
        h.core.handle_disconnect(c, h.now);
        h.drop_outputs();
    }
    let free = ADMIN_CODE_FREE_FAILURES_PER_ADDR as usize + 1;
    assert!(
        refusals[..free].iter().all(|r| *r == Refusal::Rank),
        "{refusals:?}"
    );
    assert!(
        refusals[free..].iter().all(|r| *r == Refusal::RateLimited),
        "{refusals:?}"
    );
    // Locked out: even the right code is not compared.
    let (c, _) = h.join("guess-right", None, attacker);
    let (text, answer, _) = h.command(c, &["admin", "open-sesame"]);
    assert_eq!(answer, Err(Refusal::RateLimited));
    assert!(text.contains("too many"), "{text}");
    // Another address with the right code is not held back.
    let (honest, _) = h.join("owner", None, [198, 51, 100, 1]);
    let (_, answer, inbox) = h.command(honest, &["admin", "open-sesame"]);
    assert_eq!(answer, Ok(()));
    assert!(inbox.msgs.iter().any(|m| matches!(
        m,
        ServerMsg::RankModified {
            rank: Rank::Admin,
            ..
        }
    )));
    // After the lockout the attacker may try again (and the code works).
    h.advance(Duration::from_secs(3600));
    let (_, answer, _) = h.command(c, &["admin", "open-sesame"]);
    assert_eq!(answer, Ok(()));
}

#[test]
fn admin_code_typed_as_chat_is_refused_and_never_relayed() {
    let mut h = Harness::new(World::default(), ServerConfig::default());
    let (a, _) = h.join("a", None, [10, 0, 0, 1]);
    let (b, _) = h.join("b", None, [10, 0, 0, 2]);
    h.drop_outputs();
    h.send(
        a,
        &ClientMsg::Chat {
            req: ReqId(1),
            body: "/admin open-sesame".into(),
        },
    );
    let got_a = h.drain(a);
    assert!(got_a.msgs.iter().any(|m| matches!(
        m,
        ServerMsg::Refused {
            reason: Refusal::Invalid,
            ..
        }
    )));
    let mut leaked = format!("{:?}", h.drain(b)).contains("open-sesame");
    while let Some(e) = h.core.poll_event() {
        leaked |= format!("{e:?}").contains("open-sesame");
    }
    assert!(!leaked, "the code reached another client or an event");
    let _ = b;
}

#[test]
fn kick_mute_ban_unban_rank_follow_rank_rules_and_bans_hold_at_join() {
    let mut h = Harness::new(
        world_with(&[
            user(1, "root", Rank::Admin),
            user(2, "bob", Rank::Builder),
            user(3, "vic", Rank::Visitor),
            user(4, "eve", Rank::Visitor),
        ]),
        ServerConfig::default(),
    );
    let (root, _) = h.join("root", token(1), [10, 0, 0, 1]);
    let (bob, _) = h.join("bob", token(2), [10, 0, 0, 2]);
    let (vic, _) = h.join("vic", token(3), [10, 0, 0, 3]);
    let (eve, _) = h.join("eve", token(4), [10, 0, 0, 4]);
    h.drop_outputs();

    // A visitor may not kick; a builder may not kick an admin or ban anyone.
    assert_eq!(h.command(vic, &["kick", "eve"]).1, Err(Refusal::Rank));
    assert_eq!(h.command(bob, &["kick", "root"]).1, Err(Refusal::Rank));
    assert_eq!(h.command(bob, &["ban", "vic"]).1, Err(Refusal::Rank));
    assert_eq!(
        h.command(bob, &["kick", "nobody"]).1,
        Err(Refusal::NotFound)
    );

    // Kick with a reason: the target sees it.
    assert_eq!(
        h.command(bob, &["kick", "eve", "spamming", "links"]).1,
        Ok(())
    );
    let kicked = h.drain(eve);
    assert_eq!(
        closed_with(&kicked),
        (
            CloseReason::Moderation,
            "kicked by bob: spamming links".into()
        )
    );

    // Timed mute: chat refused until it ends.
    assert_eq!(h.command(bob, &["mute", "vic", "10m"]).1, Ok(()));
    h.send(
        vic,
        &ClientMsg::Chat {
            req: ReqId(900),
            body: "hi".into(),
        },
    );
    assert!(h.drain(vic).msgs.iter().any(|m| matches!(
        m,
        ServerMsg::Refused {
            reason: Refusal::Muted,
            ..
        }
    )));
    h.advance(Duration::from_secs(601));
    h.send(
        vic,
        &ClientMsg::Chat {
            req: ReqId(901),
            body: "free".into(),
        },
    );
    assert!(h
        .drain(vic)
        .msgs
        .iter()
        .any(|m| matches!(m, ServerMsg::Ack { req: ReqId(901) })));

    // Ban for an hour with a reason: closed with it, refused at join with it, then admitted.
    assert_eq!(h.command(root, &["ban", "vic", "1h", "griefing"]).1, Ok(()));
    assert_eq!(
        closed_with(&h.drain(vic)),
        (
            CloseReason::Moderation,
            "banned by root for 1h: griefing".into()
        )
    );
    let (_, again) = h.join("vic", token(3), [10, 0, 0, 3]);
    let (reason, detail) = closed_with(&again);
    assert_eq!(reason, CloseReason::AuthFailed);
    assert!(
        detail.starts_with("banned for another") && detail.ends_with(": griefing"),
        "{detail}"
    );
    h.advance(Duration::from_secs(3601));
    let (_, again) = h.join("vic", token(3), [10, 0, 0, 3]);
    assert!(again.closed.is_none(), "a ban past its end no longer holds");

    // Ban for good of an offline user by id, then unban.
    assert_eq!(h.command(root, &["ban", "#4"]).1, Ok(()));
    assert_eq!(
        closed_with(&h.join("eve", token(4), [10, 0, 0, 4]).1).1,
        "banned"
    );
    assert_eq!(h.command(root, &["unban", "eve"]).1, Ok(()));
    assert!(h.join("eve", token(4), [10, 0, 0, 4]).1.closed.is_none());

    // Rank: admin only; announced to everyone.
    assert_eq!(
        h.command(bob, &["rank", "eve", "builder"]).1,
        Err(Refusal::Rank)
    );
    let (_, answer, inbox) = h.command(root, &["rank", "eve", "builder"]);
    assert_eq!(answer, Ok(()));
    assert!(inbox.msgs.iter().any(|m| matches!(
        m,
        ServerMsg::RankModified {
            user: UserId(4),
            rank: Rank::Builder
        }
    )));
    assert_eq!(h.core.world().users[&UserId(4)].rank, Rank::Builder);
    assert_eq!(
        h.command(root, &["rank", "eve", "king"]).1,
        Err(Refusal::Invalid)
    );
}

#[test]
fn help_lists_what_the_callers_rank_may_do() {
    let mut h = Harness::new(
        world_with(&[user(1, "root", Rank::Admin), user(2, "bob", Rank::Builder)]),
        ServerConfig::default(),
    );
    let (v, _) = h.join("vis", None, [10, 0, 0, 9]);
    let (b, _) = h.join("bob", token(2), [10, 0, 0, 2]);
    let (a, _) = h.join("root", token(1), [10, 0, 0, 1]);
    let (visitor, answer, _) = h.command(v, &["help"]);
    assert_eq!(answer, Ok(()));
    assert!(visitor.contains("/name") && !visitor.contains("/kick") && !visitor.contains("/ban"));
    let (builder, _, _) = h.command(b, &["help"]);
    assert!(builder.contains("/kick") && builder.contains("/mute") && !builder.contains("/ban"));
    let (admin, _, _) = h.command(a, &["help"]);
    assert!(admin.contains("/ban") && admin.contains("/rank") && admin.contains("/revoke"));
}

#[test]
fn revoking_refuses_every_older_token_and_disconnects_the_user() {
    let mut h = Harness::new(
        world_with(&[user(1, "root", Rank::Admin), user(2, "sam", Rank::Visitor)]),
        ServerConfig::default(),
    );
    let (root, _) = h.join("root", token(1), [10, 0, 0, 1]);
    let (sam, got) = h.join("sam", token(2), [10, 0, 0, 2]);
    let issued = got
        .msgs
        .iter()
        .find_map(|m| match m {
            ServerMsg::Snapshot(s) => Some(s.auth_token.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(h.command(root, &["revoke", "sam"]).1, Ok(()));
    assert_eq!(closed_with(&h.drain(sam)).0, CloseReason::Moderation);
    // The snapshot's token carried generation 0: refused now. (The plain `user:2` form has no
    // generation and was issued at 0, before the revocation: refused too.)
    for t in [issued, "user:2".into()] {
        let (_, inbox) = h.join("sam", Some(t.clone()), [10, 0, 0, 2]);
        assert_eq!(
            closed_with(&inbox),
            (CloseReason::AuthFailed, "token revoked".into()),
            "{t}"
        );
    }
    let (_, inbox) = h.join("sam", Some("user:2:gen:1".into()), [10, 0, 0, 2]);
    assert!(inbox.closed.is_none());
}

#[test]
fn a_default_rank_change_announces_every_changed_rank() {
    let mut h = Harness::new(
        world_with(&[user(1, "root", Rank::Admin)]),
        ServerConfig::default(),
    );
    let (root, _) = h.join("root", token(1), [10, 0, 0, 1]);
    let (v, _) = h.join("vis", None, [10, 0, 0, 2]);
    h.drop_outputs();
    h.send(
        root,
        &ClientMsg::SettingsModify {
            req: ReqId(5),
            setting: Setting::DefaultRank(Rank::Builder),
        },
    );
    let seen = h.drain(v);
    let vis_user = h.core.session_of(v).unwrap().user;
    assert!(seen.msgs.iter().any(|m| matches!(
        m,
        ServerMsg::RankModified { user, rank: Rank::Builder } if *user == vis_user
    )));
    assert!(
        !seen.msgs.iter().any(|m| matches!(
            m,
            ServerMsg::RankModified {
                user: UserId(1),
                ..
            }
        )),
        "the admin's effective rank did not change"
    );
}

#[test]
fn a_session_gets_a_fresh_token_before_its_token_expires() {
    let mut h = Harness::new(
        World::default(),
        ServerConfig {
            token_ttl: Duration::from_secs(600),
            ..ServerConfig::default()
        },
    );
    let (c, _) = h.join("long", None, [10, 0, 0, 1]);
    h.advance(Duration::from_secs(299));
    assert!(!h
        .drain(c)
        .msgs
        .iter()
        .any(|m| matches!(m, ServerMsg::AuthToken { .. })));
    h.advance(Duration::from_secs(2));
    let refreshed = h.drain(c);
    assert_eq!(
        refreshed
            .msgs
            .iter()
            .filter(|m| matches!(m, ServerMsg::AuthToken { .. }))
            .count(),
        1,
        "one fresh token half-way through the ttl"
    );
    assert_eq!(
        ServerMsg::AuthToken { token: "t".into() }.channel(),
        Channel::Control
    );
}

#[test]
fn spawn_commands_are_always_answered() {
    let mut h = Harness::new(World::default(), ServerConfig::default());
    let (c, _) = h.join("v", None, [10, 0, 0, 1]);
    assert_eq!(h.command(c, &["spawn", "set"]).1, Err(Refusal::Rank));
    assert_eq!(h.command(c, &["spawn"]).1, Err(Refusal::UnknownCommand));
}

/// A backend's tokens, as the relay's JWT verifier reports them: `backend:N` vouches for user
/// N named `player N`; anything else as [`InsecureTokens`].
struct BackendTokens;

impl neonet_proto::server::Authenticator for BackendTokens {
    fn verify(
        &self,
        token: &str,
    ) -> Result<neonet_proto::server::TokenClaims, neonet_proto::server::TokenError> {
        use neonet_proto::server::{TokenClaims, TokenIssuer};
        match token.strip_prefix("backend:").and_then(|n| n.parse().ok()) {
            Some(n) => Ok(TokenClaims {
                user: UserId(n),
                name: Some(format!("player {n}")),
                rank: None,
                issued_at_s: EPOCH_MS / 1000,
                not_before_s: None,
                expires_at_s: Some(EPOCH_MS / 1000 + 3600),
                generation: None,
                issuer: TokenIssuer::Backend,
            }),
            None => InsecureTokens.verify(token),
        }
    }

    fn issue(&self, grant: &neonet_proto::server::TokenGrant) -> String {
        InsecureTokens.issue(grant)
    }
}

#[test]
fn users_a_backend_token_creates_count_against_users_max() {
    use neonet_proto::server::BACKEND_USER_ID_MIN;
    use neonet_proto::wire::limits::USERS_MAX;
    // A world one user short of its limit.
    let mut world = World::default();
    for id in 1..USERS_MAX as u64 {
        world.users.insert(UserId(id), user(id, "u", Rank::Visitor));
    }
    let config = ServerConfig::default();
    let mut h = Harness {
        core: ServerCore::new(
            ServerConfig {
                unix_ms_at_zero: EPOCH_MS,
                limits: neonet_proto::server::LimitsConfig::unlimited_rates(),
                ..config
            },
            world,
            Box::new(BackendTokens),
            Time::ZERO,
        ),
        now: Time::ZERO,
        next_conn: 1,
        next_req: 1,
        inboxes: Default::default(),
    };
    // The backend's first new player is the world's last user.
    let first = BACKEND_USER_ID_MIN;
    let (c, inbox) = h.join("x", Some(format!("backend:{first}")), [10, 0, 0, 1]);
    assert!(inbox.closed.is_none(), "{inbox:?}");
    assert_eq!(h.core.world().users.len(), USERS_MAX);
    h.send(c, &ClientMsg::Goodbye);
    h.drop_outputs();
    // Its next one is refused like a tokenless join, and neither is stored.
    let limit = (
        CloseReason::PlayerLimit,
        format!("this world knows {USERS_MAX} users"),
    );
    let (_, inbox) = h.join("x", Some(format!("backend:{}", first + 1)), [10, 0, 0, 2]);
    assert_eq!(closed_with(&inbox), limit);
    let (_, inbox) = h.join("y", None, [10, 0, 0, 3]);
    assert_eq!(
        closed_with(&inbox),
        (
            CloseReason::PlayerLimit,
            format!("this world knows {USERS_MAX} users: join with your token"),
        )
    );
    assert_eq!(h.core.world().users.len(), USERS_MAX);
    // Users the world knows still join with their tokens, the backend's included.
    let (_, inbox) = h.join("x", Some(format!("backend:{first}")), [10, 0, 0, 1]);
    assert!(inbox.closed.is_none(), "{inbox:?}");
    let (_, inbox) = h.join("z", token(7), [10, 0, 0, 4]);
    assert!(inbox.closed.is_none(), "{inbox:?}");
}
