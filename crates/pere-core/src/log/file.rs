//! [`FileStore`]: the durable store, an append-only log of segment files.
//!
//! # Layout
//! `DIR/LOCK` (held while open) and `DIR/<number>.seg` segment files. A
//! segment starts with a 32-byte header (`PERESEG1`, the first segment
//! number it covers, the highest event id it covers, their CRC, and a byte
//! that marks compaction's output) followed by records framed as in
//! [`codec`](super::codec). Channel names never become paths.
//!
//! # Writing
//! The [`writer`] owns the active segment. Each [`EventStore::append`] is
//! one batch: encoded, written, and (with [`Fsync::Always`]) `fdatasync`'d
//! once, on the caller's thread — the hub batches concurrent requests, so
//! they share that sync, and calls it from a thread of its own
//! ([`EventStore::appends_block`]). With syncs, the batch goes over
//! zeros written ahead of the records, so that a sync need not record a
//! new file size. A segment past [`FileStoreConfig::segment_size`] is
//! sealed (cut to its records) and a new one started.
//!
//! # Recovery
//! Segments are scanned in order ([`recovery`], [`scan`]). Damaged records
//! — cut short, failing their checksum, not decoding, or out of order —
//! are skipped, exactly those: the scanner resynchronises on the next
//! record it can trust and reads on, through every later segment. Each
//! skipped region is logged as an ERROR, copied (durably) to
//! `damaged-<segment>-<offset>.bin`, and the segment is rewritten without
//! it. The copies are the record of the damage: [`Recovered::damage`]
//! lists those found now and those left by earlier starts, until an
//! operator removes them. Damage that reaches the end of the last segment
//! is a torn tail (a crash mid-write): the file is truncated there and the
//! cut bytes are moved aside as `dropped-*.bin`, so nothing is destroyed
//! silently. Zeros at the end of the last segment are the space the
//! writer had filled ahead (no record frames as zeros): they are cut
//! without a note. No index is persisted: the in-memory index is rebuilt from
//! the log on every start.
//!
//! # Compaction
//! Retention only marks events dead. A compactor thread ([`compact`])
//! copies the live records of the sealed segments — retained events and
//! their receipts, open memberships with their latest cursor and presence,
//! the latest trim per channel, the latest change of each run-time token —
//! into one new segment, in log order, then deletes the old ones. It reads
//! them with the same scanner as recovery, so it keeps exactly what was
//! recovered, and leaves out damage recovery reported but could not
//! rewrite away (damage that appears later stops it instead). It never touches the active segment, so publishes do
//! not wait for it. The new segment's header names the first segment it
//! replaces, so a crash between the rename and the deletions cannot replay
//! a record twice.
//!
//! # Invariants
//! - Records are appended in lsn order; segment numbers increase; a
//!   segment covering `[a, b]` supersedes every segment numbered in `[a, b)`.
//! - A torn tail is truncated at recovery and never served; a damaged
//!   record is never served, and costs no other record.
//! - Event ids in the log are strictly increasing.

mod compact;
mod live;
mod recovery;
pub(crate) mod scan;
mod writer;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use super::codec::Stored;
use super::{EventStore, Evicted, MemoryStore, Record, Recovered};
use crate::config::Retention;
use crate::error::{Error, Result};
use crate::event::{Event, EventId, Timestamp};
use crate::name::ChannelName;
use compact::{compact, compactor};
use live::Live;
use recovery::scan;
use writer::Writer;

/// Default size at which a segment is sealed and a new one started (64 MiB).
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 * 1024 * 1024;
const MAGIC: &[u8; 8] = b"PERESEG1";
const HEADER_LEN: u64 = 32;

/// When the store forces its writes to disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fsync {
    /// After every batch, before any request of it is answered: an
    /// acknowledged publish or receipt survives a crash or power loss.
    #[default]
    Always,
    /// Never explicitly: writes reach the OS page cache. They survive the
    /// process being killed, not the machine losing power.
    Never,
}

impl std::str::FromStr for Fsync {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "always" => Ok(Fsync::Always),
            "never" => Ok(Fsync::Never),
            other => Err(format!("`{other}` is not `always` or `never`")),
        }
    }
}

