//! The crash test of issue 6: the real `neonet-relay` binary as a child process, clients making
//! many changes over QUIC while every acknowledgement is recorded with what it changed, `kill -9`
//! at seeded random moments over several rounds, then: the database opens cleanly and holds
//! every acknowledged change. Unacknowledged changes may or may not be there ("unknown", never
//! "absent"). The last round stops the relay with SIGTERM instead and checks the same through a
//! reconnecting client.
//!
//! `NEONET_CRASH_SEED` replays a run; `NEONET_CRASH_ROUNDS` changes the number of rounds. Every
//! failure names the seed and the round.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use neonet::client::{Client, ClientEvent, ClientOptions};
use neonet::proto::rng::Rng;
use neonet::proto::types::{
    Blueprint, BlueprintId, BlueprintPatch, Bytes, EntityKind, Rank, ReqId, Setting, Settings,
    Transform, Vec3,
};
use neonet::store::{Change, LoadedWorld, Store, StoreConfig, CHAT_HISTORY_MAX};
use neonet::tls::{Fingerprint, Trust};

/// Overrides the seed.
const SEED_ENV: &str = "NEONET_CRASH_SEED";
/// Overrides the number of rounds.
const ROUNDS_ENV: &str = "NEONET_CRASH_ROUNDS";
/// Rounds by default (the last one ends with SIGTERM): enough kills to land in start-up, in
/// the middle of the clients' burst and between commits, within ~30 s on 2 shared cores.
const ROUNDS_DEFAULT: u32 = 7;
/// Clients changing the world at once.
const CLIENTS: usize = 3;
/// Requests a client keeps in flight: enough to fill the relay's commit batches.
const WINDOW: usize = 16;
/// The blueprint every app instantiates (seeded before the first start).
const CRATE: &str = "crate";
/// Bound on the relay printing its address, and on a client joining.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on a gracefully stopped relay exiting.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// One acknowledged change, as the test recorded it.
#[derive(Clone, Debug)]
enum Done {
    BlueprintAdd(String),
    BlueprintModify {
        id: String,
        version: u32,
    },
    AppAdd(String),
    AppRemove(String),
    /// A world title; the number orders client 0's titles as sent (and so as applied).
    Title(u64),
    Chat(String),
}

/// Everything acknowledged so far, over all rounds.
#[derive(Debug, Default)]
struct Model {
    blueprints: BTreeSet<String>,
    versions: BTreeMap<String, u32>,
    apps: BTreeSet<String>,
    removed: BTreeSet<String>,
    /// Apps whose removal was sent: acknowledged or not, their presence is unknown unless the
    /// removal was acknowledged.
    remove_sent: BTreeSet<String>,
    title: Option<u64>,
    chats: BTreeSet<String>,
    /// Chat ids seen in `Chat` events, by body (to tell a message pushed out of the history).
    chat_ids: BTreeMap<String, u64>,
    /// Ids relayed to clients this round, acknowledged or not: entities (`EntityAdded`, players
    /// and apps alike) and chat messages. Every one must be above every id of earlier rounds:
    /// an id a client has seen is never handed out again, even after a kill -9.
    entity_ids_round: Vec<u32>,
    chat_ids_round: Vec<u64>,
    /// The largest ids seen in earlier rounds.
    entity_id_max: Option<u32>,
    chat_id_max: Option<u64>,
}

impl Model {
    fn record(&mut self, d: Done) {
        match d {
            Done::BlueprintAdd(id) => {
                self.blueprints.insert(id);
            }
            Done::BlueprintModify { id, version } => {
                let v = self.versions.entry(id).or_insert(0);
                *v = (*v).max(version);
            }
            Done::AppAdd(t) => {
                self.apps.insert(t);
            }
            Done::AppRemove(t) => {
                self.removed.insert(t);
            }
            Done::Title(n) => self.title = self.title.max(Some(n)),
            Done::Chat(b) => {
                self.chats.insert(b);
            }
        }
    }

