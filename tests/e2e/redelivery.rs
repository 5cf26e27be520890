//! At-least-once for devices that acknowledge (docs/PROTOCOL.md §3, §5):
//! bytes written to a socket are not proof of receipt, so an acknowledging
//! device that comes back without `Last-Event-ID` is sent again every
//! retained event it has not acknowledged — also after `kill -9`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use pere_tests::raw::stalled_reader;
use pere_tests::{Client, ServerProcess, SseStream, TestServer, WAIT, eventually, temp_dir};
use serde_json::Value;
use tokio::io::AsyncReadExt;

/// Publishes `n` events of about `size` bytes on `channel`; their ids.
async fn publish_n(server: &Client, channel: &str, n: usize, size: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let body = format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(size));
        ids.push(server.publish(channel, &body).await);
    }
    ids
}

/// How many of `ids` the server marked delivered to `device`, once that
/// number stopped growing (the server wrote what the socket takes).
async fn written_to(server: &Client, channel: &str, device: &str, ids: &[String]) -> usize {
    let mut last = usize::MAX;
    let deadline = Instant::now() + WAIT;
    loop {
        // Delivered in order: the first undelivered one tells the count.
        let mut n = 0;
        for id in ids {
            if server.receipts(channel, id).await["devices"][device]["state"] != "delivered" {
                break;
            }
            n += 1;
        }
        if n == last || Instant::now() > deadline {
            return n;
        }
        last = n;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Opens `device`'s stream without `Last-Event-ID` and returns its hello.
async fn reconnect(server: &Client, channel: &str, device: &str) -> (SseStream, Value) {
    let mut s = server
        .stream(&format!("/feed/{channel}"), &[("device", device)])
        .await;
    assert_eq!(s.status, 200, "{}", s.text());
    let hello = s.hello().await;
    (s, hello)
}

/// Steps 1–3 of the broken-tunnel story: `R` acknowledges one event, comes
/// back, stalls after `pere.hello`, and 120 events of 2 KB are published;
/// returns their ids and how many the server wrote into the socket.
async fn break_a_stream_under_load(server: &Client) -> (Vec<String>, usize) {
    let mut first = reconnect(server, "orders", "R").await.0;
    let id = publish_n(server, "orders", 1, 10).await.remove(0);
    assert_eq!(first.messages(1).await[0].id, id);
    server.ack("orders", "R", &id).await;
    drop(first);

    let tunnel = stalled_reader(server.addr, "/feed/orders", "R").await;
    let ids = publish_n(server, "orders", 120, 2000).await;
    let written = written_to(server, "orders", "R", &ids).await;
    assert!(
        written >= 10,
        "the server wrote only {written} events into the socket: the test needs some written and unread"
    );
    // Step 4: the connection is reset.
    tunnel.set_zero_linger().unwrap();
    drop(tunnel);
    (ids, written)
}

/// Step 4's end: `R` comes back without `Last-Event-ID` and must get all
/// of `ids`, in order, once; then it acknowledges them and the next
/// reconnect sends nothing again.
async fn comes_back_with_everything(server: &Client, ids: &[String]) {
    let (mut s, hello) = reconnect(server, "orders", "R").await;
    assert_eq!(hello["replayed"], ids.len(), "{hello}");
    let got = s.ids(ids.len()).await;
    assert_eq!(got, ids, "every unacknowledged event, in id order, once");
    let live = publish_n(server, "orders", 1, 10).await;
    assert_eq!(
        s.messages(1).await[0].id,
        live[0],
        "then live events, with no duplicate"
    );
    let r = server.receipts("orders", &ids[0]).await;
    assert_eq!(r["devices"]["R"]["state"], "delivered", "{r}");
    for id in ids.iter().chain(&live) {
        server.ack("orders", "R", id).await;
    }
    drop(s);
    let (_s, hello) = reconnect(server, "orders", "R").await;
    assert_eq!(
        hello["replayed"], 0,
        "acknowledged events do not come back: {hello}"
    );
}

#[tokio::test]
async fn a_stream_broken_under_load_is_sent_again_in_full() {
    let server = TestServer::start().await;
    let (ids, written) = break_a_stream_under_load(&server).await;
    comes_back_with_everything(&server, &ids).await;
    // The written ones were written twice, and say so.
    let r = server.receipts("orders", &ids[0]).await;
    assert_eq!(r["devices"]["R"]["deliveries"], 2, "{r}");
    let metrics = server.metrics().await;
    let redelivered = pere_tests::metric(&metrics, "pere_redeliveries_total").unwrap();
    assert!(redelivered >= written as f64, "{redelivered} < {written}");
}

#[tokio::test]
async fn redelivery_survives_kill_9_between_the_break_and_the_reconnect() {
    let dir = temp_dir("redelivery-kill9");
    let data = dir.to_str().unwrap().to_string();
    let server = ServerProcess::start(&["--data-dir", &data]).await;
    let (ids, _) = break_a_stream_under_load(&server).await;
    // The server saw the break and journaled R's cursor past what it wrote
    // (the close's records go out with the next write, made durable here).
    server.wait_offline("orders", "R").await;
    publish_n(&server, "elsewhere", 1, 10).await;
    // SIGKILL (dropping a ServerProcess kills it): no flush, no goodbye.
    drop(server);
    let server = ServerProcess::start(&["--data-dir", &data]).await;
    comes_back_with_everything(&server, &ids).await;
    let log = server.stop();
    assert!(!log.contains("panicked"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Events replayed to a device from before it joined (`replay=all`) are
/// in its audience (§5.2), and stay so after `kill -9`: a stream still open
/// had its replay journaled by the periodic chores, a closed one at its
/// close.
#[tokio::test]
async fn events_replayed_from_before_a_device_joined_come_back_after_kill_9() {
    let dir = temp_dir("replayed-kill9");
    let data = dir.to_str().unwrap().to_string();
    let server = ServerProcess::start(&["--data-dir", &data]).await;
    let old = publish_n(&server, "orders", 3, 10).await;
    let mut open = Vec::new();
    for device in ["open", "closed"] {
        let mut s = server
            .open("/feed/orders?replay=all", &[("device", device)])
            .await;
        assert_eq!(s.ids(3).await, old, "{device}");
        open.push(s);
    }
    let live = publish_n(&server, "orders", 1, 10).await;
    for (s, device) in open.iter_mut().zip(["open", "closed"]) {
        assert_eq!(s.ids(1).await, live);
        server.ack("orders", device, &live[0]).await;
    }
    drop(open.pop());
    server.wait_offline("orders", "closed").await;
    // The chores run every second: two of them, for a loaded machine.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    publish_n(&server, "elsewhere", 1, 10).await;
    // SIGKILL (dropping a ServerProcess kills it), the first stream open.
    drop(server);
    let server = ServerProcess::start(&["--data-dir", &data]).await;
    for device in ["open", "closed"] {
        let (mut s, hello) = reconnect(&server, "orders", device).await;
        assert_eq!(hello["replayed"], 3, "{device}: {hello}");
        assert_eq!(s.ids(3).await, old, "{device}");
    }
    drop(open);
    let log = server.stop();
    assert!(!log.contains("panicked"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a replay wrote is journaled once it is written, not by the next
/// chores a second later: a `kill -9` right after leaves the replayed
/// events in the device's audience, so an acknowledging device gets them
/// again (a probe lost them 3 times in 3 with a kill within 0.5 s).
#[tokio::test]
async fn a_replay_is_kept_by_a_kill_9_right_after_it() {
    let dir = temp_dir("replayed-kill9-now");
    let data = dir.to_str().unwrap().to_string();
    let server = ServerProcess::start(&["--data-dir", &data]).await;
    let old = publish_n(&server, "orders", 3, 10).await;
    let mut s = server
        .open("/feed/orders?replay=all", &[("device", "R")])
        .await;
    assert_eq!(s.ids(3).await, old);
    // It acknowledges a live event (so it is redelivered what it has not
    // acknowledged), and is killed at once.
    let live = publish_n(&server, "orders", 1, 10).await;
    assert_eq!(s.ids(1).await, live);
    server.ack("orders", "R", &live[0]).await;
    drop(server);
    let server = ServerProcess::start(&["--data-dir", &data]).await;
    let (mut s, hello) = reconnect(&server, "orders", "R").await;
    assert_eq!(hello["replayed"], 3, "{hello}");
    assert_eq!(s.ids(3).await, old);
    let r = server
        .feedback(
            "orders",
            &[("device", "R")],
            format!(r#"{{"id":"{}"}}"#, old[0]).as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "a recipient still: {}", r.text());
    drop(s);
    let log = server.stop();
    assert!(!log.contains("panicked"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An acknowledging device on a pattern whose unacknowledged events
/// retention dropped is told with `pere.gap` after a `kill -9` right after
/// the drop (the chores had not run since).
#[tokio::test]
async fn a_loss_on_a_pattern_is_a_gap_after_kill_9_right_after_it() {
    let dir = temp_dir("loss-kill9");
    let data = dir.to_str().unwrap().to_string();
    let args = ["--data-dir", data.as_str(), "--history", "3"];
    let server = ServerProcess::start(&args).await;
    let mut s = server.open("/feed/k.*", &[("device", "R")]).await;
    let first = publish_n(&server, "k.a", 1, 10).await;
    assert_eq!(s.ids(1).await, first);
    server.ack("k.a", "R", &first[0]).await;
    drop(s);
    server.wait_offline("k.*", "R").await;
    let later = publish_n(&server, "k.b", 5, 10).await;
    // SIGKILL (dropping a ServerProcess kills it).
    drop(server);
    let server = ServerProcess::start(&args).await;
    let mut s = server.stream("/feed/k.*", &[("device", "R")]).await;
    assert_eq!(s.status, 200, "{}", s.text());
    let hello = s.hello().await;
    let gap = s.next_event().await.expect("a pere.gap");
    assert_eq!(gap.event, "pere.gap", "{hello} then {gap:?}");
    assert_eq!(s.ids(3).await, later[2..]);
    drop(s);
    let log = server.stop();
    assert!(!log.contains("panicked"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_device_that_never_acknowledges_resumes_after_the_last_written_event() {
    let server = TestServer::start().await;
    drop(reconnect(&server, "news", "Q").await);
    let tunnel = stalled_reader(server.addr, "/feed/news", "Q").await;
    let ids = publish_n(&server, "news", 60, 2000).await;
    let written = written_to(&server, "news", "Q", &ids).await;
    assert!(written >= 1, "nothing was written");
    tunnel.set_zero_linger().unwrap();
    drop(tunnel);
    server.wait_offline("news", "Q").await;
    // No redelivery storm for a consumer that does not acknowledge: it
    // resumes after what was written to it.
    let (mut s, hello) = reconnect(&server, "news", "Q").await;
    assert_eq!(hello["resumed_from"], ids[written - 1].as_str(), "{hello}");
    let rest = s.ids(ids.len() - written).await;
    assert_eq!(rest, ids[written..]);
}

/// Resident memory of the server with many stalled readers on large
/// events stays bounded: each stream's queue is bounded in bytes, so a
/// stalled reader cannot pin events retention already dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_of_large_events_cannot_pin_memory() {
    const READERS: usize = 200;
    const EVENTS: usize = 600;
    let server = ServerProcess::start(&["--history", "10", "--queue-bytes", "1MiB"]).await;
    let addr = server.addr;
    let mut readers = Vec::with_capacity(READERS);
    for i in 0..READERS {
        readers.push(stalled_reader(addr, "/feed/big", &format!("stalled-{i}")).await);
    }
    let before = server.rss_kib();
    // 64 KiB events: 37.5 MiB in all, of which retention keeps 10.
    let payload = "y".repeat(64 * 1024 - 16);
    let mut conn = pere_tests::Connection::open(addr).await;
    for _ in 0..EVENTS {
        let r = conn
            .request("POST", "/push/big", &[], payload.as_bytes())
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    eventually(
        "every stalled reader was disconnected as too slow",
        || async {
            let m = server.metrics().await;
            pere_tests::metric(&m, "pere_slow_disconnects_total").unwrap_or(0.0) >= READERS as f64
        },
    )
    .await;
    let grown_mib = server.rss_kib().saturating_sub(before) / 1024;
    // Without the byte bound every reader's queue (4,096 events) held all
    // 600 events: 37.5 MiB of payloads plus their encoded frames, pinned.
    assert!(
        grown_mib < 30,
        "the server grew by {grown_mib} MiB with {READERS} stalled readers"
    );
    drop(readers);
    let log = server.stop();
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test]
async fn a_stalled_reader_of_large_events_is_cut_by_bytes_and_resumes_without_loss() {
    let server = TestServer::builder().queue_bytes(256 * 1024).start().await;
    let mut tunnel = stalled_reader(server.addr, "/feed/big", "S").await;
    let ids = publish_n(&server, "big", 150, 60 * 1024).await;
    // Cut long before 4,096 queued events: by its bytes.
    eventually("the stalled reader is disconnected", || async {
        server.hub.stats().await.unwrap().slow_disconnects == 1
    })
    .await;
    // Whatever it got before the cut is a prefix; it resumes from there.
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(WAIT, tunnel.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw);
    let seen: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .collect();
    assert!(seen.len() < ids.len(), "it was cut before the end");
    assert_eq!(
        seen,
        ids[..seen.len()]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    let mut headers = vec![("device", "S")];
    if let Some(last) = seen.last() {
        headers.push(("Last-Event-ID", last));
    }
    let mut s = server.stream("/feed/big", &headers).await;
    let rest: HashSet<String> = s.ids(ids.len() - seen.len()).await.into_iter().collect();
    let want: HashSet<String> = ids[seen.len()..].iter().cloned().collect();
    assert_eq!(rest, want, "it resumes without loss");
}
