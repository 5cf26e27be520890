//! More of the cluster's contract (issue 15): idempotency, overdue notices
//! and token changes hold cluster-wide, whichever node a client talks to.

use std::time::Duration;

use crate::cluster::{Cluster, ack, read};
use crate::overdue::Receiver;
use pere_tests::{SseStream, eventually, temp_dir};

#[tokio::test]
async fn an_idempotency_key_holds_across_nodes() {
    let cluster = Cluster::start(2, &[]).await;
    let mut stream = cluster.subscribe(1, "pay", "till").await;
    let key = [("Idempotency-Key", "order-42")];
    let first = cluster
        .node(0)
        .request("POST", "/push/pay", &key, b"42 EUR")
        .await;
    assert_eq!(first.status, 201, "{}", first.text());
    // The publisher's retry lands on the other node.
    let retry = cluster
        .node(1)
        .request("POST", "/push/pay", &key, b"42 EUR")
        .await;
    assert_eq!(retry.status, 201, "{}", retry.text());
    assert_eq!(retry.json()["id"], first.json()["id"], "the same event");
    let after = cluster.publish(0, "pay", "after").await;
    let got = read(&mut stream, 2).await;
    assert_eq!(got[0].0.to_string(), first.json()["id"].as_str().unwrap());
    assert_eq!(got[1].0, after, "the retry published nothing");
}

/// An acknowledging device whose unacknowledged events retention dropped
/// is told with one `pere.gap`, as on one node: the node it comes back to
/// tells every other node that it was told.
#[tokio::test]
async fn a_loss_is_told_once_whichever_node_the_device_comes_back_to() {
    let cluster = Cluster::start(2, &["--history", "3"]).await;
    let offline = |node: usize| {
        let cluster = &cluster;
        async move {
            eventually("R offline", || async {
                cluster.presence(node, "k", "R").await["online"] == false
            })
            .await;
        }
    };
    let mut s = cluster.subscribe(0, "k", "R").await;
    let first = cluster.publish(0, "k", "e0").await;
    assert_eq!(read(&mut s, 1).await[0].0, first);
    ack(cluster.node(0), "k", "R", first).await;
    drop(s);
    offline(0).await;
    let mut later = Vec::new();
    for n in 1..=5 {
        later.push(cluster.publish(0, "k", &format!("e{n}")).await);
    }
    // Back on node 1: told of the loss, then sent the three retained.
    let mut s = cluster.subscribe(1, "k", "R").await;
    let gap = s.next_event().await.expect("a pere.gap");
    assert_eq!(gap.event, "pere.gap", "{gap:?}");
    let ids = |got: Vec<(u64, String)>| got.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
    assert_eq!(ids(read(&mut s, 3).await), later[2..]);
    drop(s);
    offline(0).await;
    // Back on node 0: the three again (not acknowledged), no second gap.
    let mut s = cluster.subscribe(0, "k", "R").await;
    let next = s.next_event().await.expect("an event");
    assert_ne!(next.event, "pere.gap", "told twice: {next:?}");
    assert_eq!(next.id, later[2].to_string(), "{next:?}");
}

#[tokio::test]
async fn an_overdue_notice_is_posted_once_for_the_whole_cluster() {
    let receiver = Receiver::start(0).await;
    let hook = format!("http://{}/hooks/pere", receiver.addr);
    let cluster = Cluster::start(3, &["--ack-deadline", "1s", "--webhook", &hook]).await;
    let mut stream = cluster.subscribe(1, "tasks", "worker").await;
    let id = cluster.publish(2, "tasks", "do it").await;
    assert_eq!(read(&mut stream, 1).await[0].0, id);
    // Never acknowledged: past the deadline, one node (the ticker) posts.
    eventually("the webhook gets the notice", || async {
        !receiver.received().is_empty()
    })
    .await;
    // Every node knows of it, and no other node posts it again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = receiver.received();
    assert_eq!(got.len(), 1, "one notice per (event, device): {got:?}");
    assert_eq!(got[0]["id"], id.to_string());
    assert_eq!(got[0]["device"], "worker");
}

const ADMIN: &str = "cluster-admin-token-0001";
const KIOSK: &str = "cluster-kiosk-token-0001";