    /// Checks that no id seen this round was seen (or could have been handed out) before, then
    /// makes this round's ids the earlier rounds'.
    fn end_round(&mut self, ctx: &str) {
        for &id in &self.entity_ids_round {
            assert!(
                self.entity_id_max.is_none_or(|max| id > max),
                "{ctx}: entity id {id} handed out again (ids up to {:?} were seen before)",
                self.entity_id_max
            );
        }
        for &id in &self.chat_ids_round {
            assert!(
                self.chat_id_max.is_none_or(|max| id > max),
                "{ctx}: chat id {id} handed out again (ids up to {:?} were seen before)",
                self.chat_id_max
            );
        }
        let entity_max = self.entity_ids_round.drain(..).max();
        self.entity_id_max = self.entity_id_max.max(entity_max);
        let chat_max = self.chat_ids_round.drain(..).max();
        self.chat_id_max = self.chat_id_max.max(chat_max);
    }

    fn total(&self) -> usize {
        self.blueprints.len()
            + self.versions.len()
            + self.apps.len()
            + self.removed.len()
            + self.chats.len()
    }

    /// Checks that `w` holds every acknowledged change.
    fn check(&self, w: &WorldView, ctx: &str) {
        for id in &self.blueprints {
            assert!(
                w.blueprints.contains_key(id),
                "{ctx}: acknowledged blueprint {id} lost"
            );
        }
        for (id, v) in &self.versions {
            let have = w.blueprints.get(id).copied().unwrap_or(0);
            assert!(
                have >= *v,
                "{ctx}: blueprint {id} at version {have}, version {v} was acknowledged"
            );
        }
        for t in &self.apps {
            if !self.remove_sent.contains(t) {
                assert!(w.apps.contains(t), "{ctx}: acknowledged app {t} lost");
            }
        }
        for t in &self.removed {
            assert!(
                !w.apps.contains(t),
                "{ctx}: acknowledged removal of app {t} lost"
            );
        }
        if let Some(n) = self.title {
            let have = w
                .title
                .strip_prefix('t')
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            assert!(
                have >= n,
                "{ctx}: title {:?} is older than the acknowledged t{n}",
                w.title
            );
        }
        let oldest = w.chat.values().min().copied().unwrap_or(0);
        for b in &self.chats {
            let pushed_out = w.chat.len() == CHAT_HISTORY_MAX
                && self.chat_ids.get(b).is_some_and(|id| *id < oldest);
            assert!(
                w.chat.contains_key(b) || pushed_out,
                "{ctx}: acknowledged chat {b} lost"
            );
        }
    }
}

/// What the checks look at, from the database or from a client's mirror.
#[derive(Debug, Default)]
struct WorldView {
    blueprints: BTreeMap<String, u32>,
    apps: BTreeSet<String>,
    title: String,
    chat: BTreeMap<String, u64>,
}

fn tag_of(props: &[(String, Bytes)]) -> Option<String> {
    props
        .iter()
        .find(|(k, _)| k == "tag")
        .map(|(_, v)| String::from_utf8_lossy(&v.0).into_owned())
}

impl WorldView {
    fn of_store(w: &LoadedWorld) -> WorldView {
        WorldView {
            blueprints: w
                .blueprints
                .iter()
                .map(|b| (b.id.0.clone(), b.version))
                .collect(),
            apps: w.entities.iter().filter_map(|e| tag_of(&e.props)).collect(),
            title: w.settings.title.clone(),
            chat: w.chat.iter().map(|m| (m.body.clone(), m.id)).collect(),
        }
    }

    fn of_client(c: &Client) -> WorldView {
        c.with_world(|w| WorldView {
            blueprints: w
                .blueprints
                .values()
                .map(|b| (b.id.0.clone(), b.version))
                .collect(),
            apps: w
                .entities
                .values()
                .filter(|e| e.kind == EntityKind::App)
                .filter_map(|e| tag_of(&e.props))
                .collect(),
            title: w.settings.title.clone(),
            chat: w.chat.iter().map(|m| (m.body.clone(), m.id)).collect(),
        })
    }
}

fn blueprint(id: &str) -> Blueprint {
    Blueprint {
        id: BlueprintId(id.into()),
        version: 1,
        name: id.into(),
        author: "crash".into(),
        ..Blueprint::default()
    }
}

/// A running relay child and what it printed.
struct Relay {
    child: Child,
    lines: mpsc::Receiver<String>,
}

fn spawn_relay(data: &Path, certs: &Path) -> Relay {
    let mut child = Command::new(env!("CARGO_BIN_EXE_neonet-relay"))
        .arg("--data-dir")
        .arg(data)
        .arg("--cert-dir")
        .arg(certs)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--no-http",
            "--log-level",
            "warn",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the relay binary starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Relay { child, lines }
}

