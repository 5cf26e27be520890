//! The zeros the writer fills the active segment with ahead of its
//! records: cut when the store closes, and, after a crash, cut at the next
//! start without taking a torn write for anything else.

use super::tests::{
    Tmpfs, config, event, event_ids, files_starting, reopen, segments, small_segments_open,
};
use super::*;

/// The last record of a segment the writer wrote.
fn last_record(bytes: &[u8]) -> Option<scan::Found> {
    scan::scan_segment(bytes, HEADER_LEN as usize, true, true, Default::default())
        .records
        .pop()
}

/// Where the records of a segment end.
fn records_end(bytes: &[u8]) -> usize {
    last_record(bytes).map_or(HEADER_LEN as usize, |r| r.offset + r.len)
}

/// Appends events `ids` to a store at `cfg`, one batch each, and returns
/// the last segment's bytes as they are on disk before the store closes:
/// what a crash would leave.
async fn written_then_closed(cfg: &FileStoreConfig, ids: std::ops::RangeInclusive<u64>) -> Vec<u8> {
    let (store, _) = reopen(cfg).await;
    for i in ids {
        store
            .append(&[event("a", i, &format!("payload {i}"))])
            .await
            .unwrap();
    }
    let seg = segments(&cfg.dir).pop().unwrap();
    let open = fs::read(&seg).unwrap();
    store.close().await.unwrap();
    drop(store);
    let closed = fs::read(&seg).unwrap();
    assert_eq!(closed.len(), records_end(&closed), "closing cut the zeros");
    assert_eq!(&open[..closed.len()], &closed[..]);
    open
}

#[tokio::test]
async fn the_writer_syncs_over_zeros_written_ahead_and_a_close_cuts_them() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let open = written_then_closed(&cfg, 1..=5).await;
    let end = records_end(&open);
    assert!(
        open.len() as u64 >= end as u64 + writer::PREALLOCATE.min(cfg.segment_size),
        "{} bytes written ahead of {end}",
        open.len()
    );
    assert!(open[end..].iter().all(|&b| b == 0));

    // Without syncs nothing is written ahead.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.fsync = Fsync::Never;
    let open = written_then_closed(&cfg, 1..=5).await;
    assert_eq!(open.len(), records_end(&open));
}

#[tokio::test]
async fn zeros_a_crash_left_are_cut_without_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let crashed = written_then_closed(&cfg, 1..=5).await;
    let seg = segments(dir.path()).pop().unwrap();
    fs::write(&seg, &crashed).unwrap();
    let (store, r) = reopen(&cfg).await;
    assert_eq!(event_ids(&r), [1, 2, 3, 4, 5]);
    assert!(
        r.notes.iter().all(|n| n.starts_with("recovered ")) && r.damage.is_empty(),
        "{:?}",
        r.notes
    );
    assert!(files_starting(dir.path(), "dropped-").is_empty());
    assert_eq!(
        fs::metadata(&seg).unwrap().len() as usize,
        records_end(&crashed),
        "cut to the records"
    );
    // Appending goes on after the records, and survives another crash.
    store.append(&[event("a", 6, "after")]).await.unwrap();
    let crashed = fs::read(&seg).unwrap();
    store.close().await.unwrap();
    drop(store);
    fs::write(&seg, &crashed).unwrap();
    let (_, r) = reopen(&cfg).await;
    assert_eq!(event_ids(&r), [1, 2, 3, 4, 5, 6]);
    assert!(
        r.notes.iter().all(|n| n.starts_with("recovered ")),
        "{:?}",
        r.notes
    );
}

