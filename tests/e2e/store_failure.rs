//! A full disk, for real: `pere-server` on a 2 MiB tmpfs that fills up and
//! is freed again, through HTTP (issue 19, point 6). Mounting needs root;
//! without it the test says so and does nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pere_tests::{Response, ServerProcess, WAIT, temp_dir};

/// A tmpfs mounted on a fresh directory, unmounted when dropped (also when
/// the test fails; drop the server first, it holds files open).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        let dir = temp_dir("full-disk");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("SKIPPED: cannot mount a tmpfs here (not root): no real full disk to test");
            return None;
        }
        Some(Self(dir))
    }

    /// Fills the disk with a file until it is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0x55u8; 16 * 1024];
        while let Ok(n) = file.write(&chunk) {
            if n == 0 {
                break;
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn retry_after(r: &Response) -> u64 {
    r.header("retry-after")
        .unwrap_or_else(|| panic!("a Retry-After: {r:?}"))
        .parse()
        .unwrap()
}

/// Publishes `payload`, keyed by what is before its `|` (`while full 3`).
async fn publish(server: &ServerProcess, payload: &str) -> Response {
    let key = payload.split('|').next().unwrap();
    server
        .request(
            "POST",
            "/push/disk",
            &[("Idempotency-Key", key)],
            payload.as_bytes(),
        )
        .await
}

fn stored(events: &serde_json::Value) -> BTreeMap<u64, String> {
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().parse().unwrap(),
                e["data"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn all_events(server: &ServerProcess) -> BTreeMap<u64, String> {
    let r = server.get("/admin/events/disk?limit=10000").await;
    assert_eq!(r.status, 200, "{}", r.text());
    stored(&r.json())
}

/// Issue 19, point 6: after `ENOSPC` every write got `503` with
/// `Retry-After: 1` until a restart, even once space was freed, and
/// `/healthz` said `ok`. Now: `503 store_unavailable` with an honest
/// `Retry-After` while the disk is full, `/healthz` `503` with the store's
/// state; writes resume once space is freed, without a restart; every
/// acknowledged event is there after a `kill -9` and a restart, no refused
/// one is, ids only grow, and a publish refused with an idempotency key
/// can be retried with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_until_space_is_freed_then_resumes() {
    let Some(disk) = Tmpfs::mount("2m") else {
        return;
    };
    let data = disk.0.join("data");
    let args = ["--data-dir", data.to_str().unwrap(), "--history", "100000"];
    let server = ServerProcess::start(&args).await;
    let padding = "p".repeat(2000);
    let mut confirmed: BTreeMap<u64, String> = BTreeMap::new();
    for n in 0..20 {
        let payload = format!("before {n}|{padding}");
        let r = publish(&server, &payload).await;
        assert_eq!(r.status, 201, "{}", r.text());
        confirmed.insert(r.json()["id"].as_str().unwrap().parse().unwrap(), payload);
    }
    let filler = disk.fill();
    // The segment's last page may still take a few; then the disk is full.
    let mut refused = Vec::new();
    let mut n = 0;
    let first_503 = loop {
        let payload = format!("while full {n}|{padding}");
        n += 1;
        let r = publish(&server, &payload).await;
        match r.status {
            201 => {
                confirmed.insert(r.json()["id"].as_str().unwrap().parse().unwrap(), payload);
            }
            503 => {
                refused.push(payload);
                break r;
            }
            other => panic!("{other}: {}", r.text()),
        }
        assert!(n < 100, "the disk never filled up");
    };
    first_503.assert_error(503, "store_unavailable");
    assert!(
        first_503.json()["error"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{}",
        first_503.text()
    );
    assert!((1..=5).contains(&retry_after(&first_503)));
    // While full: every write refused, /healthz and /metrics say why.
    let started = Instant::now();
    let mut longest_wait = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let payload = format!("while full {n}|{padding}");
        n += 1;
        let r = publish(&server, &payload).await;
        r.assert_error(503, "store_unavailable");
        refused.push(payload);
        longest_wait = longest_wait.max(retry_after(&r));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The retries back off (100 ms doubling): after 4 s the next one is
    // more than a second away, and never more than 5 s.
    assert!((2..=5).contains(&longest_wait), "{longest_wait}");
    // A device's stream (its membership is a write) is refused like the
    // writes, unless an EventSource asks (`Accept: text/event-stream`):
    // that one is told to come back, since a 503 would make it give up.
    let r = server
        .request("GET", "/feed/news", &[("device", "phone")], b"")
        .await;
    r.assert_error(503, "store_unavailable");
    assert!((1..=5).contains(&retry_after(&r)));
    let r = server
        .request(
            "GET",
            "/feed/news",
            &[("device", "phone"), ("Accept", "text/event-stream")],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert!((1..=5).contains(&retry_after(&r)));
    let told = r.text();
    assert!(told.starts_with("retry:"), "{told}");
    assert!(told.contains("\n:the event store is unavailable"), "{told}");
    assert!(!told.contains("pere.hello"), "{told}");
    let health = server.get("/healthz").await;
    health.assert_error(503, "store_unavailable");
    let state = &health.json()["store"];
    assert_eq!(state["writable"], false, "{}", health.text());
    assert!(state["failures"].as_u64().unwrap() >= 4, "{state}");
    assert!((1..=5).contains(&retry_after(&health)));
    let metrics = server.get("/metrics").await.text();
    assert!(metrics.contains("\npere_store_writable 0\n"), "{metrics}");
    // Space is freed: writes resume by themselves, within the backoff.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let health = server.get("/healthz").await;
        if health.status == 200 {
            assert_eq!(health.text(), "ok");
            break;
        }
        assert!(Instant::now() < deadline, "the store never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The first refused publish is retried with its key: stored, once.
    let retried = publish(&server, &refused[0]).await;
    assert_eq!(retried.status, 201, "{}", retried.text());
    assert_eq!(
        retried.header("idempotent-replayed"),
        None,
        "a new event, not a duplicate"
    );
    let retried_id: u64 = retried.json()["id"].as_str().unwrap().parse().unwrap();
    assert!(
        retried_id > *confirmed.keys().last().unwrap(),
        "ids only grow"
    );
    confirmed.insert(retried_id, refused.remove(0));
    for n in 0..20 {
        let payload = format!("after {n}|{padding}");
        let r = publish(&server, &payload).await;
        assert_eq!(r.status, 201, "{}", r.text());
        confirmed.insert(r.json()["id"].as_str().unwrap().parse().unwrap(), payload);
    }
    let metrics = server.get("/metrics").await.text();
    assert!(metrics.contains("\npere_store_writable 1\n"), "{metrics}");
    assert_eq!(all_events(&server).await, confirmed);
    drop(server); // SIGKILL

    let server = ServerProcess::start(&args).await;
    let after_restart = all_events(&server).await;
    assert_eq!(
        after_restart, confirmed,
        "every acknowledged event, only those"
    );
    for payload in &refused {
        assert!(!after_restart.values().any(|p| p == payload), "{payload}");
    }
    let health = server.get("/healthz").await;
    assert_eq!(health.text(), "ok", "no damage, no torn tail");
    assert!(no_dropped(&data), "nothing was cut at the restart");
    let log = server.stop();
    assert!(!log.contains("dropped"), "{log}");
}

fn no_dropped(dir: &Path) -> bool {
    !std::fs::read_dir(dir).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("dropped-")
    })
}
