//! Receipts: `POST /feedback/:channel` in every form PERE's clients send
//! (docs/PROTOCOL.md §4).

use pere_tests::{Response, TestServer};
use serde_json::json;

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");
const JSON: (&str, &str) = ("Content-Type", "application/json");

/// A server with device `d` subscribed to `c` and one event published and
/// delivered to it; returns the server and the event id.
async fn one_delivered() -> (TestServer, pere_tests::SseStream, String) {
    let server = TestServer::start().await;
    let mut s = server.subscribe("c", "d").await;
    let id = server.publish("c", "x").await;
    assert_eq!(s.messages(1).await[0].id, id);
    (server, s, id)
}

/// The receipt state of `device` for event `id` on `channel`.
async fn receipt(server: &TestServer, channel: &str, id: &str, device: &str) -> serde_json::Value {
    let r = server.get(&format!("/receipts/{channel}/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["devices"][device].clone()
}

fn assert_acked(r: &Response, id: &str, device: &str) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({ "id": id, "device": device, "state": "acked" }),
        "the receipt response shape"
    );
}

#[tokio::test]
async fn the_web_page_form_with_a_last_event_id_header_is_a_receipt() {
    let (server, _s, id) = one_delivered().await;
    let r = server
        .feedback(
            "c",
            &[
                (
                    "Content-Type",
                    "application/x-www-form-urlencoded; charset=UTF-8",
                ),
                ("device", "d"),
                ("Last-Event-ID", &id),
            ],
            b"status=ok",
        )
        .await;
    assert_acked(&r, &id, "d");
    let rec = receipt(&server, "c", &id, "d").await;
    assert_eq!(rec["state"], "acked");
    assert_eq!(rec["status"], "ok");
}

#[tokio::test]
async fn subscriber_rb_headers_in_any_case_are_a_receipt() {
    let (server, _s, id) = one_delivered().await;
    // What subscriber.rb means (`last_event_id`), and what RestClient sends
    // (`Last-Event-Id`, `Device`), with the form body `status=rx+ok`.
    for (device_header, id_header) in [
        ("device", "last_event_id"),
        ("Device", "Last-Event-Id"),
        ("DEVICE", "LAST-EVENT-ID"),
        ("dEvIcE", "Last_Event_Id"),
    ] {
        let r = server
            .feedback(
                "c",
                &[FORM, (device_header, "d"), (id_header, &id)],
                b"status=rx+ok",
            )
            .await;
        assert_acked(&r, &id, "d");
    }
    let rec = receipt(&server, "c", &id, "d").await;
    assert_eq!(rec["status"], "rx ok", "the form value is decoded: {rec}");
}

#[tokio::test]
async fn the_device_query_parameter_identifies_the_device() {
    let (server, _s, id) = one_delivered().await;
    let r = server
        .post(
            "/feedback/c?device=d",
            &[FORM, ("Last-Event-ID", &id)],
            b"status=ok",
        )
        .await;
    assert_acked(&r, &id, "d");
}

#[tokio::test]
async fn the_last_event_id_form_field_carries_the_id() {
    let (server, _s, id) = one_delivered().await;
    let body = format!("status=seen&last_event_id={id}");
    let r = server
        .feedback("c", &[FORM, ("device", "d")], body.as_bytes())
        .await;
    assert_acked(&r, &id, "d");
    assert_eq!(receipt(&server, "c", &id, "d").await["status"], "seen");
}

/// A page's `FormData` is sent as multipart/form-data; read as a form it
/// lost its fields (400 missing_event_id, or the status stored as `ok`).
#[tokio::test]
async fn a_multipart_form_receipt_carries_id_and_status() {
    let (server, _s, id) = one_delivered().await;
    let boundary = "----WebKitFormBoundary7MA4YWxkTrZu0gW";
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"last_event_id\"\r\n\r\n{id}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"status\"\r\n\r\nprinted\r\n\
         --{boundary}--\r\n"
    );
    let r = server
        .feedback(
            "c",
            &[("Content-Type", &content_type), ("device", "d")],
            body.as_bytes(),
        )
        .await;
    assert_acked(&r, &id, "d");
    assert_eq!(receipt(&server, "c", &id, "d").await["status"], "printed");
    // Not what its Content-Type says: refused, not read as something else.
    let r = server
        .feedback(
            "c",
            &[("Content-Type", &content_type), ("device", "d")],
            b"status=lost",
        )
        .await;
    r.assert_error(400, "invalid_body");
    assert_eq!(receipt(&server, "c", &id, "d").await["status"], "printed");
}

