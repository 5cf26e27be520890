//! Subscribing: `GET /feed/:channel` and `GET /feed?channel=…` (docs/PROTOCOL.md §3).

use std::time::Duration;

use pere_http::sse::Item;
use pere_tests::raw::read_until;
use pere_tests::{Connection, SseStream, TestServer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn a_stream_has_the_sse_headers_and_cors() {
    let server = TestServer::start().await;
    let s = server
        .stream("/feed/c", &[("Origin", "http://example.com")])
        .await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    assert_eq!(s.header("cache-control"), Some("no-cache"));
    assert_eq!(s.header("x-accel-buffering"), Some("no"));
    assert_eq!(s.header("access-control-allow-origin"), Some("*"));
    assert!(s.header("content-length").is_none(), "{:?}", s.headers);
}

#[tokio::test]
async fn the_first_frame_is_retry_without_a_space_then_hello() {
    let server = TestServer::start().await;
    let mut s = server.stream("/feed/c", &[("device", "d1")]).await;
    assert!(matches!(s.next_item().await, Some(Item::Retry(3000))));
    assert!(
        s.raw.starts_with(b"retry:3000\n\n"),
        "first frame: {:?}",
        s.text()
    );
    let hello = s.hello().await;
    assert_eq!(
        hello,
        serde_json::json!({
            "device": "d1",
            "channels": ["c"],
            "resumed_from": null,
            "replayed": 0,
        })
    );
}

#[tokio::test]
async fn the_retry_frame_follows_the_configured_value() {
    let server = TestServer::builder()
        .retry(Duration::from_millis(1500))
        .start()
        .await;
    let mut s = server.stream("/feed/c", &[]).await;
    s.next_event().await;
    assert!(s.raw.starts_with(b"retry:1500\n\n"), "{:?}", s.text());
}

#[tokio::test]
async fn control_events_carry_no_id_and_never_move_last_event_id() {
    let server = TestServer::builder().history(2).start().await;
    let ids: Vec<String> = publish_n(&server, "c", 4).await;
    // Resuming from the first id makes the server send a `pere.gap` too.
    let mut s = server
        .stream("/feed/c", &[("Last-Event-ID", &ids[0])])
        .await;
    let hello = s.next_event().await.unwrap();
    assert_eq!(hello.event, "pere.hello");
    assert_eq!(hello.id, "", "hello leaves lastEventId alone");
    let gap = s.next_event().await.unwrap();
    assert_eq!(gap.event, "pere.gap");
    assert_eq!(gap.id, "", "gap leaves lastEventId alone");
    let first = s.next_message().await.unwrap();
    assert_eq!(first.id, ids[2]);
    let text = s.text();
    let opening = &text[..text.find("data: x").unwrap()];
    for block in opening.split("\n\n").filter(|b| b.contains("event: pere.")) {
        assert!(
            !block.lines().any(|l| l.starts_with("id")),
            "a control event has an id line: {block:?}"
        );
    }
}

/// Publishes `n` events `x` on `channel` and returns their ids.
async fn publish_n(server: &TestServer, channel: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(server.publish(channel, "x").await);
    }
    ids
}

#[tokio::test]
async fn events_are_framed_with_lf_only_and_one_data_line_per_payload_line() {
    let server = TestServer::start().await;
    let mut s = server.subscribe("c", "d").await;
    let id = server
        .publish("c", "line 1\nline 2\r\nline 3\rline 4")
        .await;
    let e = s.next_message().await.unwrap();
    assert_eq!(e.data, "line 1\nline 2\nline 3\nline 4");
    assert_eq!(e.id, id);
    let expected = format!("id: {id}\ndata: line 1\ndata: line 2\ndata: line 3\ndata: line 4\n\n");
    assert!(s.text().ends_with(&expected), "raw frame: {:?}", s.text());
    assert!(!s.raw.contains(&b'\r'), "no CR anywhere: {:?}", s.text());
}

