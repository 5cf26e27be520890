//! What counts as written to a device (docs/PROTOCOL.md §3.7, §5.4): the
//! bytes the socket took, not what the server had ready for it. A device
//! that does not acknowledge and resumes from its cursor must get again
//! whatever its last connection never carried.

use std::collections::BTreeSet;
use std::time::Duration;

use pere_tests::raw::small_buffer_connect;
use pere_tests::{SseStream, TestServer, eventually};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A device stops reading with a backlog: the send timeout cuts it while
/// the server holds a run of events it had ready as one chunk, only part
/// of which the socket took. The device then reads what its connection
/// still carries, and comes back by its cursor: it gets every event it
/// did not read. (The run was counted written when handed out: up to
/// 64 KiB of events were skipped by the resume, and shown delivered.)
#[tokio::test]
async fn a_device_cut_by_the_send_timeout_resumes_without_a_hole() {
    let send_timeout = Duration::from_millis(500);
    let server = TestServer::builder()
        .send_timeout(send_timeout)
        .history(100_000)
        .start()
        .await;
    let request = b"GET /feed/c HTTP/1.1\r\nHost: x\r\ndevice: d\r\n\r\n";
    let socket = small_buffer_connect(server.addr).await;
    let mut old = SseStream::open_on(socket, request).await;
    assert_eq!(old.status, 200);
    old.hello().await;
    let payload = "x".repeat(1000);
    let mut published = Vec::new();
    for _ in 0..800 {
        let r = server.post("/push/c", &[], payload.as_bytes()).await;
        assert_eq!(r.status, 201, "{}", r.text());
        published.push(r.json()["id"].as_str().unwrap().to_string());
    }
    // Some reading, then none: the server refills with a run of events.
    let mut got = BTreeSet::new();
    while old.raw.len() < 200_000 {
        let Some(e) = old.next_message().await else {
            break;
        };
        got.insert(e.id.clone());
    }
    tokio::time::sleep(send_timeout * 4).await;
    // What the connection still carries, to its end.
    for e in old.until_end().await {
        if !e.event.starts_with("pere.") {
            got.insert(e.id);
        }
    }
    assert!(
        got.len() < published.len(),
        "the stream was not cut (got all {})",
        got.len()
    );
    let mut back = SseStream::open(server.addr, "/feed/c", &[("device", "d")]).await;
    let hello = back.hello().await;
    let last = published.last().unwrap().clone();
    while !got.contains(&last) {
        let e = back
            .next_message()
            .await
            .unwrap_or_else(|| panic!("the resume ended; hello {hello}"));
        got.insert(e.id);
    }
    let missing: Vec<&String> = published.iter().filter(|id| !got.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} events never arrived, from {:?}; hello {hello}",
        missing.len(),
        missing.first()
    );
}

/// A client that sent another request behind its `GET /feed` (never
/// answered: the connection ends with the stream) and then closed is seen
/// gone at once: it goes offline, and events published after are not
/// written into its closed socket and counted delivered. (Reads stopped at
/// the first byte after the head, so only a failed write, up to a
/// keepalive later, told.)
#[tokio::test]
async fn a_client_that_pipelined_behind_its_stream_and_closed_is_seen_gone() {
    let server = TestServer::builder()
        .keepalive(Duration::from_secs(60))
        .start()
        .await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    socket
        .write_all(
            b"GET /feed/c HTTP/1.1\r\nHost: x\r\ndevice: p\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    pere_tests::raw::read_until(&mut socket, &mut seen, "event: pere.hello").await;
    drop(socket);
    eventually("the device is offline", || async {
        server.admin().devices("c").await["p"]["online"] == false
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(server.publish("c", &format!("e{i}")).await);
    }
    let mut back = SseStream::open(server.addr, "/feed/c", &[("device", "p")]).await;
    let got: Vec<String> = back.messages(3).await.into_iter().map(|e| e.id).collect();
    assert_eq!(got, ids);
}
