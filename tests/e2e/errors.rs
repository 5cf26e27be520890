//! Errors (docs/PROTOCOL.md §8): every one is JSON `{"error","code"}` with the right
//! status, and the server keeps serving afterwards.

use pere_tests::raw::read_to_close;
use pere_tests::{Connection, HttpReader, Response, TestServer, raw_request, send_raw};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A publish and a subscribe still work: bad input hurt nothing.
async fn still_serving(server: &TestServer) {
    let mut s = server.subscribe("after.errors", "survivor").await;
    let id = server.publish("after.errors", "still here").await;
    let e = s.next_message().await.expect("the event");
    assert_eq!(
        (e.id.as_str(), e.data.as_str()),
        (id.as_str(), "still here")
    );
}

/// Asserts a JSON error and that its content type says JSON.
fn assert_json_error(r: &Response, status: u16, code: &str) {
    r.assert_error(status, code);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    let keys: Vec<String> = r.json().as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["error", "code"], "{}", r.text());
}

const BAD_CHANNELS: &[(&str, &str)] = &[
    ("a%20b", "a space"),
    ("a%2Fb", "a slash"),
    ("%00", "a NUL"),
    ("..%2F..", "a path trick"),
    ("a%0Ab", "a newline"),
    ("caf%C3%A9", "non-ASCII"),
    ("a*", "a star in a publish"),
];

#[tokio::test]
async fn bad_channel_names_are_400_everywhere() {
    let server = TestServer::start().await;
    let long = "c".repeat(201);
    let mut channels: Vec<(String, &str)> = BAD_CHANNELS
        .iter()
        .map(|(c, why)| (c.to_string(), *why))
        .collect();
    channels.push((long, "201 bytes"));
    for (channel, why) in &channels {
        let r = server.post(&format!("/push/{channel}"), &[], b"x").await;
        assert_json_error(&r, 400, "invalid_channel");
        let r = server
            .feedback(channel, &[("device", "d"), ("Last-Event-ID", "1")], b"")
            .await;
        assert_eq!(r.status, 400, "feedback, {why}: {}", r.text());
        if *why != "a star in a publish" {
            let s = server.stream(&format!("/feed/{channel}"), &[]).await;
            assert_eq!(s.status, 400, "feed, {why}: {}", s.text());
            let r = server.get(&format!("/receipts/{channel}/1")).await;
            assert_json_error(&r, 400, "invalid_channel");
            let r = server.get(&format!("/admin/events/{channel}")).await;
            assert_json_error(&r, 400, "invalid_channel");
            let r = server.get(&format!("/admin/devices/{channel}")).await;
            assert_json_error(&r, 400, "invalid_channel");
        }
    }
    let r = server.post("/push/", &[], b"x").await;
    assert_json_error(&r, 400, "invalid_channel");
    let s = server.stream("/feed/", &[]).await;
    assert_eq!(s.status, 400, "an empty channel: {}", s.text());
    let s = server.stream("/feed?channel=", &[]).await;
    assert_eq!(s.status, 400, "an empty channel: {}", s.text());
    let s = server.stream("/feed?channel=a%20b", &[]).await;
    assert_eq!(s.status, 400);
    let s = server.stream("/feed?channel=ok&channel=a**", &[]).await;
    assert_eq!(s.status, 400, "one bad channel refuses the stream");
    let s = server.stream("/feed/a.**.b", &[]).await;
    assert_eq!(s.status, 400, "`**` only last");
    // 200 bytes is the longest name.
    let max = "c".repeat(200);
    let r = server.post(&format!("/push/{max}"), &[], b"x").await;
    assert_eq!(r.status, 201, "{}", r.text());
    still_serving(&server).await;
}

#[tokio::test]
async fn bad_devices_are_400_everywhere() {
    let server = TestServer::start().await;
    let long = "d".repeat(129);
    for device in ["a b", "a/b", "", "é", long.as_str(), "a,b"] {
        let r = server.post("/push/c", &[("device", device)], b"x").await;
        assert_eq!(r.status, 400, "publish as {device:?}: {}", r.text());
        assert_eq!(r.json()["code"], "invalid_device", "{}", r.text());
        let s = server.stream("/feed/c", &[("device", device)]).await;
        assert_eq!(s.status, 400, "feed as {device:?}: {}", s.text());
        let r = server
            .feedback("c", &[("device", device), ("Last-Event-ID", "1")], b"")
            .await;
        assert_eq!(r.status, 400, "feedback as {device:?}: {}", r.text());
    }
    let s = server.stream("/feed/c?device=a%20b", &[]).await;
    assert_eq!(s.status, 400);
    let max = "d".repeat(128);
    let mut s = server.stream("/feed/c", &[("device", &max)]).await;
    assert_eq!(s.status, 200);
    s.next_event().await;
    let r = server
        .request("DELETE", "/admin/devices/c/a%20b", &[], b"")
        .await;
    assert_json_error(&r, 400, "invalid_device");
    still_serving(&server).await;
}

