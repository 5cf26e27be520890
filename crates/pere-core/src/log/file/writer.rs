//! The writer thread: owns the active segment, writes each batch, rolls
//! to a new segment when one is full.
//!
//! A batch that fails (a full disk, an I/O error) leaves nothing behind:
//! whatever part of it reached the file is cut off again before the
//! failure is reported, and, should even that fail, before anything else
//! is written. So a batch the hub answered with an error is never read
//! back, and nothing is ever written after bytes that are not records.

use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use tokio::sync::oneshot;

use super::super::codec::{self, Stored};
use super::{Fsync, HEADER_LEN, Shared, create_segment_file, lock, segment_path};
use crate::event::EventId;

/// What a probe writes (and takes back) to learn whether the disk takes
/// writes again: a page.
const PROBE: usize = 4096;

/// A batch's records, handed back with the outcome of writing them.
pub(super) type Written = (Vec<(u64, Stored)>, std::io::Result<()>);

pub(super) enum Job {
    Append {
        records: Vec<(u64, Stored)>,
        reply: oneshot::Sender<Written>,
    },
    Probe {
        reply: oneshot::Sender<std::io::Result<()>>,
    },
    Close {
        reply: oneshot::Sender<std::io::Result<()>>,
    },
}

pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) file: File,
    pub(super) number: u64,
    pub(super) len: u64,
    pub(super) fsync: Fsync,
    pub(super) buf: Vec<u8>,
    pub(super) wake: std_mpsc::Sender<()>,
    /// Bytes past `len` may be in the file, left by a failed write.
    pub(super) dirty: bool,
}

impl Writer {
    pub(super) fn run(mut self, jobs: std_mpsc::Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            match job {
                Job::Append { records, reply } => {
                    let result = self.append(&records);
                    if let Err(err) = &result {
                        tracing::error!(
                            cause = %err,
                            segment = self.number,
                            undone = !self.dirty,
                            "store write failed"
                        );
                    }
                    let _ = reply.send((records, result));
                }
                Job::Probe { reply } => {
                    let _ = reply.send(self.probe());
                }
                Job::Close { reply } => {
                    let _ = reply.send(self.clean().and_then(|()| self.file.sync_all()));
                    return;
                }
            }
        }
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
        self.dirty = true;
        let mut written = self.file.write_all(&self.buf);
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
        Ok(())
    }

    /// Cuts what a failed write left past `len`, durably.
    fn clean(&mut self) -> std::io::Result<()> {
        if self.dirty {
            self.file.set_len(self.len)?;
            // A segment made by `roll` is not in append mode.
            self.file.seek(SeekFrom::Start(self.len))?;
            self.file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Whether the disk takes writes again after a failure: cleans up,
    /// then writes a page, syncs it and takes it back. (A crash in between
    /// leaves zeros at the end of the log: a torn tail, cut at the next
    /// start.)
    fn probe(&mut self) -> std::io::Result<()> {
        self.clean()?;
        self.dirty = true;
        let written = self
            .file
            .write_all(&[0; PROBE])
            .and_then(|()| self.file.sync_data());
        self.clean()?;
        written
    }

    fn roll(&mut self) -> std::io::Result<()> {
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
        let _ = self.wake.send(());
        Ok(())
    }
}