/// `method path` with `body` on `node`, as the [`ADMIN`] token.
async fn as_admin(
    node: &pere_tests::ServerProcess,
    method: &str,
    path: &str,
    body: &[u8],
) -> pere_tests::Response {
    let admin = format!("Bearer {ADMIN}");
    node.request(method, path, &[("Authorization", &admin)], body)
        .await
}

/// An `--auth` file that only names the [`ADMIN`] token.
fn admin_auth_file(name: &str) -> std::path::PathBuf {
    let file = temp_dir(name).join("auth.json");
    let json = serde_json::json!({ "tokens": { ADMIN: { "subject": "ops", "admin": true } } });
    std::fs::write(&file, json.to_string()).unwrap();
    file
}

#[tokio::test]
async fn a_token_revoked_on_one_node_closes_its_streams_on_every_node() {
    let file = admin_auth_file("cluster-auth");
    let cluster = Cluster::start(3, &["--auth", file.to_str().unwrap()]).await;
    let kiosk = format!("Bearer {KIOSK}");
    // Created on node 0 ...
    let grants = br#"{"subject":"kiosk-9","subscribe":["news","weather"]}"#;
    let r = as_admin(
        cluster.node(0),
        "PUT",
        &format!("/admin/tokens/{KIOSK}"),
        grants,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    // ... used on node 1 (once node 1 has applied it) ...
    let mut stream = None;
    for _ in 0..50 {
        let s = SseStream::open(
            cluster.node(1).addr,
            "/feed/news",
            &[("Authorization", &kiosk)],
        )
        .await;
        if s.status == 200 {
            stream = Some(s);
            break;
        }
        assert_eq!(s.status, 401, "{}", s.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut stream = stream.expect("the token works on another node");
    assert_eq!(stream.next_event().await.unwrap().event, "pere.hello");
    // ... revoked on node 2: the stream on node 1 ends within a second.
    let r = as_admin(
        cluster.node(2),
        "DELETE",
        &format!("/admin/tokens/{KIOSK}"),
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rest = tokio::time::timeout(Duration::from_secs(1), stream.until_end())
        .await
        .expect("the stream on another node closes within a second");
    assert!(
        rest.iter().all(|e| e.event.starts_with("pere.")),
        "{rest:?}"
    );
    // And the token is refused on every node.
    for node in 0..3 {
        let r = cluster
            .node(node)
            .request("GET", "/feed/news", &[("Authorization", &kiosk)], b"")
            .await;
        assert_eq!(r.status, 401, "node {node}: {}", r.text());
    }
}

/// Detection (1 s down-after), election and promotion, on 2 busy cores.
const FAILOVER: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_that_lost_events_ends_streams_with_a_gap_and_ids_keep_increasing() {
    use pere_cluster::testing::SentinelGroup;
    let mut group = tokio::task::spawn_blocking(SentinelGroup::start)
        .await
        .unwrap()
        .expect("the sentinel group starts (redis-sentinel installed?)");
    let url = group.url();
    let a = pere_tests::ServerProcess::start(&["--cluster", &url]).await;
    let b = pere_tests::ServerProcess::start(&["--cluster", &url]).await;
    let mut stream = crate::cluster::subscribe_with(&b, "news", "reader", &[]).await;
    let publish = |node: &pere_tests::ServerProcess, payload: &'static str| {
        let addr = node.addr;
        async move {
            let r = pere_tests::request(addr, "POST", "/push/news", &[], payload.as_bytes()).await;
            assert_eq!(r.status, 201, "{}", r.text());
            r.json()["id"].as_str().unwrap().parse::<u64>().unwrap()
        }
    };
    // A member that goes offline before the loss: no stream of it is
    // open to be told when it happens.
    // And one that acknowledges, offline too: its redelivery knows only
    // what remains.
    let mut away = crate::cluster::subscribe_with(&a, "news", "away", &[]).await;
    let mut acker = crate::cluster::subscribe_with(&a, "news", "acker", &[]).await;
    let kept = publish(&a, "kept").await;
    assert_eq!(read(&mut stream, 1).await[0].0, kept);
    assert_eq!(read(&mut away, 1).await[0].0, kept);
    assert_eq!(read(&mut acker, 1).await[0].0, kept);
    crate::cluster::ack(&a, "news", "acker", kept).await;
    drop((away, acker));
    eventually("away and acker are offline", || async {
        let r = pere_tests::request(b.addr, "GET", "/admin/devices/news", &[], b"").await;
        r.json()["away"]["online"] == false && r.json()["acker"]["online"] == false
    })
    .await;
    // What the primary takes from now on exists nowhere else.
    let group_ref = &group;
    tokio::task::block_in_place(|| {
        group_ref.sync_replica().unwrap();
        group_ref.cut_replication().unwrap();
    });
    let lost = publish(&a, "lost").await;
    assert_eq!(read(&mut stream, 1).await[0].0, lost, "node b applied it");
    group = tokio::task::spawn_blocking(move || {
        group.primary.kill();
        group
            .wait_for_promotion(FAILOVER)
            .expect("the replica is promoted");
        group
    })
    .await
    .unwrap();
    // The node that had sent `lost` tells its stream, which ends.
    let rest = tokio::time::timeout(FAILOVER, stream.until_end())
        .await
        .expect("the stream ends after the failover");
    let gap = rest.last().expect("a last event");
    assert_eq!(gap.event, "pere.gap", "{rest:?}");
    let data: serde_json::Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(data["reason"], "cluster_failover", "{data}");
    assert_eq!(data["from"], lost.to_string());
    // Both nodes had applied it: both stop, asking to be restarted.
    for node in [&a, &b] {
        eventually("the node stops", || async {
            tokio::net::TcpStream::connect(node.addr).await.is_err()
        })
        .await;
        eventually("the node says to restart it", || async {
            node.log().contains("restart this node")
        })
        .await;
    }
    // Restarted, a node serves the log as it now is: ids keep increasing
    // past the lost one, and nothing shows the lost event, but a client
    // resuming from before it is told (it was silently skipped).
    let c = pere_tests::ServerProcess::start(&["--cluster", &url]).await;
    let after = {
        let deadline = std::time::Instant::now() + FAILOVER;
        loop {
            let r = pere_tests::request(c.addr, "POST", "/push/news", &[], b"after").await;
            if r.status == 201 {
                break r.json()["id"].as_str().unwrap().parse::<u64>().unwrap();
            }
            assert!(std::time::Instant::now() < deadline, "{}", r.text());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert!(after > lost, "ids keep increasing: {after} after {lost}");
    let since = kept.to_string();
    let mut again =
        crate::cluster::subscribe_with(&c, "news", "reader", &[("Last-Event-ID", &since)]).await;
    let told = |gap: Option<pere_http::sse::SseEvent>| {
        let gap = gap.expect("a pere.gap");
        assert_eq!(gap.event, "pere.gap", "{gap:?}");
        let data: serde_json::Value = serde_json::from_str(&gap.data).unwrap();
        assert_eq!(data["reason"], "cluster_failover", "{data}");
        assert_eq!(data["from"], since, "{data}");
    };
    told(again.next_event().await);
    assert_eq!(read(&mut again, 1).await, vec![(after, "after".to_owned())]);
    // The member that was away comes back by its cursor: told too.
    let mut back = crate::cluster::subscribe_with(&c, "news", "away", &[]).await;
    told(back.next_event().await);
    assert_eq!(read(&mut back, 1).await, vec![(after, "after".to_owned())]);
    // The acknowledging one: told, then sent what it has not acknowledged.
    let mut acker = crate::cluster::subscribe_with(&c, "news", "acker", &[]).await;
    told(acker.next_event().await);
    assert_eq!(read(&mut acker, 1).await, vec![(after, "after".to_owned())]);
    drop(acker);
    // Once: back again, it gets `after` again (not acknowledged), no gap.
    eventually("acker is offline", || async {
        let r = pere_tests::request(c.addr, "GET", "/admin/devices/news", &[], b"").await;
        r.json()["acker"]["online"] == false
    })
    .await;
    let mut acker = crate::cluster::subscribe_with(&c, "news", "acker", &[]).await;
    let next = acker.next_event().await.expect("an event");
    assert_eq!(next.event, "message", "told twice: {next:?}");
    assert_eq!(next.id, after.to_string());
    drop(group);
}

const JWT_SECRET: &str = "a-cluster-wide-hs256-secret-of-32-bytes!";

fn session_jwt(jti: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims =
        serde_json::json!({"sub": "phone-1", "subscribe": ["orders.*"], "exp": exp, "jti": jti});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_jwt_session_revoked_on_one_node_ends_on_every_node() {
    let file = admin_auth_file("cluster-jwt");
    let mut cluster = Cluster::start(
        2,
        &["--auth", file.to_str().unwrap(), "--jwt-secret", JWT_SECRET],
    )
    .await;
    let bearer = format!("Bearer {}", session_jwt("session-7"));
    let mut stream = SseStream::open(
        cluster.node(1).addr,
        "/feed/orders.eu",
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(stream.status, 200, "{}", stream.text());
    // The device is a member on the node that does not hold the JWT too.
    pere_tests::eventually("node 0 counts phone-1 a member", || async {
        let r = as_admin(cluster.node(0), "GET", "/admin/devices/orders.eu", b"").await;
        r.json()["phone-1"]["member"] == true
    })
    .await;
    let r = as_admin(
        cluster.node(0),
        "DELETE",
        "/admin/tokens/jti:session-7",
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    tokio::time::timeout(Duration::from_secs(1), stream.until_end())
        .await
        .expect("the session's stream on the other node closes within a second");
    for node in 0..2 {
        let r = cluster
            .node(node)
            .request("GET", "/feed/orders.eu", &[("Authorization", &bearer)], b"")
            .await;
        assert_eq!(r.status, 401, "node {node}: {}", r.text());
    }
    // A run-time token, then a node that joins (or restarts) after both
    // changes: it replays them from the log with auth already on, as the
    // node that took them had it.
    let r = as_admin(
        cluster.node(0),
        "PUT",
        &format!("/admin/tokens/{KIOSK}"),
        br#"{"subject":"kiosk-9","publish":["news"]}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let late = cluster
        .add_node(&["--auth", file.to_str().unwrap(), "--jwt-secret", JWT_SECRET])
        .await;
    let r = SseStream::open(
        cluster.node(late).addr,
        "/feed/orders.eu",
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(
        r.status,
        401,
        "the revoked session on the late node: {}",
        r.text()
    );
    let r = cluster
        .node(late)
        .request(
            "POST",
            "/push/news",
            &[("Authorization", &format!("Bearer {KIOSK}"))],
            b"hello",
        )
        .await;
    assert_eq!(
        r.status,
        201,
        "the run-time token on the late node: {}",
        r.text()
    );
}

/// A node whose log cannot be written (stderr on a full disk) must not
/// lose a task to it: before, tracing's report of the failed write
/// panicked the log reader, and the node answered `shutting_down` for good.
#[tokio::test]
async fn a_node_logging_to_a_full_disk_recovers_from_a_redis_outage() {
    let mut redis = pere_cluster::testing::RedisServer::start().expect("redis-server starts");
    let port = pere_cluster::testing::free_port().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let url = redis.url();
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let mut child = std::process::Command::new(pere_tests::bin("pere-server"))
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--cluster",
            &url,
        ])
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(full())
        .stderr(full())
        .spawn()
        .unwrap();
    let publish = || async move { pere_tests::request(addr, "POST", "/push/df", &[], b"x").await };
    eventually("the node serves", || async {
        tokio::net::TcpStream::connect(addr).await.is_ok() && publish().await.status == 201
    })
    .await;
    redis.kill();
    assert_eq!(publish().await.status, 503);
    // Long enough for the reader's warnings (written to the full disk).
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.restart().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = publish().await;
        if r.status == 201 {
            break;
        }
        assert_eq!(r.json()["code"], "store_unavailable", "{}", r.text());
        assert!(std::time::Instant::now() < deadline, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Two live processes with one `--node-id` would take each other's streams
/// for their own: the second is refused, exit 2. A restart under the id
/// after a `kill -9` takes the id over; after a clean stop, at once.
#[tokio::test]
async fn a_node_id_in_use_is_refused_and_a_restart_takes_it_over() {
    let mut cluster = Cluster::start(0, &[]).await;
    cluster.add_node(&["--node-id", "n1"]).await;
    let url = cluster.redis.url();
    let out = tokio::time::timeout(
        pere_tests::WAIT,
        tokio::process::Command::new(pere_tests::bin("pere-server"))
            .args(["--host", "127.0.0.1", "--port", "0", "--cluster", &url])
            .args(["--node-id", "n1"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("refused within WAIT")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--node-id"), "{stderr}");

    // SIGKILL (dropping a ServerProcess kills it).
    drop(cluster.nodes.pop());
    let i = cluster.add_node(&["--node-id", "n1"]).await;
    cluster.publish(i, "c", "after the restart").await;
    assert!(
        cluster.node(i).log().contains("took over this node's id"),
        "{}",
        cluster.node(i).log()
    );
    let log = cluster.nodes.pop().unwrap().stop();
    assert!(!log.contains("panicked"), "{log}");
    let i = cluster.add_node(&["--node-id", "n1"]).await;
    assert!(
        !cluster.node(i).log().contains("took over"),
        "a clean stop released it: {}",
        cluster.node(i).log()
    );
}

/// Redis restarted without its data: the nodes rebuild from an empty log,
/// and a client resuming from an event of the lost one is told of a gap
/// (before, it was sent what came next as if nothing was missing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_point_from_a_log_redis_lost_is_a_gap() {
    let mut redis = pere_cluster::testing::RedisServer::start_with(&["--appendonly", "no"])
        .expect("redis-server starts");
    let url = redis.url();
    let node = pere_tests::ServerProcess::start(&["--cluster", &url]).await;
    let r = node.request("POST", "/push/news", &[], b"lost").await;
    assert_eq!(r.status, 201, "{}", r.text());
    let lost = r.json()["id"].as_str().unwrap().to_string();
    // The node exits by itself (75) once it sees the log regressed; a
    // supervisor starts it again, here at once.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &node.pid().to_string()])
        .status();
    drop(node);
    redis.restart().expect("redis restarts, empty");
    let node = pere_tests::ServerProcess::start(&["--cluster", &url]).await;
    // Before anything is published on the new log: the node's head is
    // below the resume point, and the gap once said `"from":"0"`.
    let mut early = SseStream::open(node.addr, "/feed/news", &[("Last-Event-ID", &lost)]).await;
    assert_eq!(early.status, 200, "{}", early.text());
    assert_eq!(early.next_event().await.unwrap().event, "pere.hello");
    let gap = early.next_event().await.unwrap();
    assert_eq!(gap.event, "pere.gap", "{gap:?}");
    let data: serde_json::Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(data["from"], lost.as_str(), "{data}");
    let r = node.request("POST", "/push/news", &[], b"after").await;
    assert_eq!(r.status, 201, "{}", r.text());
    let mut stream = SseStream::open(node.addr, "/feed/news", &[("Last-Event-ID", &lost)]).await;
    assert_eq!(stream.status, 200, "{}", stream.text());
    assert_eq!(stream.next_event().await.unwrap().event, "pere.hello");
    let gap = stream.next_event().await.unwrap();
    assert_eq!(gap.event, "pere.gap", "{gap:?}");
    let data: serde_json::Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(data["from"], lost.as_str(), "{data}");
}

/// A publish held for its receipts (`?wait=acked`) when Redis comes back
/// without its data: its event is gone, and the node stops. The answer
/// was `201` with `"shutting_down":true` for an id that no longer existed
/// anywhere; §10 says a request whose entry the log took and then lost
/// gets `503`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_publish_whose_event_a_failover_lost_gets_503() {
    let mut redis = pere_cluster::testing::RedisServer::start_with(&["--appendonly", "no"])
        .expect("redis-server starts");
    let url = redis.url();
    let node = pere_tests::ServerProcess::start(&["--cluster", &url]).await;
    // An acknowledging member, so that `wait=acked` holds the answer.
    let mut member = crate::cluster::subscribe_with(&node, "news", "phone", &[]).await;
    let first = node.request("POST", "/push/news", &[], b"first").await;
    let first = first.json()["id"].as_str().unwrap().parse::<u64>().unwrap();
    assert_eq!(read(&mut member, 1).await[0].0, first);
    ack(&node, "news", "phone", first).await;
    let addr = node.addr;
    let held = tokio::spawn(async move {
        pere_tests::request(
            addr,
            "POST",
            "/push/news?wait=acked&timeout=30000",
            &[],
            b"held",
        )
        .await
    });
    assert_eq!(read(&mut member, 1).await[0].1, "held");
    redis.restart().expect("redis restarts, empty");
    let r = tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("the held publish is answered")
        .unwrap();
    r.assert_error(503, "store_unavailable");
    assert!(r.text().contains("lost"), "{}", r.text());
}

/// A node that shuts down while its publishes are in the log but not yet
/// back on its tail answers them from the log: none is refused as
/// shutting down and stored anyway, which a retry without an
/// Idempotency-Key would publish twice (a probe saw six in one stop).
#[tokio::test]
async fn a_stopping_node_refuses_no_publish_it_put_in_the_log() {
    use std::sync::Arc;

    use pere_cluster::{ClusterConfig, Engine};
    use pere_core::cluster::SharedLog;
    use pere_core::{
        AuthRegistry, ChannelName, Error, EventId, Hub, HubConfig, MemoryStore, Publish,
    };

    let redis = pere_cluster::testing::RedisServer::start().expect("redis-server starts");
    let node = |name: &'static str| {
        let url = redis.url();
        async move {
            let engine = Engine::connect(ClusterConfig::new(url, name))
                .await
                .unwrap();
            let store = MemoryStore::new(pere_core::Retention::default());
            let log = Arc::new(engine) as Arc<dyn SharedLog>;
            Hub::open_cluster(HubConfig::default(), store, log, AuthRegistry::default())
                .await
                .unwrap()
        }
    };
    let channel: ChannelName = "c".parse().unwrap();
    let mut refused_in_all = 0;
    for round in 0..5 {
        let a = node("a").await;
        let publishes: Vec<_> = (0..50)
            .map(|i| {
                let (a, channel) = (a.clone(), channel.clone());
                tokio::spawn(async move {
                    let payload = format!("round {round} event {i}");
                    let answer = a.publish(Publish::new(channel, payload.clone())).await;
                    (payload, answer)
                })
            })
            .collect();
        // The publishes go to the writer; some are appended when the
        // shutdown comes.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        a.shutdown().await;
        let mut answers = Vec::new();
        for p in publishes {
            answers.push(p.await.unwrap());
        }
        let b = node("b").await;
        let stored: Vec<String> = b
            .events(&channel, EventId(0), 10_000)
            .await
            .unwrap()
            .iter()
            .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
            .collect();
        for (payload, answer) in &answers {
            match answer {
                Ok(_) => assert!(stored.contains(payload), "{payload} answered, not stored"),
                Err(Error::ShuttingDown) => {
                    refused_in_all += 1;
                    assert!(
                        !stored.contains(payload),
                        "{payload} refused as shutting down, but stored"
                    );
                }
                Err(err) => panic!("{payload}: {err}"),
            }
        }
        b.shutdown().await;
    }
    eprintln!("{refused_in_all} publishes refused before they reached the log");
}

/// The other nodes stop counting a node's streams when it stops, and a
/// node restarted under the same id is not counted with its previous
/// life's streams: a probe saw them counted for 30 s and more (the
/// stopped node never said it had none left, and the restarted one, with
/// none, had nothing to say).
#[tokio::test]
async fn a_node_stopped_and_restarted_under_its_id_is_counted_without_old_streams() {
    let mut cluster = Cluster::start(1, &[]).await;
    let n = cluster.add_node(&["--node-id", "again"]).await;
    let stream = cluster.subscribe(n, "c", "d").await;
    eventually("node 0 counts the other node's stream", || async {
        streams_counted(cluster.node(0)).await == Some(1)
    })
    .await;
    cluster.nodes.remove(n).stop();
    drop(stream);
    cluster.add_node(&["--node-id", "again"]).await;
    // Well before the 5 s a heartbeat lives (the restarted node keeps
    // the id's alive anyway).
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while streams_counted(cluster.node(0)).await != Some(0) {
        assert!(
            std::time::Instant::now() < deadline,
            "node 0 still counts {:?} streams",
            streams_counted(cluster.node(0)).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The "total number" of a node's `/admin/connections`.
async fn streams_counted(node: &pere_tests::ServerProcess) -> Option<u64> {
    node.get_json("/admin/connections").await["total number"].as_u64()
}

/// A node whose Redis does not answer at start says so and what to check,
/// and exits: not "retry in 1s", which it was not going to do.
#[tokio::test]
async fn a_node_whose_redis_does_not_answer_at_start_says_what_to_check() {
    let mut redis = pere_cluster::testing::RedisServer::start().expect("redis-server starts");
    let url = redis.url();
    redis.kill();
    let out = tokio::time::timeout(
        pere_tests::WAIT,
        tokio::process::Command::new(pere_tests::bin("pere-server"))
            .args(["--host", "127.0.0.1", "--port", "0", "--cluster", &url])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("ends within WAIT")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("does not answer"), "{stderr}");
    assert!(stderr.contains("--cluster"), "{stderr}");
    assert!(!stderr.contains("retry in"), "{stderr}");
}
