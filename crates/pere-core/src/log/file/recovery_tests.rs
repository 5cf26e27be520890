//! Recovery against files changed by hand: a LOCK removed, a segment
//! removed, copied or named otherwise, and a crash loop tearing the tail
//! at the same place. None of them may cost a record silently.

use super::tests::{
    config, event, event_ids, files_starting, open_store, reopen, segments, small_segments,
};
use super::*;

/// The number a segment file is named by.
fn number_of(segment: &Path) -> u64 {
    segment
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_lock_file_removed_by_hand_still_keeps_a_second_store_out() {
    let dir = tempfile::tempdir().unwrap();
    let _first = FileStore::open(config(dir.path())).unwrap();
    fs::remove_file(dir.path().join("LOCK")).unwrap();
    let err = FileStore::open(config(dir.path())).unwrap_err().to_string();
    assert!(err.contains("in use"), "{err}");
}

/// A crash loop tears the tail at the same offset each time: each torn
/// write keeps its own copy.
#[tokio::test]
async fn torn_tails_at_the_same_offset_keep_a_copy_each() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let tear = |dir: &Path| {
        let seg = segments(dir).pop().unwrap();
        let len = fs::metadata(&seg).unwrap().len();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 5).unwrap();
    };
    {
        let (store, _) = reopen(&cfg).await;
        store.append(&[event("a", 1, "kept")]).await.unwrap();
        store.close().await.unwrap();
    }
    let torn = [
        (2, "first torn, and more bytes"),
        (3, "second torn, and more bytes"),
    ];
    for (id, payload) in torn {
        let (store, r) = reopen(&cfg).await;
        assert_eq!(event_ids(&r), [1]);
        store.append(&[event("a", id, payload)]).await.unwrap();
        store.close().await.unwrap();
        drop(store);
        tear(dir.path());
    }
    let (_, r) = reopen(&cfg).await;
    assert_eq!(event_ids(&r), [1]);
    let copies = files_starting(dir.path(), "dropped-");
    assert_eq!(copies.len(), 2, "{copies:?}");
    let texts: Vec<String> = copies
        .iter()
        .map(|c| String::from_utf8_lossy(&fs::read(dir.path().join(c)).unwrap()).into_owned())
        .collect();
    assert!(texts[0].contains("first torn") || texts[1].contains("first torn"));
    assert!(texts[0].contains("second torn") || texts[1].contains("second torn"));
}

/// `3.seg` beside `00000000000000000003.seg` was read as segment 3 twice,
/// and the second read cut the real one as out of order.
#[tokio::test]
async fn a_segment_file_named_otherwise_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_segments(dir.path()).await;
    let segs = segments(dir.path());
    let real = &segs[2];
    let number = number_of(real);
    let stray = dir.path().join(format!("{number}.seg"));
    fs::copy(real, &stray).unwrap();
    let before = fs::read(real).unwrap();
    let (_, r) = reopen(&cfg).await;
    assert_eq!(event_ids(&r), (1..=50).collect::<Vec<_>>());
    assert_eq!(
        fs::read(real).unwrap(),
        before,
        "the real segment is untouched"
    );
    assert!(stray.exists(), "the stray file is left where it was");
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("left") && n.contains("alone")),
        "{:?}",
        r.notes
    );
}

/// Opens `cfg`, which must stop at `bad` (a segment copied or renamed by
/// hand) with nothing changed: the segments are still `expected`.
fn refused_at(cfg: &FileStoreConfig, bad: &Path, expected: &[PathBuf]) {
    let err = match FileStore::open(cfg.clone()) {
        Ok(_) => panic!("{} was taken", bad.display()),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("copy or a renamed segment"), "{err}");
    assert!(err.contains(&bad.display().to_string()), "{err}");
    assert_eq!(segments(&cfg.dir), expected, "nothing removed");
}

/// [`refused_at`] for `copy` made beside `segs`, whose removal leaves the
/// log of [`small_segments`] whole.
async fn copy_refused(cfg: &FileStoreConfig, segs: &[PathBuf], copy: &Path) {
    let mut expected = segs.to_vec();
    expected.push(copy.to_path_buf());
    refused_at(cfg, copy, &expected);
    fs::remove_file(copy).unwrap();
    let (_, r) = reopen(cfg).await;
    assert_eq!(event_ids(&r), (1..=50).collect::<Vec<_>>());
}

/// A segment copied under a later number claimed, by its header, to
/// supersede every segment between, which recovery deleted.
#[tokio::test]
async fn a_segment_copied_under_another_number_stops_the_start_and_nothing_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_segments(dir.path()).await;
    let segs = segments(dir.path());
    let last = number_of(segs.last().unwrap());
    let copy = segment_path(dir.path(), last + 1);
    fs::copy(&segs[1], &copy).unwrap();
    copy_refused(&cfg, &segs, &copy).await;
}

