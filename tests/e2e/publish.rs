//! Publishing: `POST /push/:channel` (docs/PROTOCOL.md §2).

use std::time::Duration;

use pere_tests::{TestServer, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn publish_answers_201_with_id_channel_and_recipients() {
    let server = TestServer::start().await;
    let r = server.post("/push/news", &[], b"hello").await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "JSON: {:?}",
        r.headers
    );
    let body = r.json();
    let id = body["id"].as_str().expect("the id is a string");
    assert!(
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()),
        "the id is a decimal u64: {id}"
    );
    assert_eq!(body["channel"], "news");
    assert_eq!(body["recipients"], 0, "nobody subscribed: {body}");
}

#[tokio::test]
async fn recipients_counts_the_members_of_matching_subscriptions() {
    let server = TestServer::start().await;
    let _a = server.subscribe("orders.eu", "a").await;
    let _b = server.subscribe("orders.*", "b").await;
    let _c = server.subscribe("orders.**", "c").await;
    // Two streams of one device count once; an anonymous stream counts never.
    let _c2 = server.subscribe("orders.eu", "c").await;
    let _anon = server.stream("/feed/orders.eu", &[]).await;
    let _other = server.subscribe("invoices", "d").await;
    let r = server.post("/push/orders.eu", &[], b"{}").await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["recipients"], 3, "{}", r.text());
}

#[tokio::test]
async fn ids_are_strictly_increasing_across_channels() {
    let server = TestServer::start().await;
    let mut last = 0u64;
    for i in 0..20 {
        let channel = if i % 2 == 0 { "a" } else { "b.c" };
        let id: u64 = server.publish(channel, "x").await.parse().unwrap();
        assert!(id > last, "id {id} follows {last}");
        last = id;
    }
}

#[tokio::test]
async fn the_event_parameter_sets_the_sse_event_type() {
    let server = TestServer::start().await;
    let mut s = server.subscribe("c", "d").await;
    let r = server.post("/push/c?event=order.created", &[], b"1").await;
    assert_eq!(r.status, 201, "{}", r.text());
    server.publish("c", "2").await;
    let typed = s.next_message().await.unwrap();
    assert_eq!(typed.event, "order.created");
    assert_eq!(typed.data, "1");
    let plain = s.next_message().await.unwrap();
    assert_eq!(plain.event, "message");
    assert!(
        s.text().contains("event: order.created\n"),
        "raw: {:?}",
        s.text()
    );
    // `message` is the default type and is written as no `event:` line.
    let r = server.post("/push/c?event=message", &[], b"3").await;
    assert_eq!(r.status, 201);
    let m = s.next_message().await.unwrap();
    assert_eq!((m.event.as_str(), m.data.as_str()), ("message", "3"));
    assert!(!s.text().contains("event: message"), "raw: {:?}", s.text());
}

#[tokio::test]
async fn the_reserved_pere_prefix_and_bad_event_types_are_refused() {
    let server = TestServer::start().await;
    for bad in ["pere.hello", "pere.gap", "pere.x", "a%20b", "a%0Ab", "%00"] {
        let r = server
            .post(&format!("/push/c?event={bad}"), &[], b"x")
            .await;
        r.assert_error(400, "invalid_event_type");
    }
    assert!(
        server.hub.store().is_empty(&"c".parse().unwrap()),
        "nothing was published"
    );
}

#[tokio::test]
async fn an_idempotent_retry_returns_the_first_result_and_publishes_once() {
    let server = TestServer::start().await;
    let mut s = server.subscribe("c", "d").await;
    let key = [("Idempotency-Key", "order-42")];
    let first = server.post("/push/c", &key, b"pay").await;
    assert_eq!(first.status, 201, "{}", first.text());
    let retry = server.post("/push/c", &key, b"pay").await;
    assert_eq!(retry.status, 201, "{}", retry.text());
    // The first result itself (contract §2), told apart by a header only.
    assert_eq!(retry.json(), first.json());
    assert_eq!(first.header("idempotent-replayed"), None);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    // The same key on another channel is another publish.
    let elsewhere = server.post("/push/other", &key, b"pay").await;
    assert_ne!(elsewhere.json()["id"], first.json()["id"]);
    let sentinel = server.publish("c", "after").await;
    let got = s.messages(2).await;
    assert_eq!(got[0].id, first.json()["id"].as_str().unwrap());
    assert_eq!(got[1].id, sentinel, "the retry published nothing");
    let events = server.admin().events("c").await;
    assert_eq!(events.as_array().unwrap().len(), 2, "{events}");
}

#[tokio::test]
async fn bad_idempotency_keys_are_400() {
    let server = TestServer::start().await;
    let long = "k".repeat(pere_core::MAX_IDEMPOTENCY_KEY_LEN + 1);
    let r = server
        .post("/push/c", &[("Idempotency-Key", &long)], b"x")
        .await;
    r.assert_error(400, "invalid_idempotency_key");
}

