//! Receipt summaries and the live receipts stream (docs/PROTOCOL.md §5).

use pere_tests::{SseStream, TestServer, eventually};
use serde_json::{Value, json};

/// `GET /receipts/:channel/:id` as JSON.
async fn summary(server: &TestServer, channel: &str, id: &str) -> Value {
    let r = server.get(&format!("/receipts/{channel}/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Whether `s` is a timestamp like `2014-12-01T09:35:33.123Z`.
fn is_time(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == 24 && s.ends_with('Z') && s.as_bytes()[10] == b'T' && s.as_bytes()[19] == b'.'
    })
}

/// The next `receipt` event of a receipts stream, as JSON.
async fn next_change(s: &mut SseStream) -> Value {
    let e = s.next_event().await.expect("a receipt change");
    assert_eq!(e.event, "receipt", "{e:?}");
    // Numbered, so a reconnecting client resumes with Last-Event-ID.
    assert!(
        e.id.parse::<u64>().is_ok(),
        "receipt changes are numbered: {e:?}"
    );
    serde_json::from_str(&e.data).unwrap()
}

#[tokio::test]
async fn the_summary_has_the_documented_shape() {
    let server = TestServer::start().await;
    let _a = server.subscribe("c", "a").await;
    let id = server.publish("c", "x").await;
    let s = summary(&server, "c", &id).await;
    let keys: Vec<&str> = s.as_object().unwrap().keys().map(String::as_str).collect();
    for key in [
        "id",
        "channel",
        "published_at",
        "recipients",
        "delivered",
        "acked",
        "pending",
        "unacked",
        "devices",
    ] {
        assert!(keys.contains(&key), "{key} in {s}");
    }
    assert_eq!(s["id"], id.as_str());
    assert_eq!(s["channel"], "c");
    assert!(is_time(&s["published_at"]), "{s}");
    assert_eq!(s["recipients"], 1);
    let device = s["devices"]["a"].as_object().expect("a device entry");
    for key in ["state", "delivered_at", "acked_at", "status"] {
        assert!(device.contains_key(key), "{key} in {s}");
    }
}

#[tokio::test]
async fn a_receipt_moves_from_pending_to_delivered_to_acked() {
    let server = TestServer::start().await;
    // The device becomes a member, then goes offline.
    drop(server.subscribe("c", "phone").await);
    server.wait_offline("c", "phone").await;
    let id = server.publish("c", "x").await;

    let s = summary(&server, "c", &id).await;
    assert_eq!(s["recipients"], 1, "{s}");
    assert_eq!(s["delivered"], 0, "{s}");
    assert_eq!(s["acked"], 0, "{s}");
    assert_eq!(s["pending"], json!(["phone"]), "{s}");
    assert_eq!(
        s["devices"]["phone"],
        json!({ "state": "pending", "delivered_at": null, "acked_at": null, "status": null,
                "status_at": null, "deliveries": 0 })
    );

    // It comes back without Last-Event-ID: its cursor brings the event.
    let mut stream = server.stream("/feed/c", &[("device", "phone")]).await;
    assert_eq!(stream.messages(1).await[0].id, id);
    let s = summary(&server, "c", &id).await;
    assert_eq!(s["delivered"], 1, "{s}");
    assert_eq!(s["acked"], 0, "{s}");
    assert_eq!(
        s["unacked"],
        json!(["phone"]),
        "delivered is not acked: {s}"
    );
    assert_eq!(
        s["pending"],
        json!([]),
        "delivered is no longer pending: {s}"
    );
    let phone = &s["devices"]["phone"];
    assert_eq!(phone["state"], "delivered", "{s}");
    assert_eq!(phone["deliveries"], 1, "{s}");
    assert!(is_time(&phone["delivered_at"]), "{s}");
    assert_eq!(phone["acked_at"], Value::Null, "{s}");

    let r = server
        .feedback(
            "c",
            &[("device", "phone"), ("Last-Event-ID", &id)],
            b"status=shown",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let s = summary(&server, "c", &id).await;
    assert_eq!(s["delivered"], 1, "{s}");
    assert_eq!(s["acked"], 1, "{s}");
    assert_eq!(s["pending"], json!([]), "{s}");
    let phone = &s["devices"]["phone"];
    assert_eq!(phone["state"], "acked", "{s}");
    assert_eq!(phone["status"], "shown", "{s}");
    assert!(is_time(&phone["acked_at"]), "{s}");
    let (published, delivered, acked) = (
        s["published_at"].as_str().unwrap(),
        phone["delivered_at"].as_str().unwrap(),
        phone["acked_at"].as_str().unwrap(),
    );
    assert!(
        published <= delivered && delivered <= acked,
        "times in order: {s}"
    );
}

#[tokio::test]
async fn counts_cover_every_device_of_the_audience() {
    let server = TestServer::start().await;
    let mut a = server.subscribe("c", "a").await;
    let mut b = server.subscribe("c", "b").await;
    drop(server.subscribe("c", "offline").await);
    server.wait_offline("c", "offline").await;
    let id = server.publish("c", "x").await;
    a.messages(1).await;
    b.messages(1).await;
    server.ack("c", "a", &id).await;
    let s = summary(&server, "c", &id).await;
    assert_eq!(s["recipients"], 3, "{s}");
    assert_eq!(s["delivered"], 2, "delivered or acked: {s}");
    assert_eq!(s["acked"], 1, "{s}");
    assert_eq!(s["unacked"], json!(["b", "offline"]), "not yet acked: {s}");
    assert_eq!(s["pending"], json!(["offline"]), "not yet written: {s}");
    assert_eq!(s["devices"]["a"]["state"], "acked");
    assert_eq!(s["devices"]["b"]["state"], "delivered");
    assert_eq!(s["devices"]["offline"]["state"], "pending");
}

#[tokio::test]
async fn unknown_or_malformed_receipt_lookups_are_errors() {
    let server = TestServer::start().await;
    let id = server.publish("c", "x").await;
    server
        .get("/receipts/c/12345")
        .await
        .assert_error(404, "unknown_event");
    server
        .get(&format!("/receipts/other/{id}"))
        .await
        .assert_error(404, "unknown_event");
    server
        .get("/receipts/c/abc")
        .await
        .assert_error(400, "invalid_event_id");
    server
        .get(&format!("/receipts/a%20b/{id}"))
        .await
        .assert_error(400, "invalid_channel");
}

#[tokio::test]
async fn the_receipts_stream_shows_each_transition_in_order() {
    let server = TestServer::start().await;
    let mut watch = server.stream("/receipts/c", &[]).await;
    assert_eq!(watch.status, 200);
    assert_eq!(watch.header("content-type"), Some("text/event-stream"));
    assert_eq!(watch.header("cache-control"), Some("no-cache"));
    drop(server.subscribe("c", "d").await);
    server.wait_offline("c", "d").await;
    let id = server.publish("c", "x").await;
    let mut d = server.stream("/feed/c", &[("device", "d")]).await;
    assert_eq!(d.messages(1).await[0].id, id);

    let delivered = next_change(&mut watch).await;
    assert_eq!(delivered["id"], id.as_str());
    assert_eq!(delivered["device"], "d");
    assert_eq!(delivered["state"], "delivered");
    assert_eq!(delivered["status"], Value::Null);
    assert!(is_time(&delivered["at"]), "{delivered}");

    let r = server
        .feedback(
            "c",
            &[("device", "d"), ("Last-Event-ID", &id)],
            b"status=read",
        )
        .await;
    assert_eq!(r.status, 200);
    let acked = next_change(&mut watch).await;
    assert_eq!(
        (
            &acked["id"],
            &acked["device"],
            &acked["state"],
            &acked["status"]
        ),
        (&json!(id), &json!("d"), &json!("acked"), &json!("read"))
    );
    assert!(acked["at"].as_str() >= delivered["at"].as_str());
    assert!(
        watch.raw.starts_with(b"retry:3000\n\n"),
        "{:?}",
        watch.text()
    );
    assert!(!watch.raw.contains(&b'\r'));
}

#[tokio::test]
async fn the_receipts_stream_follows_one_channel_only() {
    let server = TestServer::start().await;
    let mut watch = server.stream("/receipts/a", &[]).await;
    let mut b = server.subscribe("b", "d").await;
    let mut a = server.subscribe("a", "d").await;
    server.publish("b", "x").await;
    b.messages(1).await;
    let id = server.publish("a", "y").await;
    a.messages(1).await;
    let change = next_change(&mut watch).await;
    assert_eq!(change["id"], id.as_str(), "only channel a: {change}");
}

#[tokio::test]
async fn several_devices_acking_show_up_on_the_receipts_stream() {
    let server = TestServer::start().await;
    let mut watch = server.stream("/receipts/c", &[]).await;
    let mut streams = Vec::new();
    for d in ["a", "b", "c"] {
        streams.push((d, server.subscribe("c", d).await));
    }
    let id = server.publish("c", "x").await;
    for (d, s) in &mut streams {
        s.messages(1).await;
        server.ack("c", d, &id).await;
    }
    let mut acked = Vec::new();
    let mut delivered = Vec::new();
    while acked.len() < 3 {
        let change = next_change(&mut watch).await;
        let device = change["device"].as_str().unwrap().to_string();
        match change["state"].as_str().unwrap() {
            "delivered" => {
                assert!(!acked.contains(&device), "delivered after acked: {change}");
                delivered.push(device);
            }
            "acked" => acked.push(device),
            other => panic!("unexpected state {other}"),
        }
    }
    delivered.sort();
    acked.sort();
    assert_eq!(delivered, ["a", "b", "c"]);
    assert_eq!(acked, ["a", "b", "c"]);
    eventually("all acked in the summary", || async {
        summary(&server, "c", &id).await["acked"] == 3
    })
    .await;
}

/// Issue 18.4 (a status update of local elaboration): a second receipt
/// keeps `acked_at`, the proof, and updates `status` and `status_at`; the
/// receipts stream shows every update.
#[tokio::test]
async fn each_status_update_shows_on_the_receipts_stream_and_acked_at_stays_the_first() {
    let server = TestServer::start().await;
    let mut watch = server.stream("/receipts/c", &[]).await;
    let mut d = server.subscribe("c", "d").await;
    let id = server.publish("c", "job").await;
    d.messages(1).await;
    assert_eq!(next_change(&mut watch).await["state"], "delivered");
    let mut seen = Vec::new();
    for status in ["received", "processing", "done"] {
        let r = server
            .feedback(
                "c",
                &[("device", "d"), ("Last-Event-ID", &id)],
                format!("status={status}").as_bytes(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let change = next_change(&mut watch).await;
        assert_eq!(
            (&change["state"], &change["status"]),
            (&json!("acked"), &json!(status)),
            "{change}"
        );
        seen.push(change["at"].as_str().unwrap().to_string());
    }
    let s = summary(&server, "c", &id).await;
    let receipt = &s["devices"]["d"];
    assert_eq!(receipt["status"], "done", "{s}");
    assert_eq!(
        receipt["acked_at"],
        seen[0].as_str(),
        "the first is the proof: {s}"
    );
    assert_eq!(
        receipt["status_at"],
        seen[2].as_str(),
        "the latest status: {s}"
    );
    assert_eq!(s["acked"], 1, "one device acked, however often: {s}");
}