/// A segment removed from the middle of the log lost its records without
/// a word. It is now damage: reported (ERROR, a note, `/healthz`) until an
/// operator removes the marker, which a later start does not write again.
#[tokio::test]
async fn a_missing_segment_is_reported_as_damage_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_segments(dir.path()).await;
    let segs = segments(dir.path());
    fs::remove_file(&segs[2]).unwrap();
    let (store, r) = reopen(&cfg).await;
    let ids = event_ids(&r);
    let lost: Vec<u64> = (1..=50).filter(|i| !ids.contains(i)).collect();
    assert!(!lost.is_empty(), "the segment held events");
    assert_eq!(
        lost.len() as u64,
        lost.last().unwrap() - lost[0] + 1,
        "one run of events is lost: {lost:?}"
    );
    assert_eq!(r.damage.len(), 1, "{:?}", r.damage);
    let d = &r.damage[0];
    assert_eq!(d.file, segs[2]);
    assert!(d.cause.contains("missing"), "{d:?}");
    assert!(d.outstanding(), "{d:?}");
    assert!(
        r.notes.iter().any(|n| n.contains("missing")),
        "{:?}",
        r.notes
    );
    store.append(&[event("a", 51, "after")]).await.unwrap();
    store.close().await.unwrap();
    drop(store);

    // Reported again, by its marker alone; the log is whole again.
    let (store, r) = reopen(&cfg).await;
    assert!(event_ids(&r).contains(&51));
    assert_eq!(r.damage.len(), 1, "{:?}", r.damage);
    assert_eq!(files_starting(dir.path(), "damaged-").len(), 1);
    store.close().await.unwrap();
    drop(store);
    for marker in files_starting(dir.path(), "damaged-") {
        fs::remove_file(dir.path().join(marker)).unwrap();
    }
    let store = open_store(&cfg);
    let r = store.recover().await.unwrap();
    assert!(r.damage.is_empty(), "acknowledged: {:?}", r.damage);
}

fn presence(i: u64) -> Record {
    Record::Presence {
        subscription: crate::name::Pattern::new("a").unwrap(),
        device: crate::name::DeviceId::new(&format!("d{i}")).unwrap(),
        online: i.is_multiple_of(2),
        last_event_id: None,
        at: Timestamp::now(),
    }
}

/// A data directory from before compaction marked its output (byte 28 of
/// the header), whose last compaction read no event: its header names the
/// first segment it replaced, with no last id, as a copied writer segment's
/// does. It is not a copy (its records are not another segment's), and
/// opens (a review found the copy check refused it).
#[tokio::test]
async fn an_unmarked_compaction_without_events_is_not_taken_for_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_size = 400;
    {
        let (store, _) = reopen(&cfg).await;
        for i in 1..=40 {
            store.append(&[presence(i)]).await.unwrap();
        }
        assert!(store.compact_now());
        for i in 41..=45 {
            store.append(&[presence(i)]).await.unwrap();
        }
        store.close().await.unwrap();
    }
    let kept = {
        let (store, r) = reopen(&cfg).await;
        store.close().await.unwrap();
        r.records.len()
    };
    let segs = segments(dir.path());
    let mut first = fs::read(&segs[0]).unwrap();
    let (covers, last) = read_header(&first).unwrap();
    let number = number_of(&segs[0]);
    assert!(covers < number && last == EventId::ZERO && first[COMPACTED_AT] == NUMBERED);
    first[COMPACTED_AT..HEADER_LEN as usize].fill(0);
    fs::write(&segs[0], &first).unwrap();
    let (_, r) = reopen(&cfg).await;
    assert_eq!(r.records.len(), kept, "{:?}", r.notes);
}

/// Copies compaction's output (or a repaired segment) under a later
/// number: its header names an earlier segment as compaction's does, so
/// recovery took it for compaction's output and deleted every segment
/// from that one on (a new user's walk lost answered publishes so).
async fn copy_compacted_under_a_later_number(dir: &Path, old_marker: bool) -> PathBuf {
    let segs = segments(dir);
    let last = number_of(segs.last().unwrap());
    let copy = segment_path(dir, last + 1);
    let mut bytes = fs::read(&segs[0]).unwrap();
    assert_ne!(bytes[COMPACTED_AT], 0, "segment 0 is compaction's output");
    if old_marker {
        // As versions before the number was kept wrote it.
        bytes[COMPACTED_AT] = 1;
        bytes[COMPACTED_AT + 1..HEADER_LEN as usize].fill(0);
    }
    fs::write(&copy, &bytes).unwrap();
    copy
}