#[tokio::test]
async fn an_empty_publish_is_400() {
    let server = TestServer::start().await;
    let r = server.post("/push/c", &[], b"").await;
    assert_json_error(&r, 400, "empty_body");
    still_serving(&server).await;
}

#[tokio::test]
async fn an_oversized_publish_is_413() {
    let server = TestServer::start().await;
    let body = vec![b'x'; pere_core::DEFAULT_MAX_PAYLOAD + 1];
    let r = server.post("/push/c", &[], &body).await;
    assert_json_error(&r, 413, "payload_too_large");
    // Issue 18.9: the sentence names the setting behind the limit.
    assert!(r.text().contains("--max-payload"), "{}", r.text());
    still_serving(&server).await;
}

#[tokio::test]
async fn a_huge_content_length_is_413_without_waiting_for_the_body() {
    let server = TestServer::start().await;
    // The client announces a gigabyte and sends a few bytes: the server
    // answers from the header alone.
    let r = send_raw(
        server.addr,
        &raw_request(
            "POST",
            "/push/c",
            &[("Content-Length", "1000000000")],
            b"tiny",
        ),
    )
    .await;
    assert_json_error(&r, 413, "payload_too_large");
    still_serving(&server).await;
}

#[tokio::test]
async fn a_content_length_shorter_than_the_body_publishes_only_what_it_announced() {
    let server = TestServer::start().await;
    // HTTP frames the body by Content-Length: the rest is not this body (it
    // is read as a next request, and refused as garbage).
    let mut bytes = b"POST /push/c HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n".to_vec();
    bytes.extend(vec![b'z'; 100 * 1024]);
    let r = send_raw(server.addr, &bytes).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let events = server.admin().events("c").await;
    assert_eq!(
        events,
        serde_json::json!([{
            "id": r.json()["id"],
            "time": events[0]["time"],
            "event": "message",
            "device": null,
            "data": "zzzzzzzzzz",
        }])
    );
    still_serving(&server).await;
}