#[tokio::test]
async fn a_json_receipt_carries_id_and_status() {
    let (server, _s, id) = one_delivered().await;
    let body = json!({ "id": id, "status": "printed" }).to_string();
    let r = server
        .feedback("c", &[JSON, ("device", "d")], body.as_bytes())
        .await;
    assert_acked(&r, &id, "d");
    assert_eq!(receipt(&server, "c", &id, "d").await["status"], "printed");
    // A numeric id is an id too, and JSON is recognised without a
    // Content-Type.
    let body = format!(r#"{{"id":{id}}}"#);
    let r = server
        .feedback("c", &[("device", "d")], body.as_bytes())
        .await;
    assert_acked(&r, &id, "d");
}

#[tokio::test]
async fn the_id_sources_are_tried_in_the_documented_order() {
    let server = TestServer::start().await;
    let mut s = server.subscribe("c", "d").await;
    let ids: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(server.publish("c", "x").await);
        }
        v
    };
    s.messages(4).await;
    // JSON id, then `Last-Event-ID`, then `last_event_id` header, then the
    // `last_event_id` form field.
    let body = json!({ "id": ids[0] }).to_string();
    let r = server
        .feedback(
            "c",
            &[
                JSON,
                ("device", "d"),
                ("Last-Event-ID", &ids[1]),
                ("last_event_id", &ids[2]),
            ],
            body.as_bytes(),
        )
        .await;
    assert_acked(&r, &ids[0], "d");
    let form = format!("status=ok&last_event_id={}", ids[3]);
    let r = server
        .feedback(
            "c",
            &[
                FORM,
                ("device", "d"),
                ("Last-Event-ID", &ids[1]),
                ("last_event_id", &ids[2]),
            ],
            form.as_bytes(),
        )
        .await;
    assert_acked(&r, &ids[1], "d");
    let r = server
        .feedback(
            "c",
            &[FORM, ("device", "d"), ("last_event_id", &ids[2])],
            form.as_bytes(),
        )
        .await;
    assert_acked(&r, &ids[2], "d");
    let r = server
        .feedback("c", &[FORM, ("device", "d")], form.as_bytes())
        .await;
    assert_acked(&r, &ids[3], "d");
}

#[tokio::test]
async fn the_status_defaults_to_ok() {
    let (server, _s, id) = one_delivered().await;
    let r = server
        .feedback("c", &[("device", "d"), ("Last-Event-ID", &id)], b"")
        .await;
    assert_acked(&r, &id, "d");
    assert_eq!(receipt(&server, "c", &id, "d").await["status"], "ok");
    let body = json!({ "id": id }).to_string();
    let r = server
        .feedback("c", &[JSON, ("device", "d")], body.as_bytes())
        .await;
    assert_acked(&r, &id, "d");
    assert_eq!(receipt(&server, "c", &id, "d").await["status"], "ok");
}

#[tokio::test]
async fn a_status_of_1_kib_is_accepted_and_longer_is_400() {
    let (server, _s, id) = one_delivered().await;
    let max = "s".repeat(1024);
    let body = json!({ "id": id, "status": max }).to_string();
    let r = server
        .feedback("c", &[JSON, ("device", "d")], body.as_bytes())
        .await;
    assert_acked(&r, &id, "d");
    let body = json!({ "id": id, "status": format!("{max}s") }).to_string();
    let r = server
        .feedback("c", &[JSON, ("device", "d")], body.as_bytes())
        .await;
    r.assert_error(400, "status_too_long");
    let form = format!("status={max}s");
    let r = server
        .feedback(
            "c",
            &[FORM, ("device", "d"), ("Last-Event-ID", &id)],
            form.as_bytes(),
        )
        .await;
    r.assert_error(400, "status_too_long");
    assert_eq!(
        receipt(&server, "c", &id, "d").await["status"],
        max,
        "a refused receipt changes nothing"
    );
}

#[tokio::test]
async fn a_receipt_without_a_device_is_400() {
    let (server, _s, id) = one_delivered().await;
    let r = server
        .feedback("c", &[FORM, ("Last-Event-ID", &id)], b"status=ok")
        .await;
    r.assert_error(400, "missing_device");
    let r = server
        .feedback(
            "c",
            &[FORM, ("device", "a b"), ("Last-Event-ID", &id)],
            b"status=ok",
        )
        .await;
    r.assert_error(400, "invalid_device");
    let r = server
        .post(
            "/feedback/c?device=%2F",
            &[FORM, ("Last-Event-ID", &id)],
            b"status=ok",
        )
        .await;
    r.assert_error(400, "invalid_device");
}

