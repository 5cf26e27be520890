//! Recovery: reads the data directory at open, drops superseded segments
//! and leftovers, and scans the records back.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::super::codec::Stored;
use super::scan::{Found, Order, Skipped, Why, scan_segment};
use super::{
    COMPACTED_AT, HEADER_LEN, HEALED, header, healed, io_err, read_header, segment_path, sync_dir,
    written_as,
};
use crate::error::Result;
use crate::event::EventId;
use crate::log::Damage;

/// A segment as read at open: number, header, contents.
type SegmentRead = (u64, Option<(u64, EventId)>, Vec<u8>);

/// What a scan of the directory found.
pub(super) struct Scan {
    pub(super) records: Vec<(u64, Stored)>,
    /// The segment to keep appending to: number, length.
    pub(super) tail: Option<(u64, u64)>,
    pub(super) sealed: Vec<(u64, u64)>,
    pub(super) last_id: EventId,
    pub(super) notes: Vec<String>,
    /// Damaged bytes skipped (torn tails are cut instead, and only noted).
    pub(super) damage: Vec<Damage>,
}

/// Reads the directory: drops superseded segments and leftovers, scans
/// every segment's records across damage, and cuts a torn tail and the
/// zeros the writer wrote ahead.
pub(super) fn scan(dir: &Path) -> Result<Scan> {
    let mut numbers: Vec<u64> = Vec::new();
    let mut foreign = Vec::new();
    let mut damage = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(earlier) = earlier_damage(dir, &name, &entry) {
            // Reported until an operator removes the copy (README,
            // Durability): a restart does not make it go away.
            damage.push(earlier);
            continue;
        }
        if name
            .strip_suffix(".seg.tmp")
            .is_some_and(|stem| segment_number(stem).is_some())
        {
            // An unfinished compaction (or header rewrite): the segments it
            // read are intact. Other `.tmp` files are an operator's.
            let _ = fs::remove_file(entry.path());
            continue;
        }
        if let Some(stem) = name.strip_suffix(".seg") {
            if stem.len() == 20
                && stem.bytes().all(|b| b.is_ascii_digit())
                && segment_number(stem).is_none_or(|n| n > MAX_SEGMENT)
            {
                // Read as it is, the next segment's number would overflow
                // (a panic, or a wrap to 0 that sorts it before this one
                // and cuts everything after as out of order).
                return Err(io_err(
                    &entry.path(),
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "a segment numbered above {MAX_SEGMENT}, which this store could not \
                             go on from: renamed by hand? Rename it to the number after the \
                             highest other segment's (nothing was changed)"
                        ),
                    ),
                ));
            }
            match segment_number(stem) {
                Some(n) => numbers.push(n),
                // `3.seg` beside `00000000000000000003.seg` would be read
                // as the same segment twice, the second read cutting the
                // real one as out of order: only the store's own names
                // are segments.
                None => foreign.push(format!(
                    "left {} alone: not a segment name this store writes ({{20 digits}}.seg)",
                    entry.path().display()
                )),
            }
        }
    }
    numbers.sort_unstable();
    let mut notes = Vec::new();
    for note in foreign {
        tracing::warn!(note = %note, "store recovery: a file that is not a segment");
        notes.push(note);
    }
    let mut headers: Vec<SegmentRead> = Vec::with_capacity(numbers.len());
    for n in &numbers {
        let path = segment_path(dir, *n);
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| io_err(&path, e))?;
        let h = read_header(&bytes);
        if let Some((covers, _)) = h
            && covers > *n
        {
            return Err(not_its_number(&path, covers));
        }
        headers.push((*n, h, bytes));
    }
    if let Some((n, covers)) = copied_segment(&headers) {
        return Err(not_its_number(&segment_path(dir, n), covers));
    }
    // A compacted segment supersedes the segments it was made from, left
    // by a crash before compaction deleted them. Its last id is the
    // newest of theirs: one holding a newer event was written after it,
    // so it is not compaction's output but a copy (whose header older
    // versions did not number). And one not marked compacted at all is a
    // writer's segment under another number (or, in the same crash, the
    // output of a version from before the mark: refused too, as nothing
    // tells the two apart; moving it out is the operator's call).
    let mut superseded = HashSet::new();
    for (n, h, claimant) in &headers {
        if let Some((covers, last)) = h {
            for (m, hm, bytes) in &headers {
                if *m >= *covers && *m < *n {
                    if healed(claimant) {
                        // Reported missing and healed over: its records
                        // are not taken back in the middle of the log.
                        return Err(put_back(dir, *m, *n));
                    }
                    if !compacted(claimant) || newest_event(*m, *hm, bytes) > *last {
                        return Err(not_its_number(&segment_path(dir, *n), *covers));
                    }
                    superseded.insert(*m);
                }
            }
        }
    }
    let mut records = Vec::new();
    let mut sealed = Vec::new();
    let mut tail = None;
    let mut last_id = EventId::ZERO;
    let mut order = Order::default();
    let count = headers.len();
    let mut previous: Option<u64> = None;
    for (i, (n, mut h, mut bytes)) in headers.into_iter().enumerate() {
        let path = segment_path(dir, n);
        if superseded.contains(&n) {
            fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
            notes.push(format!("removed {} (already compacted)", path.display()));
            continue;
        }
        if let (Some(prev), Some((covers, last))) = (previous, h)
            && covers > prev + 1
        {
            damage.push(missing_segments(dir, prev + 1..covers, &mut notes));
            // The header now covers the hole, so the log is whole again
            // and only the marker tells of it (as a repaired segment's
            // copies do); its lsns have a gap, as compaction's output's.
            let mut healed = header(prev + 1, last, Some(n));
            healed[COMPACTED_AT] = HEALED;
            rewrite_header(&path, &healed).map_err(|e| io_err(&path, e))?;
            bytes[..healed.len()].copy_from_slice(&healed);
            h = read_header(&bytes);
        }
        previous = Some(n);
        let is_last = i + 1 == count;
        if h.is_none() && is_last && bytes.len() < HEADER_LEN as usize {
            // Created but never written (a crash mid-roll): start over.
            fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
            notes.push(format!("removed the unfinished segment {}", path.display()));
            continue;
        }
        if let Some((_, header_last)) = h {
            last_id = last_id.max(header_last);
        }
        let found = scan_segment(
            &bytes,
            HEADER_LEN as usize,
            is_last,
            written_by_writer(n, h, &bytes),
            order,
        );
        if h.is_none() && is_last && found.records.is_empty() {
            // A damaged header and nothing readable after it, at the end
            // of the log: a roll the crash interrupted.
            warn(
                &mut notes,
                format!("the header of {} is damaged", path.display()),
            );
            set_aside(dir, &path, 0, &bytes, &mut notes)?;
            continue;
        }
        order = found.order;
        let mut skipped = found.damaged;
        if h.is_none() {
            // The header is damaged too: one region with what follows it.
            match skipped.first_mut() {
                Some(first) if first.range.start == HEADER_LEN as usize => first.range.start = 0,
                _ => skipped.insert(
                    0,
                    Skipped {
                        range: 0..(HEADER_LEN as usize).min(bytes.len()),
                        why: Why::Header,
                    },
                ),
            }
        }
        let mut copied = true;
        for region in &skipped {
            let reported = report_damage(dir, &path, &bytes, region, &mut notes);
            copied &= reported.kept_in.is_some();
            damage.push(reported);
        }
        let mut len = bytes.len();
        if let Some(torn) = &found.torn {
            let from = torn.range.start;
            // The writer fills the last segment with zeros ahead of its
            // records: a crash leaves them after the last write. Only
            // what is not zero was a write the crash cut short.
            let written = bytes[from..]
                .iter()
                .rposition(|&b| b != 0)
                .map(|last| from + last + 1);
            match written {
                Some(written) => {
                    warn(
                        &mut notes,
                        format!("{} at offset {from}: {}", path.display(), torn.why),
                    );
                    set_aside(dir, &path, from, &bytes[..written], &mut notes)?;
                }
                None => tracing::info!(
                    segment = %path.display(),
                    offset = from,
                    bytes = bytes.len() - from,
                    "store recovery: cut the zeros written ahead of the last records"
                ),
            }
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io_err(&path, e))?;
            file.set_len(from as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| io_err(&path, e))?;
            len = from;
        }
        if !skipped.is_empty() && copied {
            // The damaged bytes are safe in their copies: rewrite the
            // segment without them, so the log is whole again and the
            // copies alone say what was lost.
            match repair(dir, &path, n, &bytes, &found.records) {
                Ok(repaired) => {
                    len = repaired;
                    notes.push(format!(
                        "rewrote {} without its damaged bytes",
                        path.display()
                    ));
                    for d in damage.iter_mut().rev().take(skipped.len()) {
                        d.repaired = true;
                    }
                }
                Err(err) => tracing::error!(
                    segment = %path.display(),
                    cause = %err,
                    "cannot rewrite the damaged segment; its damage is reported again at the next start"
                ),
            }
        }
        records.extend(found.records.into_iter().map(|f| (f.lsn, f.record)));
        if is_last {
            tail = Some((n, len as u64));
        } else {
            sealed.push((n, len as u64));
        }
    }
    last_id = last_id.max(order.event);
    Ok(Scan {
        records,
        tail,
        sealed,
        last_id,
        notes,
        damage,
    })
}