#[tokio::test]
async fn a_payload_can_never_inject_fields_or_end_an_event_early() {
    let server = TestServer::start().await;
    let mut s = server.subscribe("c", "d").await;
    let payloads = [
        "a\n\ndata: forged",
        "b\rid: 999",
        "c\r\n\r\nevent: pere.hello\r\ndata: {}",
        "\n\nid: 1\n\n",
        "retry: 1\n:comment\nevent: x",
        "trailing newline\n",
        "\r",
        ": not a comment",
        "data:   spaces  ",
    ];
    let mut ids = Vec::new();
    for p in payloads {
        ids.push(server.publish("c", p).await);
    }
    let sentinel = server.publish("c", "end").await;
    let got = s.messages(payloads.len() + 1).await;
    for ((p, id), e) in payloads.iter().zip(&ids).zip(&got) {
        let expected = p.replace("\r\n", "\n").replace('\r', "\n");
        assert_eq!(e.data, expected, "payload {p:?} arrives whole");
        assert_eq!(&e.id, id, "payload {p:?} keeps its id");
        assert_eq!(e.event, "message", "payload {p:?} sets no type");
    }
    assert_eq!(got[payloads.len()].id, sentinel, "no extra event");
    assert!(!s.raw.contains(&b'\r'), "{:?}", s.text());
    // No retry was injected either: the only retry is the server's.
    assert_eq!(s.text().matches("\nretry").count(), 0, "{:?}", s.text());
}

#[tokio::test]
async fn the_stored_payload_keeps_its_carriage_returns() {
    let server = TestServer::start().await;
    server.publish("c", "a\r\nb\rc").await;
    let events = server.admin().events("c").await;
    assert_eq!(events[0]["data"], "a\r\nb\rc", "{events}");
}

