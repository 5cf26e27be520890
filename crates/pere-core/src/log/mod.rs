//! The event log: the [`EventStore`] trait, the [`Record`]s it persists, and
//! its implementations ([`MemoryStore`]).
//!
//! # Invariants
//! - The hub is the only writer, from one task: records reach
//!   [`EventStore::append`] in the order the hub applied them, and event ids
//!   in that order are strictly increasing.
//! - An appended batch is either wholly readable after `append` resolved
//!   `Ok`, or (after a crash) a prefix of it is, and that prefix is what
//!   [`EventStore::recover`] returns. A torn record is never returned.
//! - Damage to stored records (a flipped bit, a bad sector) costs exactly
//!   the damaged records: recovery skips them, keeps every record before
//!   and after, and reports each skipped region in [`Recovered::damage`].
//! - A batch whose `append` failed is never read back, even after a
//!   restart: the store undoes what it wrote of it before it answers (or,
//!   if even that fails, before it writes anything else).
//! - [`EventStore::read`] only returns events whose `append` has resolved.
//! - Retention ([`Retention`]) belongs to the store: `append` drops the
//!   oldest events of a channel past `history`, `prune` those past `max_age`,
//!   and both report what they dropped so the hub forgets the receipts too.
//!   Events of a channel are always dropped oldest first.

pub(crate) mod codec;
pub(crate) mod file;
mod memory;

pub use file::{DEFAULT_SEGMENT_SIZE, FileStore, FileStoreConfig, Fsync};
pub use memory::MemoryStore;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use crate::auth::{Grants, TokenHash};
use crate::config::Retention;
use crate::error::Result;
use crate::event::{Event, EventId, Timestamp};
use crate::name::{ChannelName, DeviceId, Pattern};

/// One entry of the hub's journal. Replaying every record in order rebuilds
/// the hub's state: events and retention, receipts, memberships, cursors,
/// run-time tokens.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Record {
    /// An event was published.
    Event(Arc<Event>),
    /// A device acknowledged an event.
    Ack {
        /// The event.
        id: EventId,
        /// The acknowledging device.
        device: DeviceId,
        /// The device's status text.
        status: Arc<str>,
        /// When the receipt arrived.
        at: Timestamp,
    },
    /// A device became a member of a subscription.
    Joined {
        /// The subscription (channel or pattern, as written).
        subscription: Pattern,
        /// The device.
        device: DeviceId,
        /// The hub's head when it joined: its cursor starts here.
        head: EventId,
        /// When it joined.
        at: Timestamp,
    },
    /// A member's durable cursor moved (the last event delivered to it).
    Cursor {
        /// The subscription.
        subscription: Pattern,
        /// The device.
        device: DeviceId,
        /// The last event id delivered.
        cursor: EventId,
        /// When it was delivered.
        at: Timestamp,
    },
    /// A member opened (`online: true`) or closed a stream.
    Presence {
        /// The subscription.
        subscription: Pattern,
        /// The device.
        device: DeviceId,
        /// Whether the stream opened or closed.
        online: bool,
        /// The `Last-Event-ID` it asked for, when it opened one with it.
        last_event_id: Option<EventId>,
        /// When.
        at: Timestamp,
    },
    /// An overdue notice was issued for a device (`sent: false`), or the
    /// publisher's webhook accepted it (`sent: true`). Issued notices are
    /// never issued again; unsent ones are retried after a restart.
    Notice {
        /// The event.
        id: EventId,
        /// The device.
        device: DeviceId,
        /// Whether the webhook accepted it.
        sent: bool,
        /// When.
        at: Timestamp,
    },
    /// A token was created or changed (`grants: Some`) or revoked (`None`)
    /// at run time. Only its SHA-256 is journaled, never its value.
    Token {
        /// The token's hash.
        token: TokenHash,
        /// Its grants from now on; `None` revokes it.
        grants: Option<Grants>,
        /// When.
        at: Timestamp,
    },
    /// A member sent its first receipt: from now on it is sent again what
    /// it has not acknowledged (docs/PROTOCOL.md §5.4). Its receipts alone
    /// do not say so once retention dropped their events.
    Acking {
        /// The subscription.
        subscription: Pattern,
        /// The device.
        device: DeviceId,
        /// The event of that receipt.
        id: EventId,
        /// When.
        at: Timestamp,
    },
    /// Every event of an acknowledging member's audience up to `upto` (on
    /// the channels listed, up to theirs) is acknowledged, or was told
    /// lost: after a restart, events retention dropped above it are
    /// reported with `pere.gap` (docs/PROTOCOL.md §5.4). Journaled with
    /// [`Record::Acking`]; a stale one errs towards a gap, never away from
    /// one.
    AckedUpto {
        /// The subscription.
        subscription: Pattern,
        /// The device.
        device: DeviceId,
        /// Its acknowledged prefix on channels not listed.
        upto: EventId,
        /// Channels of a pattern with unacknowledged events, each with its
        /// own prefix, sorted by name (none for a channel subscription).
        channels: Vec<(ChannelName, EventId)>,
        /// When.
        at: Timestamp,
    },
    /// Events written to a device by replay from before it was a member
    /// (a late join, `replay=all`, an older `Last-Event-ID`): they joined
    /// its audience when written (docs/PROTOCOL.md §5.2), which neither its
    /// membership nor its cursor tells after a restart.
    Replayed {
        /// The device.
        device: DeviceId,
        /// The events, in id order.
        ids: Vec<EventId>,
        /// When the last of them was written.
        at: Timestamp,
    },
    /// A membership ended (expired or deleted by an operator).
    Left {
        /// The subscription.
        subscription: Pattern,
        /// The device.
        device: DeviceId,
        /// When.
        at: Timestamp,
    },
}

