//! TLS (docs/PROTOCOL.md §10, issue 17): HTTP/2 and HTTP/1.1 over TLS by
//! ALPN, with a test CA and certificates made here (rcgen). Every endpoint,
//! the head and idle timeouts (the handshake included) and the send
//! timeout work as over plain HTTP;
//! SIGHUP swaps the certificate under open streams; and what an idle TLS
//! stream costs is measured. Real clients (curl, the CLI tools, Chromium)
//! are in `tls_clients.rs`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pere_http::sse::{Decoder, Item, SseEvent};
use pere_http::tls::ServerTls;
use pere_tests::raw::{h2_opening, read_to_close, small_buffer_connect};
use pere_tests::tls::{Issued, TestCa, alpn, peer_cert, server_process};
use pere_tests::{HttpReader, SseStream, TestServer, TestServerBuilder, WAIT, eventually};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// An in-process server speaking TLS with a certificate of `ca`.
pub(crate) async fn tls_server(ca: &TestCa, settings: TestServerBuilder) -> TestServer {
    tls_server_issued(ca, settings).await.0
}

/// The same, and its certificate.
pub(crate) async fn tls_server_issued(
    ca: &TestCa,
    settings: TestServerBuilder,
) -> (TestServer, Issued) {
    let issued = ca.issue("server");
    let tls = ServerTls::load(&issued.cert, &issued.key).unwrap();
    (settings.tls(tls).start().await, issued)
}

