#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use pere_core::{Hub, HubConfig, MemoryStore, Retention};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::subscriber::backoff_delay;
use super::*;
use crate::ServerConfig;
use crate::sse::SseEvent;

/// Bound on every wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

/// A server on `addr` (port 0 picks one), with a 50 ms `retry`.
struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(addr: &str) -> Self {
        let listener = crate::bind(addr.parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hub = Hub::open(HubConfig::default(), MemoryStore::new(Retention::default()))
            .await
            .unwrap();
        let config = ServerConfig {
            retry: Duration::from_millis(50),
            ..ServerConfig::default()
        };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            crate::run(listener, hub, config, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            addr,
            stop: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The next item, bounded by `WAIT`.
async fn next(sub: &mut Subscriber) -> SubscriberItem {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("an item within the timeout")
        .unwrap()
        .expect("the subscription goes on")
}

/// The next event, skipping connection notices.
async fn next_event(sub: &mut Subscriber) -> SseEvent {
    loop {
        if let SubscriberItem::Event(e) = next(sub).await {
            return e;
        }
    }
}

/// The next event that is not a `pere.*` control event.
async fn next_message(sub: &mut Subscriber) -> SseEvent {
    loop {
        let e = next_event(sub).await;
        if !e.event.starts_with("pere.") {
            return e;
        }
    }
}

#[test]
fn client_addresses_take_host_port_or_an_http_url() {
    let ok = [
        ("127.0.0.1:4567", "127.0.0.1", 4567, false),
        ("http://localhost:80", "localhost", 80, false),
        ("HTTP://example.org:8080/", "example.org", 8080, false),
        ("[::1]:4567", "::1", 4567, false),
        ("http://[::1]:9/", "::1", 9, false),
        ("https://localhost:443", "localhost", 443, true),
        ("HTTPS://[::1]:8443/", "::1", 8443, true),
    ];
    for (text, host, port, tls) in ok {
        let a = Address::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(
            (a.host(), a.port(), a.is_tls()),
            (host, port, tls),
            "{text}"
        );
    }
    assert_eq!(
        Address::parse("https://h:1").unwrap().url("/x"),
        "https://h:1/x"
    );
    for bad in [
        "",
        "localhost",
        "http://localhost",
        "https://localhost",
        "ftp://localhost:21",
        "localhost:0",
        "localhost:99999",
        "localhost:+1",
        "http://localhost:4567/path",
        "a b:1",
        ":4567",
        "[::1]",
    ] {
        assert!(
            matches!(Address::parse(bad), Err(Error::Address(_))),
            "{bad:?} must be refused"
        );
    }
    assert_eq!(Address::parse("[::1]:1").unwrap().to_string(), "[::1]:1");
    assert!(matches!(Client::new("nope"), Err(Error::Address(_))));
}

#[test]
fn client_path_components_are_escaped() {
    assert_eq!(encode_component("orders.eu:1"), "orders.eu:1");
    assert_eq!(encode_component("a/b?c d"), "a%2Fb%3Fc%20d");
    assert_eq!(encode_component("orders.*"), "orders.*");
    assert_eq!(
        Feed::from("a,b").path(true),
        "/feed?channel=a&channel=b&replay=all"
    );
    assert_eq!(Feed::from("a").path(false), "/feed/a");
    assert_eq!(
        Feed::from("/feed/a?x=1").path(true),
        "/feed/a?x=1&replay=all"
    );
}

#[test]
fn client_random_ids_look_like_pere_ones() {
    let d = random_device("H");
    assert_eq!(d.len(), 14, "{d}");
    assert!(d.starts_with("H0039") && !d.starts_with("H00390"), "{d}");
    assert!(d[1..].bytes().all(|b| b.is_ascii_digit()), "{d}");
    assert_ne!(random_key(), random_key());
    let b = Backoff::default();
    assert_eq!(b.delay(1), Duration::from_millis(250));
    assert_eq!(b.delay(2), Duration::from_millis(500));
    assert_eq!(b.delay(10), Duration::from_secs(4));
}

#[tokio::test]
async fn client_publishes_subscribes_and_acks_through_a_real_server() {
    let server = Server::start("127.0.0.1:0").await;
    let addr = server.addr.to_string();
    let client = Client::new(&addr).unwrap();
    let mut sub = Subscriber::new(&addr, "client.test", Some("dev-1".into())).unwrap();
    assert_eq!(next(&mut sub).await, SubscriberItem::Connected);
    let hello = next_event(&mut sub).await;
    assert_eq!(hello.event, "pere.hello");
    assert_eq!(hello.id, "", "control events carry no id");

    let opts = PublishOptions {
        device: Some("pub-1".into()),
        event_type: Some("order".into()),
        ..PublishOptions::default()
    };
    let published = client
        .publish("client.test", "line 1\nline 2", &opts)
        .await
        .unwrap();
    assert_eq!(published.channel, "client.test");
    assert_eq!(published.recipients, 1);
    assert_eq!(published.delivered, None);

    let event = next_message(&mut sub).await;
    assert_eq!(event.id, published.id);
    assert_eq!(event.event, "order");
    assert_eq!(event.data, "line 1\nline 2");
    assert_eq!(sub.last_event_id(), published.id);
    assert_eq!(sub.retry(), Duration::from_millis(50), "the server's retry");

    let acked = client
        .ack("client.test", "dev-1", &event.id, "printed")
        .await
        .unwrap();
    assert_eq!(
        (acked.device.as_str(), acked.state.as_str()),
        ("dev-1", "acked")
    );
    let receipts = client.receipts("client.test", &event.id).await.unwrap();
    assert_eq!(receipts["acked"], 1);
    assert_eq!(receipts["devices"]["dev-1"]["status"], "printed");

    // Waiting for acks: the device acks a second event while the
    // publisher waits.
    let waiting = {
        let opts = PublishOptions {
            wait: Some((WaitFor::Acked, Duration::from_secs(5))),
            ..PublishOptions::default()
        };
        let client = client.clone();
        tokio::spawn(async move { client.publish("client.test", "two", &opts).await })
    };
    let second = next_message(&mut sub).await;
    let batch = client
        .ack_batch("client.test", "dev-1", &[(&second.id, "ok"), ("1", "ok")])
        .await
        .unwrap();
    assert!(matches!(&batch[0], AckResult::Acked(a) if a.id == second.id));
    assert!(
        matches!(&batch[1], AckResult::Failed { code, .. } if code == "unknown_event"),
        "{batch:?}"
    );
    let published = waiting.await.unwrap().unwrap();
    assert_eq!(published.id, second.id);
    assert_eq!(published.acked, Some(1));
    assert_eq!(published.timed_out, Some(false));
    assert_eq!(published.pending, Some(vec![]));
    assert_eq!(published.unacked, Some(vec![]));
    server.stop().await;
}

#[tokio::test]
async fn client_refusals_become_status_errors_with_the_server_code() {
    let server = Server::start("127.0.0.1:0").await;
    let client = Client::new(&server.addr.to_string()).unwrap();
    let err = client
        .publish("a b", "x", &PublishOptions::default())
        .await
        .unwrap_err();
    match &err {
        Error::Status {
            status,
            code,
            message,
        } => {
            assert_eq!(*status, StatusCode::BAD_REQUEST);
            assert_eq!(code.as_deref(), Some("invalid_channel"));
            assert!(!message.is_empty());
        }
        other => panic!("expected a status error, got {other:?}"),
    }
    assert!(!is_transient(&err));
    let err = client.ack("c", "d", "1", "ok").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Status {
                status: StatusCode::NOT_FOUND,
                ..
            }
        ),
        "{err:?}"
    );
    // The connection is still good after refusals.
    let root = client.get_json("/").await.unwrap();
    assert_eq!(root["message"], "PERE server up and running");
    // A stream that cannot be opened is not retried.
    let mut sub = Subscriber::new(&server.addr.to_string(), "a b", None).unwrap();
    let err = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Status {
                status: StatusCode::BAD_REQUEST,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(sub.next().await.unwrap().is_none());
    server.stop().await;
}

/// Accepts one connection and reads one request head from it.
async fn accept_request(listener: &TcpListener) -> (TcpStream, String) {
    let (mut stream, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the client closed before sending a request");
        head.extend_from_slice(&buf[..n]);
    }
    (stream, String::from_utf8_lossy(&head).to_ascii_lowercase())
}

#[tokio::test]
async fn client_replaces_a_connection_the_server_closed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let client = Client::new(&addr).unwrap();
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let (mut stream, _) = accept_request(&listener).await;
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                .await
                .unwrap();
            // Closed after one answer, without `Connection: close`.
            drop(stream);
        }
    });
    assert_eq!(client.get_json("/a").await.unwrap(), serde_json::json!({}));
    assert_eq!(client.get_json("/b").await.unwrap(), serde_json::json!({}));
    tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn client_retried_publish_keeps_its_idempotency_key() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        // The first request is read and never answered: the client cannot
        // know whether it was published.
        let (first, head1) = accept_request(&listener).await;
        drop(first);
        let (mut second, head2) = accept_request(&listener).await;
        let body = r#"{"id":"7","channel":"c","recipients":0,"extra":1}"#;
        let answer = format!(
            "HTTP/1.1 201 Created\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        second.write_all(answer.as_bytes()).await.unwrap();
        (head1, head2)
    });
    let client = Client::new(&addr).unwrap();
    let mut retries = Vec::new();
    let backoff = Backoff {
        retries: 3,
        initial: Duration::from_millis(10),
        max: Duration::from_millis(10),
    };
    let published = client
        .publish_retrying("c", "x", &PublishOptions::default(), &backoff, |n, _, e| {
            retries.push((n, e.to_string()))
        })
        .await
        .unwrap();
    assert_eq!(published.id, "7");
    assert_eq!(retries.len(), 1, "{retries:?}");
    let (head1, head2) = tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
    let key = |head: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix("idempotency-key:"))
            .map(|v| v.trim().to_string())
    };
    assert!(key(&head1).is_some(), "a key is generated: {head1}");
    assert_eq!(key(&head1), key(&head2));
}

