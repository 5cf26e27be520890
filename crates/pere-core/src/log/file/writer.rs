//! The writer thread: owns the active segment, writes each batch, rolls
//! to a new segment when one is full.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use tokio::sync::oneshot;

use super::super::codec::{self, Stored};
use super::{Fsync, HEADER_LEN, Shared, create_segment, lock};
use crate::event::EventId;

pub(super) enum Job {
    Append {
        records: Vec<(u64, Stored)>,
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
}

impl Writer {
    pub(super) fn run(mut self, jobs: std_mpsc::Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            match job {
                Job::Append { records, reply } => {
                    let result = self.append(&records);
                    if let Err(err) = &result {
                        tracing::error!(cause = %err, segment = self.number, "store write failed");
                    }
                    let _ = reply.send(result);
                }
                Job::Close { reply } => {
                    let _ = reply.send(self.file.sync_all());
                    return;
                }
            }
        }
    }

    fn append(&mut self, records: &[(u64, Stored)]) -> std::io::Result<()> {
        self.buf.clear();
        for (lsn, record) in records {
            codec::encode(&mut self.buf, *lsn, record);
        }
        if self.len > HEADER_LEN && self.len + self.buf.len() as u64 > self.shared.segment_size {
            self.roll()?;
        }
        self.file.write_all(&self.buf)?;
        if self.fsync == Fsync::Always {
            self.file.sync_data()?;
        }
        self.len += self.buf.len() as u64;
        Ok(())
    }

    fn roll(&mut self) -> std::io::Result<()> {
        self.file.sync_all()?;
        let next = self.number + 1;
        let file = create_segment(&self.shared.dir, next, next, EventId::ZERO)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
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