#[tokio::test]
async fn an_oversized_chunked_publish_is_413() {
    let server = TestServer::start().await;
    // No Content-Length: the size is only known while reading.
    let mut bytes =
        b"POST /push/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    let chunk = vec![b'y'; 16 * 1024];
    for _ in 0..5 {
        bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        bytes.extend_from_slice(&chunk);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    let r = send_raw(server.addr, &bytes).await;
    assert_json_error(&r, 413, "payload_too_large");
    assert!(
        server.hub.store().is_empty(&"c".parse().unwrap()),
        "nothing was stored"
    );
    still_serving(&server).await;
}

#[tokio::test]
async fn a_chunked_publish_within_the_limit_is_accepted() {
    let server = TestServer::start().await;
    let mut s = server.subscribe("c", "d").await;
    let bytes = b"POST /push/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let r = send_raw(server.addr, bytes).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(s.messages(1).await[0].data, "hello world");
}

#[tokio::test]
async fn a_413_on_a_kept_alive_connection_leaves_the_server_usable() {
    let server = TestServer::start().await;
    let mut conn = Connection::open(server.addr).await;
    let r = conn
        .request(
            "POST",
            "/push/c",
            &[],
            &vec![b'x'; pere_core::DEFAULT_MAX_PAYLOAD + 10],
        )
        .await;
    assert_json_error(&r, 413, "payload_too_large");
    still_serving(&server).await;
}

#[tokio::test]
async fn a_non_utf8_publish_is_400() {
    let server = TestServer::start().await;
    let r = server.post("/push/c", &[], b"ok \xff\xfe bad").await;
    assert_json_error(&r, 400, "invalid_utf8");
    let r = server.post("/push/c", &[], b"\xc3").await;
    assert_json_error(&r, 400, "invalid_utf8");
    still_serving(&server).await;
}

#[tokio::test]
async fn a_non_utf8_query_is_400() {
    let server = TestServer::start().await;
    let r = server.post("/push/c?event=%FF", &[], b"x").await;
    assert_json_error(&r, 400, "invalid_utf8");
    let s = server.stream("/feed/c?device=%C3", &[]).await;
    assert_eq!(s.status, 400, "{}", s.text());
    let r = server.get("/admin/events/c?after=%FE").await;
    assert_json_error(&r, 400, "invalid_utf8");
    // Raw bytes above 0x7F in the query string are refused by hyper's
    // request-line parser before any handler runs: a 400 with an empty
    // body, which hyper does not let the server replace.
    let mut bytes = b"POST /push/c?event=\xff\xfe HTTP/1.1\r\n".to_vec();
    bytes.extend_from_slice(b"Host: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx");
    let r = send_raw(server.addr, &bytes).await;
    assert_eq!(r.status, 400, "{}", r.text());
    // Raw UTF-8 in the path reaches the router and is refused as a name.
    let mut bytes = b"GET /feed/caf\xc3\xa9 HTTP/1.1\r\n".to_vec();
    bytes.extend_from_slice(b"Host: x\r\nConnection: close\r\n\r\n");
    let r = send_raw(server.addr, &bytes).await;
    assert_json_error(&r, 400, "invalid_channel");
    still_serving(&server).await;
}

#[tokio::test]
async fn a_malformed_percent_escape_is_400() {
    let server = TestServer::start().await;
    for path in ["/push/%zz", "/push/c%", "/push/c?event=%4"] {
        let r = server.post(path, &[], b"x").await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert!(r.json()["code"].is_string());
    }
    still_serving(&server).await;
}

#[tokio::test]
async fn malformed_receipts_are_400() {
    let server = TestServer::start().await;
    let json = ("Content-Type", "application/json");
    for (headers, body) in [
        (vec![json, ("device", "d")], &b"{"[..]),
        (vec![json, ("device", "d")], b"null"),
        (vec![json, ("device", "d")], b"\"1\""),
        (vec![("device", "d")], b"{\"id\":[1]}"),
        (vec![("device", "d"), ("Last-Event-ID", "x1")], b""),
        (vec![("device", "d"), ("last_event_id", "1 2")], b""),
        (vec![("device", "d")], b"last_event_id=abc"),
        (vec![("device", "d"), ("Last-Event-ID", "1")], b"\xff"),
        (vec![("Last-Event-ID", "1")], b""),
    ] {
        let r = server.feedback("c", &headers, body).await;
        assert_eq!(r.status, 400, "{headers:?} {body:?}: {}", r.text());
        assert!(r.json()["code"].is_string());
        assert!(r.json()["error"].is_string());
    }
    still_serving(&server).await;
}

#[tokio::test]
async fn an_oversized_receipt_body_is_413() {
    let server = TestServer::start().await;
    let body = vec![b' '; 2 * 1024 * 1024];
    let r = server
        .feedback("c", &[("device", "d"), ("Last-Event-ID", "1")], &body)
        .await;
    assert_json_error(&r, 413, "payload_too_large");
    still_serving(&server).await;
}

#[tokio::test]
async fn unknown_events_are_404() {
    let server = TestServer::start().await;
    let r = server
        .feedback("c", &[("device", "d"), ("Last-Event-ID", "77")], b"")
        .await;
    assert_json_error(&r, 404, "unknown_event");
    let r = server.get("/receipts/c/77").await;
    assert_json_error(&r, 404, "unknown_event");
    still_serving(&server).await;
}

#[tokio::test]
async fn wrong_methods_are_405_with_allow() {
    let server = TestServer::start().await;
    for (method, path, allow) in [
        ("GET", "/push/c", "POST"),
        ("PUT", "/push/c", "POST"),
        ("POST", "/feed/c", "GET"),
        ("DELETE", "/feed/c", "GET"),
        ("GET", "/feedback/c", "POST"),
        ("PATCH", "/feedback/c", "POST"),
        ("POST", "/receipts/c/1", "GET"),
        ("DELETE", "/admin/connections", "GET"),
        ("POST", "/admin/devices/c", "GET"),
        ("PUT", "/admin/devices/c/d", "DELETE"),
        ("POST", "/healthz", "GET"),
        ("POST", "/", "GET"),
    ] {
        let r = server.request(method, path, &[], b"").await;
        assert_json_error(&r, 405, "method_not_allowed");
        let header = r
            .header("allow")
            .unwrap_or_else(|| panic!("{method} {path}: Allow"));
        assert!(header.contains(allow), "{method} {path}: Allow {header}");
        assert!(!header.contains(method), "{method} {path}: Allow {header}");
    }
    still_serving(&server).await;
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let server = TestServer::start().await;
    for path in [
        "/nope",
        "/push",
        "/push/a/b",
        "/feed/c/",
        "/admin",
        "/admin/x",
        "/receipts/c/1/2",
        "//",
        "/subscriber.htm",
        "/%2E%2E/etc/passwd",
    ] {
        let r = server.get(path).await;
        assert_json_error(&r, 404, "not_found");
    }
    still_serving(&server).await;
}

#[tokio::test]
async fn bad_parameters_are_400() {
    let server = TestServer::start().await;
    let r = server.post("/push/c?wait=forever", &[], b"x").await;
    assert_json_error(&r, 400, "invalid_parameter");
    let r = server.get("/admin/events/c?limit=many").await;
    assert_json_error(&r, 400, "invalid_parameter");
    let s = server.stream("/feed/c?replay=twice", &[]).await;
    assert_eq!(s.status, 400);
    let r = server
        .post("/push/c", &[("Idempotency-Key", "")], b"x")
        .await;
    assert_eq!(r.status, 400, "an empty key: {}", r.text());
    still_serving(&server).await;
}

#[tokio::test]
async fn garbage_and_half_requests_do_not_hurt_the_server() {
    let server = TestServer::start().await;
    // Not HTTP at all.
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(b"\x00\x01\x02 hello\r\n\r\n").await.unwrap();
    let mut reader = HttpReader::new(raw);
    let (status, _) = reader.head().await;
    assert_eq!(status, 400);
    // A request cut off in its body, then the client leaves.
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"POST /push/c HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly part")
        .await
        .unwrap();
    drop(half);
    still_serving(&server).await;
    let events = server.admin().events("c").await;
    assert_eq!(events, serde_json::json!([]), "no half-written event");
}

