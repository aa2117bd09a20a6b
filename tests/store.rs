//! The redb store through its public API: restart, group commit, exclusivity, migration, disk
//! errors, crash consistency (kill -9 of a child process), and an ignored throughput measurement.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use neonet::proto::rng::Rng;
use neonet::proto::types::{
    Blueprint, BlueprintFlags, BlueprintId, Bytes, ChatMessage, Entity, EntityId, EntityKind,
    MovementAuthority, Quat, Rank, ReqId, SessionId, Settings, Spawn, Transform, User, UserId,
    Vec3,
};
use neonet::store::{
    AckToken, Change, Commit, LoadedWorld, NextIds, Store, StoreConfig, StoreError, SubmitError,
    CHAT_HISTORY_MAX, DB_FILE_NAME, SCHEMA_VERSION,
};

/// A token naming `n` (in the session field; tests have no sessions).
fn tok(n: u64) -> AckToken {
    AckToken {
        session: SessionId(n),
        req: ReqId(0),
        user: UserId(n),
    }
}

fn app(id: u32, x: f32) -> Entity {
    Entity {
        id: EntityId(id),
        kind: EntityKind::App,
        owner: None,
        user: None,
        blueprint: Some(BlueprintId("chair".into())),
        transform: Transform {
            position: Vec3::new(x, 1.0, -2.0),
            ..Transform::default()
        },
        props: vec![("state".into(), Bytes::from(format!("s{id}").as_str()))],
    }
}

fn user(id: u64, last_position: Option<Vec3>) -> User {
    User {
        id: UserId(id),
        name: format!("user{id}"),
        rank: Rank::Builder,
        muted: id % 2 == 0,
        banned: false,
        last_position,
        standing: Default::default(),
    }
}

fn blueprint(id: &str, version: u32) -> Blueprint {
    Blueprint {
        id: BlueprintId(id.into()),
        version,
        name: format!("{id} v{version}"),
        author: "ann".into(),
        model: Some(format!("asset://{id}.glb")),
        script: None,
        image: None,
        desc: String::new(),
        props: Bytes::from("{}"),
        flags: BlueprintFlags {
            preload: true,
            ..BlueprintFlags::default()
        },
    }
}

fn chat(id: u64) -> ChatMessage {
    ChatMessage {
        id,
        from_user: Some(UserId(1)),
        from_name: "user1".into(),
        from_entity: Some(EntityId(3)),
        body: format!("message {id}"),
        created_at_ms: 1_700_000_000_000 + id,
    }
}

fn open(dir: &Path) -> (Store, LoadedWorld) {
    Store::open(dir, StoreConfig::default(), |_| {}).expect("open the store")
}

/// Opens with a channel receiving every commit.
fn open_with_commits(
    dir: &Path,
    config: StoreConfig,
) -> (Store, LoadedWorld, mpsc::Receiver<Commit>) {
    let (tx, rx) = mpsc::channel();
    let (store, world) = Store::open(dir, config, move |c| {
        let _ = tx.send(c);
    })
    .expect("open the store");
    (store, world, rx)
}

#[test]
fn first_start_creates_an_empty_world() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("nested/data");
    let (store, world) = open(&data);
    assert!(world.created);
    assert_eq!(world.migrated_from, None);
    assert_eq!(world.settings, Settings::default());
    assert_eq!(world.spawn, Spawn::default());
    assert!(world.users.is_empty() && world.entities.is_empty() && world.chat.is_empty());
    assert!(data.join(DB_FILE_NAME).is_file());
    store.shutdown().unwrap();
    let (_store, world) = open(&data);
    assert!(!world.created);
}