/// Where and how a [`FileStore`] keeps its data.
#[derive(Clone, Debug)]
pub struct FileStoreConfig {
    /// The data directory (created if missing).
    pub dir: PathBuf,
    /// Retention of events.
    pub retention: Retention,
    /// Sync policy.
    pub fsync: Fsync,
    /// Size at which a segment is sealed.
    pub segment_size: u64,
}

impl FileStoreConfig {
    /// Defaults for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            retention: Retention::default(),
            fsync: Fsync::Always,
            segment_size: DEFAULT_SEGMENT_SIZE,
        }
    }
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each section under these locks leaves its data consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.seg"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    // Makes a file's creation, rename or removal itself durable.
    File::open(dir)?.sync_all()
}

/// Where a header marks compaction's output (outside the checksum, which
/// older versions check over the first 24 bytes only): 0 for the writer's
/// segments, 1 for compaction's output as versions before its number was
/// kept wrote it, [`NUMBERED`] when the next three bytes hold the low 24
/// bits of the segment's own number, [`HEALED`] likewise for a segment
/// whose header recovery rewrote to cover missing segments before it
/// (older versions read any non-zero value as compaction's output).
const COMPACTED_AT: usize = 28;
/// The mark of compaction's output that knows its own number.
const NUMBERED: u8 = 2;
/// The mark of a header healed over missing segments: nothing ever
/// legitimately comes back in the range it covers, so a segment there is
/// one an operator put back (see `recovery`).
const HEALED: u8 = 3;

/// A segment header. `compacted`: the number of the segment it heads,
/// when it is compaction's output (or a segment rewritten at recovery):
/// kept so that a copy of it under another number is told apart from
/// compaction's output, whose header names an earlier segment too.
fn header(covers_from: u64, last_id: EventId, compacted: Option<u64>) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&covers_from.to_le_bytes());
    h[16..24].copy_from_slice(&last_id.0.to_le_bytes());
    let crc = crc32c::crc32c(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    if let Some(number) = compacted {
        h[COMPACTED_AT] = NUMBERED;
        h[COMPACTED_AT + 1..].copy_from_slice(&number.to_le_bytes()[..3]);
    }
    h
}

/// The low 24 bits of the number a compacted segment's header says it
/// was written as, if it says (see [`COMPACTED_AT`]).
fn written_as(bytes: &[u8]) -> Option<u64> {
    let h = bytes.get(..HEADER_LEN as usize)?;
    matches!(h[COMPACTED_AT], NUMBERED | HEALED)
        .then(|| u64::from_le_bytes([h[29], h[30], h[31], 0, 0, 0, 0, 0]))
}

/// Whether a segment's header was healed over missing segments.
fn healed(bytes: &[u8]) -> bool {
    bytes.get(COMPACTED_AT) == Some(&HEALED)
}

/// `(covers_from, last_id)` of a segment header, if intact.
fn read_header(bytes: &[u8]) -> Option<(u64, EventId)> {
    let h = bytes.get(..HEADER_LEN as usize)?;
    if &h[..8] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes([h[24], h[25], h[26], h[27]]);
    if crc32c::crc32c(&h[..24]) != crc {
        return None;
    }
    let covers = u64::from_le_bytes(h[8..16].try_into().ok()?);
    let last = u64::from_le_bytes(h[16..24].try_into().ok()?);
    Some((covers, EventId(last)))
}

/// Segment bookkeeping shared by the writer and the compactor.
#[derive(Debug, Default)]
struct Segments {
    /// Sealed segments, oldest first, with their sizes.
    sealed: Vec<(u64, u64)>,
    /// Bytes of sealed segments at which compaction runs next.
    compact_at: u64,
}

struct Shared {
    dir: PathBuf,
    live: Mutex<Live>,
    segments: Mutex<Segments>,
    index: MemoryStore,
    segment_size: u64,
    /// Held while a compaction runs: one at a time.
    compacting: Mutex<()>,
    /// Damaged regions recovery reported, `(segment, offset, len)`:
    /// compaction leaves them out. Damage it finds that is not here came
    /// later, and stops it (the records may still be held in memory).
    known_damage: Mutex<HashSet<(u64, u64, u64)>>,
}

