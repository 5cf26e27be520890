use super::*;
use crate::hub::{Hub, Publish, Resume, SubscribeRequest};
use crate::name::{DeviceId, Pattern};
use crate::{HubConfig, ReceiptState};
use bytes::Bytes;
use std::fs::OpenOptions;

pub(super) fn ch(s: &str) -> ChannelName {
    ChannelName::new(s).unwrap()
}

pub(super) fn config(dir: &Path) -> FileStoreConfig {
    FileStoreConfig {
        dir: dir.to_path_buf(),
        retention: Retention {
            history: 1000,
            max_age: None,
        },
        fsync: Fsync::Always,
        segment_size: DEFAULT_SEGMENT_SIZE,
    }
}

pub(super) fn event(channel: &str, id: u64, payload: &str) -> Record {
    Record::Event(Arc::new(Event {
        id: EventId(id),
        channel: ch(channel),
        kind: None,
        device: None,
        time: Timestamp::now(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        idempotency_key: None,
    }))
}

/// Opens the store at `cfg` as a restart would. A test that spawns a
/// process (`mount`) on another thread forks this one, and until the child
/// execs it holds a copy of every descriptor, a just-closed store's lock
/// included: wait that out instead of failing as "in use".
pub(crate) fn open_store(cfg: &FileStoreConfig) -> FileStore {
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match FileStore::open(cfg.clone()) {
            Err(err) if err.to_string().contains("in use") && Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            opened => return opened.unwrap(),
        }
    }
}

pub(super) async fn reopen(cfg: &FileStoreConfig) -> (FileStore, Recovered) {
    let store = open_store(cfg);
    let recovered = store.recover().await.unwrap();
    (store, recovered)
}

pub(super) fn event_ids(r: &Recovered) -> Vec<u64> {
    r.records
        .iter()
        .filter_map(|r| match r {
            Record::Event(e) => Some(e.id.0),
            _ => None,
        })
        .collect()
}

pub(super) fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn appended_records_come_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    {
        let (store, r) = reopen(&cfg).await;
        assert!(r.records.is_empty());
        store
            .append(&[event("a", 10, "one"), event("b", 11, "two")])
            .await
            .unwrap();
        store.append(&[event("a", 12, "three")]).await.unwrap();
        store.close().await.unwrap();
    }
    let (store, r) = reopen(&cfg).await;
    assert_eq!(event_ids(&r), [10, 11, 12]);
    assert_eq!(r.last_id, EventId(12));
    assert!(r.durable);
    let a = store
        .read(&ch("a"), EventId(0), EventId(u64::MAX), 10)
        .await
        .unwrap();
    assert_eq!(
        a.iter().map(|e| e.payload_str()).collect::<Vec<_>>(),
        ["one", "three"]
    );
}

#[tokio::test]
async fn a_second_process_cannot_open_the_same_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _first = FileStore::open(config(dir.path())).unwrap();
    let err = FileStore::open(config(dir.path())).unwrap_err().to_string();
    assert!(err.contains("in use"), "{err}");
}

#[tokio::test]
async fn a_torn_tail_is_truncated_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    {
        let (store, _) = reopen(&cfg).await;
        for i in 1..=5 {
            store
                .append(&[event("a", i, &format!("payload {i}"))])
                .await
                .unwrap();
        }
        store.close().await.unwrap();
    }
    let seg = segments(dir.path()).pop().unwrap();
    let len = fs::metadata(&seg).unwrap().len();
    // Cut the last record in the middle.
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 5).unwrap();
    drop(f);
    let (store, r) = reopen(&cfg).await;
    assert_eq!(event_ids(&r), [1, 2, 3, 4]);
    assert!(
        r.notes.iter().any(|n| n.contains("cut short")),
        "{:?}",
        r.notes
    );
    assert!(fs::read_dir(dir.path()).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("dropped-")
    }));
    // Appending continues after the truncation point, and survives.
    store.append(&[event("a", 6, "after")]).await.unwrap();
    store.close().await.unwrap();
    drop(store);
    let (_, r) = reopen(&cfg).await;
    assert_eq!(event_ids(&r), [1, 2, 3, 4, 6]);
}

