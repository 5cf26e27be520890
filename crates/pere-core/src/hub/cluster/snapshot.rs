//! The replicated state at a position of the shared log, as one blob: what
//! lets the log be trimmed. A node that starts loads the latest snapshot and
//! applies only the entries after it, instead of the log since the
//! cluster's first day (docs/PROTOCOL.md §10).
//!
//! Only the state every node computes alike goes in: ids, retained events
//! and their receipts, memberships with every node's stream counts,
//! idempotency keys, deadlines and notices, run-time tokens. What is one
//! node's own — its streams, receipts streams, metrics — stays out. (A
//! node's own writes reach its ledger through the log as everyone else's,
//! so nothing in the ledger is one node's alone.)

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::auth::{Grants, TokenHash};
use crate::event::{Event, EventId, Sequencer};
use crate::hub::state::{IdemPart, LedgersParts, MembershipsParts, NoticesParts, State};
use crate::ledger::PartsError;
use crate::name::ChannelName;

/// The format's version: a node refuses a snapshot of another version
/// (and replays the log instead, if it still holds everything).
const VERSION: u32 = 1;

/// The replicated state, as plain data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(in crate::hub) struct Snapshot {
    version: u32,
    /// The last id given.
    seq: u64,
    /// The last event applied.
    head: u64,
    floor: u64,
    ledgers: LedgersParts,
    memberships: MembershipsParts,
    idempotency: Vec<IdemPart>,
    notices: NoticesParts,
    /// Run-time token changes, by hash (`None`: revoked).
    tokens: Vec<([u8; 32], Option<Grants>)>,
    /// Hashes known as JWT `jti` keys.
    jtis: Vec<[u8; 32]>,
    /// What failovers lost, by channel (absent from older snapshots).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    failover_losses: Vec<(ChannelName, u64, u64)>,
}

/// Why a snapshot cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub(in crate::hub) enum SnapshotError {
    /// Not a snapshot this version reads.
    #[error("unreadable snapshot: {0}")]
    Format(#[from] serde_json::Error),
    /// Written by another version.
    #[error("snapshot version {0}, this node reads version {VERSION}")]
    Version(u32),
    /// Its receipts contradict themselves.
    #[error("inconsistent snapshot: {0}")]
    Parts(#[from] PartsError),
}

impl State {
    /// The replicated state as it is now (between two entries of the log).
    pub(in crate::hub) fn snapshot(&self) -> Snapshot {
        let (tokens, jtis) = self.auth.runtime_parts();
        Snapshot {
            version: VERSION,
            seq: self.seq.last().0,
            head: self.head.0,
            floor: self.floor.0,
            ledgers: self.ledgers.parts(),
            memberships: self.memberships.parts(),
            idempotency: self.idempotency.parts(),
            notices: self.notices.parts(),
            tokens: tokens.into_iter().map(|(h, g)| (h.0, g)).collect(),
            jtis: jtis.into_iter().map(|h| h.0).collect(),
            failover_losses: {
                let mut losses: Vec<(ChannelName, u64, u64)> = self
                    .failover_losses
                    .iter()
                    .map(|(c, (first, upto))| (c.clone(), first.0, upto.0))
                    .collect();
                // Every node's snapshot of one state is the same bytes.
                losses.sort();
                losses
            },
        }
    }

    /// Loads `snap` into this fresh state; returns the retained events, for
    /// the store.
    pub(in crate::hub) fn restore_snapshot(
        &mut self,
        snap: Snapshot,
    ) -> Result<Vec<Arc<Event>>, SnapshotError> {
        if snap.version != VERSION {
            return Err(SnapshotError::Version(snap.version));
        }
        let events = self.ledgers.restore(snap.ledgers)?;
        self.seq = Sequencer::after(EventId(snap.seq));
        self.head = EventId(snap.head);
        self.floor = EventId(snap.floor);
        self.memberships.restore(snap.memberships);
        self.failover_losses = snap
            .failover_losses
            .into_iter()
            .map(|(c, first, upto)| (c, (EventId(first), EventId(upto))))
            .collect();
        self.idempotency.restore(snap.idempotency);
        self.notices.restore_parts(snap.notices, &self.ledgers);
        self.auth.restore_runtime(
            snap.tokens
                .into_iter()
                .map(|(h, g)| (TokenHash(h), g))
                .collect(),
            snap.jtis.into_iter().map(TokenHash).collect(),
        );
        if self.auth.has_runtime_changes() {
            // Auth was on (the first run-time admin token turns it on, in
            // an entry this snapshot covers): a node started from it must
            // not serve everyone, as a restarted single node does not.
            self.auth.enable_for_journal();
        }
        Ok(events)
    }
}

/// The blob stored in the log's snapshot.
pub(in crate::hub) fn encode(snap: &Snapshot) -> Vec<u8> {
    // Plain data with string keys: serializing cannot fail.
    serde_json::to_vec(snap).unwrap_or_default()
}

/// A stored blob, read back.
pub(in crate::hub) fn decode(blob: &[u8]) -> Result<Snapshot, SnapshotError> {
    let snap: Snapshot = serde_json::from_slice(blob)?;
    if snap.version != VERSION {
        return Err(SnapshotError::Version(snap.version));
    }
    Ok(snap)
}
