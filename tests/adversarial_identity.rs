//! Identity and moderation under attack, over real QUIC: every bad token kind refused with its
//! own reason (the close detail the client sees); guessing the admin code locked out per
//! address and across reconnects while two honest clients keep chatting and moving and lose
//! nothing acknowledged; kick, mute, ban, unban, rank and revoke working from the typed client
//! methods and persisting across a relay restart (redb on disk).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::{expect, TestRelay, WAIT};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use neonet::auth::JwtTokens;
use neonet::client::{Client, ClientEvent, ConnectError};
use neonet::proto::predict::CharacterInput;
use neonet::proto::server::admin_code::ADMIN_CODE_FREE_FAILURES_PER_ADDR;
use neonet::proto::server::{Authenticator, TokenGrant, BACKEND_USER_ID_MIN};
use neonet::proto::types::{Rank, ReqId, UserId};
use neonet::proto::wire::msg::{CloseReason, Refusal};
use neonet::relay::RelayHooks;

const ADMIN_CODE: &str = "correct-horse-battery-staple";

/// Every log line of this test binary, at trace level for neonet's own crates, so a test can
/// check what the relay logs.
static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogSink;

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber (before any relay starts: the first subscriber wins).
fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "neonet=trace,neonet_proto=trace",
            ))
            .with_ansi(false)
            .with_writer(|| LogSink)
            .init();
    });
}

fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}
/// The backend's shared HS256 secret in these tests (32 bytes, the minimum).
const BACKEND_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token signed with the relay's own key (as `neonet-relay token` mints them).
fn mint(data_dir: &Path, user: u64, name: &str, rank: Option<Rank>, iat: u64, exp: u64) -> String {
    JwtTokens::load_or_create(data_dir)
        .unwrap()
        .issue(&TokenGrant {
            user: UserId(user),
            name: Some(name.into()),
            rank,
            issued_at_s: iat,
            expires_at_s: exp,
            generation: None,
        })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWT with `header` and `claims` (JSON) signed by `sign` (or unsigned).
fn raw_jwt(header: &str, claims: &str, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.as_bytes()),
        b64(claims.as_bytes()),
        b64(sig)
    )
}