/// Whether segment `number` (read as `header`, `bytes`) was written by the
/// writer, so its lsns go up by one per record, rather than by compaction,
/// which leaves gaps (its header names the first segment it replaces and
/// the ids it covers; compactions since the scanner resynchronises also
/// mark it). When unsure, compaction: that only weakens a check.
pub(super) fn written_by_writer(number: u64, header: Option<(u64, EventId)>, bytes: &[u8]) -> bool {
    header.is_some_and(|(covers, last)| covers == number && last == EventId::ZERO)
        && bytes.get(COMPACTED_AT) == Some(&0)
}

/// Reports damaged bytes recovery skipped, loudly: an ERROR line, a note,
/// and a durable copy of the bytes as `damaged-*.bin` for an operator to
/// inspect.
fn report_damage(
    dir: &Path,
    path: &Path,
    bytes: &[u8],
    region: &Skipped,
    notes: &mut Vec<String>,
) -> Damage {
    let Range { start, end } = region.range;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("segment");
    let kept_in = match keep_copy(dir, DAMAGED, stem, start, &bytes[start..end]) {
        Ok(target) => Some(target),
        Err(err) => {
            tracing::error!(segment = %path.display(), offset = start, cause = %err, "cannot keep a copy of damaged bytes");
            None
        }
    };
    let kept = kept_in.as_ref().map_or("no copy kept".to_string(), |k| {
        format!("kept in {}", k.display())
    });
    tracing::error!(
        segment = %path.display(),
        offset = start,
        bytes = end - start,
        cause = %region.why,
        kept = %kept,
        "store recovery skipped damaged records; the records before and after them are kept"
    );
    notes.push(format!(
        "skipped {} damaged bytes of {} at offset {start} ({}; {kept})",
        end - start,
        path.display(),
        region.why
    ));
    Damage {
        file: path.to_path_buf(),
        offset: start as u64,
        len: (end - start) as u64,
        cause: region.why.to_string(),
        kept_in,
        repaired: false,
    }
}

