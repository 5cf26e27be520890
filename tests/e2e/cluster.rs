//! Several `pere-server` nodes on one real `redis-server` (`--cluster`):
//! one hub, whichever node a client talks to (issue 15, docs/PROTOCOL.md
//! §10). Every test starts its own Redis on a free loopback port and its
//! own nodes, and ends them by PID.

use std::time::Duration;

use pere_cluster::testing::RedisServer;
use pere_tests::{ServerProcess, SseStream, eventually};

/// A Redis and `n` nodes sharing it.
pub(crate) struct Cluster {
    pub(crate) redis: RedisServer,
    pub(crate) nodes: Vec<ServerProcess>,
}

impl Cluster {
    pub(crate) async fn start(n: usize, extra: &[&str]) -> Self {
        let redis = RedisServer::start().expect("redis-server starts (is it installed?)");
        let mut cluster = Cluster {
            redis,
            nodes: Vec::new(),
        };
        for _ in 0..n {
            cluster.add_node(extra).await;
        }
        cluster
    }

    pub(crate) async fn add_node(&mut self, extra: &[&str]) -> usize {
        let url = self.redis.url();
        let mut args = vec!["--cluster", url.as_str()];
        args.extend_from_slice(extra);
        self.nodes.push(ServerProcess::start(&args).await);
        self.nodes.len() - 1
    }

    pub(crate) fn node(&self, i: usize) -> &ServerProcess {
        &self.nodes[i]
    }

    pub(crate) async fn publish(&self, node: usize, channel: &str, payload: &str) -> u64 {
        let r = self
            .node(node)
            .request("POST", &format!("/push/{channel}"), &[], payload.as_bytes())
            .await;
        assert_eq!(r.status, 201, "publish on node {node}: {}", r.text());
        r.json()["id"].as_str().unwrap().parse().unwrap()
    }

    pub(crate) async fn subscribe(&self, node: usize, channel: &str, device: &str) -> SseStream {
        subscribe_with(self.node(node), channel, device, &[]).await
    }

    pub(crate) async fn presence(
        &self,
        node: usize,
        channel: &str,
        device: &str,
    ) -> serde_json::Value {
        let r = self
            .node(node)
            .request("GET", &format!("/admin/devices/{channel}"), &[], b"")
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()[device].clone()
    }
}

pub(crate) async fn subscribe_with(
    node: &ServerProcess,
    channel: &str,
    device: &str,
    extra: &[(&str, &str)],
) -> SseStream {
    let mut headers = vec![("device", device)];
    headers.extend_from_slice(extra);
    let mut s = SseStream::open(node.addr, &format!("/feed/{channel}"), &headers).await;
    assert_eq!(s.status, 200, "subscribe: {}", s.text());
    let hello = s.next_event().await.expect("a pere.hello");
    assert_eq!(hello.event, "pere.hello");
    s
}