#[tokio::test]
async fn too_many_channels_on_one_stream_is_400() {
    let server = TestServer::start().await;
    let query: Vec<String> = (0..=pere_core::DEFAULT_MAX_CHANNELS_PER_STREAM)
        .map(|i| format!("channel=c{i}"))
        .collect();
    let s = server
        .stream(&format!("/feed?{}", query.join("&")), &[])
        .await;
    assert_eq!(s.status, 400, "{}", s.text());
    let body: serde_json::Value = serde_json::from_slice(&s.raw).unwrap();
    assert_eq!(body["code"], "too_many_channels");
    still_serving(&server).await;
}

#[tokio::test]
async fn options_star_is_answered() {
    let server = TestServer::start().await;
    let r = server.request("OPTIONS", "*", &[], b"").await;
    assert!(r.status == 200 || r.status == 204, "{}", r.status);
    assert!(r.header("access-control-allow-methods").is_some());
    still_serving(&server).await;
}

/// The HTTP/2 client preface followed by an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Whether `bytes` start with an HTTP/2 SETTINGS frame (type 4).
fn is_h2_settings(bytes: &[u8]) -> bool {
    bytes.len() >= 9 && bytes[3] == 4
}

#[tokio::test]
async fn an_http2_preface_after_an_http1_answer_is_refused() {
    use tokio::io::AsyncReadExt;
    let server = TestServer::start().await;
    // On a fresh connection the preface opens HTTP/2 (prior knowledge):
    // the server answers with its SETTINGS frame.
    let mut fresh = TcpStream::connect(server.addr).await.unwrap();
    fresh.write_all(H2_PREFACE).await.unwrap();
    let mut first = [0u8; 9];
    fresh.read_exact(&mut first).await.unwrap();
    assert!(is_h2_settings(&first), "{first:?}");
    drop(fresh);
    // After an HTTP/1.1 exchange (here one answered before hyper sees the
    // connection: an event stream's error) it is not a protocol switch.
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(b"GET /feed/bad! HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let body_len = loop {
        let mut buf = [0u8; 1024];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the answer: {got:?}");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .expect("a content length")
                .trim()
                .parse()
                .unwrap();
            if got.len() >= end + 4 + len {
                assert_eq!(got.len(), end + 4 + len, "nothing after the answer");
                break len;
            }
        }
    };
    assert!(got.starts_with(b"HTTP/1.1 400 "), "{got:?}");
    assert!(body_len > 0);
    conn.write_all(H2_PREFACE).await.unwrap();
    let after = read_to_close(&mut conn).await;
    assert!(!is_h2_settings(&after), "switched to HTTP/2: {after:?}");
    assert!(
        after.is_empty() || after.starts_with(b"HTTP/1.1 "),
        "{}",
        String::from_utf8_lossy(&after)
    );
    still_serving(&server).await;
}

