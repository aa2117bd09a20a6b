//! Unit tests that need the store's internals: a storage backend that fails on demand, and the
//! pinned record encoding.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use neonet_proto::types::{
    Blueprint, BlueprintId, Bytes, ChatMessage, Entity, EntityId, EntityKind, Rank, Settings,
    Spawn, Transform, User, UserId, Vec3,
};

use super::*;

/// A file backend whose writes, syncs and resizes fail with `ENOSPC` while `full` is set: a
/// full disk on demand.
#[derive(Debug)]
struct FullDisk {
    inner: redb::backends::FileBackend,
    full: Arc<AtomicBool>,
}

impl FullDisk {
    fn check(&self) -> io::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            Err(io::Error::from_raw_os_error(28))
        } else {
            Ok(())
        }
    }
}

impl redb::StorageBackend for FullDisk {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.inner.read(offset, len)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self, eventual: bool) -> io::Result<()> {
        self.check()?;
        self.inner.sync_data(eventual)
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check()?;
        self.inner.write(offset, data)
    }
}

fn full_disk_opener(path: &Path, full: Arc<AtomicBool>) -> Opener {
    let path = path.to_path_buf();
    Box::new(move || {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| StoreError::Disk {
                path: path.clone(),
                source,
            })?;
        let inner = redb::backends::FileBackend::new(file).at(&path)?;
        redb::Builder::new()
            .create_with_backend(FullDisk {
                inner,
                full: full.clone(),
            })
            .at(&path)
    })
}

fn tok(n: u64) -> AckToken {
    AckToken {
        session: neonet_proto::types::SessionId(n),
        req: neonet_proto::types::ReqId(0),
        user: neonet_proto::types::UserId(n),
    }
}

fn app(id: u32) -> Entity {
    Entity {
        id: EntityId(id),
        kind: EntityKind::App,
        owner: None,
        user: None,
        blueprint: Some(BlueprintId("bp".into())),
        transform: Transform::default(),
        props: vec![("state".into(), Bytes::from("on"))],
    }
}

#[test]
fn disk_full_refuses_the_batch_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE_NAME);
    let full = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let (store, world) = Store::open_with(
        path.clone(),
        full_disk_opener(&path, full.clone()),
        StoreConfig::default(),
        Box::new(move |c| {
            let _ = tx.send(c);
        }),
    )
    .unwrap();
    assert!(world.created);

    store
        .submit(Change::PutEntity(app(1)), Some(tok(1)))
        .unwrap();
    store.flush().unwrap();
    let c = rx.recv().unwrap();
    assert!(c.is_durable());
    assert_eq!(c.acks, vec![tok(1)]);

    full.store(true, Ordering::SeqCst);
    store
        .submit(Change::PutEntity(app(2)), Some(tok(2)))
        .unwrap();
    store.flush().unwrap();
    let c = rx.recv().unwrap();
    assert_eq!(c.acks, vec![tok(2)]);
    let err = c.outcome.expect_err("a full disk must fail the commit");
    assert!(err.is_disk_full(), "{err}");
    assert!(err.to_string().contains("disk error"), "{err}");

    full.store(false, Ordering::SeqCst);
    store
        .submit(Change::PutEntity(app(3)), Some(tok(3)))
        .unwrap();
    store.flush().unwrap();
    // Retries while the disk was still full report failures with no tokens; then one durable
    // commit holds the retried change 2 (its token already refused) and change 3.
    let c = loop {
        let c = rx.recv().unwrap();
        if c.is_durable() {
            break c;
        }
        assert!(c.acks.is_empty(), "token 2 must be refused only once");
    };
    assert_eq!(c.acks, vec![tok(3)]);
    assert_eq!(c.changes, 2);
    let stats = store.shutdown().unwrap();
    assert!(stats.failed_commits >= 1);

    let (store, world) = Store::open(dir.path(), StoreConfig::default(), |_| {}).unwrap();
    let ids: Vec<u32> = world.entities.iter().map(|e| e.id.0).collect();
    assert_eq!(
        ids,
        vec![1, 2, 3],
        "the refused change is retried: the core kept it, so the disk converges to it"
    );
    store.shutdown().unwrap();
}

#[test]
fn a_dead_disk_is_retried_with_backoff_not_in_a_spin() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE_NAME);
    let full = Arc::new(AtomicBool::new(false));
    let (store, _) = Store::open_with(
        path.clone(),
        full_disk_opener(&path, full.clone()),
        StoreConfig::default(),
        Box::new(|_| {}),
    )
    .unwrap();
    full.store(true, Ordering::SeqCst);
    store
        .submit(Change::PutEntity(app(1)), Some(tok(1)))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // Attempts at about 0, 50, 150, 350 ms: a handful, not thousands.
    let failed = store.stats().failed_commits;
    assert!(
        (1..=6).contains(&failed),
        "{failed} failed commits in 500 ms"
    );
    full.store(false, Ordering::SeqCst);
    store.flush().unwrap();
    assert_eq!(store.stats().changes, 1);
    store.shutdown().unwrap();
}

#[test]
fn dirty_values_of_a_failed_flush_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE_NAME);
    let full = Arc::new(AtomicBool::new(false));
    let (store, _) = Store::open_with(
        path.clone(),
        full_disk_opener(&path, full.clone()),
        StoreConfig::default(),
        Box::new(|_| {}),
    )
    .unwrap();
    full.store(true, Ordering::SeqCst);
    store.mark_dirty(app(7));
    store.flush().unwrap();
    assert_eq!(store.stats().failed_commits, 1);
    full.store(false, Ordering::SeqCst);
    store.flush().unwrap();
    assert_eq!(store.stats().dirty_entities, 1);
    store.shutdown().unwrap();
    let (_store, world) = Store::open(dir.path(), StoreConfig::default(), |_| {}).unwrap();
    assert_eq!(world.entities, vec![app(7)]);
}