#[test]
fn restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, rx) = open_with_commits(dir.path(), StoreConfig::default());
    let settings = Settings {
        title: "persisted".into(),
        default_rank: Rank::Builder,
        player_limit: 42,
        movement: MovementAuthority::Client,
        ..Settings::default()
    };
    let spawn = Spawn {
        position: Vec3::new(1.0, 2.0, 3.0),
        rotation: Quat::from_xyzw(0.0, 1.0, 0.0, 0.0),
    };
    let mut moved = app(2, 0.0);
    moved.owner = Some(SessionId(9));
    let changes = vec![
        Change::PutSettings(settings.clone()),
        Change::PutSpawn(spawn),
        Change::PutUser(user(1, None)),
        Change::PutUser(user(2, Some(Vec3::new(4.0, 5.0, 6.0)))),
        Change::PutBlueprint(blueprint("chair", 1)),
        Change::PutBlueprint(blueprint("chair", 2)),
        Change::PutBlueprint(blueprint("table", 1)),
        Change::PutBlueprint(blueprint("gone", 1)),
        Change::DeleteBlueprint(BlueprintId("gone".into())),
        Change::PutEntity(app(1, 0.0)),
        Change::PutEntity(moved.clone()),
        Change::PutEntity(app(3, 0.0)),
        Change::DeleteEntity(EntityId(3)),
        Change::AppendChat(chat(1)),
        Change::AppendChat(chat(2)),
        Change::ReserveIds(NextIds {
            entity: 10,
            user: 20,
            chat: 30,
        }),
    ];
    for (i, c) in changes.into_iter().enumerate() {
        store.submit(c, Some(tok(i as u64))).unwrap();
    }
    // Fast-changing state goes through the dirty set; the last value wins.
    for x in 0..10 {
        store.mark_dirty(app(1, x as f32));
    }
    store.shutdown().unwrap();
    let acked: usize = rx
        .try_iter()
        .filter(|c| c.is_durable())
        .map(|c| c.acks.len())
        .sum();
    assert_eq!(acked, 16, "every change acknowledged");

    let (store, world) = open(dir.path());
    assert!(!world.created);
    assert_eq!(world.settings, settings);
    assert_eq!(world.spawn, spawn);
    assert_eq!(
        world.users,
        vec![user(1, None), user(2, Some(Vec3::new(4.0, 5.0, 6.0)))]
    );
    assert_eq!(
        world.blueprints,
        vec![blueprint("chair", 2), blueprint("table", 1)]
    );
    assert_eq!(world.entities, vec![app(1, 9.0), moved]);
    assert_eq!(world.chat, vec![chat(1), chat(2)]);
    assert_eq!(
        world.next_ids,
        NextIds {
            entity: 10,
            user: 20,
            chat: 30
        }
    );
    // A second restart with nothing changed gives the same world.
    store.shutdown().unwrap();
    let (_store, again) = open(dir.path());
    assert_eq!(
        again,
        LoadedWorld {
            created: false,
            ..world
        }
    );
}

#[test]
fn returning_user_spawns_where_they_left() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    store.submit(Change::PutUser(user(7, None)), None).unwrap();
    // The user leaves: the core stores where their player was.
    store
        .submit(
            Change::PutUser(user(7, Some(Vec3::new(10.5, 0.0, -3.25)))),
            None,
        )
        .unwrap();
    drop(store);
    let (_store, world) = open(dir.path());
    assert_eq!(
        world.users[0].last_position,
        Some(Vec3::new(10.5, 0.0, -3.25))
    );
}

#[test]
fn chat_history_keeps_the_last_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let total = CHAT_HISTORY_MAX as u64 + 15;
    for id in 1..=total {
        store.submit(Change::AppendChat(chat(id)), None).unwrap();
    }
    store.shutdown().unwrap();
    let (store, world) = open(dir.path());
    let ids: Vec<u64> = world.chat.iter().map(|m| m.id).collect();
    let expected: Vec<u64> = (total - CHAT_HISTORY_MAX as u64 + 1..=total).collect();
    assert_eq!(ids, expected);
    assert_eq!(world.next_ids.chat, total + 1, "chat ids are never reused");
    store.submit(Change::ClearChat, None).unwrap();
    store.shutdown().unwrap();
    let (_store, world) = open(dir.path());
    assert!(world.chat.is_empty());
}

#[test]
fn next_ids_never_fall_below_stored_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    store
        .submit(
            Change::ReserveIds(NextIds {
                entity: 5,
                user: 5,
                chat: 5,
            }),
            None,
        )
        .unwrap();
    store.submit(Change::PutEntity(app(40, 0.0)), None).unwrap();
    store.submit(Change::PutUser(user(90, None)), None).unwrap();
    drop(store);
    let (_store, world) = open(dir.path());
    assert_eq!(
        world.next_ids,
        NextIds {
            entity: 41,
            user: 91,
            chat: 5
        }
    );
}

#[test]
fn dirty_state_is_flushed_on_its_interval_and_never_overrides_newer_changes() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        dirty_flush_interval: Duration::from_millis(50),
        ..StoreConfig::default()
    };
    let (store, _, rx) = open_with_commits(dir.path(), config);
    store.mark_dirty(app(1, 1.0));
    // Written by the interval flush, without any flush or shutdown call.
    let commit = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(commit.is_durable());
    assert_eq!((commit.changes, commit.dirty_entities), (0, 1));
    assert!(commit.acks.is_empty());

    // Dirty, then an acknowledged put: the put is newer and wins.
    store.mark_dirty(app(2, 1.0));
    store.submit(Change::PutEntity(app(2, 2.0)), None).unwrap();
    // Dirty, then a delete: stays deleted.
    store.mark_dirty(app(3, 1.0));
    store
        .submit(Change::DeleteEntity(EntityId(3)), None)
        .unwrap();
    // A put, then dirty: the dirty value is newer and wins.
    store.submit(Change::PutEntity(app(4, 1.0)), None).unwrap();
    store.mark_dirty(app(4, 2.0));
    // Entity state with a token is written through like a put.
    store
        .submit(Change::PutEntityState(app(5, 5.0)), Some(tok(5)))
        .unwrap();
    // Without a token it is dirty state.
    store
        .submit(Change::PutEntityState(app(6, 6.0)), None)
        .unwrap();
    store.flush().unwrap();
    store.shutdown().unwrap();
    let (_store, world) = open(dir.path());
    assert_eq!(
        world.entities,
        vec![
            app(1, 1.0),
            app(2, 2.0),
            app(4, 2.0),
            app(5, 5.0),
            app(6, 6.0)
        ]
    );
}

