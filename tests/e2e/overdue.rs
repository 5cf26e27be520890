//! Overdue receipts: with an acknowledgement deadline, every device that has
//! not acked an event in time is reported once — POSTed to the publisher's
//! webhook and shown on the receipts stream — and never again after a
//! restart.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pere_core::{FileStore, FileStoreConfig, Hub, HubConfig, Retention};
use pere_http::ServerConfig;
use pere_http::server::webhook::Webhook;
use pere_tests::{SseStream, WAIT, eventually, request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// A tiny HTTP receiver on loopback that records every POST body and
/// answers with `status` (the first `fail_first` requests get a 503).
pub(crate) struct Receiver {
    pub(crate) addr: SocketAddr,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Receiver {
    pub(crate) async fn start(fail_first: usize) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        tokio::spawn(async move {
            let mut served = 0usize;
            while let Ok((mut stream, _)) = listener.accept().await {
                served += 1;
                let fail = served <= fail_first;
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let n = match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            continue;
                        }
                        let body = &buf[end + 4..end + 4 + len];
                        let reply: &[u8] = if fail {
                            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        } else {
                            seen.lock()
                                .unwrap()
                                .push(serde_json::from_slice(body).unwrap());
                            b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n"
                        };
                        let _ = stream.write_all(reply).await;
                        return;
                    }
                });
            }
        });
        Self { addr, bodies }
    }

    pub(crate) fn received(&self) -> Vec<serde_json::Value> {
        self.bodies.lock().unwrap().clone()
    }
}

