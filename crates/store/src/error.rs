//! `StoreError`, the one error type of the store, and the `Result` alias used throughout.
//!
//! Every variant names the file involved, because the operator reading the log needs to know
//! which queue directory or segment to look at.

use std::io;
use std::path::PathBuf;

use crate::segment::Position;

/// Result type of the store; the error defaults to [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An operating-system call failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A segment file does not start with the segment magic.
    #[error(
        "{}: not a Warren segment file ({reason}); move it out of the queue directory",
        path.display()
    )]
    BadSegmentHeader { path: PathBuf, reason: &'static str },

    /// A segment file was written by a format version this build does not read.
    #[error(
        "{}: segment format version {found} is not supported (this build reads version \
         {supported}); run the Warren release that wrote it",
        path.display()
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u16,
        supported: u16,
    },

    /// A record that recovery accepted no longer passes its checks when read back.
    #[error("{}: record at offset {offset} is corrupt ({reason})", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },

    /// The position does not name a record this store holds (never written, or its segment
    /// was already reclaimed).
    #[error("no message record at position {position}")]
    UnknownPosition { position: Position },

    /// A payload too large to be framed in one segment.
    #[error("record of {len} bytes exceeds the largest record a segment can hold ({max} bytes)")]
    RecordTooLarge { len: u64, max: u64 },

    /// A write could not be undone or an fsync failed: what is on disk is no longer known, so
    /// the log refuses further writes rather than build on it.
    #[error(
        "log {} stopped accepting writes after a failed write or fsync; reopen the queue store \
         to recover from what is on disk",
        path.display()
    )]
    Poisoned { path: PathBuf },

    /// The segment being written cannot be removed; roll the log over first.
    #[error("segment {segment} is the one being written and cannot be removed")]
    ActiveSegment { segment: u32 },

    /// Options that cannot work (e.g. a segment size too small for its header).
    #[error("invalid store options: {0}")]
    InvalidOptions(&'static str),

    /// The definitions file failed its header, length or checksum check.
    #[error(
        "definitions file {} is corrupt ({reason}); restore it from a backup or a definitions \
         export, or move it away to start with empty definitions (queue data directories are \
         kept)",
        path.display()
    )]
    CatalogCorrupt { path: PathBuf, reason: String },

    /// The definitions file is intact but does not decode into the expected type.
    #[error(
        "definitions file {} is intact but does not match the expected schema: {source}",
        path.display()
    )]
    CatalogDecode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// The definitions could not be serialised.
    #[error("cannot serialise definitions: {0}")]
    CatalogEncode(#[source] serde_json::Error),
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True when the disk is full: the broker should raise its disk alarm (block publishers)
    /// rather than treat the store as broken. The store stays usable once space is freed.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull)
    }
}