#[tokio::test]
async fn compactions_output_copied_under_a_later_number_stops_the_start() {
    for old_marker in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_segments(dir.path()).await;
        let segs = segments(dir.path());
        let copy = copy_compacted_under_a_later_number(dir.path(), old_marker).await;
        copy_refused(&cfg, &segs, &copy).await;
    }
}

/// The walk's own steps: a segment repaired at start (its damaged record
/// cut out, its header marked as compaction's), copied while the store
/// runs, and written on after the copy.
#[tokio::test]
async fn a_repaired_segment_copied_while_the_store_runs_stops_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    {
        let (store, _) = reopen(&cfg).await;
        for i in 1..=3 {
            store.append(&[event("a", i, "before")]).await.unwrap();
        }
        store.close().await.unwrap();
    }
    let segs = segments(dir.path());
    assert_eq!(segs.len(), 1);
    // One bit of the second record's payload.
    let mut bytes = fs::read(&segs[0]).unwrap();
    let first_len = u32::from_le_bytes(bytes[32..36].try_into().unwrap()) as usize + 8;
    let second = HEADER_LEN as usize + first_len;
    let second_len = u32::from_le_bytes(bytes[second..second + 4].try_into().unwrap()) as usize;
    bytes[second + second_len] ^= 0x08;
    fs::write(&segs[0], &bytes).unwrap();
    let copy = {
        let (store, r) = reopen(&cfg).await;
        assert_eq!(event_ids(&r), [1, 3]);
        assert!(
            r.notes.iter().any(|n| n.contains("rewrote")),
            "{:?}",
            r.notes
        );
        let copy = segment_path(dir.path(), 5);
        fs::copy(&segs[0], &copy).unwrap();
        for i in 4..=6 {
            store
                .append(&[event("a", i, "after the copy")])
                .await
                .unwrap();
        }
        store.close().await.unwrap();
        copy
    };
    refused_at(&cfg, &copy, &[segs[0].clone(), copy.clone()]);
    fs::remove_file(&copy).unwrap();
    let (_, r) = reopen(&cfg).await;
    assert_eq!(event_ids(&r), [1, 3, 4, 5, 6]);
}

/// A writer's segment renamed to a later number names its old number in
/// its header, so it claimed to supersede the segments after that one:
/// recovery deleted them.
#[tokio::test]
async fn a_segment_renamed_to_a_later_number_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_segments(dir.path()).await;
    let segs = segments(dir.path());
    let last = number_of(segs.last().unwrap());
    let renamed = segment_path(dir.path(), last + 1);
    fs::rename(&segs[1], &renamed).unwrap();
    let mut expected: Vec<PathBuf> = segs.iter().filter(|s| **s != segs[1]).cloned().collect();
    expected.push(renamed.clone());
    refused_at(&cfg, &renamed, &expected);
    fs::rename(&renamed, &segs[1]).unwrap();
    let (_, r) = reopen(&cfg).await;
    assert_eq!(event_ids(&r), (1..=50).collect::<Vec<_>>());
}

/// The same past segments that hold no event (receipts only): the event
/// check saw nothing newer than the renamed segment's header (a writer's
/// says none), and they were deleted as superseded (a review found 5 of
/// 30 receipts gone).
#[tokio::test]
async fn a_segment_renamed_past_segments_without_events_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_size = 400;
    {
        let (store, _) = reopen(&cfg).await;
        for i in 1..=3 {
            store.append(&[event("a", i, "an event")]).await.unwrap();
        }
        for k in 0..30 {
            let ack = Record::Ack {
                id: EventId(1 + k % 3),
                device: crate::name::DeviceId::new("dev1").unwrap(),
                status: format!("status {k:03}").into(),
                at: Timestamp::now(),
            };
            store.append(&[ack]).await.unwrap();
        }
        store.close().await.unwrap();
    }
    let acks = |r: &Recovered| {
        r.records
            .iter()
            .filter(|r| matches!(r, Record::Ack { .. }))
            .count()
    };
    let kept = acks(&reopen(&cfg).await.1);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "{segs:?}");
    assert_eq!(
        fs::read(&segs[1]).unwrap()[COMPACTED_AT],
        0,
        "a writer's segment"
    );
    let renamed = segment_path(dir.path(), number_of(segs.last().unwrap()) + 1);
    fs::rename(&segs[1], &renamed).unwrap();
    let mut expected: Vec<PathBuf> = segs.iter().filter(|s| **s != segs[1]).cloned().collect();
    expected.push(renamed.clone());
    refused_at(&cfg, &renamed, &expected);
    fs::rename(&renamed, &segs[1]).unwrap();
    assert_eq!(acks(&reopen(&cfg).await.1), kept);
}

