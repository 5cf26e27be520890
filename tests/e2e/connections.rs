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
use pere_tests::raw::read_to_close;
use pere_tests::{TestServer, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An HTTP/2 (prior knowledge) connection made by hyper's client, which
/// pings the server every 100 ms and answers the server's pings. The
/// handle resolves when the connection ends.
async fn h2_connect(
    addr: SocketAddr,
) -> (
    http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<Instant>,
) {
    h2_connect_with_window(addr, None).await
}

/// [`h2_connect`] whose streams' flow-control window starts at `window`
/// bytes (the client opens it again only as a body is read).
async fn h2_connect_with_window(
    addr: SocketAddr,
    window: Option<u32>,
) -> (
    http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<Instant>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(100))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    if let Some(window) = window {
        builder.initial_stream_window_size(window);
    }
    let (sender, conn) = builder
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
    let server = TestServer::builder()
        .header_read_timeout(head)
        .idle_timeout(Duration::from_secs(60))
        .start()
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
    let server = TestServer::builder()
        .idle_timeout(idle)
        .header_read_timeout(Duration::from_secs(60))
        .send_timeout(Duration::from_millis(400))
        .start()
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
    // The server's clock starts when it has sent the answer, a little
    // before this client has read it: hence the loose lower bound.
    assert!(
        elapsed >= idle / 2 && elapsed < idle + Duration::from_secs(3),
        "closed {elapsed:?} after the last answer"
    );
}