#[tokio::test]
async fn twenty_subscribers_receive_every_event_in_order() {
    let server = TestServer::start().await;
    let mut streams = Vec::new();
    for i in 0..20 {
        streams.push(server.subscribe("fan", &format!("dev-{i}")).await);
    }
    let mut ids = Vec::new();
    for n in 0..10 {
        let r = server
            .post("/push/fan", &[], format!("{n}").as_bytes())
            .await;
        assert_eq!(r.json()["recipients"], 20);
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    for s in &mut streams {
        let got = s.messages(10).await;
        let got_ids: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(got_ids, ids);
        let got_data: Vec<&str> = got.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(got_data, ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
    }
}

#[tokio::test]
async fn reconnecting_with_last_event_id_replays_the_missed_events_then_live_without_gap_or_duplicate()
 {
    let server = TestServer::start().await;
    let mut s = server.subscribe("c", "d").await;
    for n in 1..=3 {
        server.publish("c", &n.to_string()).await;
    }
    let seen = s.messages(3).await;
    let last = seen[2].id.clone();
    drop(s);
    for n in 4..=6 {
        server.publish("c", &n.to_string()).await;
    }
    // Publish while the device reconnects: every event lands in the replay
    // or in the live part, exactly once.
    let addr = server.addr;
    let publisher = tokio::spawn(async move {
        for n in 7..=30 {
            let r =
                pere_tests::request(addr, "POST", "/push/c", &[], n.to_string().as_bytes()).await;
            assert_eq!(r.status, 201);
        }
    });
    let mut s = server
        .stream("/feed/c", &[("device", "d"), ("Last-Event-ID", &last)])
        .await;
    let hello = s.hello().await;
    assert_eq!(hello["resumed_from"], last.as_str());
    assert!(hello["replayed"].as_u64().unwrap() >= 3, "{hello}");
    let got = s.data(27).await;
    let expected: Vec<String> = (4..=30).map(|n| n.to_string()).collect();
    assert_eq!(got, expected);
    publisher.await.unwrap();
}

#[tokio::test]
async fn the_last_event_id_query_parameter_is_a_resume_point() {
    let server = TestServer::start().await;
    let ids = publish_n(&server, "c", 3).await;
    let mut s = server
        .stream(&format!("/feed/c?lastEventId={}", ids[0]), &[])
        .await;
    let hello = s.hello().await;
    assert_eq!(hello["resumed_from"], ids[0].as_str());
    assert_eq!(hello["replayed"], 2);
    let got: Vec<String> = s.ids(2).await;
    assert_eq!(got, ids[1..]);
}

#[tokio::test]
async fn the_last_event_id_header_wins_over_the_query_parameter() {
    let server = TestServer::start().await;
    let ids = publish_n(&server, "c", 3).await;
    let mut s = server
        .stream(
            &format!("/feed/c?lastEventId={}", ids[0]),
            &[("Last-Event-ID", &ids[1])],
        )
        .await;
    let hello = s.hello().await;
    assert_eq!(hello["resumed_from"], ids[1].as_str());
    assert_eq!(s.messages(1).await[0].id, ids[2]);
}

#[tokio::test]
async fn replay_all_sends_every_retained_event_first() {
    let server = TestServer::start().await;
    let ids = publish_n(&server, "c", 3).await;
    let mut s = server
        .stream("/feed/c?replay=all", &[("device", "d")])
        .await;
    let hello = s.hello().await;
    assert_eq!(hello["replayed"], 3);
    let live = server.publish("c", "live").await;
    let got: Vec<String> = s.ids(4).await;
    assert_eq!(got[..3], ids[..]);
    assert_eq!(got[3], live);
}

#[tokio::test]
async fn a_new_stream_without_resume_point_starts_now() {
    let server = TestServer::start().await;
    server.publish("c", "old").await;
    let mut s = server.stream("/feed/c", &[("device", "new")]).await;
    let hello = s.hello().await;
    assert_eq!(hello["replayed"], 0);
    server.publish("c", "new").await;
    assert_eq!(s.data(1).await, ["new"]);
}

#[tokio::test]
async fn a_member_reconnecting_without_last_event_id_resumes_from_its_cursor() {
    let server = TestServer::start().await;
    let mut s = server.subscribe("c", "phone").await;
    server.publish("c", "seen").await;
    assert_eq!(s.data(1).await, ["seen"]);
    drop(s);
    server.wait_offline("c", "phone").await;
    server.publish("c", "while offline 1").await;
    server.publish("c", "while offline 2").await;
    let mut s = server.stream("/feed/c", &[("device", "phone")]).await;
    let hello = s.hello().await;
    assert_eq!(hello["replayed"], 2, "{hello}");
    server.publish("c", "live").await;
    assert_eq!(
        s.data(3).await,
        ["while offline 1", "while offline 2", "live"]
    );
}

#[tokio::test]
async fn a_gap_is_announced_when_the_resume_point_was_pruned() {
    let server = TestServer::builder().history(3).start().await;
    let ids = publish_n(&server, "c", 6).await;
    let mut s = server
        .stream("/feed/c", &[("device", "d"), ("Last-Event-ID", &ids[0])])
        .await;
    let hello = s.hello().await;
    assert_eq!(hello["replayed"], 3);
    let gap = s.control("pere.gap").await;
    assert_eq!(
        gap,
        serde_json::json!({ "from": ids[0], "oldest": ids[3] }),
        "the gap names the resume point and the oldest retained event"
    );
    let got: Vec<String> = s.ids(3).await;
    assert_eq!(got, ids[3..]);
    // Resuming from a retained event is no gap.
    let mut s = server
        .stream("/feed/c", &[("Last-Event-ID", &ids[3])])
        .await;
    s.hello().await;
    let next = s.next_event().await.unwrap();
    assert_eq!(next.event, "message", "no gap: {next:?}");
    assert_eq!(next.id, ids[4]);
}

#[tokio::test]
async fn star_matches_one_segment_and_double_star_one_or_more() {
    let server = TestServer::start().await;
    let mut one = server.subscribe("orders.*", "one").await;
    let mut many = server.subscribe("orders.**", "many").await;
    server.publish("orders.eu", "eu").await;
    server.publish("orders.eu.paris", "paris").await;
    server.publish("orders", "bare").await;
    server.publish("invoices.eu", "other").await;
    server.publish("orders.us", "us").await;
    assert_eq!(one.data(2).await, ["eu", "us"]);
    assert_eq!(many.data(3).await, ["eu", "paris", "us"]);
}

#[tokio::test]
async fn an_event_matching_several_subscriptions_of_a_stream_arrives_once() {
    let server = TestServer::start().await;
    let mut s = server
        .stream(
            "/feed?channel=orders.eu&channel=orders.*&channel=orders.**&channel=news",
            &[("device", "d")],
        )
        .await;
    let hello = s.hello().await;
    assert_eq!(
        hello["channels"],
        serde_json::json!(["orders.eu", "orders.*", "orders.**", "news"])
    );
    let r = server.post("/push/orders.eu", &[], b"once").await;
    assert_eq!(r.json()["recipients"], 1, "one device, counted once");
    server.publish("news", "news").await;
    server.publish("orders.eu.paris", "deep").await;
    assert_eq!(s.data(3).await, ["once", "news", "deep"]);
}

#[tokio::test]
async fn a_path_channel_and_query_channels_combine() {
    let server = TestServer::start().await;
    let mut s = server.stream("/feed/a?channel=b", &[]).await;
    let hello = s.hello().await;
    assert_eq!(hello["channels"], serde_json::json!(["a", "b"]));
    server.publish("b", "from b").await;
    server.publish("a", "from a").await;
    assert_eq!(s.data(2).await, ["from b", "from a"]);
    // As jQuery, axios, PHP and Ruby's em-http encode a list.
    let mut s = server
        .stream("/feed?channel[]=c&channel%5B%5D=d", &[])
        .await;
    assert_eq!(s.hello().await["channels"], serde_json::json!(["c", "d"]));
}

#[tokio::test]
async fn a_feed_without_any_channel_is_400() {
    let server = TestServer::start().await;
    let r = server.get("/feed").await;
    r.assert_error(400, "missing_channel");
}

#[tokio::test]
async fn keepalive_comments_arrive_on_a_quiet_stream() {
    let server = TestServer::builder()
        .keepalive(Duration::from_millis(50))
        .start()
        .await;
    let mut s = server.stream("/feed/c", &[("device", "d")]).await;
    loop {
        match s.next_item().await.expect("the stream stays open") {
            Item::Comment(c) => {
                assert_eq!(c, "", "a keepalive is an empty comment");
                break;
            }
            Item::Event(e) => assert!(e.event.starts_with("pere."), "{e:?}"),
            _ => {}
        }
    }
    assert!(
        s.text().ends_with("\n\n:\n\n"),
        "keepalive frame: {:?}",
        s.text()
    );
    // The stream still carries events after keepalives.
    server.publish("c", "after").await;
    assert_eq!(s.data(1).await, ["after"]);
}

#[tokio::test]
async fn an_anonymous_stream_receives_events_but_is_in_no_audience() {
    let server = TestServer::start().await;
    let mut s = server.stream("/feed/c", &[]).await;
    let hello = s.hello().await;
    assert_eq!(hello["device"], serde_json::Value::Null);
    let r = server.post("/push/c", &[], b"x").await;
    assert_eq!(r.json()["recipients"], 0);
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(s.data(1).await, ["x"]);
    let receipts = server.receipts("c", &id).await;
    assert_eq!(receipts["recipients"], 0, "{receipts}");
    assert_eq!(receipts["devices"], serde_json::json!({}), "{receipts}");
    assert_eq!(server.admin().devices("c").await, serde_json::json!({}));
}

#[tokio::test]
async fn the_device_query_parameter_identifies_a_browser() {
    let server = TestServer::start().await;
    let mut s = server.stream("/feed/c?device=W0039", &[]).await;
    let hello = s.hello().await;
    assert_eq!(hello["device"], "W0039");
    let r = server.post("/push/c", &[], b"x").await;
    assert_eq!(r.json()["recipients"], 1);
}

#[tokio::test]
async fn the_device_header_wins_over_the_query_parameter() {
    let server = TestServer::start().await;
    let mut s = server
        .stream("/feed/c?device=from-query", &[("device", "from-header")])
        .await;
    let hello = s.hello().await;
    assert_eq!(hello["device"], "from-header");
}

#[tokio::test]
async fn no_accept_header_is_needed_and_any_accept_is_fine() {
    let server = TestServer::start().await;
    // raw_request sends no Accept unless asked to.
    let s = server.stream("/feed/c", &[]).await;
    assert_eq!(s.status, 200);
    let s = server
        .stream("/feed/c", &[("Accept", "application/json")])
        .await;
    assert_eq!(s.status, 200);
    let s = server
        .stream("/feed/c", &[("Accept", "text/event-stream")])
        .await;
    assert_eq!(s.status, 200);
}

#[tokio::test]
async fn several_requests_share_one_kept_alive_connection() {
    let server = TestServer::start().await;
    let mut conn = Connection::open(server.addr).await;
    let r = conn.request("GET", "/healthz", &[], b"").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let r = conn.request("POST", "/push/c", &[], b"one").await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let r = conn.request("POST", "/push/c", &[], b"two").await;
    assert_eq!(r.status, 201);
    let r = conn
        .request("GET", &format!("/receipts/c/{id}"), &[], b"")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // An error does not end the connection either.
    let r = conn.request("GET", "/nope", &[], b"").await;
    assert_eq!(r.status, 404);
    let r = conn.request("POST", "/push/c", &[], b"three").await;
    assert_eq!(r.status, 201);
    let events = conn
        .request("GET", "/admin/events/c", &[], b"")
        .await
        .json();
    assert_eq!(events.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let server = TestServer::start().await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(
        b"POST /push/c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\none\
          GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /nope HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /admin/events/c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut reader = pere_tests::HttpReader::new(conn);
    let mut statuses = Vec::new();
    let mut last = Vec::new();
    for _ in 0..4 {
        let (status, headers) = reader.head().await;
        statuses.push(status);
        last = reader.body(&headers, status).await;
    }
    assert_eq!(statuses, [201, 200, 404, 200]);
    let events: serde_json::Value = serde_json::from_slice(&last).unwrap();
    assert_eq!(events[0]["data"], "one");
}

#[tokio::test]
async fn a_stream_can_follow_other_requests_on_a_kept_alive_connection() {
    let server = TestServer::start().await;
    let ids = publish_n(&server, "c", 2).await;
    let mut conn = Connection::open(server.addr).await;
    let r = conn.request("GET", "/healthz", &[], b"").await;
    assert_eq!(r.status, 200);
    let r = conn.request("POST", "/push/c", &[], b"third").await;
    assert_eq!(r.status, 201);
    let mut s = conn
        .stream(&format!("/feed/c?lastEventId={}", ids[0]), &[])
        .await;
    assert_eq!(s.status, 200);
    assert_eq!(s.data(2).await, ["x", "third"]);
}

#[tokio::test]
async fn a_bad_last_event_id_is_400() {
    let server = TestServer::start().await;
    let s = server
        .stream("/feed/c", &[("Last-Event-ID", "not-a-number")])
        .await;
    assert_eq!(s.status, 400, "{}", s.text());
    let body: serde_json::Value = serde_json::from_slice(&s.raw).unwrap();
    assert_eq!(body["code"], "invalid_event_id");
    let s = server.stream("/feed/c?lastEventId=-1", &[]).await;
    assert_eq!(s.status, 400);
    let s = server.stream("/feed/c?replay=some", &[]).await;
    assert_eq!(s.status, 400);
}

#[tokio::test]
async fn an_empty_last_event_id_means_no_resume_point() {
    let server = TestServer::start().await;
    server.publish("c", "old").await;
    let mut s = server.stream("/feed/c", &[("Last-Event-ID", "")]).await;
    assert_eq!(s.status, 200);
    let hello = s.hello().await;
    assert_eq!(hello["replayed"], 0);
}

#[tokio::test]
async fn a_closed_stream_frees_its_connection_slot() {
    let server = TestServer::start().await;
    let s = server.subscribe("c", "d").await;
    let conns = server.admin().connections().await;
    assert_eq!(conns["total number"], 1);
    drop(s);
    server.wait_offline("c", "d").await;
    pere_tests::eventually("no open stream", || async {
        server.admin().connections().await["total number"] == 0
    })
    .await;
}

#[tokio::test]
async fn an_http_1_0_client_gets_a_close_delimited_stream() {
    let server = TestServer::start().await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(b"GET /feed/c HTTP/1.0\r\ndevice: old\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut conn, &mut seen, "event: pere.hello\n").await;
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("transfer-encoding"),
        "{text}"
    );
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    assert!(body.starts_with("retry:3000\n\n"), "{body:?}");
    let id = server.publish("c", "for HTTP/1.0").await;
    read_until(
        &mut conn,
        &mut seen,
        &format!("id: {id}\ndata: for HTTP/1.0\n\n"),
    )
    .await;
}

#[tokio::test]
async fn head_on_a_feed_answers_the_headers_without_subscribing() {
    let server = TestServer::start().await;
    let r = server
        .request("HEAD", "/feed/c", &[("device", "peeker")], b"")
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/event-stream")),
        "{:?}",
        r.headers
    );
    assert!(r.body.is_empty());
    assert!(
        server.presence("c", "peeker").await.is_none(),
        "a HEAD makes no member"
    );
    let r = server.post("/push/c", &[], b"x").await;
    assert_eq!(r.json()["recipients"], 0);
    let r = server.request("HEAD", "/receipts/c", &[], b"").await;
    assert_eq!(r.status, 200);
    let r = server
        .request("HEAD", "/feed/a%20b", &[("device", "peeker")], b"")
        .await;
    assert_eq!(r.status, 400, "HEAD validates like GET");
}

#[tokio::test]
async fn a_member_whose_cursor_was_pruned_is_told_of_the_gap() {
    let server = TestServer::builder().history(3).start().await;
    drop(server.subscribe("c", "sleepy").await);
    server.wait_offline("c", "sleepy").await;
    let ids = publish_n(&server, "c", 6).await;
    let mut s = server.stream("/feed/c", &[("device", "sleepy")]).await;
    let hello = s.hello().await;
    assert_eq!(hello["replayed"], 3, "{hello}");
    let gap = s.control("pere.gap").await;
    assert_eq!(gap["oldest"], ids[3].as_str(), "{gap}");
    assert_eq!(gap["from"], hello["resumed_from"], "{gap} {hello}");
    let got: Vec<String> = s.ids(3).await;
    assert_eq!(got, ids[3..]);
}

#[tokio::test]
async fn a_slow_device_is_disconnected_and_resumes_without_loss() {
    // A queue of one event: any burst that reaches the stream faster than
    // it drains closes it, and the device must resume from Last-Event-ID.
    let server = TestServer::builder().queue_capacity(1).start().await;
    let mut s = server.subscribe("burst", "slow").await;
    let addr = server.addr;
    let publishers: Vec<_> = (0..40)
        .map(|n| {
            tokio::spawn(async move {
                let r =
                    pere_tests::request(addr, "POST", "/push/burst", &[], n.to_string().as_bytes())
                        .await;
                assert_eq!(r.status, 201);
                r.json()["id"].as_str().unwrap().to_string()
            })
        })
        .collect();
    let mut ids = Vec::new();
    for p in publishers {
        ids.push(p.await.unwrap());
    }
    ids.sort_by_key(|id| id.parse::<u64>().unwrap());
    let mut got: Vec<String> = Vec::new();
    let mut reconnects = 0;
    while got.len() < ids.len() {
        match s.next_message().await {
            Some(e) => got.push(e.id),
            None => {
                reconnects += 1;
                assert!(reconnects < 100, "too many reconnects");
                let last = got.last().cloned().unwrap_or_default();
                s = server
                    .stream(
                        "/feed/burst",
                        &[("device", "slow"), ("Last-Event-ID", &last)],
                    )
                    .await;
                assert_eq!(s.status, 200);
            }
        }
    }
    assert_eq!(
        got, ids,
        "every event once, in order, across {reconnects} reconnects"
    );
}

#[tokio::test]
async fn with_replay_all_by_default_a_new_device_gets_history_and_a_member_its_cursor() {
    let server = TestServer::builder().replay_all().start().await;
    let old = publish_n(&server, "c", 2).await;
    let mut s = server.stream("/feed/c", &[("device", "d")]).await;
    let hello = s.hello().await;
    assert_eq!(
        hello["replayed"], 2,
        "PERE replayed everything on a first connect"
    );
    let got: Vec<String> = s.ids(2).await;
    assert_eq!(got, old);
    drop(s);
    server.wait_offline("c", "d").await;
    let new = server.publish("c", "new").await;
    let mut s = server.stream("/feed/c", &[("device", "d")]).await;
    let hello = s.hello().await;
    assert_eq!(
        hello["replayed"], 1,
        "a member resumes from its cursor: {hello}"
    );
    assert_eq!(s.messages(1).await[0].id, new);
}

// The first request of a connection, when it is a plain `GET /feed`, is
// served without hyper (pere-http's `direct` module, for memory); these
// check that nothing about the connection changes for the client.

#[tokio::test]
async fn a_refused_first_stream_leaves_its_kept_alive_connection_usable() {
    let server = TestServer::start().await;
    let mut conn = Connection::open(server.addr).await;
    let r = conn.request("GET", "/feed/bad%20name", &[], b"").await;
    r.assert_error(400, "invalid_channel");
    assert!(r.header("date").is_some_and(|d| d.ends_with(" GMT")));
    let r = conn.request("GET", "/healthz", &[], b"").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let r = conn.request("POST", "/push/c", &[], b"after").await;
    assert_eq!(r.status, 201, "{}", r.text());
    let mut s = conn.stream("/feed/c?replay=all", &[]).await;
    assert_eq!(s.data(1).await, ["after"]);
}

#[tokio::test]
async fn a_stream_the_server_ends_is_a_complete_response() {
    let server = TestServer::start().await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(b"GET /feed/c HTTP/1.1\r\nHost: x\r\ndevice: d\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut conn, &mut seen, "event: pere.hello\n").await;
    let id = server.publish("c", "one").await;
    read_until(&mut conn, &mut seen, &format!("id: {id}\ndata: one\n\n")).await;
    let r = server.admin().drop_device("c", "d").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The body ends with the last chunk, as hyper ends one …
    read_until(&mut conn, &mut seen, "\r\n0\r\n\r\n").await;
    let text = String::from_utf8_lossy(&seen).into_owned();
    let head = &text[..text.find("\r\n\r\n").unwrap()];
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\ntransfer-encoding: chunked"), "{head}");
    assert!(
        lower.contains("\r\ncontent-type: text/event-stream"),
        "{head}"
    );
    assert!(!lower.contains("content-length"), "{head}");
    // … and the connection ends with it (see connections.rs).
    let after = pere_tests::raw::read_to_close(&mut conn).await;
    assert!(after.is_empty(), "{:?}", String::from_utf8_lossy(&after));
}

#[tokio::test]
async fn a_client_that_goes_away_is_offline_at_once() {
    let server = TestServer::builder()
        .keepalive(Duration::from_secs(600))
        .start()
        .await;
    let s = server.subscribe("c", "d").await;
    assert_eq!(server.presence("c", "d").await.unwrap()["online"], true);
    drop(s);
    // No keepalive write is due for ten minutes: the server noticed the
    // close on the socket itself.
    server.wait_offline("c", "d").await;
}

#[tokio::test]
async fn streams_hyper_serves_still_work_large_heads_and_connection_close() {
    let server = TestServer::start().await;
    let cookie = "k=".to_string() + &"v".repeat(6000);
    let mut big = server
        .stream("/feed/c", &[("device", "big"), ("Cookie", &cookie)])
        .await;
    assert_eq!(big.status, 200);
    let mut close = SseStream::open_raw(
        server.addr,
        b"GET /feed/c HTTP/1.1\r\nHost: x\r\ndevice: close\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(close.status, 200);
    server.publish("c", "both").await;
    assert_eq!(big.data(1).await, ["both"]);
    assert_eq!(close.data(1).await, ["both"]);
}