impl Relay {
    /// The address and fingerprint the relay prints once it listens.
    fn address(&self, ctx: &str) -> (SocketAddr, Fingerprint) {
        let deadline = Instant::now() + START_TIMEOUT;
        let (mut addr, mut fp) = (None, None);
        while addr.is_none() || fp.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("{ctx}: the relay printed no address: {e}"));
            if let Some(a) = line.strip_prefix("neonet-relay listening on udp ") {
                addr = Some(a.trim().parse().expect("address"));
            } else if let Some(f) = line.strip_prefix("certificate sha-256: ") {
                fp = Some(f.trim().parse().expect("fingerprint"));
            }
        }
        (addr.unwrap(), fp.unwrap())
    }

    fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
        self.child.wait().expect("reaped");
    }

    /// SIGTERM, then waits for a clean exit.
    fn terminate(mut self, ctx: &str) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill(1)")
            .success();
        assert!(ok, "{ctx}: sending SIGTERM failed");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{ctx}: the relay exited with {status}");
                return;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("{ctx}: the relay did not stop within {STOP_TIMEOUT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn options(name: &str, fp: Fingerprint, token: Option<String>) -> ClientOptions {
    ClientOptions {
        name: name.into(),
        token,
        trust: Trust::Sha256(fp),
        connect_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    }
}

/// Joins as the user of `token` if the world still knows it, else as a new user (a user created
/// just before a kill is an unacknowledged change: it may be gone).
fn join(addr: SocketAddr, name: &str, fp: Fingerprint, token: Option<String>) -> Option<Client> {
    if token.is_some() {
        if let Ok(c) = Client::connect(addr, options(name, fp, token)) {
            return Some(c);
        }
    }
    Client::connect(addr, options(name, fp, None)).ok()
}

/// A request in flight: what it changes once acknowledged.
type Pending = BTreeMap<ReqId, Done>;

