//! The shared log is trimmed once a snapshot covers it, and a node that
//! starts afterwards loads the snapshot: it knows everything the log it
//! never read had said (issue 15, docs/PROTOCOL.md §10).

use crate::cluster::{Cluster, ack, read, subscribe_with};

/// The id of an entry of the log (`ms-seq`), comparable.
fn entry_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').expect("a stream id");
    (ms.parse().unwrap(), seq.parse().unwrap())
}

/// Entries as `XRANGE` answers them: id, then field-value pairs.
type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;

/// The first and last entries' ids of the shared log.
fn log_ends(cluster: &Cluster) -> Option<((u64, u64), (u64, u64))> {
    let first: Entries = cluster
        .redis
        .query(&["XRANGE", "pere:log", "-", "+", "COUNT", "1"])
        .unwrap();
    let last: Entries = cluster
        .redis
        .query(&["XREVRANGE", "pere:log", "+", "-", "COUNT", "1"])
        .unwrap();
    Some((entry_id(&first.first()?.0), entry_id(&last.first()?.0)))
}

#[tokio::test]
async fn a_node_started_after_the_log_was_trimmed_loads_the_snapshot() {
    let tuning = ["--snapshot-every", "1s", "--log-keep", "1s"];
    let mut cluster = Cluster::start(2, &tuning).await;
    let mut stream = cluster.subscribe(0, "orders", "phone").await;
    let key = [("Idempotency-Key", "order-7")];
    let keyed = cluster
        .node(1)
        .request("POST", "/push/orders", &key, b"seven")
        .await;
    assert_eq!(keyed.status, 201, "{}", keyed.text());
    let keyed: u64 = keyed.json()["id"].as_str().unwrap().parse().unwrap();
    let mut ids = vec![keyed];
    for n in 0..4 {
        ids.push(cluster.publish(1, "orders", &format!("e{n}")).await);
    }
    let got = read(&mut stream, 5).await;
    assert_eq!(got.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids);
    ack(cluster.node(1), "orders", "phone", ids[1]).await;
    ack(cluster.node(0), "orders", "phone", ids[3]).await;

    // Everything so far leaves the log once a snapshot covers it.
    let (_, said) = log_ends(&cluster).expect("the log holds entries");
    pere_tests::eventually("the log trimmed past what the test said", || async {
        log_ends(&cluster).is_none_or(|(first, _)| first > said)
    })
    .await;
    let len: u64 = cluster.redis.query(&["XLEN", "pere:log"]).unwrap();
    assert!(len < 50, "the log stays short: {len} entries");

    let late = cluster.add_node(&tuning).await;
    let node = cluster.node(late);
    // Receipts: the phone's acknowledgements and deliveries.
    let r = node
        .request("GET", &format!("/receipts/orders/{}", ids[1]), &[], b"")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["devices"]["phone"]["state"],
        "acked",
        "{}",
        r.text()
    );
    let r = node
        .request("GET", &format!("/receipts/orders/{}", ids[2]), &[], b"")
        .await;
    assert_eq!(
        r.json()["devices"]["phone"]["state"],
        "delivered",
        "{}",
        r.text()
    );
    // Presence: the phone is online, on node 0.
    assert_eq!(
        cluster.presence(late, "orders", "phone").await["online"],
        true
    );
    // The idempotency key: a retry gets the first id, no new event.
    let retry = node.request("POST", "/push/orders", &key, b"seven").await;
    assert_eq!(retry.status, 201, "{}", retry.text());
    assert_eq!(retry.json()["id"], keyed.to_string());
    // History: a resume on the new node replays the retained events.
    let mut resumed = subscribe_with(
        node,
        "orders",
        "tablet",
        &[("Last-Event-ID", &ids[0].to_string())],
    )
    .await;
    let replayed = read(&mut resumed, 4).await;
    assert_eq!(
        replayed.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        ids[1..].to_vec()
    );
    // And it takes part: its publish reaches the phone on node 0.
    let next = cluster.publish(late, "orders", "after").await;
    assert_eq!(read(&mut stream, 1).await, vec![(next, "after".to_owned())]);
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

#[tokio::test]
async fn a_node_that_fell_behind_the_trimmed_log_stops_and_its_devices_resume_elsewhere() {
    let tuning = ["--snapshot-every", "1s", "--log-keep", "1s"];
    let mut cluster = Cluster::start(2, &tuning).await;
    let mut stream = cluster.subscribe(1, "orders", "phone").await;
    let first = cluster.publish(0, "orders", "first").await;
    assert_eq!(read(&mut stream, 1).await[0].0, first);
    // Node 1 stops reading for longer than the log keeps entries (but less
    // than its heartbeat lasts, so the others do not sweep it first).
    let frozen = cluster.node(1).pid();
    signal(frozen, "-STOP");
    let mut missed = Vec::new();
    for n in 0..5 {
        missed.push(cluster.publish(0, "orders", &format!("m{n}")).await);
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    }
    signal(frozen, "-CONT");
    // It cannot catch up from the log: it ends its streams and stops, with
    // no `pere.gap` (nothing was lost), and says why.
    let rest = stream.until_end().await;
    assert!(
        rest.iter().all(|e| e.event != "pere.gap"),
        "no gap: {rest:?}"
    );
    let mut node = cluster.nodes.remove(1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while node.exited().is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        node.exited(),
        Some(75),
        "exits to be restarted: {}",
        node.log()
    );
    assert!(
        node.log().contains("fell behind the cluster log"),
        "{}",
        node.log()
    );
    // The phone resumes on node 0 from the last event it got.
    let last = rest
        .iter()
        .filter(|e| !e.event.starts_with("pere."))
        .map(|e| e.id.parse::<u64>().unwrap())
        .next_back()
        .unwrap_or(first);
    let mut resumed = subscribe_with(
        cluster.node(0),
        "orders",
        "phone",
        &[("Last-Event-ID", &last.to_string())],
    )
    .await;
    let expected: Vec<u64> = missed.iter().copied().filter(|id| *id > last).collect();
    let got = read(&mut resumed, expected.len()).await;
    assert_eq!(got.iter().map(|(id, _)| *id).collect::<Vec<_>>(), expected);
}

/// Auth turned on by the first run-time admin token stays on for a node
/// that starts from a snapshot covering that token: it must not serve
/// everyone.
#[tokio::test]
async fn a_node_started_from_a_snapshot_keeps_auth_on() {
    const ADMIN: &str = "an-admin-token-of-cluster";
    let tuning = ["--snapshot-every", "1s", "--log-keep", "1s"];
    let mut cluster = Cluster::start(1, &tuning).await;
    let r = cluster
        .node(0)
        .admin()
        .put_token(ADMIN, br#"{"subject":"ops","admin":true}"#)
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let (_, said) = log_ends(&cluster).expect("the log holds entries");
    pere_tests::eventually("the log trimmed past the token", || async {
        log_ends(&cluster).is_none_or(|(first, _)| first > said)
    })
    .await;
    let late = cluster.add_node(&tuning).await;
    let node = cluster.node(late);
    node.admin()
        .tokens()
        .await
        .assert_error(401, "unauthorized");
    let open = node.stream("/feed/news", &[]).await;
    assert_eq!(open.status, 401, "{}", open.text());
    assert_eq!(node.with_token(ADMIN).admin().tokens().await.status, 200);
}