#[tokio::test]
async fn a_write_the_crash_cut_short_before_the_zeros_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut crashed = written_then_closed(&cfg, 1..=5).await;
    // The last record reached the disk only in part: zeros after its
    // first ten bytes.
    let end = records_end(&crashed);
    let last = last_record(&crashed).unwrap();
    crashed[last.offset + 10..end].fill(0);
    let mut torn: Vec<u8> = crashed[last.offset..last.offset + 10].to_vec();
    // Its own zero bytes at the end look like the space after it.
    while torn.last() == Some(&0) {
        torn.pop();
    }
    let seg = segments(dir.path()).pop().unwrap();
    fs::write(&seg, &crashed).unwrap();
    let (store, r) = reopen(&cfg).await;
    assert_eq!(event_ids(&r), [1, 2, 3, 4]);
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains(&format!("offset {}", last.offset))),
        "the torn write is noted: {:?}",
        r.notes
    );
    let dropped = files_starting(dir.path(), "dropped-");
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert_eq!(
        fs::read(dir.path().join(&dropped[0])).unwrap(),
        torn,
        "the copy holds the torn bytes, not the zeros after them"
    );
    assert_eq!(fs::metadata(&seg).unwrap().len() as usize, last.offset);
    store.append(&[event("a", 6, "after")]).await.unwrap();
    store.close().await.unwrap();
    drop(store);
    let (_, r) = reopen(&cfg).await;
    assert_eq!(event_ids(&r), [1, 2, 3, 4, 6]);
}

#[tokio::test]
async fn sealed_segments_hold_their_records_only() {
    let dir = tempfile::tempdir().unwrap();
    // Segments sealed after its compaction stay as the writer left them.
    let (store, _) = small_segments_open(dir.path()).await;
    let segs = segments(dir.path());
    let (last, sealed) = segs.split_last().unwrap();
    let by_writer: Vec<Vec<u8>> = sealed
        .iter()
        .map(|seg| fs::read(seg).unwrap())
        .filter(|bytes| bytes[COMPACTED_AT] == 0)
        .collect();
    assert!(by_writer.len() >= 2, "{segs:?}");
    for bytes in &by_writer {
        assert_eq!(bytes.len(), records_end(bytes));
    }
    let bytes = fs::read(last).unwrap();
    assert!(
        bytes.len() > records_end(&bytes),
        "the active one is written ahead"
    );
    store.close().await.unwrap();
}

/// Zeros never take a disk's last space: on a small filesystem the writer
/// appends, as without them.
#[tokio::test]
async fn a_disk_short_of_space_gets_no_zeros() {
    let Some(disk) = Tmpfs::mount("8m") else {
        return;
    };
    let cfg = config(&disk.dir.path().join("data"));
    let open = written_then_closed(&cfg, 1..=5).await;
    assert_eq!(open.len(), records_end(&open));
}

/// The disk filling between the free-space check and the zeros: the
/// zeros are cut and the batch appended, as on a disk without them.
#[tokio::test]
async fn zeros_the_disk_refuses_are_cut_and_the_batch_appended() {
    let Some(disk) = Tmpfs::mount("1m") else {
        return;
    };
    let cfg = config(&disk.dir.path().join("data"));
    // The check passes, the zeros (a MiB ahead) cannot fit.
    let store = FileStore::open_with(cfg.clone(), |_| u64::MAX).unwrap();
    store.recover().await.unwrap();
    let seg = segments(&cfg.dir).pop().unwrap();
    for i in 1..=5 {
        store
            .append(&[event("a", i, &format!("payload {i}"))])
            .await
            .unwrap();
        let bytes = fs::read(&seg).unwrap();
        assert_eq!(bytes.len(), records_end(&bytes), "no zeros after batch {i}");
    }
    // Their space was given back: a batch of most of the disk still fits.
    store
        .append(&[event("a", 6, &"x".repeat(700 * 1024))])
        .await
        .unwrap();
    store.close().await.unwrap();
    drop(store);
    let (_, r) = reopen(&cfg).await;
    assert_eq!(event_ids(&r), [1, 2, 3, 4, 5, 6]);
    assert!(r.damage.is_empty(), "{:?}", r.notes);
}
