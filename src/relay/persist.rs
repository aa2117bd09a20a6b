//! The relay's persistence plumbing: opening the store, forwarding its commit reports to the
//! core task, seeding a new database. What to store and when is the core's decision (its
//! effects); this only carries it.

use std::sync::Arc;

use tokio::sync::mpsc;

use neonet_proto::persist::{Change, StoreReport, World};

use super::{Inbound, RelayError};
use crate::metrics::Metrics;
use crate::store::{Commit, LoadedWorld, Store, StoreConfig, StoreError};

/// Opens the relay's store with the given tuning and commit callback (the data folder's
/// [`Store::open`]; tests pass a store over a failing disk).
pub(crate) type StoreOpener = Box<
    dyn FnOnce(
            StoreConfig,
            Box<dyn FnMut(Commit) + Send>,
        ) -> Result<(Store, LoadedWorld), StoreError>
        + Send,
>;

/// A persistent relay's store and the commits its writer reports.
pub(super) struct Persist {
    pub(super) store: Arc<Store>,
    pub(super) commits: mpsc::UnboundedReceiver<Inbound>,
}

/// The store's commit callback (run on its writer thread, never blocking) and the receiving
/// end for the core task. Every commit becomes one [`Inbound::Store`] message, durable or
/// failed, with or without acknowledgements, so that the core learns of a recovery even when
/// it has been refusing every change. Health changes are logged here, once each.
pub(super) fn commit_forwarder(
    metrics: Option<Arc<Metrics>>,
) -> (
    impl FnMut(Commit) + Send + 'static,
    mpsc::UnboundedReceiver<Inbound>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut healthy = true;
    let forward = move |c: Commit| {
        let ok = c.is_durable();
        if let (Some(m), true) = (&metrics, ok) {
            if c.changes > 0 || c.dirty_entities > 0 {
                m.record_persist_commit(c.oldest_wait);
            }
        }
        if ok != healthy {
            healthy = ok;
            match &c.outcome {
                Ok(()) => tracing::info!("the world database commits again: accepting changes"),
                Err(e) => tracing::error!(
                    error = %e,
                    disk_full = e.is_disk_full(),
                    "the world database cannot commit: changes are refused (Storage) until it recovers"
                ),
            }
        }
        let msg = Inbound::Store(if ok {
            StoreReport::Durable(c.acks)
        } else {
            StoreReport::Failed(c.acks)
        });
        // Fails only once the core task is gone (shutdown): nobody is left to acknowledge.
        let _ = tx.send(msg);
    };
    (forward, rx)
}

/// Writes `world` into a newly created database and waits until it is durable. Its id
/// counters are the core's to reserve (its first effect).
pub(super) fn seed_store(store: &Store, world: &World) -> Result<(), RelayError> {
    let submit = |c: Change| {
        store
            .submit(c, None)
            .map_err(|_| RelayError::Store(StoreError::Closed))
    };
    submit(Change::PutSettings(world.settings.clone()))?;
    submit(Change::PutSpawn(world.spawn))?;
    for b in world.blueprints.values() {
        submit(Change::PutBlueprint(b.clone()))?;
    }
    for u in world.users.values() {
        submit(Change::PutUser(u.clone()))?;
    }
    for e in world.entities.values() {
        if e.kind == neonet_proto::types::EntityKind::App {
            submit(Change::PutEntity(e.clone()))?;
        }
    }
    for m in &world.chat {
        submit(Change::AppendChat(m.clone()))?;
    }
    store.flush()?;
    Ok(())
}

pub(super) fn log_loaded(store: &Store, w: &LoadedWorld) {
    tracing::info!(
        path = %store.path().display(),
        created = w.created,
        migrated_from = ?w.migrated_from,
        blueprints = w.blueprints.len(),
        apps = w.entities.len(),
        users = w.users.len(),
        chat = w.chat.len(),
        "world loaded"
    );
}