#[tokio::test]
async fn client_publish_retries_are_bounded() {
    // A port with nothing listening.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = Client::new(&format!("127.0.0.1:{port}")).unwrap();
    let backoff = Backoff {
        retries: 2,
        initial: Duration::from_millis(1),
        max: Duration::from_millis(1),
    };
    let mut count = 0;
    let err = client
        .publish_retrying("c", "x", &PublishOptions::default(), &backoff, |_, _, _| {
            count += 1
        })
        .await
        .unwrap_err();
    assert_eq!(count, 2);
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot connect"), "{err}");
}

/// Issue 18.10: a subscriber retried a dead server every `retry`
/// forever; failed attempts in a row now back off exponentially.
#[tokio::test]
async fn client_subscriber_backs_off_while_the_server_is_unreachable() {
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = SubscribeOptions {
        retry: Duration::from_millis(10),
        max_backoff: Duration::from_millis(35),
        ..SubscribeOptions::default()
    };
    let mut sub =
        Subscriber::with_options(&format!("127.0.0.1:{port}"), "c", None, options).unwrap();
    let mut delays = Vec::new();
    while delays.len() < 4 {
        if let SubscriberItem::Reconnecting { after, .. } = next(&mut sub).await {
            delays.push(after.as_millis());
        }
    }
    assert_eq!(delays, [10, 20, 35, 35], "doubling up to max_backoff");
    assert_eq!(
        backoff_delay(Duration::from_secs(3), Duration::from_secs(1), 5),
        Duration::from_secs(3),
        "never below the server's retry"
    );
    assert_eq!(
        backoff_delay(Duration::from_secs(3), DEFAULT_MAX_BACKOFF, 0),
        Duration::from_secs(3),
        "a stream that ended reconnects after retry"
    );
}