#[test]
fn group_commit_batches_many_changes_into_few_commits() {
    let dir = tempfile::tempdir().unwrap();
    let batch_max = 256;
    let config = StoreConfig {
        batch_max,
        queue_max: 100_000,
        ..StoreConfig::default()
    };
    // The first commit's callback holds the writer until every other change is queued, which
    // makes the batching deterministic: 1 commit, then ceil((n - 1) / batch_max).
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(Some(release_rx));
    let (tx, rx) = mpsc::channel();
    let (store, _) = Store::open(dir.path(), config, move |c: Commit| {
        if let Some(release) = release_rx.lock().unwrap().take() {
            let _ = entered_tx.send(());
            let _ = release.recv();
        }
        let _ = tx.send(c);
    })
    .unwrap();
    store
        .submit(Change::PutEntity(app(0, 0.0)), Some(tok(0)))
        .unwrap();
    entered_rx.recv().unwrap();
    let store = Arc::new(store);
    let threads = 4u32;
    let per_thread = 2_000u32;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    let id = 1 + t * per_thread + i;
                    store
                        .submit(Change::PutEntity(app(id, i as f32)), Some(tok(id as u64)))
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    release_tx.send(()).unwrap();
    store.flush().unwrap();
    let stats = store.stats();
    let total = (1 + threads * per_thread) as u64;
    assert_eq!(stats.changes, total);
    assert_eq!(stats.failed_commits, 0);
    let expected_commits = 1 + (total - 1).div_ceil(batch_max as u64);
    assert_eq!(
        stats.commits, expected_commits,
        "{total} changes must take {expected_commits} commits"
    );
    let commits: Vec<Commit> = rx.try_iter().collect();
    assert!(commits.iter().all(|c| c.changes <= batch_max));
    let mut acked: Vec<u64> = commits
        .iter()
        .flat_map(|c| c.acks.iter().map(|a| a.session.0))
        .collect();
    assert_eq!(acked.len() as u64, total, "every token reported once");
    acked.sort_unstable();
    acked.dedup();
    assert_eq!(acked.len() as u64, total);
}

#[test]
fn a_lone_change_is_committed_at_once() {
    // Group commit never waits for company: one change, one commit, no timer.
    let dir = tempfile::tempdir().unwrap();
    let (store, _, rx) = open_with_commits(dir.path(), StoreConfig::default());
    store
        .submit(Change::PutUser(user(1, None)), Some(tok(9)))
        .unwrap();
    let c = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(c.is_durable());
    assert_eq!((c.acks, c.changes), (vec![tok(9)], 1));
    assert_eq!(store.stats().commits, 1);
}

#[test]
fn a_full_queue_refuses_instead_of_growing() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        queue_max: 4,
        ..StoreConfig::default()
    };
    let (store, _) = Store::open(dir.path(), config, |_| {}).unwrap();
    let mut refused = 0;
    for i in 0..10_000 {
        match store.submit(Change::PutEntity(app(i, 0.0)), Some(tok(i as u64))) {
            Ok(()) => {}
            Err(SubmitError::Full) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        refused > 0,
        "a 4-change queue must fill under 10,000 submits"
    );
    assert!(store.stats().queued <= 4);
}

#[test]
fn second_open_of_the_same_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let err = Store::open(dir.path(), StoreConfig::default(), |_| {}).unwrap_err();
    assert!(matches!(err, StoreError::AlreadyOpen { .. }), "{err:?}");
    assert!(err.to_string().contains("another neonet relay"), "{err}");
    store.shutdown().unwrap();
    // Released on shutdown.
    let (_store, _) = open(dir.path());
}

#[test]
fn unusable_data_folder_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    // A folder below a regular file cannot be created, even by root.
    let err = Store::open(&file.join("data"), StoreConfig::default(), |_| {}).unwrap_err();
    assert!(matches!(err, StoreError::DataDir { .. }), "{err:?}");
    assert!(err.to_string().contains("data folder"), "{err}");
    // The data folder itself being a file.
    let err = Store::open(&file, StoreConfig::default(), |_| {}).unwrap_err();
    assert!(matches!(err, StoreError::DataDir { .. }), "{err:?}");
    // The database path being a folder.
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join(DB_FILE_NAME)).unwrap();
    let err = Store::open(&data, StoreConfig::default(), |_| {}).unwrap_err();
    assert!(matches!(err, StoreError::Disk { .. }), "{err:?}");
}