/// One client's work until `stop`: random changes, `WINDOW` in flight, every acknowledgement
/// recorded in `model` the moment it arrives.
#[allow(clippy::too_many_arguments)]
fn client_loop(
    c: Client,
    index: usize,
    round: u32,
    mut rng: Rng,
    model: Arc<Mutex<Model>>,
    stop: Arc<AtomicBool>,
    title_seq: Arc<Mutex<u64>>,
) {
    let mut pending = Pending::new();
    let mut busy_blueprints = BTreeSet::new();
    let mut busy_apps = BTreeSet::new();
    let mut mine_bp: Vec<String> = Vec::new();
    let mut mine_apps: Vec<String> = Vec::new();
    let mut k = 0u64;
    let take_events = |pending: &mut Pending,
                       busy_bp: &mut BTreeSet<String>,
                       busy_apps: &mut BTreeSet<String>,
                       mine_bp: &mut Vec<String>,
                       mine_apps: &mut Vec<String>|
     -> bool {
        while let Some(ev) = c.poll_event() {
            match ev {
                ClientEvent::Acked(req) => {
                    if let Some(d) = pending.remove(&req) {
                        match &d {
                            Done::BlueprintAdd(id) => {
                                busy_bp.remove(id);
                                mine_bp.push(id.clone());
                            }
                            Done::BlueprintModify { id, .. } => {
                                busy_bp.remove(id);
                            }
                            Done::AppAdd(t) => {
                                busy_apps.remove(t);
                                mine_apps.push(t.clone());
                            }
                            Done::AppRemove(t) => {
                                busy_apps.remove(t);
                                mine_apps.retain(|m| m != t);
                            }
                            _ => {}
                        }
                        model.lock().unwrap().record(d);
                    }
                }
                ClientEvent::Refused { req, .. } => {
                    if let Some(d) = pending.remove(&req) {
                        match &d {
                            Done::BlueprintAdd(id) | Done::BlueprintModify { id, .. } => {
                                busy_bp.remove(id);
                            }
                            Done::AppAdd(t) | Done::AppRemove(t) => {
                                busy_apps.remove(t);
                            }
                            _ => {}
                        }
                    }
                }
                ClientEvent::Chat(m) => {
                    let mut model = model.lock().unwrap();
                    model.chat_ids_round.push(m.id);
                    model.chat_ids.insert(m.body, m.id);
                }
                ClientEvent::EntityAdded(id) => {
                    model.lock().unwrap().entity_ids_round.push(id.0);
                }
                ClientEvent::Disconnected { .. } => return false,
                _ => {}
            }
        }
        true
    };
    while !stop.load(Ordering::SeqCst) {
        if !take_events(
            &mut pending,
            &mut busy_blueprints,
            &mut busy_apps,
            &mut mine_bp,
            &mut mine_apps,
        ) {
            return;
        }
        if pending.len() >= WINDOW {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        k += 1;
        let name = format!("{round}-{index}-{k}");
        let sent = match rng.below(6) {
            0 => {
                let id = format!("b{name}");
                busy_blueprints.insert(id.clone());
                c.add_blueprint(blueprint(&id))
                    .map(|r| (r, Done::BlueprintAdd(id)))
            }
            1 => {
                let free: Vec<&String> = mine_bp
                    .iter()
                    .filter(|b| !busy_blueprints.contains(*b))
                    .collect();
                if free.is_empty() {
                    continue;
                }
                let id = free[rng.below(free.len() as u64) as usize].clone();
                let bid = BlueprintId(id.clone());
                let Some(v) = c.with_world(|w| w.blueprints.get(&bid).map(|b| b.version)) else {
                    continue;
                };
                busy_blueprints.insert(id.clone());
                let patch = BlueprintPatch {
                    desc: Some(format!("v{}", v + 1)),
                    ..BlueprintPatch::default()
                };
                Ok((
                    c.with_core(|core| core.modify_blueprint_at(bid, v + 1, patch)),
                    Done::BlueprintModify { id, version: v + 1 },
                ))
            }
            2 | 3 => {
                let t = format!("a{name}");
                busy_apps.insert(t.clone());
                c.add_entity(
                    BlueprintId(CRATE.into()),
                    Transform {
                        position: Vec3::new(rng.below(50) as f32, 0.0, 0.0),
                        ..Transform::default()
                    },
                    vec![("tag".into(), Bytes::from(t.as_str()))],
                )
                .map(|r| (r, Done::AppAdd(t)))
            }
            4 => {
                let free: Vec<&String> = mine_apps
                    .iter()
                    .filter(|a| !busy_apps.contains(*a))
                    .collect();
                if free.is_empty() {
                    continue;
                }
                let t = free[rng.below(free.len() as u64) as usize].clone();
                let id = c.with_world(|w| {
                    w.entities
                        .values()
                        .find(|e| tag_of(&e.props).as_deref() == Some(t.as_str()))
                        .map(|e| e.id)
                });
                let Some(id) = id else { continue };
                busy_apps.insert(t.clone());
                model.lock().unwrap().remove_sent.insert(t.clone());
                c.remove_entity(id).map(|r| (r, Done::AppRemove(t)))
            }
            _ if index == 0 && rng.chance(0.5) => {
                // Only client 0 sets the title: one connection, so send order is apply order.
                let n = {
                    let mut s = title_seq.lock().unwrap();
                    *s += 1;
                    *s
                };
                Ok((
                    c.with_core(|core| core.modify_setting(Setting::Title(format!("t{n}")))),
                    Done::Title(n),
                ))
            }
            _ => {
                let body = format!("m{name}");
                c.send_chat(body.clone()).map(|r| (r, Done::Chat(body)))
            }
        };
        match sent {
            Ok((req, d)) => {
                pending.insert(req, d);
            }
            Err(_) => return,
        }
    }
    // Acknowledgements already received count too.
    take_events(
        &mut pending,
        &mut busy_blueprints,
        &mut busy_apps,
        &mut mine_bp,
        &mut mine_apps,
    );
}

/// Creates the world before the first start: everyone builds, and a blueprint apps use.
fn seed(data: &Path) {
    let (store, _) = Store::open(data, StoreConfig::default(), |_| {}).expect("seed store");
    store
        .submit(
            Change::PutSettings(Settings {
                default_rank: Rank::Builder,
                title: "t0".into(),
                ..Settings::default()
            }),
            None,
        )
        .unwrap();
    store
        .submit(Change::PutBlueprint(blueprint(CRATE)), None)
        .unwrap();
    store.shutdown().unwrap();
}

/// Opens the database as the next start would, checks the model, closes it.
fn check_store(data: &Path, model: &Model, ctx: &str) -> usize {
    let (store, world) = Store::open(data, StoreConfig::default(), |_| {})
        .unwrap_or_else(|e| panic!("{ctx}: the database does not open cleanly: {e}"));
    model.check(&WorldView::of_store(&world), ctx);
    store.shutdown().unwrap();
    world.entities.len()
}

#[test]
fn acknowledged_changes_survive_kill_9_of_the_relay() {
    let seed_value: u64 = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0c4a);
    let rounds: u32 = std::env::var(ROUNDS_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ROUNDS_DEFAULT)
        .max(1);
    eprintln!("crash test: seed {seed_value} ({SEED_ENV}), {rounds} rounds ({ROUNDS_ENV})");
    let started = Instant::now();
    let mut rng = Rng::new(seed_value);
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("data");
    let certs: PathBuf = dir.path().join("certs");
    seed(&data);
    let model = Arc::new(Mutex::new(Model::default()));
    let title_seq = Arc::new(Mutex::new(0u64));
    let tokens: Arc<Mutex<Vec<Option<String>>>> = Arc::new(Mutex::new(vec![None; CLIENTS]));
    let mut fingerprint: Option<Fingerprint> = None;

    for round in 0..rounds {
        let ctx = format!("seed {seed_value} round {round}");
        let last = round + 1 == rounds;
        let relay = spawn_relay(&data, &certs);
        // Some rounds kill during start-up (process start, database open or repair).
        if !last && rng.chance(0.2) {
            let ms = rng.below(150);
            std::thread::sleep(Duration::from_millis(ms));
            relay.kill_9();
            let apps = check_store(&data, &model.lock().unwrap(), &ctx);
            eprintln!("{ctx}: killed {ms} ms into start-up; {apps} apps on disk");
            continue;
        }
        let (addr, fp) = relay.address(&ctx);
        // The certificate in the cert folder is reused: clients trust the same fingerprint.
        assert_eq!(
            *fingerprint.get_or_insert(fp),
            fp,
            "{ctx}: certificate changed"
        );

        let stop = Arc::new(AtomicBool::new(false));
        let before = model.lock().unwrap().total();
        let workers: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (model, stop, title_seq, tokens) = (
                    model.clone(),
                    stop.clone(),
                    title_seq.clone(),
                    tokens.clone(),
                );
                let rng = Rng::new(seed_value ^ ((round as u64) << 32) ^ i as u64);
                std::thread::spawn(move || {
                    let token = tokens.lock().unwrap()[i].clone();
                    let Some(c) = join(addr, &format!("crash{i}"), fp, token) else {
                        return;
                    };
                    tokens.lock().unwrap()[i] = c.token();
                    client_loop(c, i, round, rng, model, stop, title_seq);
                })
            })
            .collect();

        if last {
            // The last round ends gracefully: SIGTERM flushes and closes.
            std::thread::sleep(Duration::from_millis(400));
            relay.terminate(&ctx);
        } else {
            let ms = 100 + rng.below(900);
            std::thread::sleep(Duration::from_millis(ms));
            relay.kill_9();
            eprintln!("{ctx}: killed after {ms} ms of changes");
        }
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.join().expect("client thread");
        }
        let mut m = model.lock().unwrap();
        let seen = (m.entity_ids_round.len(), m.chat_ids_round.len());
        m.end_round(&ctx);
        let apps = check_store(&data, &m, &ctx);
        eprintln!(
            "{ctx}: {} entity and {} chat ids relayed, none seen before",
            seen.0, seen.1
        );
        eprintln!(
            "{ctx}: {} changes acknowledged this round, {} in all; {apps} apps on disk",
            m.total() - before,
            m.total()
        );
    }

    // End to end: a restarted relay serves it all to a returning client.
    let ctx = format!("seed {seed_value} after the last round");
    let relay = spawn_relay(&data, &certs);
    let (addr, fp) = relay.address(&ctx);
    let token = tokens.lock().unwrap()[0].clone();
    let c = join(addr, "checker", fp, token).expect("the checker joins");
    model.lock().unwrap().check(&WorldView::of_client(&c), &ctx);
    drop(c);
    relay.terminate(&ctx);
    let m = model.lock().unwrap();
    assert!(
        m.apps.len() + m.blueprints.len() > 50,
        "seed {seed_value}: too few acknowledged changes to mean anything ({})",
        m.total()
    );
    eprintln!(
        "crash test: {} acknowledged changes checked in {:?}",
        m.total(),
        started.elapsed()
    );
}