/// A segment that is a copy of the writer's segment `covers` under
/// another number `n`: its header names `covers`, and its records are the
/// same as that one's (one a prefix of the other: a copy taken while it
/// grew). Read, it would supersede, and delete, the segments between.
/// Compaction's output also names an earlier number, but holds other
/// records (and, since it is marked, is told apart by its header alone;
/// older compactions were not marked).
fn copied_segment(headers: &[SegmentRead]) -> Option<(u64, u64)> {
    let records = |bytes: &[u8]| {
        let body = bytes.get(HEADER_LEN as usize..).unwrap_or_default();
        let end = body
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |last| last + 1);
        body[..end].to_vec()
    };
    headers.iter().find_map(|(n, h, bytes)| {
        let (covers, _) = (*h)?;
        if let Some(low) = written_as(bytes) {
            return (low != *n & 0xff_ffff).then(|| (*n, number_from_low_bits(*n, low)));
        }
        if covers == *n || compacted(bytes) {
            return None;
        }
        let (_, _, original) = headers.iter().find(|(m, h, b)| {
            *m == covers && h.is_some_and(|(c, _)| c == covers) && !compacted(b)
        })?;
        let (copy, original) = (records(bytes), records(original));
        (copy.starts_with(&original) || original.starts_with(&copy)).then_some((*n, covers))
    })
}

