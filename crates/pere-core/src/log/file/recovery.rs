//! Recovery: reads the data directory at open, drops superseded segments
//! and leftovers, and scans the records back.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::Path;

use super::super::codec::{self, Stored};
use super::{HEADER_LEN, io_err, read_header, segment_path};
use crate::error::Result;
use crate::event::EventId;
use crate::log::Record;

/// What a scan of the directory found.
pub(super) struct Scan {
    pub(super) records: Vec<(u64, Stored)>,
    /// The segment to keep appending to: number, length.
    pub(super) tail: Option<(u64, u64)>,
    pub(super) sealed: Vec<(u64, u64)>,
    pub(super) last_id: EventId,
    pub(super) notes: Vec<String>,
}

/// Reads the directory: drops superseded segments and leftovers, scans
/// records, truncates at the first damage.
pub(super) fn scan(dir: &Path) -> Result<Scan> {
    let mut numbers: Vec<u64> = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".tmp") {
            // An unfinished compaction: the segments it read are intact.
            let _ = fs::remove_file(entry.path());
            continue;
        }
        if let Some(n) = name
            .strip_suffix(".seg")
            .and_then(|n| n.parse::<u64>().ok())
        {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    let mut notes = Vec::new();
    // (number, header, contents) of each segment.
    type Read = (u64, Option<(u64, EventId)>, Vec<u8>);
    let mut headers: Vec<Read> = Vec::with_capacity(numbers.len());
    for n in &numbers {
        let path = segment_path(dir, *n);
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| io_err(&path, e))?;
        let h = read_header(&bytes);
        headers.push((*n, h, bytes));
    }
    // A compacted segment supersedes the segments it was made from.
    let mut superseded = HashSet::new();
    for (n, h, _) in &headers {
        if let Some((covers, _)) = h {
            for (m, _, _) in &headers {
                if *m >= *covers && *m < *n {
                    superseded.insert(*m);
                }
            }
        }
    }
    let mut records = Vec::new();
    let mut sealed = Vec::new();
    let mut tail = None;
    let mut last_id = EventId::ZERO;
    let mut damaged = false;
    let mut previous = EventId::ZERO;
    let count = headers.len();
    for (i, (n, h, bytes)) in headers.into_iter().enumerate() {
        let path = segment_path(dir, n);
        if superseded.contains(&n) {
            fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
            notes.push(format!("removed {} (already compacted)", path.display()));
            continue;
        }
        if damaged {
            set_aside(dir, &path, 0, &bytes, &mut notes)?;
            continue;
        }
        let is_last = i + 1 == count;
        let Some((_, header_last)) = h else {
            if is_last && bytes.len() < HEADER_LEN as usize {
                // Created but never written (a crash mid-roll): start over.
                fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
                notes.push(format!("removed the unfinished segment {}", path.display()));
                continue;
            }
            warn(
                &mut notes,
                format!("the header of {} is damaged", path.display()),
            );
            damaged = true;
            set_aside(dir, &path, 0, &bytes, &mut notes)?;
            continue;
        };
        last_id = last_id.max(header_last);
        let mut offset = HEADER_LEN as usize;
        while offset < bytes.len() {
            let parsed = codec::frame(&bytes[offset..])
                .and_then(|(total, body)| codec::decode(body).map(|(lsn, rec)| (total, lsn, rec)));
            match parsed {
                Ok((total, lsn, record)) => {
                    if let Stored::Hub(Record::Event(e)) = &record {
                        if e.id <= previous {
                            warn(
                                &mut notes,
                                format!(
                                    "{} at offset {offset}: event id {} does not increase",
                                    path.display(),
                                    e.id
                                ),
                            );
                            damaged = true;
                            break;
                        }
                        previous = e.id;
                    }
                    records.push((lsn, record));
                    offset += total;
                }
                Err(err) => {
                    warn(
                        &mut notes,
                        format!("{} at offset {offset}: {err}", path.display()),
                    );
                    damaged = true;
                    break;
                }
            }
        }
        last_id = last_id.max(previous);
        if damaged {
            set_aside(dir, &path, offset, &bytes, &mut notes)?;
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io_err(&path, e))?;
            file.set_len(offset as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| io_err(&path, e))?;
            tail = Some((n, offset as u64));
            continue;
        }
        if is_last {
            tail = Some((n, bytes.len() as u64));
        } else {
            sealed.push((n, bytes.len() as u64));
        }
    }
    if let Some((t, _)) = tail {
        // Segments after a damaged one were set aside; the truncated one
        // is where appending resumes.
        sealed.retain(|(n, _)| *n < t);
    }
    Ok(Scan {
        records,
        tail,
        sealed,
        last_id,
        notes,
    })
}

/// Records a note about damage found at recovery, and logs it as a warning.
fn warn(notes: &mut Vec<String>, note: String) {
    tracing::warn!(note = %note, "store recovery found damage");
    notes.push(note);
}

/// Moves `bytes[from..]` of a damaged segment (or a whole later segment)
/// aside as `dropped-*.bin`, for an operator to inspect.
fn set_aside(
    dir: &Path,
    path: &Path,
    from: usize,
    bytes: &[u8],
    notes: &mut Vec<String>,
) -> Result<()> {
    let rest = bytes.get(from..).unwrap_or_default();
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("segment");
    let target = dir.join(format!("dropped-{stem}-{from}.bin"));
    fs::write(&target, rest).map_err(|e| io_err(&target, e))?;
    if from == 0 {
        fs::remove_file(path).map_err(|e| io_err(path, e))?;
    }
    warn(
        notes,
        format!(
            "dropped {} bytes of {} from offset {from}; kept in {}",
            rest.len(),
            path.display(),
            target.display()
        ),
    );
    Ok(())
}
