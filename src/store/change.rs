//! What the store consumes (persistence effects) and what it reports back (commits).

use std::sync::Arc;
use std::time::Duration;

use super::{AckToken, StoreError};

pub use neonet_proto::persist::{Change, NextIds};

/// The report of one write transaction, given to the commit callback.
#[derive(Clone, Debug)]
pub struct Commit {
    /// Commit attempt number, from 1, counting failed attempts too.
    pub seq: u64,
    /// The tokens of every acknowledged change in this transaction, in submission order.
    pub acks: Vec<AckToken>,
    /// `Ok` when the transaction is durably on disk (one fsync for the whole batch): every token
    /// in [`Commit::acks`] may be acknowledged. `Err` when nothing of it was written: every token
    /// must be refused (`Refusal::Storage`).
    pub outcome: Result<(), Arc<StoreError>>,
    /// Changes in the transaction (acknowledged or not), not counting dirty entities.
    pub changes: usize,
    /// Dirty entities flushed by the transaction.
    pub dirty_entities: usize,
    /// Time from opening the write transaction to `commit` returning (apply + fsync).
    pub commit_latency: Duration,
    /// How long the oldest change of the batch waited between its submission and the end of
    /// the commit: an upper bound on the acknowledgement latency the store added.
    pub oldest_wait: Duration,
}

impl Commit {
    /// Whether the transaction is durable.
    pub fn is_durable(&self) -> bool {
        self.outcome.is_ok()
    }
}