/// What a store found when it opened.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every intact record, oldest first.
    pub records: Vec<Record>,
    /// The highest event id ever stored (even if since evicted), so new ids
    /// continue above it.
    pub last_id: EventId,
    /// Per channel, the highest id dropped for retention, so resuming
    /// clients below it are told about the gap.
    pub evicted: Vec<Evicted>,
    /// Whether the store keeps events across restarts. A volatile store
    /// (memory) forgets everything, so any id from before this start may
    /// name events that are gone.
    pub durable: bool,
    /// Human-readable notes about what recovery found or dropped.
    pub notes: Vec<String>,
    /// Damaged bytes recovery skipped: the records in them are lost, those
    /// around them were recovered. Empty for an intact log (a torn tail,
    /// which a crash leaves, is cut and only noted).
    pub damage: Vec<Damage>,
    /// Events retention dropped that were published with an idempotency
    /// key, kept (for the key's TTL) only so that a retry after a restart
    /// is still answered as one (docs/PROTOCOL.md §2).
    pub keyed: Vec<Arc<Event>>,
}

/// Bytes of the log that recovery could not read and skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The segment file.
    pub file: PathBuf,
    /// Where the skipped bytes start in it.
    pub offset: u64,
    /// How many bytes were skipped.
    pub len: u64,
    /// Why the first of them could not be read.
    pub cause: String,
    /// Where a copy of them was kept for inspection, if it could be
    /// written. The damage is reported for as long as this file exists.
    pub kept_in: Option<PathBuf>,
    /// Whether the segment was rewritten without the damaged bytes (then
    /// only the copy tells of them); if not, the next start finds them again.
    pub repaired: bool,
}

impl Damage {
    /// Whether the damage is still to be dealt with: its copy is still
    /// there, or none could be written and the log still holds it.
    pub fn outstanding(&self) -> bool {
        match &self.kept_in {
            Some(copy) => copy.exists(),
            None => true,
        }
    }
}

/// Events a store dropped for retention: every event of `channel` with an id
/// up to and including `upto` is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evicted {
    /// The channel.
    pub channel: ChannelName,
    /// The highest id dropped.
    pub upto: EventId,
}

/// Where the hub's events and journal live.
///
/// Methods that may do I/O return futures; a store that needs threads for
/// blocking I/O owns them. The hub calls every method from its single writer
/// task, except [`EventStore::read`], which stream tasks call concurrently.
pub trait EventStore: Send + Sync + 'static {
    /// Reads back everything the store holds, once, before anything is
    /// appended. Required: a store that cannot recover is not a store.
    ///
    /// # Errors
    /// The store cannot be read at all (a torn tail is truncated and noted
    /// in [`Recovered::notes`], damaged records are skipped and reported in
    /// [`Recovered::damage`]; neither is an error).
    fn recover(&self) -> impl Future<Output = Result<Recovered>> + Send;

    /// Appends a batch of records, resolving once they are durable (for a
    /// file store: written and, per its policy, fsync'd — one sync for the
    /// whole batch). Events in the batch become readable, and channels past
    /// their `history` drop their oldest events, reported in the result.
    ///
    /// # Errors
    /// The batch could not be stored. Then none of it is: the store undoes
    /// whatever part of it it wrote, so it is never read back, not even
    /// after a restart. The hub refuses writes until [`EventStore::probe`]
    /// succeeds.
    fn append(&self, batch: &[Record]) -> impl Future<Output = Result<Vec<Evicted>>> + Send;

    /// Checks, after a failed [`EventStore::append`], whether the store can
    /// take writes again (space was freed, the device came back). The hub
    /// calls it with backoff and lets writes through once it succeeds.
    /// Required: only the store knows what a failed write left behind and
    /// what a meaningful test write is (a file store finishes undoing the
    /// failed write, then writes, syncs and takes back a page).
    ///
    /// # Errors
    /// The store still cannot write.
    fn probe(&self) -> impl Future<Output = Result<()>> + Send;

    /// Events of `channel` with ids in `(after, upto]`, oldest first, at most
    /// `limit` of them.
    ///
    /// # Errors
    /// The store could not read them.
    fn read(
        &self,
        channel: &ChannelName,
        after: EventId,
        upto: EventId,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Arc<Event>>>> + Send;

    /// Drops events published before `now - max_age`, reporting them.
    /// Cheap and non-blocking: a store may reclaim disk space later.
    fn prune(&self, now: Timestamp) -> Vec<Evicted>;

    /// The retention this store applies.
    fn retention(&self) -> Retention;

    /// Flushes and closes the store; nothing is appended afterwards.
    ///
    /// # Errors
    /// The final flush failed.
    fn close(&self) -> impl Future<Output = Result<()>> + Send;

    /// Whether [`EventStore::append`], [`EventStore::probe`] and
    /// [`EventStore::close`] block the calling thread while they write (a
    /// durable store waiting for its sync). The hub then runs its writer on
    /// a thread of its own rather than as a task of the caller's runtime,
    /// which such waits would stall; a store that only hands the work to
    /// another thread and awaits it says no (the default). That thread runs
    /// a single-threaded Tokio runtime (timers and I/O enabled): a task the
    /// store spawns from there runs only while the writer waits.
    fn appends_block(&self) -> bool {
        false
    }
}