#[tokio::test]
async fn wait_delivered_returns_once_every_recipient_has_it() {
    let server = TestServer::start().await;
    let mut a = server.subscribe("c", "a").await;
    let mut b = server.subscribe("c", "b").await;
    let r = server
        .post("/push/c?wait=delivered&timeout=10000", &[], b"x")
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let body = r.json();
    assert_eq!(body["recipients"], 2, "{body}");
    assert_eq!(body["delivered"], 2, "{body}");
    assert_eq!(body["acked"], 0, "{body}");
    assert_eq!(body["timed_out"], false, "{body}");
    assert_eq!(
        body["pending"],
        serde_json::json!([]),
        "both delivered: {body}"
    );
    assert_eq!(
        body["unacked"],
        serde_json::json!(["a", "b"]),
        "not acked yet: {body}"
    );
    a.messages(1).await;
    b.messages(1).await;
}

#[tokio::test]
async fn wait_acked_returns_once_three_subscribers_acked() {
    let server = TestServer::start().await;
    let mut streams = Vec::new();
    for device in ["a", "b", "c"] {
        streams.push((device, server.subscribe("orders", device).await));
    }
    let addr = server.addr;
    let publish = tokio::spawn(async move {
        pere_tests::request(
            addr,
            "POST",
            "/push/orders?wait=acked&timeout=20000",
            &[],
            b"{\"n\":1}",
        )
        .await
    });
    for (device, stream) in &mut streams {
        let event = stream.messages(1).await.remove(0);
        server.ack("orders", device, &event.id).await;
    }
    let r = tokio::time::timeout(WAIT, publish)
        .await
        .expect("the waiting publish returns once all acked")
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let body = r.json();
    assert_eq!(body["recipients"], 3, "{body}");
    assert_eq!(body["delivered"], 3, "{body}");
    assert_eq!(body["acked"], 3, "{body}");
    assert_eq!(body["pending"], serde_json::json!([]), "{body}");
    assert_eq!(body["timed_out"], false, "{body}");
}

#[tokio::test]
async fn wait_acked_times_out_and_lists_the_device_that_never_acked() {
    let server = TestServer::start().await;
    let mut a = server.subscribe("c", "a").await;
    let mut b = server.subscribe("c", "slowpoke").await;
    let addr = server.addr;
    let publish = tokio::spawn(async move {
        pere_tests::request(addr, "POST", "/push/c?wait=acked&timeout=300", &[], b"x").await
    });
    let event = a.messages(1).await.remove(0);
    server.ack("c", "a", &event.id).await;
    b.messages(1).await;
    let r = publish.await.unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let body = r.json();
    assert_eq!(body["timed_out"], true, "{body}");
    assert_eq!(body["recipients"], 2, "{body}");
    assert_eq!(body["delivered"], 2, "{body}");
    assert_eq!(body["acked"], 1, "{body}");
    assert_eq!(body["unacked"], serde_json::json!(["slowpoke"]), "{body}");
    assert_eq!(
        body["pending"],
        serde_json::json!([]),
        "slowpoke got it: {body}"
    );
}

/// A device the event reaches while the publisher waits (a late joiner's
/// replay) joins its audience (§5): the answer counts it in `recipients`
/// as in its lists, as `GET /receipts` does.
#[tokio::test]
async fn a_wait_answer_counts_a_late_joiner_in_recipients_too() {
    let server = TestServer::start().await;
    let mut a = server.subscribe("lw", "a").await;
    let addr = server.addr;
    let publish = tokio::spawn(async move {
        pere_tests::request(addr, "POST", "/push/lw?wait=acked&timeout=1500", &[], b"x").await
    });
    let event = a.messages(1).await.remove(0);
    let mut late = server
        .stream("/feed/lw?replay=all", &[("device", "late")])
        .await;
    assert_eq!(late.messages(1).await[0].id, event.id);
    server.ack("lw", "a", &event.id).await;
    let r = publish.await.unwrap();
    let body = r.json();
    assert_eq!(body["unacked"], serde_json::json!(["late"]), "{body}");
    assert_eq!(body["timed_out"], true, "{body}");
    assert_eq!(
        (body["recipients"].as_u64(), body["delivered"].as_u64()),
        (Some(2), Some(2)),
        "{body}"
    );
    let receipts = server.get_json(&format!("/receipts/lw/{}", event.id)).await;
    assert_eq!(receipts["recipients"], body["recipients"], "{receipts}");
}

#[tokio::test]
async fn wait_with_no_recipients_returns_at_once() {
    let server = TestServer::start().await;
    let r = server
        .post("/push/empty?wait=acked&timeout=60000", &[], b"x")
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let body = r.json();
    assert_eq!(body["recipients"], 0);
    assert_eq!(body["timed_out"], false, "{body}");
}

