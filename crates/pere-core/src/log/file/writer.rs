//! The writer: owns the active segment, writes each batch, rolls to a new
//! segment when one is full. It runs on the caller's thread, which blocks
//! for the write and the sync: the hub calls it from a writer thread of its
//! own ([`EventStore::appends_block`](crate::log::EventStore::appends_block)),
//! so a batch costs no hop to another thread and back.
//!
//! With [`Fsync::Always`] the active segment is filled with zeros ahead
//! of the writes ([`PREALLOCATE`] at a time), and each batch is written
//! over them. A
//! sync then leaves the file's size alone: on ext4 an `fdatasync` after an
//! append also writes the inode, a third I/O besides the data and the
//! cache flush, and costs about 30 % more time and CPU (measured in
//! `benches/RESULTS.md`). Zeros never frame a record (a record's length
//! is at least 9), so recovery tells the unused space from a torn write;
//! sealing a segment, closing the store and undoing a failed write cut
//! the file back to its records. Zeros are written only while the
//! filesystem has [`KEEP_FREE`] to spare: a nearly full disk is appended
//! to as before.
//!
//! A batch that fails (a full disk, an I/O error) leaves nothing behind:
//! whatever part of it reached the file is cut off again before the
//! failure is reported, and, should even that fail, before anything else
//! is written. So a batch the hub answered with an error is never read
//! back, and nothing is ever written after bytes that are not records.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use super::super::codec::{self, Stored};
use super::{Fsync, HEADER_LEN, Shared, create_segment_file, lock, segment_path};
use crate::event::EventId;

/// What a probe writes (and takes back) to learn whether the disk takes
/// writes again: a page.
const PROBE: usize = 4096;

/// How far ahead of the writes the active segment is filled with zeros:
/// one inode update per this much log, not per batch.
pub(super) const PREALLOCATE: u64 = 1024 * 1024;

/// Free space the zeros must leave on the filesystem. Below it the writer
/// appends as it did before: zeros never take a disk's last space, from
/// other programs or from the store's own next records (a write refused
/// for want of space must mean the disk is full, not that zeros took it).
const KEEP_FREE: u64 = 64 * PREALLOCATE;

pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) file: File,
    pub(super) number: u64,
    pub(super) len: u64,
    /// At least the file's size: `len..end` holds zeros written ahead (it
    /// is more only when cutting failed zeros failed too).
    pub(super) end: u64,
    pub(super) fsync: Fsync,
    pub(super) buf: Vec<u8>,
    pub(super) wake: std_mpsc::Sender<()>,
    /// Bytes past `len` may be in the file, left by a failed write.
    pub(super) dirty: bool,
    /// Bytes the filesystem holding `file` has free ([`free_space`];
    /// tests make it lie to reach the fallback of a zero-fill that fails).
    pub(super) free_space: fn(&File) -> u64,
}

/// Bytes free for unprivileged writes on the filesystem holding `file`
/// (0 if it does not say).
pub(super) fn free_space(file: &File) -> u64 {
    rustix::fs::fstatvfs(file)
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
        .unwrap_or(0)
}

impl Writer {
    /// Writes a batch (and syncs it, per the policy); on failure none of
    /// it stays in the file.
    pub(super) fn write(&mut self, records: &[(u64, Stored)]) -> std::io::Result<()> {
        let result = self.append(records);
        if let Err(err) = &result {
            tracing::error!(
                cause = %err,
                segment = self.number,
                undone = !self.dirty,
                "store write failed"
            );
        }
        result
    }

    /// Leaves the segment at rest, holding its records and nothing else.
    pub(super) fn close(mut self) -> std::io::Result<()> {
        self.clean()
            .and_then(|()| self.cut_to_len())
            .and_then(|()| self.file.sync_all())
    }