/// An in-process server over a file store in `dir`, with a 300 ms deadline.
async fn start(
    dir: &Path,
    webhook: SocketAddr,
) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let store = FileStore::open(FileStoreConfig {
        retention: Retention::default(),
        ..FileStoreConfig::new(dir)
    })
    .unwrap();
    let hub = Hub::open(
        HubConfig {
            ack_deadline: Some(Duration::from_millis(300)),
            tick: Duration::from_millis(50),
            ..HubConfig::default()
        },
        store,
    )
    .await
    .unwrap();
    let listener = pere_http::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let config = ServerConfig {
        webhook: Some(Webhook::parse(&format!("http://{webhook}/hooks/pere")).unwrap()),
        ..ServerConfig::default()
    };
    let task = tokio::spawn(async move {
        pere_http::run(listener, hub, config, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    (addr, tx, task)
}

#[tokio::test]
async fn an_unacknowledged_event_is_reported_once_to_the_webhook_and_the_receipts_stream() {
    let dir = std::env::temp_dir().join(format!("pere-e2e-{}-overdue", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // The first attempt fails: the notice is retried, not lost.
    let receiver = Receiver::start(1).await;
    let (addr, stop, task) = start(&dir, receiver.addr).await;
    let mut watch = SseStream::open(addr, "/receipts/alerts", &[]).await;
    let mut good = SseStream::open(addr, "/feed/alerts", &[("device", "good")]).await;
    let mut late = SseStream::open(addr, "/feed/alerts", &[("device", "late")]).await;
    let published = request(addr, "POST", "/push/alerts", &[], b"fire drill").await;
    let id = published.json()["id"].as_str().unwrap().to_string();
    assert_eq!(good.next_message().await.unwrap().id, id);
    assert_eq!(late.next_message().await.unwrap().id, id);
    let ack = request(
        addr,
        "POST",
        "/feedback/alerts",
        &[("device", "good"), ("Last-Event-ID", &id)],
        b"",
    )
    .await;
    assert_eq!(ack.status, 200);

    eventually("the webhook received the notice", || async {
        !receiver.received().is_empty()
    })
    .await;
    let notice = &receiver.received()[0];
    assert_eq!(notice["type"], "overdue");
    assert_eq!(notice["id"], id.as_str());
    assert_eq!(notice["channel"], "alerts");
    assert_eq!(notice["device"], "late");
    assert_eq!(notice["state"], "delivered");
    assert!(notice["deadline"].as_str().is_some());

    // The receipts stream shows the transitions, then the notice.
    let mut kinds = Vec::new();
    while !kinds.contains(&"overdue".to_string()) {
        let e = watch
            .next_event()
            .await
            .expect("the receipts stream stays open");
        let data: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        if e.event == "overdue" {
            assert_eq!(data["device"], "late");
        }
        kinds.push(e.event);
    }
    assert_eq!(kinds.iter().filter(|k| *k == "overdue").count(), 1);

    // Restart over the same data: the delivered notice is not sent again.
    drop((good, late, watch));
    let _ = stop.send(());
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    let (addr, stop, task) = start(&dir, receiver.addr).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.received().len(), 1, "no duplicate after a restart");
    let r = request(addr, "GET", &format!("/receipts/alerts/{id}"), &[], b"").await;
    assert_eq!(r.json()["unacked"], serde_json::json!(["late"]));
    let _ = stop.send(());
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `pere-server ARGS…` until it exits, at most `WAIT` (then it is
/// killed and the test fails); returns its exit code and stderr.
async fn server_exit(args: &[&str]) -> (Option<i32>, String) {
    let run = tokio::process::Command::new(pere_tests::bin("pere-server"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, run)
        .await
        .unwrap_or_else(|_| panic!("pere-server {args:?} is still running"))
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn pere_server_refuses_a_webhook_that_is_its_own_address() {
    // Issue 19, point 9: notices posted to the server itself would come
    // back as requests and multiply.
    let port = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port().to_string()
    };
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("http://{host}:{port}/push/notices");
        let (code, stderr) = server_exit(&[
            "--memory",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--ack-deadline",
            "5s",
            "--webhook",
            &url,
        ])
        .await;
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains(&url) && stderr.contains("this server's own address"),
            "{stderr}"
        );
        assert!(
            !stderr.contains("listening"),
            "refused before the banner: {stderr}"
        );
    }
    // Another port is someone else: the server starts.
    let other = Receiver::start(0).await;
    let server = pere_tests::ServerProcess::start(&[
        "--ack-deadline",
        "5s",
        "--webhook",
        &format!("http://{}/hooks", other.addr),
    ])
    .await;
    assert_eq!(
        server.request("GET", "/healthz", &[], b"").await.status,
        200
    );
}

/// One publish to 4,097 offline members with a deadline made 4,097 overdue
/// notices at once; the receipts stream got 4,096 and ended without a word.
/// Now it gets them all, each with a number, and resumes from one.
#[tokio::test]
async fn the_receipts_stream_gets_every_notice_of_a_burst_and_resumes_by_number() {
    const MEMBERS: usize = 4_097;
    let server = pere_tests::TestServer::start_with(
        HubConfig {
            ack_deadline: Some(Duration::from_millis(300)),
            tick: Duration::from_millis(50),
            ..HubConfig::default()
        },
        Retention::default(),
        ServerConfig::default(),
    )
    .await;
    // Members that went offline (in process: 4,097 HTTP streams would only
    // make the test slow).
    for i in 0..MEMBERS {
        let sub = server
            .hub
            .subscribe(
                pere_core::SubscribeRequest {
                    device: Some(pere_core::DeviceId::new(&format!("m{i}")).unwrap()),
                    patterns: vec![pere_core::Pattern::new("burst").unwrap()],
                    resume: pere_core::Resume::Auto,
                },
                None,
            )
            .await
            .unwrap();
        drop(sub);
    }
    let mut watch = server.stream("/receipts/burst", &[]).await;
    assert_eq!(watch.status, 200);
    let id = server.publish("burst", "to everybody").await;
    let mut numbers = Vec::with_capacity(MEMBERS);
    while numbers.len() < MEMBERS {
        let e = watch.next_event().await.unwrap_or_else(|| {
            panic!(
                "the stream ended after {} of {MEMBERS} notices",
                numbers.len()
            )
        });
        if e.event == "overdue" {
            assert!(e.data.contains(&id), "{}", e.data);
            numbers.push(e.id.parse::<u64>().expect("a numbered notice"));
        }
    }
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "numbers increase");
    drop(watch);
    // Something happens while nobody watches; a client that comes back
    // with the last number it saw gets it, and nothing twice.
    let seen = numbers[MEMBERS - 1].to_string();
    let mut d = server.subscribe("burst", "m0").await;
    let again = d.messages(1).await.remove(0);
    assert_eq!(again.id, id, "m0 is redelivered its unacknowledged event");
    let mut watch = server
        .stream("/receipts/burst", &[("Last-Event-ID", &seen)])
        .await;
    let e = watch.next_event().await.unwrap();
    assert_eq!(e.event, "receipt", "{e:?}");
    assert!(e.data.contains(r#""device":"m0""#), "{}", e.data);
    assert!(e.id.parse::<u64>().unwrap() > numbers[MEMBERS - 1]);
    // A number from before anything the channel keeps is told as a gap.
    let mut old = server
        .stream("/receipts/burst", &[("Last-Event-ID", "1")])
        .await;
    assert_eq!(old.next_event().await.unwrap().event, "pere.gap");
    let bad = server.get("/receipts/burst?lastEventId=x").await;
    bad.assert_error(400, "invalid_event_id");
    let metrics = server.get("/metrics").await.text();
    assert!(pere_tests::metric(&metrics, "pere_receipt_stream_gaps_total").unwrap() >= 1.0);
}