/// The bytes of every record type, pinned. If this fails, a type in `neonet_proto::types`
/// changed its encoding: that is a schema change (see `schema.rs`): bump `SCHEMA_VERSION`, add a
/// migration with a frozen copy of the old type, then update the expected bytes here.
#[test]
fn record_encoding_is_pinned() {
    let mut out = Vec::new();
    out.extend(schema::enc("t", &Settings::default()).unwrap());
    out.extend(schema::enc("t", &Spawn::default()).unwrap());
    out.extend(
        schema::enc(
            "t",
            &User {
                id: UserId(5),
                name: "ann".into(),
                rank: Rank::Builder,
                muted: true,
                banned: false,
                last_position: Some(Vec3::new(1.0, 2.0, 3.0)),
                standing: Default::default(),
            },
        )
        .unwrap(),
    );
    out.extend(schema::enc("t", &app(9)).unwrap());
    out.extend(
        schema::enc(
            "t",
            &Blueprint {
                id: BlueprintId("b".into()),
                version: 3,
                name: "n".into(),
                model: Some("m".into()),
                ..Blueprint::default()
            },
        )
        .unwrap(),
    );
    out.extend(
        schema::enc(
            "t",
            &ChatMessage {
                id: 4,
                from_user: Some(UserId(5)),
                from_name: "ann".into(),
                from_entity: None,
                body: "hi".into(),
                created_at_ms: 1000,
            },
        )
        .unwrap(),
    );
    out.extend(
        schema::enc(
            "t",
            &NextIds {
                entity: 1,
                user: 2,
                chat: 3,
            },
        )
        .unwrap(),
    );
    let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        concat!(
            "0c6e656f6e657420776f726c64000000000000010000000000000000000000000000000000000000",
            "00000000000000803f0503616e6e010100010000803f00000040000040400000000000",
            "09010000010262700000",
            "000000000000000000000000000000000000000000000000803f0001057374617465026f6e016203",
            "016e0001016d000000000000000000000004010503616e6e00026869e807010203",
        )
    );
}

/// The relay over a disk that fills up: changes it cannot make durable are refused
/// (`Refusal::Storage`), never acknowledged; the relay keeps serving, and once the disk has room
/// again changes are acknowledged again.
#[test]
fn the_relay_refuses_what_a_full_disk_cannot_store_then_recovers() {
    use crate::client::{Client, ClientEvent, ClientOptions};
    use crate::config::RelayConfig;
    use crate::relay::{Relay, RelayHooks, StoreOpener};
    use neonet_proto::wire::msg::Refusal;
    use std::time::{Duration, Instant};

    const WAIT: Duration = Duration::from_secs(10);
    let dir = tempfile::tempdir().unwrap();
    let config = RelayConfig {
        persist: true,
        ..RelayConfig::for_tests(dir.path())
    };
    let path = config.data_dir.join(DB_FILE_NAME);
    let full = Arc::new(AtomicBool::new(false));
    let opener: StoreOpener = {
        let full = full.clone();
        Box::new(move |store_config, on_commit| {
            Store::open_with(
                path.clone(),
                full_disk_opener(&path, full),
                store_config,
                on_commit,
            )
        })
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let relay = rt
        .block_on(Relay::start_inner(
            config,
            RelayHooks::default(),
            Some(opener),
        ))
        .expect("relay starts");
    let client = Client::connect(
        relay.local_addr(),
        ClientOptions {
            trust: crate::tls::Trust::Sha256(relay.cert_fingerprint()),
            connect_timeout: WAIT,
            ..ClientOptions::named("ada")
        },
    )
    .expect("joins");
    let answer = |body: &str| {
        let req = client.send_chat(body).unwrap();
        match client
            .wait_for(WAIT, |e| {
                matches!(e, ClientEvent::Acked(r) if *r == req)
                    || matches!(e, ClientEvent::Refused { req: r, .. } if *r == req)
            })
            .expect("an answer")
        {
            ClientEvent::Acked(_) => Ok(()),
            ClientEvent::Refused { reason, .. } => Err(reason),
            _ => unreachable!(),
        }
    };
    assert_eq!(answer("before"), Ok(()));

    full.store(true, Ordering::SeqCst);
    // The commit holding it fails: refused, not acknowledged.
    assert_eq!(answer("while full"), Err(Refusal::Storage));
    // While storage fails, the core refuses changes up front.
    assert_eq!(answer("still full"), Err(Refusal::Storage));
    // The relay keeps serving: pings, the session, reads.
    assert!(client.with_world(|w| w.chat.iter().any(|m| m.body == "before")));

    full.store(false, Ordering::SeqCst);
    // The store retries (backing off up to 2 s); its first durable commit reopens the door.
    let deadline = Instant::now() + WAIT;
    loop {
        match answer("after") {
            Ok(()) => break,
            Err(Refusal::Storage) => {}
            Err(other) => panic!("refused for {other:?}"),
        }
        assert!(Instant::now() < deadline, "changes never accepted again");
        std::thread::sleep(Duration::from_millis(50));
    }
    client.close();
    rt.block_on(relay.shutdown()).expect("clean shutdown");
    let (_store, world) = Store::open(
        dir.path().join("data").as_path(),
        StoreConfig::default(),
        |_| {},
    )
    .unwrap();
    let bodies: Vec<&str> = world.chat.iter().map(|m| m.body.as_str()).collect();
    assert!(
        bodies.contains(&"before") && bodies.contains(&"after"),
        "{bodies:?}"
    );
}