fn hs256(kid: Option<&str>, secret: &[u8], claims: serde_json::Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// Joins with `token`, expecting a refusal; returns its reason and detail.
fn refused(relay: &TestRelay, token: &str) -> (CloseReason, String) {
    let mut o = relay.options("x");
    o.token = Some(token.into());
    match Client::connect(relay.addr, o) {
        Err(ConnectError::Refused { reason, detail }) => (reason, detail),
        Ok(_) => panic!("joined with a bad token: {token}"),
        Err(e) => panic!("expected a refusal, got {e}"),
    }
}

fn join_with(relay: &TestRelay, name: &str, token: Option<String>) -> Client {
    let mut o = relay.options(name);
    o.token = token;
    Client::connect(relay.addr, o).expect("joins")
}

/// Waits for the answer to `req`: `Ok` on `Acked`, the refusal otherwise.
fn answer(c: &Client, req: ReqId) -> Result<(), Refusal> {
    match expect(
        c,
        "an answer",
        |e| matches!(e, ClientEvent::Acked(r) | ClientEvent::Refused { req: r, .. } if *r == req),
    ) {
        ClientEvent::Acked(_) => Ok(()),
        ClientEvent::Refused { reason, .. } => Err(reason),
        _ => unreachable!(),
    }
}

fn disconnected(c: &Client) -> (CloseReason, String) {
    match expect(c, "the close", |e| {
        matches!(e, ClientEvent::Disconnected { .. })
    }) {
        ClientEvent::Disconnected { reason, detail } => (reason, detail),
        _ => unreachable!(),
    }
}

#[test]
fn every_bad_token_kind_is_refused_with_its_own_reason() {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("backend.secret");
    std::fs::write(&secret_file, BACKEND_SECRET).unwrap();
    let relay = TestRelay::start_config(
        |c| {
            c.backend_key_path = Some(secret_file.clone());
            c.backend_key_alg = "HS256".into();
            c.backend_key_id = Some("game-backend".into());
            c.limits = neonet::limits::LimitsSection::for_load();
        },
        RelayHooks::default(),
    );
    let data = relay.dir.path().join("data");
    let now = now_s();
    let kid = JwtTokens::load_or_create(&data)
        .unwrap()
        .key_id()
        .to_string();
    let good = mint(&data, 7, "ann", None, now, now + 3600);
    let claims = |sub: u64| serde_json::json!({ "sub": sub.to_string(), "name": "pat", "iat": now, "exp": now + 3600 });
    let payload = good.split('.').nth(1).unwrap().to_string();
    // One base64url character in the middle of the signature changed: still well-formed.
    let sig_at = good.rfind('.').unwrap() + 10;
    let mut bad_sig = good.clone();
    let flipped = if &good[sig_at..=sig_at] == "A" {
        "B"
    } else {
        "A"
    };
    bad_sig.replace_range(sig_at..=sig_at, flipped);

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            mint(&data, 7, "ann", None, now - 7200, now - 3600),
            "token expired",
        ),
        (
            "not yet valid",
            mint(&data, 7, "ann", None, now + 7200, now + 9000),
            "token not yet valid",
        ),
        ("wrongly signed", bad_sig, "token refused: bad signature"),
        (
            "unknown key",
            raw_jwt(r#"{"alg":"EdDSA","kid":"stolen-key"}"#, "{}", b"sig"),
            "token refused: unknown signing key \"stolen-key\"",
        ),
        (
            "alg none",
            format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#)),
            "token refused: unsigned (alg none)",
        ),
        (
            // Key confusion: an HMAC token under the relay's Ed25519 key id.
            "HS256 under the relay's key id",
            hs256(Some(&kid), b"anything-anyone-could-pick-000000", claims(7)),
            "token refused: algorithm HS256 not allowed for its key",
        ),
        (
            "backend secret wrong",
            hs256(
                Some("game-backend"),
                b"not-the-backend-secret-000000000",
                claims(BACKEND_USER_ID_MIN),
            ),
            "token refused: bad signature",
        ),
        (
            "backend naming a relay user id",
            hs256(Some("game-backend"), BACKEND_SECRET, claims(7)),
            "token refused: user id outside the backend's range",
        ),
        (
            "not a JWT",
            "hello".into(),
            "token malformed: not three dot-separated parts",
        ),
    ];
    for (what, token, detail) in cases {
        assert_eq!(
            refused(&relay, &token),
            (CloseReason::AuthFailed, detail.to_string()),
            "{what}"
        );
    }

    // The good ones: the relay's minted token creates its user with the vouched name; the
    // backend's brings its player in with its name and rank claim.
    let ann = join_with(&relay, "whoever", Some(good));
    assert_eq!(ann.user(), Some(UserId(7)));
    let mut c = claims(BACKEND_USER_ID_MIN + 5);
    c["rank"] = "builder".into();
    let pat = join_with(
        &relay,
        "whoever",
        Some(hs256(Some("game-backend"), BACKEND_SECRET, c)),
    );
    assert_eq!(pat.user(), Some(UserId(BACKEND_USER_ID_MIN + 5)));
    assert_eq!(pat.rank(), Rank::Builder);
    // The snapshot's token is a fresh one of the relay's own, which works next time.
    let fresh = pat.token().unwrap();
    pat.close();
    assert_eq!(
        join_with(&relay, "again", Some(fresh)).user(),
        Some(UserId(BACKEND_USER_ID_MIN + 5))
    );
    ann.close();
}

/// Two honest clients chat and walk; each keeps the chat lines the relay acknowledged.
struct Honest {
    client: Client,
    name: &'static str,
    acked: Vec<String>,
    /// Every chat line heard (events are consumed while waiting for answers).
    heard: Vec<String>,
    sent: u32,
}

impl Honest {
    fn new(relay: &TestRelay, name: &'static str) -> Honest {
        let client = relay.client(name);
        client.set_input(CharacterInput {
            move_z: 100,
            ..CharacterInput::default()
        });
        Honest {
            client,
            name,
            acked: Vec::new(),
            heard: Vec::new(),
            sent: 0,
        }
    }

    fn say(&mut self) {
        self.sent += 1;
        let body = format!("{} line {}", self.name, self.sent);
        let req = self.client.send_chat(body.clone()).unwrap();
        let heard = &mut self.heard;
        let ev = self.client.wait_for(WAIT, |e| match e {
            ClientEvent::Chat(m) => {
                heard.push(m.body.clone());
                false
            }
            ClientEvent::Acked(r) | ClientEvent::Refused { req: r, .. } => *r == req,
            _ => false,
        });
        if matches!(ev, Ok(ClientEvent::Acked(_))) {
            self.acked.push(body);
        }
    }
}

