//! The connection layer (issue 19, points 1 and 10; issue 13, keep-alive):
//! whatever a client sends, its connection is bounded by the head timeout
//! until it has a request and by the idle timeout while it has none, over
//! HTTP/1.1 and HTTP/2 alike; HTTP/2 gets the same head limit and the same
//! JSON errors as HTTP/1.1; and an error answer never costs a keep-alive
//! client its connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pere_core::{HubConfig, Retention};
use pere_http::ServerConfig;
use pere_tests::{TestServer, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn server(config: ServerConfig) -> TestServer {
    TestServer::start_with(HubConfig::default(), Retention::default(), config).await
}

/// Reads until the server closes; fails the test if it neither closes nor
/// errors within `WAIT`.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the connection is still open after {WAIT:?}; received {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

/// An HTTP/2 (prior knowledge) connection made by hyper's client, which
/// pings the server every 100 ms and answers the server's pings. The
/// handle resolves when the connection ends.
async fn h2_connect(
    addr: SocketAddr,
) -> (
    http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<Instant>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(100))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/2 handshake");
    let ended = tokio::spawn(async move {
        let _ = conn.await;
        Instant::now()
    });
    (sender, ended)
}

fn h2_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> hyper::Request<Empty<Bytes>> {
    let mut req = hyper::Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Empty::new()).unwrap()
}

/// Waits (bounded) for an HTTP/2 connection to end; returns when it did.
async fn ended_at(ended: tokio::task::JoinHandle<Instant>) -> Instant {
    tokio::time::timeout(WAIT, ended)
        .await
        .expect("the server closed the HTTP/2 connection")
        .unwrap()
}

#[tokio::test]
async fn a_partial_http2_preface_is_closed_within_the_head_timeout() {
    // Issue 19, point 1: these bytes once held a socket for ever.
    let head = Duration::from_millis(300);
    let server = server(ServerConfig {
        header_read_timeout: head,
        idle_timeout: Duration::from_secs(60),
        ..ServerConfig::default()
    })
    .await;
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    for partial in [&preface[..16], &preface[..22], &preface[..3]] {
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        let started = Instant::now();
        conn.write_all(partial).await.unwrap();
        read_to_close(&mut conn).await;
        let elapsed = started.elapsed();
        assert!(
            elapsed >= head && elapsed < head + Duration::from_secs(3),
            "{:?} closed after {elapsed:?}",
            String::from_utf8_lossy(partial)
        );
    }
    assert_eq!(server.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn an_http2_connection_that_only_pings_is_closed_after_the_idle_timeout() {
    // Issue 19, point 1: a client that answers pings but opens no stream.
    // The head timeout is long, so only the idle timeout can close it.
    let idle = Duration::from_millis(500);
    let server = server(ServerConfig {
        idle_timeout: idle,
        header_read_timeout: Duration::from_secs(60),
        send_timeout: Duration::from_millis(400),
        ..ServerConfig::default()
    })
    .await;
    let started = Instant::now();
    let (sender, ended) = h2_connect(server.addr).await;
    let elapsed = ended_at(ended).await - started;
    assert!(
        elapsed >= idle && elapsed < idle + Duration::from_secs(3),
        "closed after {elapsed:?}"
    );
    assert!(sender.is_closed());
    // Idle after a request too: the clock starts when the last stream ends.
    let (mut sender, ended) = h2_connect(server.addr).await;
    let r = sender
        .send_request(h2_get(server.addr, "/healthz", &[]))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answered = Instant::now();
    r.into_body().collect().await.unwrap();
    let elapsed = ended_at(ended).await - answered;
    assert!(
        elapsed >= idle - Duration::from_millis(50) && elapsed < idle + Duration::from_secs(3),
        "closed {elapsed:?} after the last answer"
    );
}

#[tokio::test]
async fn an_http2_connection_with_an_open_stream_is_not_idle() {
    let idle = Duration::from_millis(400);
    let server = server(ServerConfig {
        idle_timeout: idle,
        keepalive: Duration::from_secs(30),
        ..ServerConfig::default()
    })
    .await;
    let (mut sender, ended) = h2_connect(server.addr).await;
    let r = sender
        .send_request(h2_get(server.addr, "/feed/c", &[("device", "h2-dev")]))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.into_body();
    let mut text = String::new();
    let mut read_until = async |needle: &str, text: &mut String| {
        while !text.contains(needle) {
            let frame = tokio::time::timeout(WAIT, body.frame())
                .await
                .unwrap_or_else(|_| panic!("no {needle:?} in {text:?}"))
                .expect("the stream is open")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                text.push_str(&String::from_utf8_lossy(&data));
            }
        }
    };
    read_until("pere.hello", &mut text).await;
    tokio::time::sleep(idle * 3).await;
    server.publish("c", "still open").await;
    read_until("still open", &mut text).await;
    assert!(
        !ended.is_finished(),
        "the connection outlived the idle timeout"
    );
    // Once the stream ends, the connection is idle and closes.
    drop(body);
    server.wait_offline("c", "h2-dev").await;
    ended_at(ended).await;
}

#[tokio::test]
async fn over_http2_an_oversized_head_gets_the_json_431_at_the_same_limit() {
    // Issue 19, point 10.
    for (limit, ok, big) in [
        (pere_http::server::DEFAULT_MAX_HEADER_BYTES, 7 * 1024, 9000),
        (32 * 1024, 24 * 1024, 33 * 1024),
    ] {
        let server = server(ServerConfig {
            max_header_bytes: limit,
            ..ServerConfig::default()
        })
        .await;
        let (mut sender, _ended) = h2_connect(server.addr).await;
        let fine = "x".repeat(ok);
        let r = sender
            .send_request(h2_get(server.addr, "/healthz", &[("x-ok", &fine)]))
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "a {ok}-byte header under a {limit}-byte limit"
        );
        let large = "x".repeat(big);
        let r = sender
            .send_request(h2_get(server.addr, "/healthz", &[("x-big", &large)]))
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            431,
            "a {big}-byte header over a {limit}-byte limit"
        );
        assert_eq!(
            r.headers().get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
        assert_eq!(body["code"], "headers_too_large", "{body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains(&limit.to_string())),
            "{body}"
        );
        // Many small headers add up the same way.
        let many: Vec<(String, String)> = (0..(big / 64))
            .map(|i| (format!("x-h{i}"), "y".repeat(40)))
            .collect();
        let mut req = hyper::Request::get(format!("http://{}/healthz", server.addr));
        for (k, v) in &many {
            req = req.header(k, v);
        }
        let r = sender
            .send_request(req.body(Empty::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), 431);
        // The connection carries on.
        let r = sender
            .send_request(h2_get(server.addr, "/healthz", &[]))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}