/// The number below or at `n` whose low 24 bits are `low`: what a
/// compacted segment's header says it was written as.
fn number_from_low_bits(n: u64, low: u64) -> u64 {
    let candidate = (n & !0xff_ffff) | low;
    if candidate > n {
        candidate.saturating_sub(1 << 24)
    } else {
        candidate
    }
}

/// The newest event id among segment `n`'s records (`ZERO` if none).
fn newest_event(n: u64, h: Option<(u64, EventId)>, bytes: &[u8]) -> EventId {
    let found = scan_segment(
        bytes,
        HEADER_LEN as usize,
        false,
        written_by_writer(n, h, bytes),
        Order::default(),
    );
    newest_id(&found.records)
}

/// The newest event id among `records` (`ZERO` if they hold no event).
fn newest_id(records: &[Found]) -> EventId {
    records
        .iter()
        .filter_map(|f| match &f.record {
            Stored::Hub(crate::log::Record::Event(e)) => Some(e.id),
            _ => None,
        })
        .max()
        .unwrap_or(EventId::ZERO)
}

/// The error for segment file `path` whose header names segment `covers`.
fn not_its_number(path: &Path, covers: u64) -> crate::error::Error {
    io_err(
        path,
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "its header says it is segment {covers}: a copy or a renamed segment? \
                 Move it out of the data directory (nothing was changed)"
            ),
        ),
    )
}

/// The error for segment `m`, present in the range that segment `n`'s
/// header was healed over when an earlier start found it missing.
fn put_back(dir: &Path, m: u64, n: u64) -> crate::error::Error {
    io_err(
        &segment_path(dir, m),
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "an earlier start reported this segment missing and healed the log over it \
                 (segment {n}'s header); put back since? Its records are not taken back into \
                 the middle of the log: move it out of the data directory (nothing was changed)"
            ),
        ),
    )
}

/// The number of a segment file named `stem`.seg, if the store wrote that
/// name (20 decimal digits).
/// The highest segment number a store goes on from: far beyond what
/// rolling ever reaches (one segment per `--segment` bytes), far below
/// where the next number would overflow.
const MAX_SEGMENT: u64 = u64::MAX / 2;