#[tokio::test]
async fn bad_wait_or_timeout_values_are_400_and_publish_nothing() {
    let server = TestServer::start().await;
    for query in [
        "wait=read",
        "wait=",
        "wait=ACKED",
        "wait=acked&timeout=abc",
        "wait=acked&timeout=-1",
        "wait=acked&timeout=1.5",
        "wait=acked&timeout=",
        "wait=delivered&timeout=%2B5",
    ] {
        let r = server.post(&format!("/push/c?{query}"), &[], b"x").await;
        assert_eq!(r.status, 400, "{query}: {}", r.text());
        r.assert_error(400, "invalid_parameter");
    }
    assert!(server.hub.store().is_empty(&"c".parse().unwrap()));
}

#[tokio::test]
async fn huge_timeouts_are_accepted_and_capped_at_60_seconds() {
    let server = TestServer::start().await;
    let mut d = server.subscribe("c", "d").await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    let request = pere_tests::raw_request(
        "POST",
        "/push/c?wait=acked&timeout=99999999999999999999999",
        &[],
        b"x",
    );
    conn.write_all(&request).await.unwrap();
    // Once the device got the event, the publish is waiting for its receipt.
    d.messages(1).await;
    // Read the response on a paused clock: the wait is measured in virtual
    // time, and no read timeout of the harness runs out first.
    tokio::time::pause();
    let start = tokio::time::Instant::now();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(3600), conn.read_to_end(&mut response))
        .await
        .expect("the publish returns before an hour")
        .unwrap();
    let waited = start.elapsed();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
    assert!(text.contains(r#""timed_out":true"#), "{text}");
    // Issue 18.9: the answer says which timeout applied.
    assert!(text.contains(r#""timeout":60000"#), "{text}");
    assert!(
        waited >= Duration::from_secs(59) && waited < Duration::from_secs(120),
        "the wait is capped at 60 s, it took {waited:?}"
    );
}

#[tokio::test]
async fn the_response_points_at_the_receipts_of_the_event() {
    let server = TestServer::start().await;
    let r = server.post("/push/c", &[], b"x").await;
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        r.header("location"),
        Some(format!("/receipts/c/{id}").as_str())
    );
    let receipts = server.get(&format!("/receipts/c/{id}")).await;
    assert_eq!(receipts.status, 200, "{}", receipts.text());
}

#[tokio::test]
async fn the_publisher_device_header_is_recorded() {
    let server = TestServer::start().await;
    server
        .post("/push/c", &[("device", "publisher-1")], b"x")
        .await;
    let events = server.admin().events("c").await;
    assert_eq!(events[0]["device"], "publisher-1", "{events}");
}

#[tokio::test]
async fn a_payload_is_any_utf8_text_kept_byte_for_byte() {
    let server = TestServer::start().await;
    let mut s = server.subscribe("c", "d").await;
    let payload = "héllo wörld ✓ 🚀 \t tab";
    server.publish("c", payload).await;
    assert_eq!(s.messages(1).await[0].data, payload);
}

#[tokio::test]
async fn the_largest_allowed_payload_is_accepted() {
    let server = TestServer::start().await;
    let mut s = server.subscribe("c", "d").await;
    let payload = "x".repeat(pere_core::DEFAULT_MAX_PAYLOAD);
    let r = server.post("/push/c", &[], payload.as_bytes()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(s.messages(1).await[0].data.len(), payload.len());
}

#[tokio::test]
async fn a_publish_with_expect_100_continue_gets_the_go_ahead() {
    // curl sends `Expect: 100-continue` for bodies over 1 KiB and waits.
    let server = TestServer::start().await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    let body = "b".repeat(2000);
    conn.write_all(
        format!(
            "POST /push/c HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, conn.read(&mut buf))
        .await
        .expect("an interim answer")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 100 Continue\r\n"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    conn.write_all(body.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, conn.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains("HTTP/1.1 201 Created\r\n"), "{text}");
}

#[tokio::test]
async fn an_oversized_publish_with_expect_100_continue_is_refused_before_the_body() {
    let server = TestServer::start().await;
    let r = pere_tests::send_raw(
        server.addr,
        b"POST /push/c HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    r.assert_error(413, "payload_too_large");
}

/// Issue 18.9: the tools take `--timeout 5s`; HTTP now takes `timeout=5s`
/// too (a bare number stays milliseconds, as docs/PROTOCOL.md §2.1 says).
#[tokio::test]
async fn a_timeout_with_a_unit_is_a_duration_like_on_the_command_line() {
    let server = TestServer::start().await;
    for (given, applied) in [("5s", 5000), ("250ms", 250), ("1.5s", 1500), ("700", 700)] {
        let r = server
            .post(
                &format!("/push/nobody?wait=delivered&timeout={given}"),
                &[],
                b"x",
            )
            .await;
        assert_eq!(r.status, 201, "timeout={given}: {}", r.text());
        assert_eq!(
            r.json()["timeout"],
            applied,
            "timeout={given}: {}",
            r.text()
        );
    }
}