#[tokio::test]
async fn a_missing_or_malformed_id_is_400() {
    let (server, _s, _id) = one_delivered().await;
    let r = server
        .feedback("c", &[FORM, ("device", "d")], b"status=ok")
        .await;
    r.assert_error(400, "missing_event_id");
    for bad in ["abc", "-1", "1.5", "18446744073709551616", " "] {
        let r = server
            .feedback(
                "c",
                &[FORM, ("device", "d"), ("Last-Event-ID", bad)],
                b"status=ok",
            )
            .await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text());
    }
    for body in [
        r#"{"id":"abc"}"#,
        r#"{"id":true}"#,
        r#"{"id":-3}"#,
        r#"{"id":1.5}"#,
        r#"{"id":"1","status":7}"#,
        r#"{"id":"#,
        "42",
    ] {
        let r = server
            .feedback("c", &[JSON, ("device", "d")], body.as_bytes())
            .await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.json()["code"].is_string(), "{}", r.text());
    }
}

#[tokio::test]
async fn an_unknown_event_is_404() {
    let (server, _s, id) = one_delivered().await;
    let r = server
        .feedback(
            "c",
            &[FORM, ("device", "d"), ("Last-Event-ID", "12345")],
            b"status=ok",
        )
        .await;
    r.assert_error(404, "unknown_event");
    // The event exists, but not on this channel.
    let r = server
        .feedback(
            "other",
            &[FORM, ("device", "d"), ("Last-Event-ID", &id)],
            b"status=ok",
        )
        .await;
    r.assert_error(404, "unknown_event");
}

#[tokio::test]
async fn an_event_no_longer_retained_is_404() {
    let server = TestServer::builder().history(1).start().await;
    let _s = server.subscribe("c", "d").await;
    let old = server.publish("c", "old").await;
    let new = server.publish("c", "new").await;
    let r = server
        .feedback("c", &[("device", "d"), ("Last-Event-ID", &old)], b"")
        .await;
    r.assert_error(404, "unknown_event");
    let r = server
        .feedback("c", &[("device", "d"), ("Last-Event-ID", &new)], b"")
        .await;
    assert_acked(&r, &new, "d");
}

#[tokio::test]
async fn a_receipt_on_a_pattern_names_events_of_matching_channels() {
    let server = TestServer::start().await;
    let mut s = server.subscribe("orders.*", "d").await;
    let id = server.publish("orders.eu", "x").await;
    s.messages(1).await;
    let r = server
        .post(
            "/feedback/orders.*",
            &[("device", "d"), ("Last-Event-ID", &id)],
            b"",
        )
        .await;
    assert_acked(&r, &id, "d");
    let r = server
        .feedback("orders.eu", &[("device", "d"), ("Last-Event-ID", &id)], b"")
        .await;
    assert_acked(&r, &id, "d");
}

#[tokio::test]
async fn a_batch_acks_every_known_id_and_reports_each_item() {
    let server = TestServer::start().await;
    let mut s = server.subscribe("c", "d").await;
    let a = server.publish("c", "a").await;
    let b = server.publish("c", "b").await;
    s.messages(2).await;
    let body = json!([
        { "id": a, "status": "one" },
        { "id": "12345" },
        { "id": b },
        { "id": "nope" },
        { "status": "no id" },
        { "id": a, "status": "s".repeat(1025) },
        "not an object",
        { "id": true },
    ])
    .to_string();
    let r = server
        .feedback("c", &[JSON, ("device", "d")], body.as_bytes())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let items = r.json();
    let items = items.as_array().expect("one result per item");
    assert_eq!(items.len(), 8, "{items:?}");
    assert_eq!(
        items[0],
        json!({ "id": a, "device": "d", "state": "acked" })
    );
    assert_eq!(items[1]["id"], "12345");
    assert_eq!(items[1]["code"], "unknown_event");
    assert_eq!(
        items[2],
        json!({ "id": b, "device": "d", "state": "acked" })
    );
    assert_eq!(items[3]["code"], "invalid_event_id");
    assert_eq!(items[4]["code"], "missing_event_id");
    assert_eq!(items[5]["code"], "status_too_long");
    for item in &items[1..] {
        if item.get("state").is_none() {
            assert!(item["error"].is_string(), "{item}");
            assert!(item["code"].is_string(), "{item}");
            assert!(item.get("id").is_some(), "{item}");
        }
    }
    assert!(items[6]["code"].is_string(), "{}", items[6]);
    assert!(items[7]["code"].is_string(), "{}", items[7]);
    assert_eq!(receipt(&server, "c", &a, "d").await["status"], "one");
    assert_eq!(receipt(&server, "c", &b, "d").await["state"], "acked");
}

#[tokio::test]
async fn an_empty_batch_is_an_empty_result() {
    let server = TestServer::start().await;
    let r = server.feedback("c", &[JSON, ("device", "d")], b"[]").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!([]));
}