#[tokio::test]
async fn an_http2_connection_with_an_open_stream_is_not_idle() {
    let idle = Duration::from_millis(400);
    let server = TestServer::builder()
        .idle_timeout(idle)
        .keepalive(Duration::from_secs(30))
        .start()
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
        let server = TestServer::builder().max_header_bytes(limit).start().await;
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
        // A page can read it, as every answer (docs/PROTOCOL.md §6.4).
        assert_eq!(
            r.headers()
                .get("access-control-allow-origin")
                .map(|v| v.as_bytes()),
            Some(&b"*"[..])
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

/// A small deterministic generator (xorshift64*): the same bytes and sizes
/// on every run, without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One request of the burst: head, body, and whether the body follows the
/// head in a second write (as clients that stream bodies do).
struct Sent {
    head: Vec<u8>,
    body: Vec<u8>,
    split: bool,
}

/// The error answers of the issue 13 burst, in turn: several are given
/// before the body is read.
fn burst_request(kind: usize, rng: &mut Rng) -> (Sent, u16) {
    // Sizes from a few bytes to past what the server drains (64 KiB), so
    // both ways of ending an unread body are exercised.
    const SIZES: [usize; 6] = [9, 700, 5_000, 20_000, 48_000, 100_000];
    let size = SIZES[rng.below(SIZES.len())];
    let split = rng.below(3) == 0;
    let text = |n: usize| vec![b'p'; n];
    type Headers = &'static [(&'static str, &'static str)];
    let (method, path, headers, body, status): (&str, &str, Headers, Vec<u8>, u16) = match kind {
        0 => ("POST", "/push/bad$name", &[], text(size), 400),
        1 => ("POST", "/push/c", &[], Vec::new(), 400),
        2 => ("POST", "/push/c", &[], vec![0xff; size.min(60_000)], 400),
        3 => (
            "POST",
            "/feedback/c",
            &[("device", "d"), ("Content-Type", "application/json")],
            br#"{"id": "1", "status": "#.to_vec(),
            400,
        ),
        4 => ("POST", "/push/c", &[("device", "a b")], text(size), 400),
        5 => ("GET", "/push/x", &[], Vec::new(), 405),
        _ => ("GET", "/receipts/c/not-an-id", &[], Vec::new(), 400),
    };
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n").into_bytes();
    for (k, v) in headers {
        head.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    if method == "POST" {
        head.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    (
        Sent {
            head,
            body,
            split: split && method == "POST",
        },
        status,
    )
}

/// What one exchange on a kept-alive connection gave: the status and
/// whether the server announced it closes the connection.
async fn exchange(stream: &mut TcpStream, sent: &Sent) -> Result<(u16, bool), String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e} ({:?})", e.kind());
    if sent.split {
        stream
            .write_all(&sent.head)
            .await
            .map_err(|e| io("writing the head", e))?;
        tokio::time::sleep(Duration::from_millis(2)).await;
        stream
            .write_all(&sent.body)
            .await
            .map_err(|e| io("writing the body", e))?;
    } else {
        let mut all = sent.head.clone();
        all.extend_from_slice(&sent.body);
        stream
            .write_all(&all)
            .await
            .map_err(|e| io("writing the request", e))?;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut read = async |buf: &mut Vec<u8>| -> Result<(), String> {
        match tokio::time::timeout(WAIT, stream.read(&mut chunk)).await {
            Err(_) => Err("no answer within the wait".into()),
            Ok(Err(e)) => Err(io("reading the answer", e)),
            Ok(Ok(0)) => Err(format!(
                "closed before a whole answer: {:?}",
                String::from_utf8_lossy(buf)
            )),
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        }
    };
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        read(&mut buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no content-length in {head:?}"))?;
    let close = header("connection").is_some_and(|v| v == "close");
    while buf.len() < end + len {
        read(&mut buf).await?;
    }
    if buf.len() > end + len {
        return Err(format!("bytes after the answer: {:?}", &buf[end + len..]));
    }
    Ok((status, close))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_are_never_reset_by_an_error_answer() {
    // Issue 13: 4 clients × 60 rounds of keep-alive requests answered with
    // errors, several before their body was read, while other connections
    // send random bytes. A client may be told `Connection: close` (then it
    // reconnects); it must never see a reset or a close it was not told of.
    const CLIENTS: u64 = 4;
    const ROUNDS: usize = 60;
    const KINDS: usize = 7;
    let server = TestServer::builder()
        .header_read_timeout(Duration::from_secs(1))
        .start()
        .await;
    let addr = server.addr;
    let mut noise = tokio::task::JoinSet::new();
    for seed in 0..6u64 {
        noise.spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (seed + 1));
            for _ in 0..5 {
                let Ok(mut conn) = TcpStream::connect(addr).await else {
                    continue;
                };
                let n = 1 + rng.below(3000);
                let _ = conn.write_all(&rng.bytes(n)).await;
                let mut sink = [0u8; 4096];
                while let Ok(Ok(1..)) = tokio::time::timeout(WAIT, conn.read(&mut sink)).await {}
            }
        });
    }
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        clients.spawn(async move {
            let mut rng = Rng(0xD1B5_4A32_D192_ED03 ^ (client + 1));
            let mut failures = Vec::new();
            let mut closes = 0usize;
            let mut conn = TcpStream::connect(addr).await.unwrap();
            conn.set_nodelay(true).unwrap();
            for round in 0..ROUNDS {
                for kind in 0..KINDS {
                    let (sent, want) = burst_request(kind, &mut rng);
                    match exchange(&mut conn, &sent).await {
                        Ok((status, close)) => {
                            if status != want {
                                failures.push(format!(
                                    "client {client} round {round} kind {kind}: {status}, wanted {want}"
                                ));
                            }
                            if close {
                                closes += 1;
                                conn = TcpStream::connect(addr).await.unwrap();
                                conn.set_nodelay(true).unwrap();
                            }
                        }
                        Err(e) => {
                            failures.push(format!(
                                "client {client} round {round} kind {kind} ({} body bytes{}): {e}",
                                sent.body.len(),
                                if sent.split { ", split" } else { "" }
                            ));
                            conn = TcpStream::connect(addr).await.unwrap();
                            conn.set_nodelay(true).unwrap();
                        }
                    }
                }
            }
            (failures, closes)
        });
    }
    let mut failures = Vec::new();
    let mut closes = 0;
    while let Some(done) = clients.join_next().await {
        let (f, c) = done.unwrap();
        failures.extend(f);
        closes += c;
    }
    while noise.join_next().await.is_some() {}
    let total = CLIENTS as usize * ROUNDS * KINDS;
    eprintln!(
        "{total} exchanges, {} failed, {closes} answered with `Connection: close`",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {total} exchanges failed; the first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
    assert_eq!(server.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn an_answer_before_an_awaited_body_says_connection_close_and_asks_for_nothing() {
    // A client that waits for `100 Continue` before sending its body is
    // not asked for a body nobody will read: it is told the connection
    // closes, and the connection closes without a reset.
    let server = TestServer::start().await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(
        b"POST /push/bad$name HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n",
    )
    .await
    .unwrap();
    let answer = read_to_close(&mut conn).await;
    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 400 "), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    assert!(text.contains(r#""code":"invalid_channel""#), "{text}");
}

/// An event stream the server ends (here its membership is removed) ends
/// its connection too, on the direct path (a small head) and over hyper
/// (a head too large for the direct path): a client that watches the
/// socket, not the last chunk (PyPI `sseclient`), reconnected only at
/// `--idle-timeout` (60 s) before. The idle timeout is an hour here, so
/// only the end of the stream can close the connection within `WAIT`.
#[tokio::test]
async fn a_stream_the_server_ends_ends_its_connection() {
    let server = TestServer::builder()
        .idle_timeout(Duration::from_secs(3600))
        .start()
        .await;
    let padding = "x".repeat(5000);
    for (device, extra) in [
        ("direct", String::new()),
        ("hyper", format!("X-Pad: {padding}\r\n")),
    ] {
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        let head = format!("GET /feed/ends HTTP/1.1\r\nHost: x\r\ndevice: {device}\r\n{extra}\r\n");
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        pere_tests::raw::read_until(&mut conn, &mut seen, "pere.hello").await;
        let r = server
            .request("DELETE", &format!("/admin/devices/ends/{device}"), &[], b"")
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let rest = read_to_close(&mut conn).await;
        let all = String::from_utf8_lossy(&[seen, rest].concat()).into_owned();
        let head = &all[..all.find("\r\n\r\n").unwrap()];
        assert!(
            head.to_ascii_lowercase().contains("\r\nconnection: close"),
            "{device}: the head says so: {head:?}"
        );
        assert!(
            all.ends_with("0\r\n\r\n"),
            "{device}: the last chunk, then the close: {all:?}"
        );
    }
}

/// An HTTP/2 client that answers pings but never opens a stream's
/// flow-control window: the server can send it headers and no byte of a
/// body, so no write waited on the socket and the send timeout beneath
/// never ran. It held the connection, and every answer it asked for (a
/// probe pinned 320 MB with 50 streams of `/admin/events`), for as long as
/// it liked. A body the window holds back for `--send-timeout` now ends
/// the connection, as a socket that takes nothing does over HTTP/1.1.
#[tokio::test]
async fn an_http2_client_that_never_opens_its_window_is_closed_after_the_send_timeout() {
    let send = Duration::from_millis(600);
    let server = TestServer::builder()
        .send_timeout(send)
        .idle_timeout(Duration::from_secs(60))
        .start()
        .await;
    for path in ["/healthz", "/feed/news", "/subscriber.html"] {
        let started = Instant::now();
        let (mut sender, ended) = h2_connect_with_window(server.addr, Some(0)).await;
        // Headers are not flow-controlled: the answer starts, its body
        // cannot.
        let r = sender
            .send_request(h2_get(server.addr, path, &[("device", "d")]))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let elapsed = ended_at(ended).await - started;
        assert!(
            elapsed >= send && elapsed < send + Duration::from_secs(3),
            "{path}: closed after {elapsed:?}"
        );
        drop(r);
    }
    // A client that reads, slowly or not, keeps its connection.
    let (mut sender, ended) = h2_connect(server.addr).await;
    let r = sender
        .send_request(h2_get(server.addr, "/feed/news", &[("device", "e")]))
        .await
        .unwrap();
    let mut body = r.into_body();
    let first = tokio::time::timeout(WAIT, body.frame()).await.unwrap();
    assert!(first.is_some());
    tokio::time::sleep(send * 3).await;
    assert!(!ended.is_finished(), "a reading client keeps its stream");
    assert_eq!(server.get("/healthz").await.status, 200);
}

/// One stream held back by its window while another on the same HTTP/2
/// connection flows (a proxy carrying many devices, one of them slow):
/// the connection stays, for the streams that read (hyper cannot reset
/// the one stream for us). Once nothing flows, it ends.
#[tokio::test]
async fn one_held_back_http2_stream_does_not_end_its_flowing_siblings() {
    let send = Duration::from_millis(600);
    let server = TestServer::builder()
        .send_timeout(send)
        .idle_timeout(Duration::from_secs(60))
        .start()
        .await;
    let (mut sender, ended) = h2_connect_with_window(server.addr, Some(16 * 1024)).await;
    let held = sender
        .send_request(h2_get(server.addr, "/feed/held", &[("device", "slow")]))
        .await
        .unwrap();
    let mut flowing = sender
        .send_request(h2_get(server.addr, "/feed/flowing", &[("device", "fast")]))
        .await
        .unwrap()
        .into_body();
    // More than the held stream's window: its body waits from now on.
    let big = "x".repeat(8 * 1024);
    for _ in 0..4 {
        server.publish("held", &big).await;
    }
    // Three send timeouts of the other stream flowing.
    let started = Instant::now();
    let mut got = String::new();
    while started.elapsed() < send * 3 {
        let n = server.publish("flowing", "tick").await;
        while !got.contains(&n) {
            let frame = tokio::time::timeout(WAIT, flowing.frame())
                .await
                .expect("the flowing stream gets its event")
                .expect("the stream goes on")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                got.push_str(&String::from_utf8_lossy(&data));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !ended.is_finished(),
        "the connection stays while a stream flows"
    );
    // Nothing flows any more: the held stream ends the connection.
    let quiet = Instant::now();
    let elapsed = ended_at(ended).await - quiet;
    assert!(
        elapsed < send + Duration::from_secs(3),
        "closed after {elapsed:?}"
    );
    drop(held);
}

/// An HTTP/1.0 client asking for keep-alive, answered with an event
/// stream (which ends its connection): hyper added `keep-alive` to our
/// `Connection: close`, saying `close, keep-alive`, which a client may read
/// as a socket to reuse (a probe's finding). Such an answer is now an
/// HTTP/1.0 one that says `close` alone.
#[tokio::test]
async fn an_http10_keep_alive_client_is_told_close_alone() {
    let server = TestServer::start().await;
    let (status, headers) = pere_tests::behind_healthz(
        server.addr,
        b"GET /feed/c HTTP/1.0\r\nHost: x\r\ndevice: d\r\nConnection: keep-alive\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "the stream");
    let connection: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(connection, ["close"], "{headers:?}");
}