/// Issue 18.9: `/push/orders/eu` was a bare 404; it now says how channel
/// names are written.
#[tokio::test]
async fn a_channel_written_with_slashes_gets_a_404_that_says_to_use_dots() {
    let server = TestServer::start().await;
    let r = server.post("/push/orders/eu", &[], b"x").await;
    assert_json_error(&r, 404, "not_found");
    let sentence = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        sentence.contains("separated by `.`") && sentence.contains("`/push/orders.eu`"),
        "{sentence}"
    );
    let r = server.get("/feed/orders/eu").await;
    assert!(r.text().contains("`/feed/orders.eu`"), "{}", r.text());
}

/// Issue 18.9: `tiemout=5` was silently ignored. API endpoints refuse
/// parameters they do not know; event streams do not, because EventSource
/// wrappers and proxies add cache busters (and PERE's page and scripts
/// send `device`, `lastEventId`, `replay`, `access_token`, `channel`).
#[tokio::test]
async fn unknown_query_parameters_are_400_on_api_endpoints_but_not_on_streams() {
    let server = TestServer::start().await;
    let r = server.post("/push/c?wait=acked&tiemout=5", &[], b"x").await;
    assert_json_error(&r, 400, "unknown_parameter");
    assert!(r.text().contains("did you mean `timeout`?"), "{}", r.text());
    assert_eq!(
        pere_tests::metric(&server.metrics().await, "pere_events_published_total"),
        Some(0.0),
        "nothing was published"
    );
    for path in [
        "/admin/channels?verbose=1",
        "/admin/events/c?after=0&limt=5",
        "/receipts/c/1?x=y",
    ] {
        assert_json_error(&server.get(path).await, 400, "unknown_parameter");
    }
    let r = server
        .post("/feedback/c?status=ok", &[("device", "d")], b"")
        .await;
    assert_json_error(&r, 400, "unknown_parameter");
    // jQuery's `cache: false` adds `_=<time>` to GETs.
    assert_eq!(
        server.get("/admin/channels?_=1700000000000").await.status,
        200
    );
    // Streams take any parameter.
    let mut s = server
        .stream("/feed/c?device=d&_=1700000000000&nocache=x", &[])
        .await;
    assert_eq!(s.status, 200, "{}", s.text());
    assert_eq!(s.next_event().await.unwrap().event, "pere.hello");
    let r = server.stream("/receipts/c?t=123", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    still_serving(&server).await;
}

/// A base64 token sent raw in `?access_token=`: its `+` reads as a space,
/// and "the token is unknown" alone sent a new user looking for a typo.
/// The `401` says what happened; percent-encoded, the token works.
#[tokio::test]
async fn a_token_whose_plus_became_a_space_in_the_query_is_told_so() {
    const TOKEN: &str = "q3Vx9kz+P0m4/Wc1bYt7LhR2sN8=";
    let dir = pere_tests::temp_dir("plus-token");
    let file = dir.join("auth.json");
    let json = serde_json::json!({ "tokens": { TOKEN: { "subject": "ops", "admin": true } } });
    std::fs::write(&file, json.to_string()).unwrap();
    let server = pere_tests::ServerProcess::start(&["--auth", file.to_str().unwrap()]).await;
    let raw = server
        .request(
            "GET",
            &format!("/admin/channels?access_token={TOKEN}"),
            &[],
            b"",
        )
        .await;
    raw.assert_error(401, "unauthorized");
    assert!(raw.text().contains("percent-encode"), "{}", raw.text());
    assert!(!raw.text().contains("q3Vx9kz"), "never quotes the token");
    let encoded = TOKEN
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let ok = server
        .request(
            "GET",
            &format!("/admin/channels?access_token={encoded}"),
            &[],
            b"",
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
}