/// The durable store: an append-only log of segment files, with its
/// format and guarantees in the source's module docs.
///
/// Its appends, probes and close do their I/O, and wait for the disk, on
/// the calling thread ([`EventStore::appends_block`]): the hub calls them
/// from its writer's own thread. Calling them directly from async code
/// blocks that runtime's worker for a sync (and `close` for a compaction
/// under way); use `tokio::task::spawn_blocking` there.
pub struct FileStore {
    shared: Arc<Shared>,
    /// The active segment's writer; `None` once closed.
    writer: Mutex<Option<Writer>>,
    compactor: Mutex<Option<(std_mpsc::Sender<()>, JoinHandle<()>)>>,
    recovered: Mutex<Option<Recovered>>,
    /// Trims decided by retention, written with the next batch.
    trims: Mutex<Vec<Stored>>,
    retention: Retention,
    /// The `LOCK` file and the directory, held (flock) until
    /// [`EventStore::close`] or drop.
    lock_file: Mutex<Option<[File; 2]>>,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

impl FileStore {
    /// Opens (creating if needed) the store in `config.dir`: locks it,
    /// recovers the log, and starts the compactor thread. The
    /// recovered records are handed to the hub by [`EventStore::recover`].
    ///
    /// # Errors
    /// The directory cannot be created, locked or read.
    pub fn open(config: FileStoreConfig) -> Result<Self> {
        Self::open_with(config, writer::free_space)
    }