/// Writes events 1..=50 to a store with small segments and closes it: one
/// compacted segment (1..=30 or so), then sealed ones as the writer left
/// them, then the active one.
pub(super) async fn small_segments(dir: &Path) -> FileStoreConfig {
    let (store, cfg) = small_segments_open(dir).await;
    store.close().await.unwrap();
    let segs = segments(dir);
    assert!(segs.len() >= 4, "{segs:?}");
    assert_eq!(fs::read(&segs[0]).unwrap()[COMPACTED_AT], NUMBERED);
    assert_eq!(fs::read(&segs[1]).unwrap()[COMPACTED_AT], 0);
    cfg
}

/// [`small_segments`] with the store still open.
pub(super) async fn small_segments_open(dir: &Path) -> (FileStore, FileStoreConfig) {
    let mut cfg = config(dir);
    cfg.segment_size = 400; // a few records per segment
    let (store, _) = reopen(&cfg).await;
    for i in 1..=50 {
        if i == 31 {
            store.compact_now();
        }
        store
            .append(&[event("a", i, &format!("some payload bytes {i:03}"))])
            .await
            .unwrap();
    }
    (store, cfg)
}

/// Flips one bit in the middle of `segment` and returns the id of the
/// event whose record it hit.
fn flip_a_bit_mid_segment(segment: &Path) -> u64 {
    let mut bytes = fs::read(segment).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x08;
    fs::write(segment, &bytes).unwrap();
    // Which record: the one whose frame spans `at`.
    let mut offset = HEADER_LEN as usize;
    loop {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize + 8;
        if at < offset + len {
            let body = &bytes[offset + 8..offset + len];
            // lsn 8, kind 1, then the event id.
            return u64::from_le_bytes(body[9..17].try_into().unwrap());
        }
        offset += len;
    }
}

pub(super) fn files_starting(dir: &Path, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// Issue 19: one flipped bit in an old segment took every later record out
/// of service (treated as a torn tail: the rest of the segment cut, later
/// segments set aside). Now it costs exactly the record it hit, and the
/// damage is reported.
#[tokio::test]
async fn a_flipped_bit_in_an_old_segment_costs_only_that_record() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_segments(dir.path()).await;
    let segs = segments(dir.path());
    // A compacted segment and one the writer sealed.
    let lost = [
        flip_a_bit_mid_segment(&segs[0]),
        flip_a_bit_mid_segment(&segs[1]),
    ];
    let (store, r) = reopen(&cfg).await;
    let expected: Vec<u64> = (1..=50).filter(|i| !lost.contains(i)).collect();
    assert_eq!(event_ids(&r), expected, "every record but the damaged ones");
    assert_eq!(r.damage.len(), 2, "{:?}", r.damage);
    for (d, seg) in r.damage.iter().zip(&segs) {
        assert_eq!(&d.file, seg);
        assert!(d.len > 0 && d.len < 100, "one record: {d:?}");
        assert!(d.cause.contains("checksum"), "{d:?}");
        let kept = d.kept_in.as_ref().expect("a copy of the damaged bytes");
        assert_eq!(fs::read(kept).unwrap().len() as u64, d.len);
        assert!(d.repaired && d.outstanding(), "{d:?}");
    }
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("skipped") && n.contains("damaged")),
        "{:?}",
        r.notes
    );
    assert_eq!(segments(dir.path()), segs, "no segment set aside or cut");
    assert!(files_starting(dir.path(), "dropped-").is_empty());
    let served = store
        .read(&ch("a"), EventId(0), EventId(u64::MAX), 100)
        .await
        .unwrap();
    assert_eq!(
        served.iter().map(|e| e.id.0).collect::<Vec<_>>(),
        expected,
        "the damaged record is never served"
    );
    // Appending goes on. The segments were rewritten without the damage;
    // the copies keep it reported at every start until removed.
    store.append(&[event("a", 51, "after")]).await.unwrap();
    store.close().await.unwrap();
    drop(store);
    let (store, r) = reopen(&cfg).await;
    let mut expected = expected;
    expected.push(51);
    assert_eq!(event_ids(&r), expected);
    assert_eq!(r.damage.len(), 2, "{:?}", r.damage);
    assert!(r.damage.iter().all(|d| d.cause.contains("earlier")));
    assert!(store.compact_now());
    store.close().await.unwrap();
    drop(store);
    for copy in files_starting(dir.path(), "damaged-") {
        fs::remove_file(dir.path().join(copy)).unwrap();
    }
    let (_, r) = reopen(&cfg).await;
    assert_eq!(event_ids(&r), expected, "compaction kept every record");
    assert!(r.damage.is_empty(), "{:?}", r.damage);
}