#[tokio::test]
async fn a_late_joiner_that_received_an_event_is_added_to_its_audience() {
    let server = TestServer::start().await;
    let _early = server.subscribe("c", "early").await;
    let r = server.post("/push/c", &[], b"x").await;
    assert_eq!(r.json()["recipients"], 1);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let mut late = server
        .stream("/feed/c?replay=all", &[("device", "late")])
        .await;
    assert_eq!(late.messages(1).await[0].id, id);
    let r = server
        .feedback("c", &[("device", "late"), ("Last-Event-ID", &id)], b"")
        .await;
    assert_acked(&r, &id, "late");
    let summary = server.receipts("c", &id).await;
    assert_eq!(summary["recipients"], 2, "{summary}");
    assert_eq!(summary["acked"], 1, "{summary}");
    assert_eq!(summary["devices"]["late"]["state"], "acked", "{summary}");
    assert_eq!(summary["unacked"], json!(["early"]), "{summary}");
    assert_eq!(
        summary["pending"],
        json!([]),
        "early was delivered: {summary}"
    );
}

#[tokio::test]
async fn a_repeated_receipt_updates_the_status() {
    let (server, _s, id) = one_delivered().await;
    for status in ["first", "second"] {
        let body = json!({ "id": id, "status": status }).to_string();
        let r = server
            .feedback("c", &[JSON, ("device", "d")], body.as_bytes())
            .await;
        assert_acked(&r, &id, "d");
    }
    let summary = server.receipts("c", &id).await;
    assert_eq!(summary["acked"], 1, "{summary}");
    assert_eq!(summary["devices"]["d"]["status"], "second");
}

#[tokio::test]
async fn a_non_utf8_receipt_body_is_400() {
    let (server, _s, id) = one_delivered().await;
    let r = server
        .feedback(
            "c",
            &[FORM, ("device", "d"), ("Last-Event-ID", &id)],
            b"status=\xff\xfe",
        )
        .await;
    r.assert_error(400, "invalid_utf8");
    let r = server
        .feedback(
            "c",
            &[FORM, ("device", "d"), ("Last-Event-ID", &id)],
            b"status=%ff",
        )
        .await;
    r.assert_error(400, "invalid_utf8");
}

/// Issue 18.5: `device: ZZ`, a typo, used to become a recipient (and turn
/// `recipients` from 1 to 2). Only a device the event was written to, or
/// one in its audience, may acknowledge it.
#[tokio::test]
async fn a_device_that_never_got_the_event_cannot_acknowledge_it() {
    let (server, _s, id) = one_delivered().await;
    let body = json!({ "id": id, "status": "ok" }).to_string();
    let r = server
        .feedback("c", &[JSON, ("device", "ZZ")], body.as_bytes())
        .await;
    r.assert_error(409, "not_a_recipient");
    assert!(
        r.json()["error"].as_str().unwrap().contains("`ZZ`"),
        "the sentence names the device: {}",
        r.text()
    );
    // In a batch, the refused item does not void the others.
    let batch = json!([{ "id": id }]).to_string();
    let r = server
        .feedback("c", &[JSON, ("device", "ZZ")], batch.as_bytes())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()[0]["code"], "not_a_recipient", "{}", r.text());
    let summary = server.receipts("c", &id).await;
    assert_eq!(summary["recipients"], 1, "ZZ did not join: {summary}");
    assert!(summary["devices"].get("ZZ").is_none(), "{summary}");

    // A member that was offline when the event was published is in its
    // audience, and may acknowledge it without having received it.
    let (server, _s, _) = one_delivered().await;
    drop(server.subscribe("c", "offline").await);
    server.wait_offline("c", "offline").await;
    let id = server.publish("c", "y").await;
    let body = json!({ "id": id }).to_string();
    let r = server
        .feedback("c", &[JSON, ("device", "offline")], body.as_bytes())
        .await;
    assert_acked(&r, &id, "offline");
}

/// A receipt's status is a device's free text; logged at debug level as it
/// was, a newline in it wrote a line of the device's choosing into the
/// server's log (a forged record, with its own time and level), and a
/// terminal escape cleared an operator's screen (a probe's finding). It is
/// logged escaped.
#[tokio::test]
async fn a_receipt_status_cannot_forge_log_lines() {
    let server = pere_tests::ServerProcess::start_logging(&[], "debug").await;
    let _stream = server.subscribe("inj", "dev-1").await;
    let id = server.publish("inj", "x").await;
    let status = "ok\n2026-12-05T00:00:00.000000Z  INFO FORGED by a device\u{1b}[2J";
    let body = json!({ "id": id, "status": status }).to_string();
    let r = server
        .feedback(
            "inj",
            &[("device", "dev-1"), ("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    pere_tests::eventually("the receipt is logged", || async {
        server.log().contains("FORGED by a device")
    })
    .await;
    let log = server.log();
    assert!(
        !log.lines().any(|l| l.starts_with("2026-12-05T00:00:00")),
        "a forged line:\n{log}"
    );
    assert!(!log.contains('\u{1b}'), "a raw escape:\n{log}");
}