#[tokio::test]
async fn client_subscriber_resumes_with_last_event_id_after_a_server_restart() {
    let server = Server::start("127.0.0.1:0").await;
    let addr = server.addr;
    let client = Client::new(&addr.to_string()).unwrap();
    let mut sub = Subscriber::new(&addr.to_string(), "restart", Some("dev-r".into())).unwrap();
    assert_eq!(next(&mut sub).await, SubscriberItem::Connected);
    assert_eq!(next_event(&mut sub).await.event, "pere.hello");
    let first = client
        .publish("restart", "1", &PublishOptions::default())
        .await
        .unwrap();
    assert_eq!(next_message(&mut sub).await.id, first.id);

    server.stop().await;
    // The stream ends; attempts fail while nothing listens.
    assert!(matches!(
        next(&mut sub).await,
        SubscriberItem::Disconnected { .. }
    ));
    assert!(matches!(
        next(&mut sub).await,
        SubscriberItem::Reconnecting { after, attempt: 1 } if after == Duration::from_millis(50)
    ));
    let server = Server::start(&addr.to_string()).await;
    let second = client
        .publish("restart", "2", &PublishOptions::default())
        .await
        .unwrap();
    // The new server is told where the device was.
    let hello = loop {
        let e = next_event(&mut sub).await;
        if e.event == "pere.hello" {
            break e;
        }
    };
    let hello: Value = serde_json::from_str(&hello.data).unwrap();
    assert_eq!(hello["resumed_from"], first.id.as_str());
    assert_eq!(next_message(&mut sub).await.id, second.id);
    server.stop().await;
}