#[test]
fn admin_code_guessing_is_locked_out_while_honest_clients_keep_chatting_and_moving() {
    capture_logs();
    let relay = TestRelay::start_config(
        |c| {
            c.admin_code = Some(ADMIN_CODE.into());
            // Honest clients here talk faster than people; tests/adversarial_limits.rs proves
            // the rate limits by kind. The admin code's lockout is its own and stays.
            c.limits = neonet::limits::LimitsSection::for_load();
        },
        RelayHooks::default(),
    );
    let mut ada = Honest::new(&relay, "ada");
    let mut bob = Honest::new(&relay, "bob");
    let bob_player = bob.client.player().unwrap();
    let seen_by_ada = |ada: &Honest| {
        ada.client
            .with_world(|w| w.entities.get(&bob_player).map(|e| e.transform.position))
    };
    let start = seen_by_ada(&ada);

    // The attacker guesses from the same address, reconnecting between tries.
    let mut compared = 0;
    let mut locked = 0;
    for round in 0..4 {
        let attacker = relay.client(&format!("guess{round}"));
        for i in 0..3 {
            let req = attacker
                .send_command(vec!["admin".into(), format!("guess-{round}-{i}")])
                .unwrap();
            match answer(&attacker, req) {
                Err(Refusal::Rank) => compared += 1,
                Err(Refusal::RateLimited) => locked += 1,
                other => panic!("unexpected answer {other:?}"),
            }
            ada.say();
            bob.say();
        }
        attacker.close();
    }
    assert_eq!(
        compared,
        ADMIN_CODE_FREE_FAILURES_PER_ADDR + 1,
        "codes compared before the lockout"
    );
    assert_eq!(locked, 12 - compared, "every later try refused unseen");
    // Locked out: on a fresh connection even the right code is not compared.
    let attacker = relay.client("guess-right");
    let req = attacker
        .send_command(vec!["admin".into(), ADMIN_CODE.into()])
        .unwrap();
    assert_eq!(answer(&attacker, req), Err(Refusal::RateLimited));
    assert_eq!(attacker.rank(), Rank::Visitor);
    // `/admin CODE` typed as chat is refused and never relayed.
    let req = attacker.send_chat(format!("/admin {ADMIN_CODE}")).unwrap();
    assert_eq!(answer(&attacker, req), Err(Refusal::Invalid));
    attacker.close();

    // Nothing acknowledged was lost: each honest client heard every acknowledged line of the
    // other, and no code reached it.
    let acked = |h: &Honest| h.acked.iter().cloned().collect::<BTreeSet<String>>();
    let (ada_acked, bob_acked) = (acked(&ada), acked(&bob));
    for (listener, want) in [(&mut ada, bob_acked), (&mut bob, ada_acked)] {
        assert_eq!(want.len(), 12, "every honest line was acknowledged");
        let mut want = want;
        for line in &listener.heard {
            want.remove(line);
        }
        while !want.is_empty() {
            match listener
                .client
                .wait_for(WAIT, |e| matches!(e, ClientEvent::Chat(_)))
            {
                Ok(ClientEvent::Chat(m)) => {
                    listener.heard.push(m.body.clone());
                    want.remove(&m.body);
                }
                other => panic!("{} missed {want:?}: {other:?}", listener.name),
            }
        }
        assert!(
            listener.heard.iter().all(|l| !l.contains(ADMIN_CODE)),
            "the code was relayed"
        );
    }
    // And bob walked the whole time.
    let end = ada
        .client
        .latest_transform(bob_player)
        .map(|(_, t)| t.position);
    assert!(
        end.is_some() && end != start,
        "ada saw bob walk: {start:?} → {end:?}"
    );
    // The relay logged the refusals (so the logs were captured) but never the code.
    let logs = logs();
    assert!(logs.contains("refused"), "logs captured");
    assert!(
        !logs.contains(ADMIN_CODE),
        "the admin code reached the logs"
    );
}