/// Damage at the start, in the middle and at the end of sealed segments,
/// and in the last segment followed by records: each costs its records
/// only; a real torn tail is still cut.
#[tokio::test]
async fn damage_anywhere_costs_only_the_damaged_records() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_segments(dir.path()).await;
    let segs = segments(dir.path());
    let record_at = |bytes: &[u8], index: usize| {
        let mut offset = HEADER_LEN as usize;
        for _ in 0..index {
            offset +=
                u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize + 8;
        }
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize + 8;
        (offset, len)
    };
    let mut lost = Vec::new();
    let mut damage = |seg: &Path, index: Option<usize>, how: &dyn Fn(&mut [u8])| {
        let mut bytes = fs::read(seg).unwrap();
        let count = {
            let mut n = 0;
            let mut offset = HEADER_LEN as usize;
            while offset < bytes.len() {
                offset +=
                    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize + 8;
                n += 1;
            }
            n
        };
        let index = index.unwrap_or(count - 1);
        let (offset, len) = record_at(&bytes, index);
        lost.push(u64::from_le_bytes(
            bytes[offset + 17..offset + 25].try_into().unwrap(),
        ));
        how(&mut bytes[offset..offset + len]);
        fs::write(seg, &bytes).unwrap();
    };
    // The middle of the compacted segment: a payload byte.
    damage(&segs[0], Some(10), &|r| r[30] ^= 0x40);
    // Its first record: the length field zeroed.
    damage(&segs[0], Some(0), &|r| r[..4].fill(0));
    // A sealed segment the writer wrote: its first record's length, set
    // past the end of the segment.
    damage(&segs[1], Some(0), &|r| {
        r[..4].copy_from_slice(&5000u32.to_le_bytes())
    });
    // The end of the next one: its last record's checksum.
    damage(&segs[2], None, &|r| r[5] ^= 1);
    // The last segment, with records after: a sector-like run of zeros.
    let last = segs.last().unwrap();
    damage(last, Some(0), &|r| r[8..20].fill(0));
    let (_, r) = reopen(&cfg).await;
    lost.sort_unstable();
    let expected: Vec<u64> = (1..=50).filter(|i| !lost.contains(i)).collect();
    assert_eq!(event_ids(&r), expected, "lost only {lost:?}");
    assert_eq!(r.damage.len(), 5, "{:?}", r.damage);
    assert!(
        files_starting(dir.path(), "dropped-").is_empty(),
        "no torn tail"
    );
    assert_eq!(segments(dir.path()).len(), segs.len());
}

