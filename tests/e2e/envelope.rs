//! `?envelope=json` (docs/PROTOCOL.md §3.8): a stream on patterns or several
//! channels learns each event's channel. Opt-in, so PERE's clients read the
//! same bytes as ever without it.

use pere_tests::{SseStream, TestServer};
use serde_json::{Value, json};

async fn open(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> SseStream {
    let mut s = server.stream(path, headers).await;
    assert_eq!(s.status, 200, "{}", s.text());
    assert_eq!(s.next_event().await.unwrap().event, "pere.hello");
    s
}

#[tokio::test]
async fn a_pattern_stream_gets_each_event_with_its_channel() {
    let server = TestServer::start().await;
    let mut wrapped = open(&server, "/feed/orders.*?envelope=json", &[("device", "w")]).await;
    let mut plain = open(&server, "/feed/orders.*", &[("device", "p")]).await;
    let eu = server.publish("orders.eu", r#"{"n":1}"#).await;
    let r = server
        .post("/push/orders.us?event=created", &[], b"line 1\nline 2")
        .await;
    let us = r.json()["id"].as_str().unwrap().to_string();
    let got = wrapped.messages(1).await.remove(0);
    assert_eq!(got.id, eu);
    let data: Value = serde_json::from_str(&got.data).unwrap();
    assert_eq!(
        data,
        json!({"channel": "orders.eu", "id": eu, "type": "message", "data": r#"{"n":1}"#})
    );
    // Named types keep their `event:` line; a multi-line payload is one
    // JSON string.
    let got = wrapped.next_event().await.unwrap();
    assert_eq!(
        (got.id.as_str(), got.event.as_str()),
        (us.as_str(), "created")
    );
    let data: Value = serde_json::from_str(&got.data).unwrap();
    assert_eq!(data["channel"], "orders.us");
    assert_eq!(data["type"], "created");
    assert_eq!(data["data"], "line 1\nline 2");
    // The same fan-out, unwrapped for the stream that did not ask.
    assert_eq!(plain.messages(1).await.remove(0).data, r#"{"n":1}"#);
    assert_eq!(plain.next_event().await.unwrap().data, "line 1\nline 2");
}

#[tokio::test]
async fn several_channels_and_replays_are_wrapped_too() {
    let server = TestServer::start().await;
    let a = server.publish("a", "to a").await;
    let b = server.publish("b", "to b").await;
    let mut s = open(
        &server,
        "/feed?channel=a&channel=b&envelope=json&replay=all",
        &[("device", "d")],
    )
    .await;
    let got = s.messages(2).await;
    let channels: Vec<(String, String)> = got
        .iter()
        .map(|e| {
            let v: Value = serde_json::from_str(&e.data).unwrap();
            (e.id.clone(), v["channel"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(channels, [(a, "a".to_string()), (b, "b".to_string())]);
    let (channel, payload) = pere_http::client::unwrap_envelope(&got[1].data).unwrap();
    assert_eq!((channel.as_str(), payload.as_str()), ("b", "to b"));
}

#[tokio::test]
async fn an_unknown_envelope_is_refused() {
    let server = TestServer::start().await;
    let s = server.stream("/feed/a?envelope=xml", &[]).await;
    assert_eq!(s.status, 400, "{}", s.text());
    assert!(s.text().contains("invalid_parameter"), "{}", s.text());
}