pub(crate) async fn ack(node: &ServerProcess, channel: &str, device: &str, id: u64) {
    let body = format!(r#"{{"id":"{id}","status":"ok"}}"#);
    let r = node
        .request(
            "POST",
            &format!("/feedback/{channel}"),
            &[("device", device), ("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "receipt: {}", r.text());
}

/// The payloads and ids of the next `n` events of a stream.
pub(crate) async fn read(stream: &mut SseStream, n: usize) -> Vec<(u64, String)> {
    stream
        .messages(n)
        .await
        .into_iter()
        .map(|e| (e.id.parse().unwrap(), e.data))
        .collect()
}

#[tokio::test]
async fn events_published_on_any_node_reach_every_node_in_one_order() {
    let cluster = Cluster::start(3, &[]).await;
    let mut streams = Vec::new();
    for node in 0..3 {
        streams.push(cluster.subscribe(node, "orders", &format!("d{node}")).await);
    }
    // Publishes on every node, some at the same time.
    let mut published = Vec::new();
    for round in 0..10 {
        let payloads = [
            format!("a{round}"),
            format!("b{round}"),
            format!("c{round}"),
        ];
        let (a, b, c) = tokio::join!(
            cluster.publish(0, "orders", &payloads[0]),
            cluster.publish(1, "orders", &payloads[1]),
            cluster.publish(2, "orders", &payloads[2]),
        );
        published.extend([a, b, c]);
    }
    let first = read(&mut streams[0], 30).await;
    for stream in &mut streams[1..] {
        assert_eq!(
            read(stream, 30).await,
            first,
            "every node delivers the same events, same ids, same order"
        );
    }
    let ids: Vec<u64> = first.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    published.sort_unstable();
    assert_eq!(ids, published, "each publish answered the id delivered");
}

#[tokio::test]
async fn receipts_and_wait_for_acks_span_nodes() {
    let cluster = Cluster::start(3, &[]).await;
    let mut stream = cluster.subscribe(1, "jobs", "printer").await;
    // Publish on node 0 and wait there for the receipt the device sends to
    // node 2.
    let publish = {
        let node = cluster.node(0);
        async move {
            node.request("POST", "/push/jobs?wait=acked&timeout=15000", &[], b"page")
                .await
        }
    };
    let device = async {
        let (id, data) = read(&mut stream, 1).await.remove(0);
        assert_eq!(data, "page");
        ack(cluster.node(2), "jobs", "printer", id).await;
        id
    };
    let (answer, id) = tokio::join!(publish, device);
    assert_eq!(answer.status, 201, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["timed_out"], false, "{body}");
    assert_eq!(body["acked"], 1, "{body}");
    assert_eq!(body["id"], id.to_string());
    // Every node tells the same receipt.
    for node in 0..3 {
        let path = format!("/receipts/jobs/{id}");
        let summary = cluster
            .node(node)
            .request("GET", &path, &[], b"")
            .await
            .json();
        assert_eq!(
            summary["devices"]["printer"]["state"], "acked",
            "node {node}: {summary}"
        );
        assert_eq!(summary["devices"]["printer"]["status"], "ok");
    }
}

#[tokio::test]
async fn a_device_moving_to_another_node_gets_what_it_did_not_acknowledge() {
    let cluster = Cluster::start(3, &[]).await;
    let mut stream = cluster.subscribe(0, "orders", "phone").await;
    let first = cluster.publish(1, "orders", "one").await;
    assert_eq!(read(&mut stream, 1).await, vec![(first, "one".to_owned())]);
    ack(cluster.node(0), "orders", "phone", first).await;
    // Written to the stream on node 0 but never acknowledged.
    let second = cluster.publish(2, "orders", "two").await;
    assert_eq!(read(&mut stream, 1).await[0].0, second);
    drop(stream);
    eventually("node 2 sees the phone offline", || async {
        cluster.presence(2, "orders", "phone").await["online"] == false
    })
    .await;
    // Published while it is away.
    let third = cluster.publish(1, "orders", "three").await;
    // Back on another node, without Last-Event-ID: everything after its
    // acknowledged floor, nothing it acknowledged.
    let mut back = cluster.subscribe(2, "orders", "phone").await;
    assert_eq!(
        read(&mut back, 2).await,
        vec![(second, "two".to_owned()), (third, "three".to_owned())]
    );
    // Last-Event-ID, when given, stays authoritative on any node.
    drop(back);
    let last = first.to_string();
    let mut resumed = subscribe_with(
        cluster.node(1),
        "orders",
        "phone",
        &[("Last-Event-ID", &last)],
    )
    .await;
    assert_eq!(read(&mut resumed, 2).await[0].0, second);
}

#[tokio::test]
async fn presence_is_the_same_on_every_node_and_a_killed_node_s_devices_go_offline() {
    let mut cluster = Cluster::start(3, &[]).await;
    let _stream = cluster.subscribe(1, "sensors", "probe").await;
    for node in [0, 2] {
        eventually("the other nodes see the probe online", || async {
            cluster.presence(node, "sensors", "probe").await["online"] == true
        })
        .await;
    }
    // kill -9: the node cannot say its streams ended; the others notice its
    // heartbeat stop.
    let dead = cluster.nodes.remove(1);
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &dead.pid().to_string()])
        .status();
    let started = std::time::Instant::now();
    eventually("the probe goes offline on node 0", || async {
        cluster.presence(0, "sensors", "probe").await["online"] == false
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(
        cluster.presence(1, "sensors", "probe").await["online"],
        false
    );
    drop(dead);
}

#[tokio::test]
async fn a_node_that_joins_late_has_the_whole_state() {
    let mut cluster = Cluster::start(1, &[]).await;
    let id = cluster.publish(0, "late", "before").await;
    let _stream = cluster.subscribe(0, "late", "early").await;
    let joined = cluster.add_node(&[]).await;
    // The event, its audience and its receipts are known to the new node.
    let summary = cluster
        .node(joined)
        .request("GET", &format!("/receipts/late/{id}"), &[], b"")
        .await;
    assert_eq!(summary.status, 200, "{}", summary.text());
    let history = cluster
        .node(joined)
        .request("GET", "/admin/channels", &[], b"")
        .await
        .text();
    assert!(history.contains("late"), "{history}");
    // A device new to the channel on the new node, with replay from the
    // start, gets the event published before the node existed.
    let mut fresh = subscribe_with(
        cluster.node(joined),
        "late",
        "newcomer",
        &[("Last-Event-ID", "0")],
    )
    .await;
    assert_eq!(read(&mut fresh, 1).await, vec![(id, "before".to_owned())]);
}

#[tokio::test]
async fn while_redis_is_down_publishes_get_503_and_the_cluster_recovers() {
    let mut cluster = Cluster::start(2, &[]).await;
    // A third node, that no client talks to.
    let idle = cluster.add_node(&[]).await;
    let mut stream = cluster.subscribe(1, "alerts", "pager").await;
    let before = cluster.publish(0, "alerts", "before").await;
    assert_eq!(read(&mut stream, 1).await[0].0, before);
    cluster.redis.kill();
    let r = cluster
        .node(0)
        .request("POST", "/push/alerts", &[], b"lost?")
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["code"], "store_unavailable", "{}", r.text());
    assert!(
        r.header("Retry-After").is_some(),
        "a 503 says when to retry"
    );
    // Receipts too, one or a batch of them.
    for body in [
        format!(r#"{{"id":"{before}"}}"#),
        format!(r#"[{{"id":"{before}"}}]"#),
    ] {
        let r = cluster
            .node(0)
            .request(
                "POST",
                "/feedback/alerts",
                &[("device", "pager"), ("Content-Type", "application/json")],
                body.as_bytes(),
            )
            .await;
        assert_eq!(r.status, 503, "{body}: {}", r.text());
        assert_eq!(r.json()["code"], "store_unavailable", "{}", r.text());
        assert!(r.header("Retry-After").is_some(), "{body}");
    }
    // A node that writes nothing knows it too, from its heartbeat (§6.2: a
    // load balancer must not send it traffic).
    eventually("the idle node's /healthz says 503", || async {
        cluster
            .node(idle)
            .request("GET", "/healthz", &[], b"")
            .await
            .status
            == 503
    })
    .await;
    // Down for longer than a heartbeat lasts (5 s): every node's heartbeat
    // lapses, yet no live node may be declared gone when Redis returns.
    tokio::time::sleep(Duration::from_secs(6)).await;
    cluster.redis.restart().expect("redis restarts on its AOF");
    // Once Redis is back, publishes succeed again and reach the other node.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let after = loop {
        let r = cluster
            .node(0)
            .request("POST", "/push/alerts", &[], b"after")
            .await;
        if r.status == 201 {
            break r.json()["id"].as_str().unwrap().parse::<u64>().unwrap();
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(
            std::time::Instant::now() < deadline,
            "publishes never succeeded again: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let got = read(&mut stream, 1).await;
    assert_eq!(
        got,
        vec![(after, "after".to_owned())],
        "no event was lost or made up"
    );
    // The pager's stream on node 1 never closed: it stays online everywhere
    // once the nodes had time to sweep whoever really stopped beating.
    tokio::time::sleep(Duration::from_secs(8)).await;
    for node in 0..3 {
        assert_eq!(
            cluster.presence(node, "alerts", "pager").await["online"],
            true,
            "node {node}"
        );
        let health = cluster
            .node(node)
            .request("GET", "/healthz", &[], b"")
            .await;
        assert_eq!(health.status, 200, "node {node}: {}", health.text());
    }
}

/// After a short outage of Redis, a node with open streams (whose cursor
/// flushes fail meanwhile, each pushing its next retry further) takes
/// writes again within about a heartbeat, not the backoff's 5 s (a probe
/// saw 5.2-6.0 s after a 0.37 s outage).
#[tokio::test]
async fn after_a_short_redis_outage_writes_resume_within_a_heartbeat() {
    let mut cluster = Cluster::start(1, &[]).await;
    let mut streams = Vec::new();
    for device in ["a", "b", "c"] {
        streams.push(cluster.subscribe(0, "blip", device).await);
    }
    cluster.publish(0, "blip", "before").await;
    cluster.redis.kill();
    let r = cluster
        .node(0)
        .request("POST", "/push/blip", &[], b"refused")
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    tokio::time::sleep(Duration::from_millis(400)).await;
    cluster.redis.restart().expect("redis restarts on its AOF");
    let back = std::time::Instant::now();
    loop {
        let r = cluster
            .node(0)
            .request("POST", "/push/blip", &[], b"after")
            .await;
        if r.status == 201 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_millis(2500),
            "still refused {:?} after Redis is back: {}",
            back.elapsed(),
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A device that comes back to a cluster whose log never had an event
/// resumes from where it joined, the log's start: no `pere.gap` (its
/// cursor was 0, below the log's beginning, and was told as events lost
/// to an earlier log; a single node said nothing).
#[tokio::test]
async fn a_device_back_on_a_cluster_that_never_had_an_event_hears_of_no_gap() {
    let cluster = Cluster::start(1, &[]).await;
    drop(cluster.subscribe(0, "fresh", "g5").await);
    eventually("the first stream ended", || async {
        cluster.presence(0, "fresh", "g5").await["connections"] == 0
    })
    .await;
    let mut again = cluster.subscribe(0, "fresh", "g5").await;
    let id = cluster.publish(0, "fresh", "first").await;
    let next = again.next_event().await.expect("an event");
    assert_eq!(
        (next.event.as_str(), next.id.as_str()),
        ("message", id.to_string().as_str()),
        "{}",
        next.data
    );
}