fn segment_number(stem: &str) -> Option<u64> {
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Whether a segment's header marks it as compaction's output.
fn compacted(bytes: &[u8]) -> bool {
    bytes.get(COMPACTED_AT).is_some_and(|&b| b != 0)
}

/// Reports segments `missing` (numbered between two that are there), lost
/// with their records, loudly: an ERROR line, a note, and a marker file
/// `damaged-<first>-0.bin` that says so and keeps the store reported as
/// damaged until an operator removes it.
fn missing_segments(dir: &Path, missing: Range<u64>, notes: &mut Vec<String>) -> Damage {
    let first = segment_path(dir, missing.start);
    let what = format!(
        "segments {} to {} are missing from {} (removed by hand?): their records are lost",
        missing.start,
        missing.end - 1,
        dir.display()
    );
    let stem = first
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("segment");
    let text = format!("{what}. Remove this file once dealt with.\n");
    let kept_in = match keep_copy(dir, DAMAGED, stem, 0, text.as_bytes()) {
        Ok(target) => Some(target),
        Err(err) => {
            tracing::error!(cause = %err, "cannot write the marker of missing segments");
            None
        }
    };
    tracing::error!(
        first = missing.start,
        last = missing.end - 1,
        "store recovery: {what}"
    );
    notes.push(what.clone());
    Damage {
        file: first,
        offset: 0,
        len: 0,
        cause: what,
        kept_in,
        repaired: true,
    }
}

/// Writes a segment's header over its first bytes, durably.
fn rewrite_header(path: &Path, header: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = OpenOptions::new().write(true).open(path)?;
    file.write_all_at(header, 0)?;
    file.sync_all()
}

/// Writes `bytes` durably to a new `<prefix><stem>-<offset>[-n].bin`
/// (`damaged-` or `dropped-`), never over an earlier copy.
fn keep_copy(
    dir: &Path,
    prefix: &str,
    stem: &str,
    offset: usize,
    bytes: &[u8],
) -> std::io::Result<PathBuf> {
    for n in 0u32.. {
        let name = match n {
            0 => format!("{prefix}{stem}-{offset}.bin"),
            n => format!("{prefix}{stem}-{offset}-{n}.bin"),
        };
        let target = dir.join(name);
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
        {
            Ok(file) => file,
            // The same place was damaged at an earlier start.
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err),
        };
        let written = file.write_all(bytes).and_then(|()| file.sync_all());
        if let Err(err) = written {
            let _ = fs::remove_file(&target);
            return Err(err);
        }
        sync_dir(dir)?;
        return Ok(target);
    }
    Err(std::io::Error::other("no free name for the copy"))
}

/// Rewrites segment `number` with only `records` (tmp file, rename), so
/// its damage is gone; returns its new length. The result is marked as
/// compaction's output: its lsns now have a gap.
fn repair(
    dir: &Path,
    path: &Path,
    number: u64,
    bytes: &[u8],
    records: &[Found],
) -> std::io::Result<usize> {
    let mut out = Vec::with_capacity(bytes.len());
    let last_id = newest_id(records);
    let covers = read_header(bytes).map_or(number, |(covers, _)| covers);
    out.extend_from_slice(&header(covers, last_id, Some(number)));
    for f in records {
        out.extend_from_slice(&bytes[f.offset..f.offset + f.len]);
    }
    let tmp = path.with_extension("seg.tmp");
    let written = File::create(&tmp).and_then(|mut file| {
        file.write_all(&out)?;
        file.sync_all()
    });
    if let Err(err) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err);
    }
    fs::rename(&tmp, path)?;
    sync_dir(dir)?;
    Ok(out.len())
}

/// A copy of damaged bytes left by an earlier start (`damaged-*.bin`),
/// as the damage it reports.
fn earlier_damage(dir: &Path, name: &str, entry: &fs::DirEntry) -> Option<Damage> {
    let rest = name.strip_prefix(DAMAGED)?.strip_suffix(".bin")?;
    let mut parts = rest.split('-');
    let segment = parts.next()?;
    let offset = parts.next()?.parse().ok()?;
    let len = entry.metadata().ok()?.len();
    Some(Damage {
        file: dir.join(format!("{segment}.seg")),
        offset,
        len,
        cause: "found at an earlier start; remove the copy once dealt with".into(),
        kept_in: Some(entry.path()),
        repaired: true,
    })
}

/// How the copies of damaged bytes are named: an operator removes them to
/// acknowledge the damage.
pub(super) const DAMAGED: &str = "damaged-";

/// Records a note about a torn tail or a leftover, and logs it as a
/// warning: what a crash leaves, not damage to acknowledged records.
fn warn(notes: &mut Vec<String>, note: String) {
    tracing::warn!(note = %note, "store recovery: a crash left an unfinished write");
    notes.push(note);
}

/// Moves `bytes[from..]` of a segment (a torn tail, or a whole unfinished
/// segment) aside as `dropped-*.bin`, for an operator to inspect.
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
    // A crash loop tears the tail at the same offset each time: each
    // copy gets its own name.
    let target = keep_copy(dir, "dropped-", stem, from, rest)
        .map_err(|e| io_err(&dir.join(format!("dropped-{stem}-{from}.bin")), e))?;
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
