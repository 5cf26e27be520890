//! The compactor thread: rewrites the sealed segments without the records
//! nothing needs any more.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use super::super::codec::Stored;
use super::recovery::written_by_writer;
use super::scan::{Order, scan_segment};
use super::{HEADER_LEN, Shared, header, lock, read_header, segment_path, sync_dir};
use crate::event::{EventId, Timestamp};
use crate::log::Record;

pub(super) fn compactor(shared: Arc<Shared>, wake: std_mpsc::Receiver<()>) {
    loop {
        match wake.recv_timeout(Duration::from_secs(5)) {
            Ok(()) | Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let due = {
            let s = lock(&shared.segments);
            let bytes: u64 = s.sealed.iter().map(|x| x.1).sum();
            s.sealed.len() >= 2 && bytes >= s.compact_at
        };
        if due {
            compact(&shared);
        }
    }
}

/// Copies the live records of every sealed segment into one new segment and
/// deletes the old ones. Returns whether it did anything.
pub(super) fn compact(shared: &Shared) -> bool {
    let _one_at_a_time = lock(&shared.compacting);
    let sealed: Vec<(u64, u64)> = lock(&shared.segments).sealed.clone();
    let (Some(first), Some(last)) = (sealed.first().map(|s| s.0), sealed.last().map(|s| s.0))
    else {
        return false;
    };
    let started = Instant::now();
    match compact_range(shared, &sealed) {
        Ok((kept, input, output)) => {
            let mut s = lock(&shared.segments);
            s.sealed.retain(|(n, _)| *n > last);
            s.sealed.insert(0, (last, output));
            // Next time, only once the log has grown well past what is live.
            s.compact_at = (2 * shared.segment_size).max(2 * output + shared.segment_size);
            tracing::info!(
                segments = %format!("{first}..={last}"),
                kept,
                bytes_before = input,
                bytes_after = output,
                took = ?started.elapsed(),
                "store compacted"
            );
            true
        }
        Err(err) => {
            tracing::error!(cause = %err, "store compaction failed; the old segments are intact");
            let mut s = lock(&shared.segments);
            s.compact_at = s.compact_at.saturating_mul(2);
            false
        }
    }
}

fn compact_range(shared: &Shared, sealed: &[(u64, u64)]) -> std::io::Result<(usize, u64, u64)> {
    let dir = &shared.dir;
    let last = sealed[sealed.len() - 1].0;
    let all = shared.index.all();
    let oldest = all.first().map_or(EventId(u64::MAX), |e| e.id);
    let retained: HashSet<EventId> = all.iter().map(|e| e.id).collect();
    drop(all);
    let tmp = dir.join(format!("{last:020}.seg.tmp"));
    let result = write_compacted(shared, sealed, &tmp, oldest, &retained);
    if result.is_err() {
        // A disk that is full must not stay fuller for a failed attempt.
        let _ = fs::remove_file(&tmp);
    }
    let (kept, input, output) = result?;
    lock(&shared.live).prune(oldest);
    Ok((kept, input, output))
}

/// Writes the live records of `sealed` to `tmp`, then puts it in place of
/// the last of them and deletes the others.
fn write_compacted(
    shared: &Shared,
    sealed: &[(u64, u64)],
    tmp: &std::path::Path,
    oldest: EventId,
    retained: &HashSet<EventId>,
) -> std::io::Result<(usize, u64, u64)> {
    let dir = &shared.dir;
    let first = sealed[0].0;
    let last = sealed[sealed.len() - 1].0;
    let now = Timestamp::now();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, File::create(tmp)?);
    out.write_all(&[0u8; HEADER_LEN as usize])?;
    let mut last_id = EventId::ZERO;
    let mut kept = 0usize;
    let mut input = 0u64;
    let mut output = HEADER_LEN;
    // Read as recovery read them (the sealed segments are the start of the
    // log), so compaction keeps exactly the records the hub recovered.
    let mut order = Order::default();
    for (n, _) in sealed {
        let bytes = fs::read(segment_path(dir, *n))?;
        input += bytes.len() as u64;
        let h = read_header(&bytes);
        if let Some((_, h)) = h {
            last_id = last_id.max(h);
        }
        let found = scan_segment(
            &bytes,
            HEADER_LEN as usize,
            false,
            written_by_writer(*n, h, &bytes),
            order,
        );
        order = found.order;
        for skipped in &found.damaged {
            let (start, len) = (skipped.range.start as u64, skipped.range.len() as u64);
            // A damaged header is reported with the bytes after it.
            let known = {
                let known = lock(&shared.known_damage);
                known.contains(&(*n, start, len))
                    || (h.is_none() && known.contains(&(*n, 0, len + start)))
            };
            if !known {
                return Err(std::io::Error::other(format!(
                    "segment {n} has {len} damaged bytes at offset {start} that were not there \
                     when the store opened ({}); the records may still be held in memory, so \
                     compaction leaves the segments as they are",
                    skipped.why
                )));
            }
            tracing::warn!(
                segment = n,
                offset = start,
                bytes = len,
                "compaction leaves out damaged bytes reported when the store opened"
            );
        }
        let live = lock(&shared.live);
        for f in &found.records {
            if let Stored::Hub(Record::Event(e)) = &f.record {
                last_id = last_id.max(e.id);
            }
            if live.is_live(f.lsn, &f.record, retained, oldest, now) {
                kept += 1;
                output += f.len as u64;
                // Written after the header below; buffer order is log order.
                out.write_all(&bytes[f.offset..f.offset + f.len])?;
            }
        }
    }
    out.flush()?;
    let mut file = out.into_inner().map_err(|e| e.into_error())?;
    // The header is written last; until the rename below the file is a
    // `.tmp` that recovery deletes, so a torn compaction is never read.
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&header(first, last_id, Some(last)))?;
    file.sync_all()?;
    drop(file);
    fs::rename(tmp, segment_path(dir, last))?;
    sync_dir(dir)?;
    lock(&shared.known_damage).retain(|(n, _, _)| *n > last);
    for (n, _) in sealed {
        if *n != last {
            fs::remove_file(segment_path(dir, *n))?;
        }
    }
    sync_dir(dir)?;
    Ok((kept, input, output))
}
