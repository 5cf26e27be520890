//! A node that has not applied the log as far as the others still answers
//! as they would (docs/PROTOCOL.md §10: each client connection may land on
//! another node). Nodes apply the shared log each on its own, a little
//! apart; here one node reaches Redis through a proxy the test holds up,
//! so it is behind for as long as the test wants.

use std::net::SocketAddr;
use std::time::Duration;

use pere_tests::ServerProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::{Cluster, ack, read};

/// A TCP proxy to `upstream` whose traffic (both ways, every connection)
/// stops while it is held and goes on, in order, when let go.
struct HeldProxy {
    addr: SocketAddr,
    held: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl HeldProxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = watch::Sender::new(false);
        let gate = held.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (client_rx, client_tx) = client.into_split();
                let (server_rx, server_tx) = server.into_split();
                tokio::spawn(pipe(client_rx, server_tx, gate.subscribe()));
                tokio::spawn(pipe(server_rx, client_tx, gate.subscribe()));
            }
        });
        Self { addr, held, task }
    }

    fn hold(&self, held: bool) {
        self.held.send_replace(held);
    }
}

impl Drop for HeldProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, waiting while the gate is held.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut held: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if held.wait_for(|h| !h).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Two nodes on Redis, and a third reaching it through a proxy (the
/// tests run on several threads: a node's start blocks its thread while
/// the proxy must already carry its connection).
async fn with_a_held_node() -> (Cluster, HeldProxy) {
    with_a_held_node_and(&[]).await
}

/// [`with_a_held_node`], each node started with `extra` too.
async fn with_a_held_node_and(extra: &[&str]) -> (Cluster, HeldProxy) {
    let mut cluster = Cluster::start(2, extra).await;
    let redis: SocketAddr = cluster
        .redis
        .url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let proxy = HeldProxy::start(redis).await;
    let url = format!("redis://{}", proxy.addr);
    let mut args = vec!["--cluster", url.as_str()];
    args.extend_from_slice(extra);
    cluster.nodes.push(ServerProcess::start(&args).await);
    (cluster, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_for_an_event_its_node_has_not_applied_yet_waits_for_it() {
    let (cluster, proxy) = with_a_held_node().await;
    let mut printer = cluster.subscribe(1, "jobs", "printer").await;
    // Node 2 falls behind: the event reaches it only when let go.
    proxy.hold(true);
    let id = cluster.publish(0, "jobs", "page").await;
    assert_eq!(read(&mut printer, 1).await[0].0, id);
    let receipt = tokio::spawn({
        let node = cluster.node(2).addr;
        async move {
            let body = format!(r#"{{"id":"{id}","status":"printed"}}"#);
            pere_tests::request(
                node,
                "POST",
                "/feedback/jobs",
                &[("device", "printer"), ("Content-Type", "application/json")],
                body.as_bytes(),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.hold(false);
    let answer = receipt.await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["state"], "acked");
    // Every node, asked at once, tells it acknowledged.
    for node in 0..3 {
        let summary = cluster
            .node(node)
            .request("GET", &format!("/receipts/jobs/{id}"), &[], b"")
            .await
            .json();
        let printer = &summary["devices"]["printer"];
        assert_eq!(printer["state"], "acked", "node {node}: {summary}");
        assert_eq!(printer["status"], "printed", "node {node}: {summary}");
    }
}

/// A node that cannot catch up (its Redis does not answer) does not call an
/// event it has not seen unknown: the device is told to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_a_node_cannot_check_for_want_of_the_log_is_a_503() {
    let (cluster, proxy) = with_a_held_node().await;
    let mut printer = cluster.subscribe(1, "jobs", "printer").await;
    proxy.hold(true);
    let id = cluster.publish(0, "jobs", "page").await;
    assert_eq!(read(&mut printer, 1).await[0].0, id);
    let body = format!(r#"{{"id":"{id}"}}"#);
    let receipt = || {
        cluster.node(2).request(
            "POST",
            "/feedback/jobs",
            &[("device", "printer"), ("Content-Type", "application/json")],
            body.as_bytes(),
        )
    };
    let answer = receipt().await;
    proxy.hold(false);
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert_eq!(answer.json()["code"], "store_unavailable");
    assert!(answer.header("Retry-After").is_some());
    // Once it can, it takes it.
    pere_tests::eventually("node 2 takes the receipt again", || async {
        receipt().await.status == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_the_others_shows_what_they_answered() {
    let (cluster, proxy) = with_a_held_node().await;
    proxy.hold(true);
    // A device joins on node 1 and is sent an event published on node 0;
    // node 2 has seen neither.
    let mut phone = cluster.subscribe(1, "news", "phone").await;
    let id = cluster.publish(0, "news", "hello").await;
    assert_eq!(read(&mut phone, 1).await[0].0, id);
    let views = tokio::spawn({
        let node = cluster.node(2).addr;
        async move {
            let get = async |path: &str| pere_tests::request(node, "GET", path, &[], b"").await;
            (
                get("/admin/events/news").await,
                get("/admin/devices/news").await,
                get(&format!("/receipts/news/{id}")).await,
            )
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.hold(false);
    let (events, devices, receipt) = views.await.unwrap();
    assert_eq!(events.status, 200, "{}", events.text());
    assert_eq!(events.json()[0]["id"], id.to_string(), "{}", events.text());
    assert_eq!(
        devices.json()["phone"]["member"],
        true,
        "{}",
        devices.text()
    );
    assert_eq!(receipt.status, 200, "{}", receipt.text());
    assert_eq!(receipt.json()["recipients"], 1, "{}", receipt.text());
    ack(cluster.node(2), "news", "phone", id).await;
}

/// `PUT /admin/tokens/printer-token-0001` with `grants` on node 0, then,
/// while node 2 is held behind, a publish to `channel` with that token on
/// node 2: it must not be refused for what node 2 has not applied yet.
async fn publish_on_a_held_node_after_a_put(
    cluster: &Cluster,
    proxy: &HeldProxy,
    grants: &str,
    channel: &str,
) -> pere_tests::Response {
    proxy.hold(true);
    let put = cluster
        .node(0)
        .request(
            "PUT",
            "/admin/tokens/printer-token-0001",
            &[("Authorization", "Bearer admin-secret-0001")],
            grants.as_bytes(),
        )
        .await;
    assert!(put.status == 200 || put.status == 201, "{}", put.text());
    let publish = tokio::spawn({
        let node = cluster.node(2).addr;
        let path = format!("/push/{channel}");
        async move {
            pere_tests::request(
                node,
                "POST",
                &path,
                &[("Authorization", "Bearer printer-token-0001")],
                b"page",
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.hold(false);
    publish.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_created_or_widened_on_another_node_is_taken_at_once() {
    let auth = std::env::temp_dir().join(format!("pere-lag-auth-{}.json", std::process::id()));
    std::fs::write(
        &auth,
        r#"{"tokens":{"admin-secret-0001":{"subject":"ops","admin":true}}}"#,
    )
    .unwrap();
    let (cluster, proxy) = with_a_held_node_and(&["--auth", auth.to_str().unwrap()]).await;
    // A new token: unknown to node 2 until it catches up.
    let grants = r#"{"subject":"printer","publish":["jobs"]}"#;
    let publish = publish_on_a_held_node_after_a_put(&cluster, &proxy, grants, "jobs").await;
    assert_eq!(publish.status, 201, "{}", publish.text());
    // A known token given a new grant: node 2 has the old grants, which
    // do not cover `labels`.
    let grants = r#"{"subject":"printer","publish":["jobs","labels"]}"#;
    let publish = publish_on_a_held_node_after_a_put(&cluster, &proxy, grants, "labels").await;
    assert_eq!(publish.status, 201, "{}", publish.text());
    let _ = std::fs::remove_file(&auth);
}

/// A node the others took for gone (it stalled, or was cut off from Redis,
/// for longer than the cluster gives a heartbeat) while its streams stayed
/// open: every node, itself too, stopped counting them, so its devices were
/// shown offline while connected, and their memberships could expire. Once
/// it hears so it ends those streams: its devices come back (to it or
/// another node, losing nothing) and are counted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_taken_for_gone_ends_its_streams_and_its_devices_are_counted_again() {
    let (cluster, proxy) = with_a_held_node().await;
    let mut phone = cluster.subscribe(2, "news", "phone").await;
    let online =
        async |node: usize| cluster.presence(node, "news", "phone").await["online"] == true;
    pere_tests::eventually("node 0 counts the phone online", || online(0)).await;
    proxy.hold(true);
    // Past the heartbeat's 5 s, and the ticker's next look.
    pere_tests::eventually("node 0 takes node 2 for gone", || async {
        !online(0).await
    })
    .await;
    proxy.hold(false);
    tokio::time::timeout(Duration::from_secs(10), phone.until_end())
        .await
        .expect("node 2 ends the stream it is no longer counted for");
    // As an EventSource would, coming back while the node takes no writes
    // yet (it is told to, with a stream that ends before any hello).
    let mut again = None;
    for _ in 0..100 {
        let mut s = pere_tests::SseStream::open(
            cluster.node(2).addr,
            "/feed/news",
            &[("device", "phone"), ("Accept", "text/event-stream")],
        )
        .await;
        assert_eq!(s.status, 200, "{}", s.text());
        if s.next_event()
            .await
            .is_some_and(|e| e.event == "pere.hello")
        {
            again = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _phone = again.expect("the phone is back on node 2");
    for node in 0..3 {
        pere_tests::eventually("every node counts the phone again", || async {
            let p = cluster.presence(node, "news", "phone").await;
            p["online"] == true && p["connections"] == 1
        })
        .await;
    }
}
