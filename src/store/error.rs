//! The store's error types: one enum for opening, loading and committing ([`StoreError`]), one
//! for handing a change to the writer ([`SubmitError`]).

use std::io;
use std::path::{Path, PathBuf};

/// Why the store could not open, load, migrate or commit.
///
/// Every variant names the file or folder involved so that an operator can act on the message
/// alone. Disk problems (full disk, permissions, a failing device) arrive as
/// [`StoreError::Disk`] or [`StoreError::DataDir`]; [`StoreError::is_disk_full`] tells a full disk
/// apart.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The data folder could not be created or is not usable as a folder: missing permissions,
    /// a read-only file system, or a regular file where a folder should be.
    #[error("cannot create or use the data folder {path}: {source}")]
    DataDir {
        /// The data folder asked for.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// Another process (or another [`super::Store`] in this one) has the database open. redb
    /// holds an exclusive `flock` on the file for as long as it is open, so two relays can never
    /// write the same world.
    #[error(
        "the database {path} is already open: another neonet relay is using this data folder \
         (stop it, or give this one its own data folder)"
    )]
    AlreadyOpen {
        /// The database file.
        path: PathBuf,
    },
    /// Reading or writing the database file failed: full disk, lost permissions, a failing
    /// device. Nothing in the failed transaction was made durable.
    #[error("disk error on {path}: {source}")]
    Disk {
        /// The database file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// An earlier disk error left the open database unusable until it is reopened (redb's
    /// `PreviousIo`). The writer reopens it before its next batch.
    #[error("an earlier disk error on {path} left the database needing a reopen")]
    NeedsReopen {
        /// The database file.
        path: PathBuf,
    },
    /// The file is not a readable redb database, or redb found it damaged.
    #[error("the database {path} is corrupt: {detail}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A record read back from disk could not be decoded: the file is damaged or was written by
    /// a build whose record encoding differs without a schema version bump.
    #[error("corrupt record in table `{table}` at key {key} of {path}: {source}")]
    Decode {
        /// The database file.
        path: PathBuf,
        /// The table holding the record.
        table: &'static str,
        /// The record's key, printed.
        key: String,
        /// The decoder's complaint.
        #[source]
        source: postcard::Error,
    },
    /// The database was written by a newer neonet whose schema this build does not know.
    /// Refused rather than guessed at: run the newer build, or restore a backup.
    #[error(
        "the database {path} has schema version {found}, newer than this build's {supported}: \
         run a newer neonet"
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// The version stored in the file.
        found: u32,
        /// [`super::SCHEMA_VERSION`].
        supported: u32,
    },
    /// The database file uses an older redb file format that redb cannot open in place.
    #[error("the database {path} uses redb file format {format}, which needs a manual upgrade")]
    FileFormatTooOld {
        /// The database file.
        path: PathBuf,
        /// The file format version found.
        format: u8,
    },
    /// A value could not be encoded for storage (a bug: every stored type is encodable).
    #[error("cannot encode a value for table `{table}`: {source}")]
    Encode {
        /// The table it was meant for.
        table: &'static str,
        /// The encoder's complaint.
        #[source]
        source: postcard::Error,
    },
    /// Any other error redb reported (type mismatches, transaction misuse): a bug or a file
    /// changed behind our back.
    #[error("database error on {path}: {detail}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// redb's message.
        detail: String,
    },
    /// The writer thread has stopped (after [`super::Store::shutdown`] or a panic), so the
    /// change was not written.
    #[error("the store's writer thread has stopped")]
    Closed,
}

impl StoreError {
    /// Whether this is a full disk (`ENOSPC`) or an exceeded quota (`EDQUOT`).
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Disk { source, .. } | StoreError::DataDir { source, .. } => {
                // `StorageFull` is ENOSPC; EDQUOT (122 on Linux) has no stable kind in Rust 1.85.
                source.kind() == io::ErrorKind::StorageFull
                    || (cfg!(target_os = "linux") && source.raw_os_error() == Some(122))
            }
            _ => false,
        }
    }

    /// Whether the database handle must be dropped and reopened before it can write again.
    pub(crate) fn needs_reopen(&self) -> bool {
        matches!(
            self,
            StoreError::Disk { .. } | StoreError::NeedsReopen { .. } | StoreError::Corrupt { .. }
        )
    }

    /// Maps any redb error to a [`StoreError`] naming `path`.
    pub(crate) fn from_redb(path: &Path, e: impl Into<redb::Error>) -> StoreError {
        let path = path.to_path_buf();
        match e.into() {
            redb::Error::DatabaseAlreadyOpen => StoreError::AlreadyOpen { path },
            // redb reports a bad header (not a redb file) as `InvalidData`.
            redb::Error::Io(source) if source.kind() == io::ErrorKind::InvalidData => {
                StoreError::Corrupt {
                    path,
                    detail: format!("not a readable redb database ({source})"),
                }
            }
            redb::Error::Io(source) => StoreError::Disk { path, source },
            redb::Error::PreviousIo => StoreError::NeedsReopen { path },
            redb::Error::Corrupted(detail) => StoreError::Corrupt { path, detail },
            redb::Error::UpgradeRequired(format) => StoreError::FileFormatTooOld { path, format },
            other => StoreError::Db {
                path,
                detail: other.to_string(),
            },
        }
    }
}

/// Extension to attach the database path to redb results.
pub(crate) trait AtPath<T> {
    /// Converts the error into a [`StoreError`] naming `path`.
    fn at(self, path: &Path) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> AtPath<T> for Result<T, E> {
    fn at(self, path: &Path) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::from_redb(path, e))
    }
}

/// Why [`super::Store::submit`] did not take a change. The caller still holds its
/// [`super::AckToken`] and refuses the change (the relay answers `Refusal::Storage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// [`super::StoreConfig::queue_max`] changes already wait for the writer: the disk is not
    /// keeping up. Refusing now keeps memory bounded and tells the sender the truth.
    #[error("the store's queue is full: the disk is not keeping up")]
    Full,
    /// The writer thread has stopped; nothing more can be made durable.
    #[error("the store's writer thread has stopped")]
    Closed,
}