pub(crate) type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// An HTTP/2 connection over TLS (ALPN `h2`).
pub(crate) async fn h2(ca: &TestCa, addr: std::net::SocketAddr) -> H2 {
    let tls = ca.connect(addr, &[b"h2", b"http/1.1"]).await;
    assert_eq!(alpn(&tls).as_deref(), Some(&b"h2"[..]), "ALPN chose h2");
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

fn h2_request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> hyper::Request<Full<Bytes>> {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("https://127.0.0.1{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

/// One HTTP/2 exchange: status and body.
pub(crate) async fn h2_call(
    send: &mut H2,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<u8>) {
    let response = tokio::time::timeout(
        WAIT,
        send.send_request(h2_request(method, path, headers, body)),
    )
    .await
    .expect("answered in time")
    .unwrap();
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, body)
}

/// An event stream over HTTP/2.
struct H2Events {
    body: Incoming,
    decoder: Decoder,
    items: std::collections::VecDeque<Item>,
}

impl H2Events {
    async fn open(send: &mut H2, path: &str, device: &str) -> Self {
        let response = send
            .send_request(h2_request("GET", path, &[("device", device)], ""))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        Self {
            body: response.into_body(),
            decoder: Decoder::new(),
            items: Default::default(),
        }
    }

    /// The next event that is not a `pere.` control event.
    async fn next_message(&mut self) -> SseEvent {
        loop {
            while let Some(item) = self.items.pop_front() {
                if let Item::Event(e) = item
                    && !e.event.starts_with("pere.")
                {
                    return e;
                }
            }
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .expect("an event in time")
                .expect("the stream is open")
                .unwrap();
            if let Some(data) = frame.data_ref() {
                let mut out = Vec::new();
                self.decoder.feed(data, &mut out);
                self.items.extend(out);
            }
        }
    }
}

#[tokio::test]
async fn http2_over_tls_multiplexes_streams_and_serves_every_endpoint() {
    let ca = TestCa::new("tls-h2");
    let server = tls_server(&ca, TestServer::builder()).await;
    let mut send = h2(&ca, server.addr).await;
    // More streams than a browser's 6 HTTP/1.1 connections, on one
    // connection.
    let mut streams = Vec::new();
    for i in 0..8 {
        streams.push(H2Events::open(&mut send, &format!("/feed/c{i}"), &format!("d{i}")).await);
    }
    for i in 0..8 {
        eventually("the HTTP/2 devices are online", || async {
            let (status, body) = h2_call(
                &mut send.clone(),
                "GET",
                &format!("/admin/devices/c{i}"),
                &[],
                "",
            )
            .await;
            status == 200
                && serde_json::from_slice::<Value>(&body).unwrap()[format!("d{i}")]["online"]
                    == true
        })
        .await;
    }
    let mut ids = Vec::new();
    for i in 0..8 {
        let (status, body) = h2_call(
            &mut send,
            "POST",
            &format!("/push/c{i}"),
            &[],
            &format!("e{i}"),
        )
        .await;
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        ids.push(
            serde_json::from_slice::<Value>(&body).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for (i, s) in streams.iter_mut().enumerate() {
        assert_eq!(s.next_message().await.data, format!("e{i}"));
    }
    // A receipt and the receipts view, over HTTP/2.
    let receipt = format!(r#"{{"id":"{}"}}"#, ids[0]);
    let (status, body) = h2_call(
        &mut send,
        "POST",
        "/feedback/c0",
        &[("device", "d0"), ("content-type", "application/json")],
        &receipt,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, body) = h2_call(
        &mut send,
        "GET",
        &format!("/receipts/c0/{}", ids[0]),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        String::from_utf8_lossy(&body).contains("acked"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // Errors are the same JSON.
    let (status, body) = h2_call(&mut send, "GET", "/nope", &[], "").await;
    assert_eq!(status, 404);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["code"],
        "not_found"
    );
    // HTTP/1.1 over TLS, by ALPN, serves the same.
    let tls = ca.connect(server.addr, &[b"http/1.1"]).await;
    assert_eq!(alpn(&tls).as_deref(), Some(&b"http/1.1"[..]));
    drop(tls);
    let mut s = ca
        .stream(server.addr, "/feed/c0", &[("device", "d-h1")])
        .await;
    assert_eq!(s.status, 200);
    assert_eq!(s.next_event().await.unwrap().event, "pere.hello");
    let r = ca
        .request(server.addr, "POST", "/push/c0", &[], b"over h1")
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(s.messages(1).await[0].data, "over h1");
    assert_eq!(streams[0].next_message().await.data, "over h1");
    // Plain HTTP on the TLS port gets no HTTP answer: the handshake fails.
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut plain).await;
    assert!(
        !got.starts_with(b"HTTP/"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    server.stop().await;
    pere_tests::tls::remove(&ca.dir);
}

#[tokio::test]
async fn tls_handshakes_heads_and_idle_connections_are_timed() {
    let head = Duration::from_millis(300);
    let idle = Duration::from_millis(700);
    let ca = TestCa::new("tls-timeouts");
    let server = tls_server(
        &ca,
        TestServer::builder()
            .header_read_timeout(head)
            .idle_timeout(idle),
    )
    .await;
    // Connected, silent: no handshake, closed at the head timeout.
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    read_to_close(&mut silent).await;
    let closed = Instant::now();
    let took = closed - started;
    assert!(
        took >= head - Duration::from_millis(50) && took < head * 4,
        "{took:?}"
    );
    // Half a ClientHello, then nothing: the same.
    let started = Instant::now();
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00])
        .await
        .unwrap();
    read_to_close(&mut half).await;
    let closed = Instant::now();
    let took = closed - started;
    assert!(
        took >= head - Duration::from_millis(50) && took < head * 4,
        "{took:?}"
    );
    // After the handshake, a head that does not finish: the JSON 408,
    // through TLS.
    let tls = ca.connect(server.addr, &[b"http/1.1"]).await;
    let mut reader = HttpReader::over(tls);
    reader.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
    let (status, headers) = reader.head().await;
    assert_eq!(status, 408);
    let body = reader.body(&headers, status).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["code"],
        "request_timeout"
    );
    // A TLS connection with no request is closed once idle.
    let started = Instant::now();
    let mut quiet = ca.connect(server.addr, &[b"h2", b"http/1.1"]).await;
    read_to_close(&mut quiet).await;
    let closed = Instant::now();
    let took = closed - started;
    assert!(
        took >= idle - Duration::from_millis(100) && took < idle * 4,
        "{took:?}"
    );
    // A stream is no idle connection.
    let mut s = ca
        .stream(server.addr, "/feed/c", &[("device", "kept")])
        .await;
    tokio::time::sleep(idle * 2).await;
    let r = ca
        .request(server.addr, "POST", "/push/c", &[], b"still open")
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(s.messages(1).await[0].data, "still open");
    server.stop().await;
    pere_tests::tls::remove(&ca.dir);
}

#[tokio::test]
async fn tls_clients_that_stop_reading_are_disconnected_after_the_send_timeout() {
    let send_timeout = Duration::from_millis(500);
    let ca = TestCa::new("tls-stall");
    let server = tls_server(&ca, TestServer::builder().send_timeout(send_timeout)).await;
    let config = ca.client_config(&[b"http/1.1"]);
    // HTTP/1.1 over TLS, a tiny receive buffer, never read.
    let tcp = small_buffer_connect(server.addr).await;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut h1 = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    h1.write_all(b"GET /feed/c HTTP/1.1\r\nHost: x\r\ndevice: frozen-h1\r\n\r\n")
        .await
        .unwrap();
    h1.flush().await.unwrap();
    // HTTP/2 over TLS, never read: only its unanswered ping tells.
    let mut h2raw = ca.connect(server.addr, &[b"h2"]).await;
    let opening = h2_opening(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/feed/c"),
        (":authority", "x"),
        ("device", "frozen-h2"),
    ]);
    h2raw.write_all(&opening).await.unwrap();
    h2raw.flush().await.unwrap();
    // A reader that keeps up keeps its stream.
    let mut reader = ca
        .stream(server.addr, "/feed/c", &[("device", "reader")])
        .await;
    let mut send = h2(&ca, server.addr).await;
    for device in ["frozen-h1", "frozen-h2", "reader"] {
        eventually("the devices are online", || async {
            let (_, body) = h2_call(&mut send.clone(), "GET", "/admin/devices/c", &[], "").await;
            serde_json::from_slice::<Value>(&body).unwrap()[device]["online"] == true
        })
        .await;
    }
    let payload = "x".repeat(60_000);
    let events = 100;
    let reading = tokio::spawn(async move {
        let got = reader.messages(events).await;
        (reader, got.len())
    });
    for _ in 0..events {
        let (status, _) = h2_call(&mut send, "POST", "/push/c", &[], &payload).await;
        assert_eq!(status, 201);
    }
    for device in ["frozen-h1", "frozen-h2"] {
        eventually(&format!("{device} is disconnected"), || async {
            let (_, body) = h2_call(&mut send.clone(), "GET", "/admin/devices/c", &[], "").await;
            serde_json::from_slice::<Value>(&body).unwrap()[device]["online"] == false
        })
        .await;
    }
    let (mut reader, got) = reading.await.unwrap();
    assert_eq!(got, events);
    let (status, _) = h2_call(&mut send, "POST", "/push/c", &[], "still here").await;
    assert_eq!(status, 201);
    assert_eq!(reader.messages(1).await[0].data, "still here");
    drop((h1, h2raw));
    server.stop().await;
    pere_tests::tls::remove(&ca.dir);
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_open_streams_stay() {
    let ca = TestCa::new("tls-reload");
    let first = ca.issue("first");
    let server = server_process(&first, &[]).await;
    let tls = ca.connect(server.addr, &[b"http/1.1"]).await;
    assert_eq!(peer_cert(&tls), first.der);
    let mut open = SseStream::open_over(
        HttpReader::over(tls),
        "/feed/c",
        &[("device", "long-lived")],
    )
    .await;
    assert_eq!(open.status, 200);
    // The renewal lands where the server reads its files.
    let second = ca.issue("second");
    std::fs::copy(&second.cert, &first.cert).unwrap();
    std::fs::copy(&second.key, &first.key).unwrap();
    let hup = |pid: u32| {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    hup(server.pid());
    eventually("the server reloaded its certificate", || async {
        server.log().contains("certificate reloaded")
    })
    .await;
    let fresh = ca.connect(server.addr, &[b"http/1.1"]).await;
    assert_eq!(
        peer_cert(&fresh),
        second.der,
        "a new handshake presents the new certificate"
    );
    drop(fresh);
    let r = ca
        .request(server.addr, "POST", "/push/c", &[], b"after the reload")
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(open.messages(1).await[0].data, "after the reload");
    // A broken renewal is refused and the certificate in use stays.
    std::fs::write(&first.cert, "not a certificate").unwrap();
    hup(server.pid());
    eventually("the bad certificate is refused", || async {
        server.log().contains("certificate not reloaded")
    })
    .await;
    let fresh = ca.connect(server.addr, &[b"http/1.1"]).await;
    assert_eq!(peer_cert(&fresh), second.der);
    drop(fresh);
    let r = ca
        .request(server.addr, "POST", "/push/c", &[], b"still")
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(open.messages(1).await[0].data, "still");
    server.stop();
    pere_tests::tls::remove(&ca.dir);
}

/// A certificate clients will refuse is named at start (it is served all
/// the same: the operator may be mid-renewal), and an expired one is not
/// taken by SIGHUP in place of a good one. Both once went by with "INFO
/// certificate reloaded", and every TLS client then failed its handshake.
#[tokio::test]
async fn an_expired_certificate_is_warned_of_and_not_reloaded() {
    let ca = TestCa::new("tls-expired");
    let old = ca.issue_expired("old");
    let server = server_process(&old, &[]).await;
    eventually("the start names the expired certificate", || async {
        let log = server.log();
        log.contains("WARN") && log.contains("expired on")
    })
    .await;
    server.stop();

    let good = ca.issue("good");
    let server = server_process(&good, &[]).await;
    assert!(!server.log().contains("expired on"), "{}", server.log());
    std::fs::copy(&old.cert, &good.cert).unwrap();
    std::fs::copy(&old.key, &good.key).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    eventually("the expired certificate is refused", || async {
        let log = server.log();
        log.contains("certificate not reloaded") && log.contains("expired on")
    })
    .await;
    let fresh = ca.connect(server.addr, &[b"http/1.1"]).await;
    assert_eq!(peer_cert(&fresh), good.der, "the good certificate stays");
    drop(fresh);
    server.stop();
    pere_tests::tls::remove(&ca.dir);
}

/// A certificate that starts a few minutes ahead of the server's clock (a
/// CA whose clock runs ahead) is taken on SIGHUP, with a warning; one that
/// starts hours ahead is not.
#[tokio::test]
async fn a_certificate_starting_soon_is_reloaded_and_one_starting_later_is_not() {
    let ca = TestCa::new("tls-notyet");
    let good = ca.issue("good");
    let server = server_process(&good, &[]).await;
    let now = time::OffsetDateTime::now_utc();
    let soon = ca.issue_with("soon", |p| p.not_before = now + time::Duration::minutes(10));
    let later = ca.issue_with("later", |p| p.not_before = now + time::Duration::hours(3));
    let hup = || {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &server.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    std::fs::copy(&later.cert, &good.cert).unwrap();
    std::fs::copy(&later.key, &good.key).unwrap();
    hup();
    eventually("the certificate starting later is refused", || async {
        server.log().contains("certificate not reloaded")
    })
    .await;
    std::fs::copy(&soon.cert, &good.cert).unwrap();
    std::fs::copy(&soon.key, &good.key).unwrap();
    hup();
    eventually(
        "the certificate starting soon is taken, with a warning",
        || async {
            let log = server.log();
            log.contains("certificate reloaded") && log.contains("by this machine's clock")
        },
    )
    .await;
    // (A client with this machine's clock refuses it for ten minutes.)
    server.stop();
    pere_tests::tls::remove(&ca.dir);
}

/// Proportional set size of a process, in KiB.
fn pss_kib(pid: u32) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("Pss in smaps_rollup")
}

/// The memory an idle TLS stream costs the server (README, "Production"):
/// `IDLE_TLS_STREAMS` (default 2,000) streams over HTTP/1.1 and TLS, the
/// server's PSS before and after.
/// Run it alone for a figure:
/// `cargo test -p pere-tests --test e2e tls::idle_tls -- --nocapture` (the
/// README's figure, from a debug build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tls_streams_cost_little_memory() {
    let _heavy = pere_tests::heavy().await;
    let n: usize = std::env::var("IDLE_TLS_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let ca = TestCa::new("tls-idle");
    let issued = ca.issue("server");
    let server = server_process(
        &issued,
        &[
            "--max-streams",
            "100000",
            "--max-streams-per-device",
            "100000",
        ],
    )
    .await;
    let config = ca.client_config(&[b"http/1.1"]);
    // Warm up: the first streams allocate what every later one shares.
    let mut streams = Vec::with_capacity(n);
    let open = |i: usize| {
        let config = config.clone();
        let addr = server.addr;
        async move {
            let tls = pere_tests::tls::connect(addr, config).await;
            let mut s = SseStream::open_over(
                HttpReader::over(tls),
                "/feed/idle",
                &[("device", &format!("idle-{i}"))],
            )
            .await;
            assert_eq!(s.status, 200);
            assert_eq!(s.next_event().await.unwrap().event, "pere.hello");
            s
        }
    };
    for i in 0..50 {
        streams.push(open(i).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = pss_kib(server.pid());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 50..n + 50 {
        tasks.spawn(open(i));
        if tasks.len() >= 64 {
            streams.push(tasks.join_next().await.unwrap().unwrap());
        }
    }
    while let Some(s) = tasks.join_next().await {
        streams.push(s.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = pss_kib(server.pid());
    let per_stream = (after.saturating_sub(before)) as f64 / n as f64;
    eprintln!(
        "{n} idle TLS streams (HTTP/1.1) opened in {:?}: PSS {before} KiB -> {after} KiB, {per_stream:.1} KiB per stream",
        started.elapsed()
    );
    // A generous bound: it catches a buffer kept per stream by mistake
    // (rustls' and hyper's together are ~40 KiB when they are).
    assert!(per_stream < 48.0, "{per_stream:.1} KiB per idle TLS stream");
    drop(streams);
    server.stop();
    pere_tests::tls::remove(&ca.dir);
}