#[tokio::test]
async fn client_subscriber_starts_after_a_given_event_id() {
    let server = Server::start("127.0.0.1:0").await;
    let addr = server.addr.to_string();
    let client = Client::new(&addr).unwrap();
    let mut ids = Vec::new();
    for n in 0..3 {
        let p = client
            .publish("from", n.to_string(), &PublishOptions::default())
            .await
            .unwrap();
        ids.push(p.id);
    }
    let options = SubscribeOptions {
        last_event_id: Some(ids[0].clone()),
        ..SubscribeOptions::default()
    };
    let mut sub = Subscriber::with_options(&addr, "from", None, options).unwrap();
    assert_eq!(sub.last_event_id(), ids[0]);
    let hello = next_event(&mut sub).await;
    assert_eq!(hello.id, ids[0], "the last event id before any event");
    assert_eq!(next_message(&mut sub).await.data, "1");
    assert_eq!(next_message(&mut sub).await.data, "2");
    let bad = SubscribeOptions {
        last_event_id: Some("x1".into()),
        ..SubscribeOptions::default()
    };
    assert!(matches!(
        Subscriber::with_options(&addr, "from", None, bad),
        Err(Error::Core(_))
    ));
    server.stop().await;
}

#[tokio::test]
async fn client_subscriber_next_can_be_cancelled_without_losing_the_stream() {
    let server = Server::start("127.0.0.1:0").await;
    let addr = server.addr.to_string();
    let mut sub = Subscriber::new(&addr, "cancel", None).unwrap();
    assert_eq!(next_event(&mut sub).await.event, "pere.hello");
    for _ in 0..3 {
        let quiet = tokio::time::timeout(Duration::from_millis(20), sub.next()).await;
        assert!(quiet.is_err(), "nothing to read yet: {quiet:?}");
    }
    assert!(sub.is_connected());
    let client = Client::new(&addr).unwrap();
    let p = client
        .publish("cancel", "still here", &PublishOptions::default())
        .await
        .unwrap();
    let event = next_event(&mut sub).await;
    assert_eq!(
        (event.id.as_str(), event.data.as_str()),
        (p.id.as_str(), "still here")
    );
    server.stop().await;
}

#[tokio::test]
async fn client_subscriber_gives_up_after_max_reconnects() {
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = SubscribeOptions {
        max_reconnects: Some(2),
        retry: Duration::from_millis(5),
        ..SubscribeOptions::default()
    };
    let mut sub =
        Subscriber::with_options(&format!("127.0.0.1:{port}"), "c", None, options).unwrap();
    let mut notices = Vec::new();
    let err = loop {
        match tokio::time::timeout(WAIT, sub.next()).await.unwrap() {
            Ok(Some(item)) => notices.push(item),
            Ok(None) => panic!("ended without an error: {notices:?}"),
            Err(err) => break err,
        }
    };
    assert!(matches!(err, Error::GaveUp(_)), "{err:?}");
    assert!(
        err.to_string().starts_with("gave up on http://127.0.0.1:")
            && err.to_string().contains("2 failed connection attempts"),
        "{err}"
    );
    let disconnects = notices
        .iter()
        .filter(|n| matches!(n, SubscriberItem::Disconnected { .. }))
        .count();
    assert_eq!(disconnects, 2, "{notices:?}");
    assert!(sub.next().await.unwrap().is_none());
}

/// A server that cannot serve a stream now answers `200` with a `retry:`
/// and a comment saying why, then ends it (docs/PROTOCOL.md §6.5): each
/// such answer is a failed attempt, which backs off, counts against
/// `max_reconnects`, and gives the server's reason.
#[tokio::test]
async fn client_subscriber_counts_a_stream_that_ends_before_any_event_as_failed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let (mut stream, _) = accept_request(&listener).await;
            let body = ":the event store is unavailable (store_unavailable)\n\n";
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\
                 content-length: {}\r\n\r\nretry:5\n\n{body}",
                body.len() + "retry:5\n\n".len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    let options = SubscribeOptions {
        max_reconnects: Some(3),
        ..SubscribeOptions::default()
    };
    let mut sub = Subscriber::with_options(&addr.to_string(), "c", None, options).unwrap();
    let mut notices = Vec::new();
    let err = loop {
        assert!(notices.len() < 100, "never gave up: {:?}", &notices[..12]);
        match tokio::time::timeout(WAIT, sub.next()).await.unwrap() {
            Ok(Some(item)) => notices.push(item),
            Ok(None) => panic!("ended without an error: {notices:?}"),
            Err(err) => break err,
        }
    };
    server.abort();
    assert!(matches!(err, Error::GaveUp(_)), "{err:?}");
    assert!(
        err.to_string().contains("store_unavailable"),
        "the server's reason: {err}"
    );
    let waits: Vec<(u32, u128)> = notices
        .iter()
        .filter_map(|n| match n {
            SubscriberItem::Reconnecting { attempt, after } => Some((*attempt, after.as_millis())),
            _ => None,
        })
        .collect();
    assert_eq!(waits, [(2, 5), (3, 10)], "backing off: {notices:?}");
}