#[test]
fn a_file_that_is_not_a_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(DB_FILE_NAME), vec![0x5a; 8192]).unwrap();
    let err = Store::open(dir.path(), StoreConfig::default(), |_| {}).unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { .. } | StoreError::Db { .. }),
        "{err:?}"
    );
}

#[test]
fn a_corrupt_record_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    {
        let db = redb::Database::create(dir.path().join(DB_FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut users = txn
                .open_table(redb::TableDefinition::<u64, &[u8]>::new("users"))
                .unwrap();
            users.insert(3u64, [0xffu8, 0xff, 0xff].as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = Store::open(dir.path(), StoreConfig::default(), |_| {}).unwrap_err();
    match &err {
        StoreError::Decode { table, key, .. } => {
            assert_eq!((*table, key.as_str()), ("users", "3"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    {
        let db = redb::Database::create(dir.path().join(DB_FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(
                "schema_version",
                (SCHEMA_VERSION + 1).to_le_bytes().as_slice(),
            )
            .unwrap();
        }
        txn.commit().unwrap();
    }
    let err = Store::open(dir.path(), StoreConfig::default(), |_| {}).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found, supported, .. } if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Migration from schema version 1, written here independently of the store's own code.

const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");

/// A user as schema version 1 stored it (no `last_position`).
#[derive(serde::Serialize)]
struct UserV1 {
    id: UserId,
    name: String,
    rank: Rank,
    muted: bool,
    banned: bool,
}

fn write_v1_database(path: &Path, chat_len: u64) {
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut meta = txn.open_table(META).unwrap();
        meta.insert("schema_version", 1u32.to_le_bytes().as_slice())
            .unwrap();
        let settings = Settings {
            title: "old world".into(),
            ..Settings::default()
        };
        meta.insert(
            "settings",
            postcard::to_allocvec(&settings).unwrap().as_slice(),
        )
        .unwrap();
        let spawn = Spawn {
            position: Vec3::new(0.0, 5.0, 0.0),
            ..Spawn::default()
        };
        meta.insert("spawn", postcard::to_allocvec(&spawn).unwrap().as_slice())
            .unwrap();
        let history: Vec<ChatMessage> = (1..=chat_len).map(chat).collect();
        meta.insert("chat", postcard::to_allocvec(&history).unwrap().as_slice())
            .unwrap();
    }
    {
        let mut users = txn
            .open_table(redb::TableDefinition::<u64, &[u8]>::new("users"))
            .unwrap();
        for id in [3u64, 8] {
            let u = UserV1 {
                id: UserId(id),
                name: format!("user{id}"),
                rank: Rank::Builder,
                muted: id % 2 == 0,
                banned: false,
            };
            users
                .insert(id, postcard::to_allocvec(&u).unwrap().as_slice())
                .unwrap();
        }
    }
    {
        let mut blueprints = txn
            .open_table(redb::TableDefinition::<&str, &[u8]>::new("blueprints"))
            .unwrap();
        for (id, version) in [("chair", 4u32), ("table", 1)] {
            let b = blueprint(id, version);
            blueprints
                .insert(id, postcard::to_allocvec(&b).unwrap().as_slice())
                .unwrap();
        }
    }
    {
        let mut entities = txn
            .open_table(redb::TableDefinition::<u32, &[u8]>::new("entities"))
            .unwrap();
        for id in [2u32, 17] {
            entities
                .insert(id, postcard::to_allocvec(&app(id, 1.0)).unwrap().as_slice())
                .unwrap();
        }
    }
    txn.commit().unwrap();
}

#[test]
fn migrates_a_version_1_database() {
    let dir = tempfile::tempdir().unwrap();
    let chat_len = CHAT_HISTORY_MAX as u64 + 5;
    write_v1_database(&dir.path().join(DB_FILE_NAME), chat_len);

    let (store, world) = open(dir.path());
    assert_eq!(world.migrated_from, Some(1));
    assert!(!world.created);
    assert_eq!(world.settings.title, "old world");
    assert_eq!(world.spawn.position, Vec3::new(0.0, 5.0, 0.0));
    assert_eq!(world.users, vec![user(3, None), user(8, None)]);
    assert_eq!(
        world.blueprints,
        vec![blueprint("chair", 4), blueprint("table", 1)]
    );
    assert_eq!(world.entities, vec![app(2, 1.0), app(17, 1.0)]);
    let chat_ids: Vec<u64> = world.chat.iter().map(|m| m.id).collect();
    assert_eq!(chat_ids, (6..=chat_len).collect::<Vec<_>>());
    assert_eq!(
        world.next_ids,
        NextIds {
            entity: 18,
            user: 9,
            chat: chat_len + 1
        }
    );
    // The migrated database takes version 2 writes.
    store
        .submit(
            Change::PutUser(user(3, Some(Vec3::new(1.0, 2.0, 3.0)))),
            None,
        )
        .unwrap();
    store
        .submit(Change::AppendChat(chat(chat_len + 1)), None)
        .unwrap();
    store.shutdown().unwrap();

    // On disk: version 2, the chat blob gone.
    {
        let db = redb::Database::create(dir.path().join(DB_FILE_NAME)).unwrap();
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        let v = meta
            .get("schema_version")
            .unwrap()
            .unwrap()
            .value()
            .to_vec();
        assert_eq!(v, SCHEMA_VERSION.to_le_bytes());
        assert!(meta.get("chat").unwrap().is_none());
    }
    let (_store, world) = open(dir.path());
    assert_eq!(world.migrated_from, None, "migrates once");
    assert_eq!(world.users[0].last_position, Some(Vec3::new(1.0, 2.0, 3.0)));
    assert_eq!(world.chat.len(), CHAT_HISTORY_MAX);
    assert_eq!(world.chat.last().unwrap().id, chat_len + 1);
}

// ---------------------------------------------------------------------------------------------
// Crash consistency: a child process writes and prints every acknowledgement as soon as its
// commit returned; the parent kills it with SIGKILL at random moments, reopens, and checks that
// every acknowledged change is there.

/// Set in the child's environment to the data folder it must write.
const CHILD_ENV: &str = "NEONET_STORE_CRASH_CHILD";
/// Overrides the crash test's seed.
const SEED_ENV: &str = "NEONET_CRASH_SEED";
/// Overrides the number of kill rounds.
const ROUNDS_ENV: &str = "NEONET_CRASH_ROUNDS";
/// Kill rounds by default: enough to land kills in different phases (mid-batch, mid-fsync,
/// between commits) while keeping the test a few seconds long.
const CRASH_ROUNDS_DEFAULT: u32 = 8;
/// Submitting threads in the child.
const CHILD_THREADS: u32 = 4;
/// A token's session field carries the entity id; this request id marks a delete.
const DELETE_REQ: ReqId = ReqId(1);

/// The child's body. A no-op unless run by `crash_test_acknowledged_changes_survive_kill_9`.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (store, world) = Store::open(Path::new(&dir), StoreConfig::default(), |c: Commit| {
        if c.is_durable() && !c.acks.is_empty() {
            let mut out = String::new();
            for a in &c.acks {
                let op = if a.req == DELETE_REQ { 'D' } else { 'P' };
                let id = a.session.0;
                // The trailing '.' marks a complete line: a kill mid-write leaves none.
                out.push_str(&format!("{op} {id} .\n"));
            }
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(out.as_bytes());
            let _ = stdout.flush();
        }
    })
    .expect("child opens the store");
    let store = Arc::new(store);
    let next_id = Arc::new(AtomicU64::new(world.next_ids.entity as u64));
    let deadline = Instant::now() + Duration::from_secs(60);
    let handles: Vec<_> = (0..CHILD_THREADS)
        .map(|_| {
            let store = store.clone();
            let next_id = next_id.clone();
            std::thread::spawn(move || {
                let mut to_delete: Option<u32> = None;
                let mut i = 0u32;
                while Instant::now() < deadline {
                    let id = next_id.fetch_add(1, Ordering::Relaxed) as u32;
                    loop {
                        let change = Change::PutEntity(app(id, i as f32));
                        match store.submit(change, Some(tok(id as u64))) {
                            Ok(()) => break,
                            Err(SubmitError::Full) => std::thread::sleep(Duration::from_millis(1)),
                            Err(SubmitError::Closed) => return,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    // Entities with ids divisible by 3 are deleted one step after their put.
                    if let Some(old) = to_delete.take() {
                        let token = AckToken {
                            session: SessionId(old as u64),
                            req: DELETE_REQ,
                            user: UserId(old as u64),
                        };
                        let _ = store.submit(Change::DeleteEntity(EntityId(old)), Some(token));
                    }
                    if id % 3 == 0 {
                        to_delete = Some(id);
                    } else if i % 8 == 0 {
                        // Fast-changing state of an entity that is never deleted.
                        store.mark_dirty(app(id, -(i as f32)));
                    }
                    if i % 32 == 0 {
                        let _ = store.submit(
                            Change::ReserveIds(NextIds {
                                entity: 0,
                                user: 1 + i as u64,
                                chat: 1,
                            }),
                            None,
                        );
                    }
                    i += 1;
                    if i % 64 == 0 {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}

#[test]
fn crash_test_acknowledged_changes_survive_kill_9() {
    let seed: u64 = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0006);
    let rounds: u32 = std::env::var(ROUNDS_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CRASH_ROUNDS_DEFAULT);
    eprintln!("crash test: seed {seed} ({SEED_ENV}), {rounds} rounds ({ROUNDS_ENV})");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked_puts = BTreeSet::new();
    let mut acked_deletes = BTreeSet::new();
    let mut checked_exclusive = false;

    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let first_ack = Arc::new(AtomicU64::new(0));
        let reader = {
            let lines = lines.clone();
            let first_ack = first_ack.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line.ends_with(" .") {
                        first_ack.store(1, Ordering::SeqCst);
                    }
                    lines.lock().unwrap().push(line);
                }
            })
        };
        // Half the rounds kill at a random moment from the child's start (landing in process
        // start, database creation or repair, or the first commits); the others at a random
        // moment after the first acknowledgement, in the steady stream of commits.
        let early = rng.next_u64() % 2 == 0;
        let delay_ms = if early {
            rng.next_u64() % 40
        } else {
            rng.next_u64() % 300
        };
        let start = Instant::now();
        while !early && first_ack.load(Ordering::SeqCst) == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "seed {seed} round {round}: the child acknowledged nothing"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        if !early && !checked_exclusive {
            // Another process holds the folder: a second open is refused.
            let err = Store::open(dir.path(), StoreConfig::default(), |_| {}).unwrap_err();
            assert!(matches!(err, StoreError::AlreadyOpen { .. }), "{err:?}");
            checked_exclusive = true;
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();

        let mut new_acks = 0;
        for line in lines.lock().unwrap().iter() {
            let mut parts = line.split(' ');
            let (Some(op), Some(id), Some(".")) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let Ok(id) = id.parse::<u32>() else { continue };
            match op {
                "P" => acked_puts.insert(id),
                "D" => acked_deletes.insert(id),
                _ => continue,
            };
            new_acks += 1;
        }

        let (store, world) = Store::open(dir.path(), StoreConfig::default(), |_| {})
            .unwrap_or_else(|e| panic!("seed {seed} round {round}: reopen after kill: {e}"));
        let present: BTreeSet<u32> = world.entities.iter().map(|e| e.id.0).collect();
        for id in &acked_deletes {
            assert!(
                !present.contains(id),
                "seed {seed} round {round}: entity {id}'s acknowledged delete was lost"
            );
        }
        for id in &acked_puts {
            // An entity whose delete was submitted but not acknowledged may be either way.
            if id % 3 != 0 {
                assert!(
                    present.contains(id),
                    "seed {seed} round {round}: acknowledged entity {id} was lost"
                );
            }
        }
        for e in &world.entities {
            assert_eq!(e.props, app(e.id.0, 0.0).props, "entity {} content", e.id.0);
        }
        // Ids are never handed out twice: every acknowledged id is below the next one.
        if let Some(max) = acked_puts.last() {
            assert!(world.next_ids.entity > *max, "seed {seed}: ids reused");
        }
        eprintln!(
            "round {round}: killed {delay_ms} ms after {}, {new_acks} new acks, {} entities on disk",
            if early { "start" } else { "the first ack" },
            present.len()
        );
        store.shutdown().unwrap();
    }
    assert!(
        !acked_puts.is_empty(),
        "seed {seed}: no round acknowledged anything"
    );
    assert!(checked_exclusive || rounds < 4);
}

// ---------------------------------------------------------------------------------------------
// Throughput and acknowledgement latency. Not a test: a measurement, run on demand with
//   cargo test --release --test store -- --ignored --nocapture measure_throughput

/// Submitters in the client-shaped measurement: one per simulated client, each sending every
/// [`MEASURE_CLIENT_PERIOD`].
const MEASURE_SUBMITTERS: u64 = 100;
/// How often each simulated client sends its edits.
const MEASURE_CLIENT_PERIOD: Duration = Duration::from_millis(10);
/// The relay-shaped measurement: one submitter (the tick thread) sending a tick's worth of
/// changes every 1/60 s.
const MEASURE_TICK_PERIOD: Duration = Duration::from_micros(16_667);
/// How long each measurement runs.
const MEASURE_DURATION: Duration = Duration::from_secs(5);
/// Distinct entities edited (updates of existing rows, like builders moving apps).
const MEASURE_ENTITIES: u64 = 10_000;

/// Runs `submitters` threads submitting `rate_per_s` changes/s in total (0: as fast as the queue
/// takes them), each in bursts every `period`, and prints acknowledged changes/s and ack latency
/// percentiles.
fn measure(rate_per_s: u64, submitters: u64, period: Duration, config: StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    // Pre-populate the rows being edited, with the default configuration.
    {
        let (store, _) = open(dir.path());
        for id in 0..MEASURE_ENTITIES {
            store
                .submit(Change::PutEntity(app(id as u32, 0.0)), None)
                .unwrap();
        }
        store.shutdown().unwrap();
    }
    let (two_phase_commit, batch_max) = (config.two_phase_commit, config.batch_max);
    let start = Instant::now();
    let submitted_at: Arc<Vec<AtomicU64>> =
        Arc::new((0..4_000_000).map(|_| AtomicU64::new(0)).collect());
    let hist = Arc::new(Mutex::new(
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
    ));
    let commit_hist = Arc::new(Mutex::new(
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
    ));
    let acked = Arc::new(AtomicU64::new(0));
    let (store, _) = {
        let submitted_at = submitted_at.clone();
        let hist = hist.clone();
        let commit_hist = commit_hist.clone();
        let acked = acked.clone();
        Store::open(dir.path(), config, move |c: Commit| {
            assert!(c.is_durable());
            let now = start.elapsed().as_micros() as u64;
            let _ = commit_hist
                .lock()
                .unwrap()
                .record((c.commit_latency.as_micros() as u64).max(1));
            let mut h = hist.lock().unwrap();
            for a in &c.acks {
                let at = submitted_at[a.session.0 as usize].load(Ordering::Relaxed);
                let _ = h.record(now.saturating_sub(at).max(1));
            }
            acked.fetch_add(c.acks.len() as u64, Ordering::Relaxed);
        })
        .unwrap()
    };
    let base_commits = store.stats().commits;

    let store = Arc::new(store);
    let next_token = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..submitters)
        .map(|s| {
            let store = store.clone();
            let next_token = next_token.clone();
            let submitted_at = submitted_at.clone();
            let refused = refused.clone();
            std::thread::spawn(move || {
                let tick = period;
                let per_tick = if rate_per_s == 0 {
                    u64::MAX
                } else {
                    (rate_per_s * tick.as_micros() as u64 / 1_000_000 / submitters).max(1)
                };
                let mut next = t0 + tick * (s as u32 % 10) / 10;
                let mut i = 0u64;
                while t0.elapsed() < MEASURE_DURATION {
                    let mut sent = 0;
                    while sent < per_tick {
                        let token = next_token.fetch_add(1, Ordering::Relaxed);
                        if token as usize >= submitted_at.len() {
                            return;
                        }
                        submitted_at[token as usize]
                            .store(start.elapsed().as_micros() as u64, Ordering::Relaxed);
                        let id = ((s * 7919 + i) % MEASURE_ENTITIES) as u32;
                        i += 1;
                        match store.submit(Change::PutEntity(app(id, i as f32)), Some(tok(token))) {
                            Ok(()) => sent += 1,
                            Err(SubmitError::Full) => {
                                refused.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                    next += tick;
                    if let Some(d) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(d);
                    } else if rate_per_s == 0 {
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    // Until everything submitted is acknowledged: a backlog's drain counts.
    store.flush().unwrap();
    let elapsed = t0.elapsed();
    let stats = store.stats();
    let n = acked.load(Ordering::SeqCst);
    let commits = stats.commits - base_commits;
    let h = hist.lock().unwrap();
    let ch = commit_hist.lock().unwrap();
    println!(
        "{}, batch_max {batch_max:>4}, {submitters:>3} submitters every {:>4.1} ms, target {:>6}/s: {:>7.0} acked changes/s, {} commits ({:.1} changes/commit), ack latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms, commit (apply+fsync) p50 {:.2} ms p99 {:.2} ms max {:.2} ms, refused (queue full) {}",
        if two_phase_commit { "2PC" } else { "1PC" },
        period.as_secs_f64() * 1000.0,
        if rate_per_s == 0 { "max".to_string() } else { rate_per_s.to_string() },
        n as f64 / elapsed.as_secs_f64(),
        commits,
        n as f64 / commits.max(1) as f64,
        h.value_at_quantile(0.50) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        ch.value_at_quantile(0.50) as f64 / 1000.0,
        ch.value_at_quantile(0.99) as f64 / 1000.0,
        ch.max() as f64 / 1000.0,
        refused.load(Ordering::SeqCst),
    );
}

#[test]
#[ignore = "a measurement: run with --release -- --ignored --nocapture"]
fn measure_throughput() {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average before: {}", load.trim());
    let config = |two_phase_commit: bool| StoreConfig {
        two_phase_commit,
        ..StoreConfig::default()
    };
    // Interleaved repetitions: the machine is shared, so one run says little on its own.
    for _ in 0..3 {
        for two_phase in [false, true] {
            let (clients, tick) = (MEASURE_CLIENT_PERIOD, MEASURE_TICK_PERIOD);
            measure(20_000, MEASURE_SUBMITTERS, clients, config(two_phase));
            measure(20_000, 1, tick, config(two_phase));
        }
    }
    measure(
        40_000,
        MEASURE_SUBMITTERS,
        MEASURE_CLIENT_PERIOD,
        config(false),
    );
    measure(0, MEASURE_SUBMITTERS, MEASURE_CLIENT_PERIOD, config(false));
    // One durable commit per change, for comparison: what batching buys. A short queue keeps
    // the final drain short.
    let single = StoreConfig {
        batch_max: 1,
        queue_max: 2_000,
        ..config(false)
    };
    measure(20_000, MEASURE_SUBMITTERS, MEASURE_CLIENT_PERIOD, single);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average after: {}", load.trim());
}

#[test]
fn core_effects_in_core_world_out() {
    use neonet::proto::persist::{Change as CoreChange, Effect, World};
    let dir = tempfile::tempdir().unwrap();
    let (store, _, rx) = open_with_commits(dir.path(), StoreConfig::default());
    let effects = [
        Effect {
            change: CoreChange::PutEntity(app(4, 1.0)),
            ack: Some(tok(1)),
        },
        Effect {
            change: CoreChange::PutUser(user(2, Some(Vec3::new(1.0, 0.0, 1.0)))),
            ack: None,
        },
        Effect {
            change: CoreChange::AppendChat(chat(7)),
            ack: Some(tok(2)),
        },
    ];
    for e in effects {
        store.submit_effect(e).unwrap();
    }
    store.shutdown().unwrap();
    // The tokens come back as the core's own, ready for `ServerCore::handle_store`.
    let acks: Vec<_> = rx.try_iter().flat_map(|c| c.acks).collect();
    assert_eq!(acks, vec![tok(1), tok(2)]);

    let (_store, loaded) = open(dir.path());
    let world = World::from(loaded);
    assert_eq!(world.entities.get(&EntityId(4)), Some(&app(4, 1.0)));
    assert_eq!(
        world.users.get(&UserId(2)).and_then(|u| u.last_position),
        Some(Vec3::new(1.0, 0.0, 1.0))
    );
    assert_eq!(world.chat.back(), Some(&chat(7)));
    assert_eq!(
        (world.next_entity_id, world.next_user_id, world.next_chat_id),
        (5, 3, 8)
    );
}

// ---------------------------------------------------------------------------------------------
// Migration from schema version 2 (users without `standing`).

/// A user as schema version 2 stored it (no `standing`).
#[derive(serde::Serialize)]
struct UserV2 {
    id: UserId,
    name: String,
    rank: Rank,
    muted: bool,
    banned: bool,
    last_position: Option<[f32; 3]>,
}

#[test]
fn migrates_a_version_2_database_giving_every_user_a_clean_standing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = redb::Database::create(dir.path().join(DB_FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("schema_version", 2u32.to_le_bytes().as_slice())
                .unwrap();
            let put = |meta: &mut redb::Table<&str, &[u8]>, k: &str, v: Vec<u8>| {
                meta.insert(k, v.as_slice()).unwrap();
            };
            put(
                &mut meta,
                "settings",
                postcard::to_allocvec(&Settings::default()).unwrap(),
            );
            put(
                &mut meta,
                "spawn",
                postcard::to_allocvec(&Spawn::default()).unwrap(),
            );
            let ids = NextIds {
                entity: 1,
                user: 10,
                chat: 1,
            };
            put(&mut meta, "next_ids", postcard::to_allocvec(&ids).unwrap());
        }
        {
            let mut users = txn
                .open_table(redb::TableDefinition::<u64, &[u8]>::new("users"))
                .unwrap();
            let u = UserV2 {
                id: UserId(9),
                name: "old".into(),
                rank: Rank::Admin,
                muted: false,
                banned: true,
                last_position: Some([1.0, 2.0, 3.0]),
            };
            users
                .insert(9, postcard::to_allocvec(&u).unwrap().as_slice())
                .unwrap();
        }
        txn.open_table(redb::TableDefinition::<&str, (u32, &[u8])>::new(
            "blueprints",
        ))
        .unwrap();
        txn.open_table(redb::TableDefinition::<u32, &[u8]>::new("entities"))
            .unwrap();
        txn.open_table(redb::TableDefinition::<u64, &[u8]>::new("chat"))
            .unwrap();
        txn.commit().unwrap();
    }
    let (store, world) = open(dir.path());
    assert_eq!(world.migrated_from, Some(2));
    let u = &world.users[0];
    assert_eq!((u.id, u.rank, u.banned), (UserId(9), Rank::Admin, true));
    assert_eq!(u.last_position, Some(Vec3::new(1.0, 2.0, 3.0)));
    assert_eq!(
        u.standing,
        Default::default(),
        "no end: a ban from before holds for good"
    );
    store.shutdown().unwrap();
}

#[test]
fn an_acknowledged_change_is_remembered_across_a_restart_with_its_session_and_user() {
    let dir = tempfile::tempdir().unwrap();
    let (store, world, rx) = open_with_commits(dir.path(), StoreConfig::default());
    assert!(world.acked.is_empty());
    let token = AckToken {
        session: SessionId(3),
        req: ReqId(9),
        user: UserId(7),
    };
    store
        .submit(Change::PutEntity(app(1, 0.0)), Some(token))
        .unwrap();
    // Not superseded, not acknowledged: nothing to remember.
    store.submit(Change::PutEntity(app(2, 0.0)), None).unwrap();
    let mut acked = Vec::new();
    while acked.is_empty() {
        acked = rx.recv().unwrap().acks;
    }
    assert_eq!(acked, vec![token]);
    store.shutdown().unwrap();
    let (_store, again) = open(dir.path());
    assert_eq!(again.acked, vec![token]);
    assert_eq!(again.entities.len(), 2);
}