    fn append(&mut self, records: &[(u64, Stored)]) -> std::io::Result<()> {
        self.clean()?;
        self.buf.clear();
        for (lsn, record) in records {
            codec::encode(&mut self.buf, *lsn, record);
        }
        if self.len > HEADER_LEN && self.len + self.buf.len() as u64 > self.shared.segment_size {
            self.roll()?;
        }
        let needed = self.len + self.buf.len() as u64;
        // Without syncs the inode is written back with the data anyway.
        if needed > self.end && self.fsync == Fsync::Always {
            self.preallocate(needed);
        }
        self.dirty = true;
        let mut written = self.file.write_all_at(&self.buf, self.len);
        if written.is_ok() && self.fsync == Fsync::Always {
            written = self.file.sync_data();
        }
        if let Err(err) = written {
            // The caller is told the batch failed: none of it may stay.
            // If the cut fails too, `dirty` makes the next write retry it.
            let _ = self.clean();
            return Err(err);
        }
        self.dirty = false;
        self.len += self.buf.len() as u64;
        self.end = self.end.max(self.len);
        Ok(())
    }

    /// Cuts what a failed write left past `len`, durably.
    fn clean(&mut self) -> std::io::Result<()> {
        if self.dirty {
            // A failed write may have grown the file past `end`, too.
            self.file.set_len(self.len)?;
            self.end = self.len;
            self.file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Drops the zeros written ahead (not durable until the next sync).
    fn cut_to_len(&mut self) -> std::io::Result<()> {
        if self.end != self.len {
            self.file.set_len(self.len)?;
            self.end = self.len;
        }
        Ok(())
    }

    /// Fills the file with zeros from its end to at least `needed` and
    /// [`PREALLOCATE`] past it. The batch's sync makes them durable with
    /// the new size. When the filesystem is short of space (or says
    /// nothing), the batch is written without them, as an append, and
    /// fails or not on its own.
    fn preallocate(&mut self, needed: u64) {
        let ahead = PREALLOCATE.min(self.shared.segment_size);
        let target = (needed + ahead).next_multiple_of(4096);
        let free = (self.free_space)(&self.file);
        if free < KEEP_FREE + (target - self.end) {
            return;
        }
        let zeros = vec![0u8; (target - self.end) as usize];
        match self.file.write_all_at(&zeros, self.end) {
            Ok(()) => self.end = target,
            Err(err) => {
                // The disk filled since the check.
                tracing::debug!(cause = %err, "cannot write zeros ahead of the log");
                // Some of them may be in the file: give their space back.
                // Zeros left after the records (the cut failing too) are
                // what recovery expects anyway.
                self.end = target;
                let _ = self.cut_to_len();
            }
        }
    }

    /// Whether the disk takes writes again after a failure: cleans up,
    /// then writes a page, syncs it and takes it back. (A crash in between
    /// leaves zeros at the end of the log: unused space, cut at the next
    /// start.)
    pub(super) fn probe(&mut self) -> std::io::Result<()> {
        self.clean()?;
        self.dirty = true;
        let written = self
            .file
            .write_all_at(&[0; PROBE], self.len)
            .and_then(|()| self.file.sync_data());
        self.clean()?;
        written
    }

    fn roll(&mut self) -> std::io::Result<()> {
        // Only the last segment may end in zeros (recovery reads them as
        // unused space there, as damage anywhere else).
        self.cut_to_len()?;
        self.file.sync_all()?;
        let next = self.number + 1;
        let path = segment_path(&self.shared.dir, next);
        // A roll that failed before may have left it; nothing else ever
        // creates a segment past the active one.
        match fs::remove_file(&path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        let file = create_segment_file(&self.shared.dir, next, next, EventId::ZERO)?;
        let sealed_len = self.len;
        self.file = file;
        lock(&self.shared.segments)
            .sealed
            .push((self.number, sealed_len));
        self.number = next;
        self.len = HEADER_LEN;
        self.end = HEADER_LEN;
        let _ = self.wake.send(());
        Ok(())
    }
}