    /// [`FileStore::open`], with the writer learning the free space from
    /// `free_space`.
    fn open_with(config: FileStoreConfig, free_space: fn(&File) -> u64) -> Result<Self> {
        let dir = config.dir.clone();
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err(&lock_path, e))?;
        // The directory itself is locked too: a LOCK file removed by hand
        // and created again by a second server would be a second, free
        // lock, and two writers on one log lose each other's records.
        let dir_lock = File::open(&dir).map_err(|e| io_err(&dir, e))?;
        let in_use = |path: &Path, e: &dyn std::fmt::Display| {
            io_err(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    format!("the data directory is in use by another process ({e})"),
                ),
            )
        };
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(in_use(&lock_path, &std::fs::TryLockError::WouldBlock));
            }
            // Not another server: the filesystem's own answer says why.
            Err(std::fs::TryLockError::Error(err)) => return Err(io_err(&lock_path, err)),
        }
        match dir_lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(in_use(&dir, &std::fs::TryLockError::WouldBlock));
            }
            // A filesystem that cannot lock a directory opened for
            // reading (NFS takes an exclusive flock as a write lock): the
            // LOCK file alone keeps a second server off, as before.
            Err(std::fs::TryLockError::Error(err)) => tracing::warn!(
                dir = %dir.display(),
                cause = %err,
                "cannot lock the data directory itself; its LOCK file alone keeps a second server off (do not remove it while the server runs)"
            ),
        }
        let started = Instant::now();
        let scan = scan(&dir)?;
        let index = MemoryStore::new(config.retention);
        let mut live = Live::default();
        let mut interned: Vec<Record> = Vec::with_capacity(scan.records.len());
        let mut trims: HashMap<ChannelName, EventId> = HashMap::new();
        let mut events: Vec<Arc<Event>> = Vec::new();
        for (lsn, stored) in &scan.records {
            live.observe(*lsn, stored);
            match stored {
                Stored::Trim { channel, upto } => {
                    let t = trims.entry(channel.clone()).or_default();
                    *t = (*t).max(*upto);
                }
                Stored::Hub(Record::Event(e)) => {
                    events.push(e.clone());
                    interned.push(Record::Event(e.clone()));
                }
                Stored::Hub(r) => interned.push(r.clone()),
            }
        }
        let event_count = events.len();
        for ev in index.insert(events) {
            let t = trims.entry(ev.channel).or_default();
            *t = (*t).max(ev.upto);
        }
        let dropped_now: Vec<Evicted> = index.drop_older(Timestamp::now());
        for ev in dropped_now {
            let t = trims.entry(ev.channel).or_default();
            *t = (*t).max(ev.upto);
        }
        // Hand the hub only events still retained (older ones would be
        // replayed and dropped again).
        // Their keys outlive them, though (`Live::is_live` keeps such an
        // event for the key's TTL).
        let mut records: Vec<Record> = Vec::with_capacity(interned.len());
        let mut keyed: Vec<Arc<Event>> = Vec::new();
        for record in interned {
            match record {
                Record::Event(e) if trims.get(&e.channel).is_some_and(|t| e.id <= *t) => {
                    if e.idempotency_key.is_some() {
                        keyed.push(e);
                    }
                }
                record => records.push(record),
            }
        }
        let last_id = scan
            .last_id
            .max(live.last_event)
            .max(trims.values().copied().max().unwrap_or_default());
        let mut notes = scan.notes;
        notes.push(format!(
            "recovered {event_count} events ({} retained) and {} other records from {} in {:?}",
            index.total(),
            scan.records.len() - event_count,
            dir.display(),
            started.elapsed()
        ));
        let evicted: Vec<Evicted> = trims
            .into_iter()
            .map(|(channel, upto)| Evicted { channel, upto })
            .collect();

        // Continue the tail segment, or start the first one.
        let (active_no, active_len) = match scan.tail {
            Some(t) => t,
            None => {
                let no = scan.sealed.last().map_or(1, |s| s.0 + 1);
                create_segment(&dir, no, no, EventId::ZERO)?;
                (no, HEADER_LEN)
            }
        };
        let path = segment_path(&dir, active_no);
        // Not in append mode: the writer writes at the end of the records,
        // over zeros it wrote ahead.
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        let sealed_bytes: u64 = scan.sealed.iter().map(|s| s.1).sum();
        let known_damage = scan
            .damage
            .iter()
            .filter(|d| !d.repaired)
            .filter_map(|d| {
                let number = d.file.file_stem()?.to_str()?.parse::<u64>().ok()?;
                Some((number, d.offset, d.len))
            })
            .collect();
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            live: Mutex::new(live),
            segments: Mutex::new(Segments {
                sealed: scan.sealed,
                compact_at: (2 * config.segment_size).max(sealed_bytes + config.segment_size),
            }),
            index,
            segment_size: config.segment_size.max(HEADER_LEN + 1),
            compacting: Mutex::new(()),
            known_damage: Mutex::new(known_damage),
        });
        let (wake_tx, wake_rx) = std_mpsc::channel();
        let writer = Writer {
            shared: shared.clone(),
            file,
            number: active_no,
            len: active_len,
            end: active_len,
            fsync: config.fsync,
            buf: Vec::with_capacity(64 * 1024),
            wake: wake_tx.clone(),
            dirty: false,
            free_space,
        };
        let compactor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("pere-store-compactor".into())
                .spawn(move || compactor(shared, wake_rx))
                .map_err(|e| io_err(&dir, e))?
        };
        Ok(Self {
            shared,
            writer: Mutex::new(Some(writer)),
            compactor: Mutex::new(Some((wake_tx, compactor))),
            recovered: Mutex::new(Some(Recovered {
                records,
                last_id,
                evicted,
                durable: true,
                notes,
                damage: scan.damage,
                keyed,
            })),
            trims: Mutex::new(Vec::new()),
            retention: config.retention,
            lock_file: Mutex::new(Some([lock_file, dir_lock])),
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Runs a compaction now (normally the compactor decides), waiting for
    /// it. Returns whether one ran.
    pub fn compact_now(&self) -> bool {
        compact(&self.shared)
    }

    /// Bytes used by segment files on disk.
    pub fn disk_usage(&self) -> u64 {
        fs::read_dir(&self.shared.dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    fn note_evicted(&self, evicted: &[Evicted]) {
        if evicted.is_empty() {
            return;
        }
        let mut trims = lock(&self.trims);
        trims.extend(evicted.iter().map(|e| Stored::Trim {
            channel: e.channel.clone(),
            upto: e.upto,
        }));
    }

    /// Has the writer write `records`, on this thread.
    fn write(&self, records: &[(u64, Stored)]) -> Result<()> {
        let mut writer = lock(&self.writer);
        let writer = writer.as_mut().ok_or_else(closed)?;
        writer
            .write(records)
            .map_err(|e| io_err(&self.shared.dir, e))
    }

    /// Closes the writer (once) and stops the compactor.
    fn shut(&self) -> Result<()> {
        let closed = lock(&self.writer).take().map(Writer::close);
        if let Some((wake, compactor)) = lock(&self.compactor).take() {
            // Dropping the last sender (the writer's went with it) ends
            // the compactor's wait; a compaction under way finishes first.
            drop(wake);
            let _ = compactor.join();
        }
        // Closing the file releases the lock: another store may open the
        // directory as soon as this one reports closed.
        drop(lock(&self.lock_file).take());
        match closed {
            Some(Err(err)) => Err(io_err(&self.shared.dir, err)),
            _ => Ok(()),
        }
    }
}

fn closed() -> Error {
    Error::StoreUnavailable("the file store is closed".into())
}

fn create_segment(dir: &Path, number: u64, covers_from: u64, last_id: EventId) -> Result<File> {
    create_segment_file(dir, number, covers_from, last_id)
        .map_err(|e| io_err(&segment_path(dir, number), e))
}

/// Creates a segment with its header, durably; on failure, removes what it
/// created (a full disk must not keep a half-made segment).
fn create_segment_file(
    dir: &Path,
    number: u64,
    covers_from: u64,
    last_id: EventId,
) -> std::io::Result<File> {
    let path = segment_path(dir, number);
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)?;
    let made = file
        .write_all(&header(covers_from, last_id, None))
        .and_then(|()| file.sync_all())
        .and_then(|()| sync_dir(dir));
    if let Err(err) = made {
        drop(file);
        let _ = fs::remove_file(&path);
        return Err(err);
    }
    Ok(file)
}

impl EventStore for FileStore {
    async fn recover(&self) -> Result<Recovered> {
        Ok(lock(&self.recovered).take().unwrap_or_else(|| Recovered {
            durable: true,
            ..Recovered::default()
        }))
    }

    async fn append(&self, batch: &[Record]) -> Result<Vec<Evicted>> {
        let trims: Vec<Stored> = std::mem::take(&mut *lock(&self.trims));
        // Lsns are handed out now, and the records noted as live only once
        // written: a batch that fails leaves no trace, and its lsns go to
        // the next one (a writer's run keeps its lsns one apart).
        let first = {
            let mut live = lock(&self.shared.live);
            let first = live.next_lsn;
            live.next_lsn += (trims.len() + batch.len()) as u64;
            first
        };
        let records: Vec<(u64, Stored)> = (first..)
            .zip(
                trims
                    .iter()
                    .cloned()
                    .chain(batch.iter().cloned().map(Stored::Hub)),
            )
            .collect();
        let events: Vec<Arc<Event>> = batch
            .iter()
            .filter_map(|r| match r {
                Record::Event(e) => Some(e.clone()),
                _ => None,
            })
            .collect();
        match self.write(&records) {
            Ok(()) => {
                let mut live = lock(&self.shared.live);
                for (lsn, stored) in &records {
                    live.observe(*lsn, stored);
                }
            }
            Err(err) => {
                lock(&self.shared.live).next_lsn = first;
                let mut pending = lock(&self.trims);
                let later = std::mem::replace(&mut *pending, trims);
                pending.extend(later);
                return Err(err);
            }
        }
        let evicted = self.shared.index.insert(events);
        self.note_evicted(&evicted);
        Ok(evicted)
    }

    async fn probe(&self) -> Result<()> {
        lock(&self.writer)
            .as_mut()
            .ok_or_else(closed)?
            .probe()
            .map_err(|e| io_err(&self.shared.dir, e))
    }

    async fn read(
        &self,
        channel: &ChannelName,
        after: EventId,
        upto: EventId,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>> {
        Ok(self.shared.index.range(channel, after, upto, limit))
    }

    fn prune(&self, now: Timestamp) -> Vec<Evicted> {
        let evicted = self.shared.index.drop_older(now);
        self.note_evicted(&evicted);
        evicted
    }

    fn retention(&self) -> Retention {
        self.retention
    }

    async fn close(&self) -> Result<()> {
        // Trims not yet written are re-derived from retention on restart.
        self.shut()
    }

    fn appends_block(&self) -> bool {
        true
    }
}

impl Drop for FileStore {
    fn drop(&mut self) {
        // Without an explicit close, leave the segment at rest and stop
        // the compactor, so the lock and the files are released; written
        // batches are already on disk.
        let _ = self.shut();
    }
}

#[cfg(test)]
mod compact_tests;
#[cfg(test)]
mod preallocate_tests;
#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
pub(crate) mod tests;