/// A relay persisting to `dir`, started again on the same files.
fn persistent(dir: &Path) -> TestRelay {
    let (data, certs) = (dir.join("data"), dir.join("certs"));
    TestRelay::start_config(
        move |c| {
            c.persist = true;
            c.data_dir = data;
            c.cert_dir = certs;
            c.limits = neonet::limits::LimitsSection::for_load();
        },
        RelayHooks::default(),
    )
}

#[test]
fn moderation_works_from_the_client_library_and_persists_across_a_restart() {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let now = now_s();
    // The first admin comes from a minted admin token.
    let root_token = mint(&data, 1, "root", Some(Rank::Admin), now, now + 86_400);
    let relay = persistent(dir.path());
    let root = join_with(&relay, "x", Some(root_token.clone()));
    assert_eq!(root.rank(), Rank::Admin);
    let bob = relay.client("bob");
    let eve = relay.client("eve");
    let sam = relay.client("sam");
    let (bob_token, eve_token, sam_token) = (
        bob.token().unwrap(),
        eve.token().unwrap(),
        sam.token().unwrap(),
    );

    // A visitor may not moderate; /help says what each rank may do.
    let req = bob.kick("eve", None).unwrap();
    assert_eq!(answer(&bob, req), Err(Refusal::Rank));
    let req = root.help().unwrap();
    let help = match expect(&root, "help", |e| {
        matches!(e, ClientEvent::CommandReply { .. })
    }) {
        ClientEvent::CommandReply { req: r, text } => {
            assert_eq!(r, req);
            text
        }
        _ => unreachable!(),
    };
    assert!(help.contains("/ban") && help.contains("/revoke"), "{help}");

    // Kick: the reason reaches the target.
    let req = root.kick("eve", Some("spamming links")).unwrap();
    assert_eq!(answer(&root, req), Ok(()));
    assert_eq!(
        disconnected(&eve),
        (
            CloseReason::Moderation,
            "kicked by root: spamming links".into()
        )
    );

    // Mute for an hour, rank, ban for a day with a reason, revoke.
    let req = root.mute("bob", Some("1h")).unwrap();
    assert_eq!(answer(&root, req), Ok(()));
    let req = bob.send_chat("can I speak?").unwrap();
    assert_eq!(answer(&bob, req), Err(Refusal::Muted));
    let req = root.set_rank("bob", Rank::Builder).unwrap();
    assert_eq!(answer(&root, req), Ok(()));
    let req = root.ban("eve", Some("1d"), Some("griefing")).unwrap();
    assert_eq!(answer(&root, req), Ok(()));
    let req = root.revoke_tokens("sam").unwrap();
    assert_eq!(answer(&root, req), Ok(()));
    assert_eq!(disconnected(&sam).0, CloseReason::Moderation);
    bob.close();
    root.close();
    relay.shutdown();

    // After a restart every decision holds.
    let relay = persistent(dir.path());
    let bob = join_with(&relay, "bob", Some(bob_token));
    assert_eq!(bob.rank(), Rank::Builder, "rank persisted");
    let req = bob.send_chat("still muted?").unwrap();
    assert_eq!(answer(&bob, req), Err(Refusal::Muted), "mute persisted");
    let (reason, detail) = refused(&relay, &eve_token);
    assert_eq!(reason, CloseReason::AuthFailed);
    assert!(
        detail.starts_with("banned for another") && detail.ends_with(": griefing"),
        "ban persisted with its reason: {detail}"
    );
    assert_eq!(
        refused(&relay, &sam_token),
        (CloseReason::AuthFailed, "token revoked".into()),
        "revocation persisted"
    );
    let root = join_with(&relay, "x", Some(root_token));
    let req = root.unban("eve").unwrap();
    assert_eq!(answer(&root, req), Ok(()));
    let req = root.unmute("bob").unwrap();
    assert_eq!(answer(&root, req), Ok(()));
    let eve = join_with(&relay, "eve", Some(eve_token));
    assert!(eve.user().is_some(), "unbanned");
    let req = bob.send_chat("free").unwrap();
    assert_eq!(answer(&bob, req), Ok(()));
    // A builder may not ban (admin only), nor kick an admin.
    let req = bob.ban("eve", None, None).unwrap();
    assert_eq!(answer(&bob, req), Err(Refusal::Rank));
    let req = bob.kick("root", None).unwrap();
    assert_eq!(answer(&bob, req), Err(Refusal::Rank));
    eve.close();
    bob.close();
    root.close();
    relay.shutdown();
}