/// Damage that appears while the store is open was never reported, and
/// the records it hit may still be served from memory: compaction must not
/// quietly drop them from disk. It stops, and leaves the segments alone.
#[tokio::test]
async fn compaction_stops_at_damage_it_was_not_told_about() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_segments(dir.path()).await;
    let (store, r) = reopen(&cfg).await;
    assert!(r.damage.is_empty());
    let segs = segments(dir.path());
    let before: Vec<Vec<u8>> = segs.iter().map(|s| fs::read(s).unwrap()).collect();
    let mut damaged = before[0].clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x02;
    fs::write(&segs[0], &damaged).unwrap();
    assert!(!store.compact_now(), "compaction refuses");
    assert_eq!(segments(dir.path()), segs);
    for (seg, bytes) in segs.iter().zip(&before).skip(1) {
        assert_eq!(
            &fs::read(seg).unwrap(),
            bytes,
            "{} untouched",
            seg.display()
        );
    }
    assert!(
        !fs::read_dir(dir.path())
            .unwrap()
            .any(|e| { e.unwrap().file_name().to_string_lossy().ends_with(".tmp") })
    );
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_segment_created_but_never_written_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    {
        let (store, _) = reopen(&cfg).await;
        store.append(&[event("a", 1, "x")]).await.unwrap();
        store.close().await.unwrap();
    }
    fs::write(segment_path(dir.path(), 99), b"PERE").unwrap();
    let (_, r) = reopen(&cfg).await;
    assert_eq!(event_ids(&r), [1]);
}

#[tokio::test]
async fn a_hub_over_a_file_store_comes_back_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let c = Pattern::new("c").unwrap();
    let dev = DeviceId::new("phone").unwrap();
    let (first, second, before) = {
        let hub = Hub::open(HubConfig::default(), open_store(&cfg))
            .await
            .unwrap();
        let mut sub = hub
            .subscribe(
                SubscribeRequest {
                    device: Some(dev.clone()),
                    patterns: vec![c.clone()],
                    resume: Resume::Auto,
                },
                None,
            )
            .await
            .unwrap();
        let first = hub.publish(Publish::new(ch("c"), "one")).await.unwrap();
        assert_eq!(sub.next().await.unwrap().id, first.id);
        hub.ack(&c, &dev, first.id, "printed").await.unwrap();
        drop(sub);
        let second = hub.publish(Publish::new(ch("c"), "two")).await.unwrap();
        let before = hub.receipt_summary(&c, first.id).unwrap();
        hub.shutdown().await;
        (first, second, before)
    };
    let hub = Hub::open(HubConfig::default(), open_store(&cfg))
        .await
        .unwrap();
    let after = hub.receipt_summary(&c, first.id).unwrap();
    assert_eq!(after.devices, before.devices);
    assert_eq!(after.devices[0].1.state, ReceiptState::Acked);
    let pending = hub.receipt_summary(&c, second.id).unwrap();
    assert_eq!(
        pending.pending,
        vec![dev.clone()],
        "offline member still in the audience"
    );
    let presence = hub.devices(&c).await.unwrap();
    assert_eq!(presence.len(), 1);
    assert_eq!(presence[0].1.last_acked, Some(first.id));
    assert_eq!(presence[0].1.last_delivered, Some(first.id));
    // The member resumes from its durable cursor without Last-Event-ID.
    let mut sub = hub
        .subscribe(
            SubscribeRequest {
                device: Some(dev.clone()),
                patterns: vec![c.clone()],
                resume: Resume::Auto,
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(sub.hello().resumed_from, Some(first.id));
    assert_eq!(sub.next().await.unwrap().id, second.id);
    let third = hub.publish(Publish::new(ch("c"), "three")).await.unwrap();
    assert!(third.id > second.id);
    hub.shutdown().await;
}

/// A small tmpfs mounted on a fresh directory: a real disk that fills up.
/// Mounting needs root (or `CAP_SYS_ADMIN`); unmounted when dropped, also
/// when a test fails.
pub(super) struct Tmpfs {
    pub(super) dir: tempfile::TempDir,
}

impl Tmpfs {
    pub(super) fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("SKIPPED: cannot mount a tmpfs here (not root): no real full disk to test");
            return None;
        }
        Some(Self { dir })
    }

    /// Fills the disk with a file, until it is full; returns the file.
    fn fill(&self) -> PathBuf {
        let path = self.dir.path().join("filler");
        let mut file = File::create(&path).unwrap();
        let chunk = vec![0x55u8; 16 * 1024];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) => {
                    assert_eq!(err.raw_os_error(), Some(28), "ENOSPC: {err}");
                    break;
                }
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