/// Takes `missing` out, opens `cfg` once (which heals the log over it)
/// and writes on, puts it back: the next start must stop, naming it, with
/// nothing removed, and open as before once it is moved out again.
async fn put_back_refused(cfg: &FileStoreConfig, missing: &Path) {
    let saved = cfg.dir.join("saved.bin");
    fs::rename(missing, &saved).unwrap();
    let (store, _) = reopen(cfg).await;
    store.append(&[event("a", 1000, "after")]).await.unwrap();
    store.close().await.unwrap();
    drop(store);
    let healed = segments(&cfg.dir);
    fs::rename(&saved, missing).unwrap();
    let err = match FileStore::open(cfg.clone()) {
        Ok(_) => panic!("the segment put back was taken"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("put back since"), "{err}");
    let mut expected = healed;
    expected.push(missing.to_path_buf());
    expected.sort();
    assert_eq!(segments(&cfg.dir), expected, "nothing removed");
    fs::rename(missing, &saved).unwrap();
    let (_, r) = reopen(cfg).await;
    assert!(event_ids(&r).contains(&1000));
}

/// A segment reported missing, then put back by an operator after the
/// next start healed the log around it: the healed neighbour's header now
/// claims its number. The start stops, and the message names the restored
/// segment as the one to move out. It said "a copy or a renamed segment?"
/// of the neighbour, which holds the records written since.
#[tokio::test]
async fn a_missing_segment_put_back_after_the_log_healed_is_named_and_kept_out() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_segments(dir.path()).await;
    put_back_refused(&cfg, &segments(dir.path())[2]).await;
}

/// The same for a segment of receipts only, which was deleted as
/// compaction's input: the healed header says no event, as compaction's
/// output over segments without events does.
#[tokio::test]
async fn a_receipts_segment_put_back_after_the_log_healed_is_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_size = 400;
    {
        let (store, _) = reopen(&cfg).await;
        store.append(&[event("a", 1, "an event")]).await.unwrap();
        for k in 0..30 {
            let ack = Record::Ack {
                id: EventId(1),
                device: crate::name::DeviceId::new("dev1").unwrap(),
                status: format!("status {k:03}").into(),
                at: Timestamp::now(),
            };
            store.append(&[ack]).await.unwrap();
        }
        store.close().await.unwrap();
    }
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "{segs:?}");
    let missing = &segs[1];
    let text = String::from_utf8_lossy(&fs::read(missing).unwrap()).into_owned();
    assert!(
        text.contains("status") && !text.contains("an event"),
        "receipts only"
    );
    put_back_refused(&cfg, missing).await;
}

/// A segment renamed to a number the store cannot go on from (the largest
/// u64, or 20 digits beyond it): the start stops and says so, changing
/// nothing. Read as it was, the next roll overflowed (a panic), or wrapped
/// to segment 0, which the next start read first and cut everything after
/// as out of order; the name beyond u64 was skipped as foreign, its
/// events gone without an error.
#[tokio::test]
async fn a_segment_renamed_past_the_numbers_a_store_can_go_on_from_stops_the_start() {
    for name in ["18446744073709551615.seg", "99999999999999999999.seg"] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        {
            let (store, _) = reopen(&cfg).await;
            store.append(&[event("a", 1, "kept")]).await.unwrap();
            store.close().await.unwrap();
        }
        let seg = segments(dir.path()).pop().unwrap();
        let renamed = dir.path().join(name);
        fs::rename(&seg, &renamed).unwrap();
        let err = match FileStore::open(cfg.clone()) {
            Ok(_) => panic!("{name} was taken"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("numbered above") && err.contains(name),
            "{err}"
        );
        assert!(renamed.exists(), "nothing was changed");
    }
}

/// Only the store's own leftovers of an unfinished compaction are removed
/// at start: an operator's `.tmp` file in the directory is left alone (any
/// was deleted).
#[tokio::test]
async fn only_the_store_s_own_tmp_files_are_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    reopen(&cfg).await.0.close().await.unwrap();
    let ours = dir.path().join("00000000000000000007.seg.tmp");
    let theirs = dir.path().join("notes.tmp");
    fs::write(&ours, b"half a compaction").unwrap();
    fs::write(&theirs, b"an operator's notes").unwrap();
    reopen(&cfg).await.0.close().await.unwrap();
    assert!(!ours.exists(), "compaction's leftover removed");
    assert_eq!(fs::read(&theirs).unwrap(), b"an operator's notes");
}
