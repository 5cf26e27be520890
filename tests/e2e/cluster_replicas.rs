//! `--replicas`: a cluster node answers a write only once that many Redis
//! replicas have it, so a failover cannot take back what was answered 2xx.

use std::time::{Duration, Instant};

use crate::cluster::{read, subscribe_with};
use pere_cluster::testing::SentinelGroup;
use pere_tests::{ServerProcess, request};

/// A primary with one replica (and sentinels, unused), and a node on the
/// primary itself with `--replicas 1`: these tests are about replication,
/// not failover.
async fn node_waiting_for_a_replica() -> (SentinelGroup, ServerProcess) {
    let group = tokio::task::spawn_blocking(SentinelGroup::start)
        .await
        .unwrap()
        .expect("the sentinel group starts (redis-sentinel installed?)");
    let node = ServerProcess::start(&["--cluster", &group.primary.url(), "--replicas", "1"]).await;
    (group, node)
}

/// A publish no replica confirms is answered `503` with `Retry-After`,
/// saying why; its event is on the log all the same (the outcome of a
/// `503` is unknown, docs/PROTOCOL.md §2), so the publisher's retry with
/// its `Idempotency-Key`, once the replica is back, gets the same id and
/// publishes nothing twice. Without `--replicas` the publish was `201`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_no_replica_confirms_is_503_and_its_retry_gets_the_same_id() {
    let (group, node) = node_waiting_for_a_replica().await;
    assert!(
        node.log().contains("answers once a replica has it"),
        "{}",
        node.log()
    );
    let mut stream = subscribe_with(&node, "news", "reader", &[]).await;
    let push = |payload: &'static str| {
        let addr = node.addr;
        async move {
            request(
                addr,
                "POST",
                "/push/news",
                &[("Idempotency-Key", payload)],
                payload.as_bytes(),
            )
            .await
        }
    };
    let kept = push("kept").await;
    assert_eq!(kept.status, 201, "{}", kept.text());
    let kept: u64 = kept.json()["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(read(&mut stream, 1).await[0].0, kept);

    tokio::task::block_in_place(|| group.cut_replication().unwrap());
    let started = Instant::now();
    let r = push("unconfirmed").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["code"], "store_unavailable", "{}", r.text());
    assert!(r.text().contains("0 of the 1 replicas"), "{}", r.text());
    assert!(
        r.header("Retry-After").is_some(),
        "a 503 says when to retry"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let (unconfirmed, payload) = read(&mut stream, 1).await.remove(0);
    assert_eq!(payload, "unconfirmed", "the event reached the log");
    // Refused at once from now on, and the node goes on answering what
    // goes through its writer (the views) at once: what it has to tell
    // the others (its streams, every second) waits too, rather than each
    // time for replicas that are not there.
    let mut slowest = Duration::ZERO;
    for _ in 0..8 {
        let started = Instant::now();
        let r = request(node.addr, "GET", "/admin/devices/news", &[], b"").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let r = push("refused").await;
        assert_eq!(r.status, 503, "{}", r.text());
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        slowest < Duration::from_millis(500),
        "a view and a refusal took {slowest:?}"
    );

    tokio::task::block_in_place(|| group.restore_replication().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    let retried = loop {
        let r = push("unconfirmed").await;
        if r.status == 201 {
            break r.json()["id"].as_str().unwrap().parse::<u64>().unwrap();
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(Instant::now() < deadline, "still refused: {}", r.text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(retried, unconfirmed, "the retry is the same event");
    let after = push("after").await;
    assert_eq!(after.status, 201, "{}", after.text());
    let got = read(&mut stream, 1).await;
    assert_eq!(got[0].1, "after", "nothing was published twice: {got:?}");
    drop(group);
}

/// What only the node knows (here: one of a device's two streams ended)
/// goes out in a log entry; when no replica confirms that entry, the node
/// answers its writers `503` but must not send it again, since the log has
/// it and every node applies it when it reads it back. Sent again with
/// each retry, one stream's end was applied once per retry (a review saw
/// 42), and the device, still connected, was counted offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_only_the_node_knew_is_applied_once_when_no_replica_confirms_it() {
    let (group, node) = node_waiting_for_a_replica().await;
    let device = |node: &ServerProcess| {
        let addr = node.addr;
        async move {
            let r = request(addr, "GET", "/admin/devices/news", &[], b"").await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["d1"].clone()
        }
    };
    let mut kept = subscribe_with(&node, "news", "d1", &[]).await;
    let ended = subscribe_with(&node, "news", "d1", &[]).await;
    pere_tests::eventually("two streams counted", || async {
        device(&node).await["connections"] == 2
    })
    .await;
    // Stalled, the replica stays connected and confirms nothing: the
    // node's appends go through to the primary, unconfirmed.
    group.replica.freeze().unwrap();
    drop(ended);
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        let r = request(node.addr, "POST", "/push/news", &[], b"x").await;
        assert_eq!(r.status, 503, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    group.replica.thaw().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        let r = request(node.addr, "POST", "/push/news", &[], b"after").await;
        if r.status == 201 {
            break r.json()["id"].as_str().unwrap().parse::<u64>().unwrap();
        }
        assert!(Instant::now() < deadline, "still refused: {}", r.text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let got = read(&mut kept, 1).await;
    assert_eq!(
        got[0].1, "x",
        "the first unconfirmed publish was delivered: {got:?}"
    );
    let d1 = device(&node).await;
    assert_eq!(d1["online"], true, "{d1}");
    assert_eq!(d1["connections"], 1, "one stream ended, once: {d1}");
    // The stream that stayed gets what follows.
    let mut rest = Vec::new();
    while rest.last().map(|(i, _)| *i) != Some(id) {
        rest.extend(read(&mut kept, 1).await);
    }
    drop(group);
}