/// Every segment reads back whole: no damage, no torn tail, lsns one apart.
fn assert_clean(dir: &Path) -> Vec<u64> {
    let mut lsns = Vec::new();
    let mut order = scan::Order::default();
    let segs = segments(dir);
    for (i, seg) in segs.iter().enumerate() {
        let bytes = fs::read(seg).unwrap();
        assert!(bytes.len() >= HEADER_LEN as usize, "{}", seg.display());
        let found = scan::scan_segment(
            &bytes,
            HEADER_LEN as usize,
            i + 1 == segs.len(),
            true,
            order,
        );
        assert!(
            found.damaged.is_empty() && found.torn.is_none(),
            "{found:?}"
        );
        lsns.extend(found.records.iter().map(|f| f.lsn));
        order = found.order;
    }
    assert!(lsns.windows(2).all(|w| w[1] == w[0] + 1), "{lsns:?}");
    lsns
}

/// Issue 19, point 6, at the store: on a real full disk a write fails with
/// `ENOSPC` and leaves nothing of its batch behind (a partial write would
/// come back after a restart, or sit before the next records); the probe
/// fails while the disk is full and passes once space is freed; appending
/// resumes, across segment rolls, and a restart finds exactly the records
/// whose appends succeeded.
#[tokio::test]
async fn a_full_disk_fails_a_write_cleanly_and_the_store_resumes() {
    let Some(disk) = Tmpfs::mount("2m") else {
        return;
    };
    let mut cfg = config(&disk.dir.path().join("data"));
    cfg.segment_size = 48 * 1024; // rolls while the disk is full, too
    let (store, _) = reopen(&cfg).await;
    let payload = "x".repeat(3000);
    let mut stored = Vec::new();
    let mut id = 1;
    for _ in 0..20 {
        store.append(&[event("a", id, &payload)]).await.unwrap();
        stored.push(id);
        id += 1;
    }
    let filler = disk.fill();
    let err = loop {
        // Batches of several records, so that a write can be cut short.
        let batch: Vec<Record> = (id..id + 5).map(|i| event("a", i, &payload)).collect();
        match store.append(&batch).await {
            Ok(_) => stored.extend(id..id + 5),
            Err(err) => break err,
        }
        id += 5;
        assert!(id < 2000, "the disk never filled up");
    };
    assert!(err.to_string().contains("No space left on device"), "{err}");
    id += 5;
    assert_eq!(
        assert_clean(&cfg.dir).len(),
        stored.len(),
        "nothing of it stays"
    );
    assert!(store.probe().await.is_err(), "still full");
    // A write while full fails again, and also leaves nothing.
    assert!(store.append(&[event("a", id, &payload)]).await.is_err());
    id += 1;
    assert_clean(&cfg.dir);
    fs::remove_file(filler).unwrap();
    store.probe().await.unwrap();
    for _ in 0..30 {
        store.append(&[event("a", id, &payload)]).await.unwrap();
        stored.push(id);
        id += 1;
    }
    store.close().await.unwrap();
    drop(store);
    assert_eq!(assert_clean(&cfg.dir).len(), stored.len());
    let (store, r) = reopen(&cfg).await;
    assert_eq!(event_ids(&r), stored);
    assert!(r.damage.is_empty());
    assert!(
        files_starting(&cfg.dir, "dropped-").is_empty(),
        "no torn tail"
    );
    store.close().await.unwrap();
}
