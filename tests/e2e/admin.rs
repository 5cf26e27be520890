//! Admin and operations endpoints (docs/PROTOCOL.md §6).

use pere_tests::{TestServer, eventually};
use serde_json::{Value, json};

#[tokio::test]
async fn connections_have_pere_shape_with_the_total_last() {
    let server = TestServer::start().await;
    let r = server.get("/admin/connections").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({ "total number": 0 }));
    let _a = server.subscribe("CHANNEL_1", "a").await;
    let _b = server.subscribe("CHANNEL_1", "b").await;
    let _c = server.stream("/feed/other", &[]).await;
    let _d = server.stream("/feed?channel=other&channel=x.*", &[]).await;
    let r = server.get("/admin/connections").await;
    assert_eq!(
        r.json(),
        json!({ "CHANNEL_1": 2, "other": 2, "x.*": 1, "total number": 4 })
    );
    assert!(
        r.text().ends_with(r#""total number":4}"#),
        "the total comes last, as PERE wrote it: {}",
        r.text()
    );
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/json"))
    );
}

#[tokio::test]
async fn connections_drop_when_streams_close() {
    let server = TestServer::start().await;
    let a = server.subscribe("CHANNEL_1", "a").await;
    let _b = server.subscribe("CHANNEL_1", "b").await;
    drop(a);
    eventually("one stream left", || async {
        server.admin().connections().await == json!({ "CHANNEL_1": 1, "total number": 1 })
    })
    .await;
}

#[tokio::test]
async fn events_are_envelopes_with_json_data_parsed() {
    let server = TestServer::start().await;
    let json_payload = r#"{"channel":"c","device":"0039512345678","id":1,"data":"abc123"}"#;
    let a = server.publish("c", json_payload).await;
    let b = server.publish("c", "plain text").await;
    let r = server
        .post("/push/c?event=alert", &[("device", "pub-1")], b"42")
        .await;
    let c = r.json()["id"].as_str().unwrap().to_string();
    let r = server.get("/admin/events/c").await;
    assert_eq!(r.status, 200);
    let events = r.json();
    let events = events.as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["id"], a.as_str());
    assert_eq!(
        events[0]["data"],
        serde_json::from_str::<Value>(json_payload).unwrap()
    );
    assert_eq!(events[0]["event"], "message");
    assert_eq!(events[0]["device"], Value::Null);
    assert_eq!(events[1]["id"], b.as_str());
    assert_eq!(events[1]["data"], "plain text");
    assert_eq!(events[2]["id"], c.as_str());
    assert_eq!(events[2]["data"], 42);
    assert_eq!(events[2]["event"], "alert");
    assert_eq!(events[2]["device"], "pub-1");
    for e in events {
        let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["id", "time", "event", "device", "data"], "{e}");
        assert!(e["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{e}");
    }
}

#[tokio::test]
async fn events_page_with_after_and_limit() {
    let server = TestServer::start().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(server.publish("c", &n.to_string()).await);
    }
    let page = |query: &str| {
        let server = &server;
        let query = query.to_string();
        async move {
            let r = server.get(&format!("/admin/events/c{query}")).await;
            assert_eq!(r.status, 200, "{query}: {}", r.text());
            r.json()
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(page("?limit=2").await, ids[..2], "the oldest first");
    assert_eq!(page(&format!("?after={}", ids[1])).await, ids[2..]);
    assert_eq!(page(&format!("?after={}&limit=2", ids[1])).await, ids[2..4]);
    assert_eq!(
        page(&format!("?after={}", ids[4])).await,
        Vec::<String>::new()
    );
    assert_eq!(page("").await, ids);
    assert_eq!(page("?after=0").await, ids);
    for bad in ["?limit=0", "?limit=x", "?limit=-1", "?after=x"] {
        let r = server.get(&format!("/admin/events/c{bad}")).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    assert_eq!(
        server.admin().events("empty").await,
        json!([]),
        "an unknown channel has no events"
    );
}

#[tokio::test]
async fn devices_show_presence_and_pere_fields() {
    let server = TestServer::start().await;
    let mut s = server
        .stream(
            "/feed/CHANNEL_1",
            &[("device", "H0039"), ("Last-Event-ID", "")],
        )
        .await;
    s.next_event().await;
    let id = server.publish("CHANNEL_1", "x").await;
    s.messages(1).await;
    let d = server.presence("CHANNEL_1", "H0039").await.expect("listed");
    assert_eq!(d["op"], "feed", "{d}");
    assert_eq!(d["online"], true, "{d}");
    assert_eq!(d["connections"], 1, "{d}");
    assert_eq!(d["member"], true, "{d}");
    for key in [
        "at",
        "Last-Event-Id",
        "connected_at",
        "last_seen",
        "last_delivered",
        "last_acked",
    ] {
        assert!(d.get(key).is_some(), "{key} in {d}");
    }
    eventually("last_delivered moves", || async {
        server.presence("CHANNEL_1", "H0039").await.unwrap()["last_delivered"] == id.as_str()
    })
    .await;
    server.ack("CHANNEL_1", "H0039", &id).await;
    let d = server.presence("CHANNEL_1", "H0039").await.unwrap();
    assert_eq!(d["op"], "feedback", "{d}");
    assert_eq!(d["Last-Event-Id"], id.as_str(), "{d}");
    assert_eq!(d["last_acked"], id.as_str(), "{d}");
    assert!(d["at"].as_str().is_some_and(|t| t.ends_with('Z')), "{d}");
    drop(s);
    server.wait_offline("CHANNEL_1", "H0039").await;
    let d = server.presence("CHANNEL_1", "H0039").await.unwrap();
    assert_eq!(d["connections"], 0, "{d}");
    assert_eq!(d["member"], true, "still a member while offline: {d}");
}

#[tokio::test]
async fn devices_record_the_last_event_id_sent_with_a_feed() {
    let server = TestServer::start().await;
    let id = server.publish("c", "x").await;
    let mut s = server
        .stream("/feed/c", &[("device", "d"), ("Last-Event-ID", &id)])
        .await;
    s.next_event().await;
    let d = server.presence("c", "d").await.unwrap();
    assert_eq!(d["op"], "feed");
    assert_eq!(d["Last-Event-Id"], id.as_str(), "{d}");
}

#[tokio::test]
async fn deleting_a_device_drops_its_membership_and_closes_its_streams() {
    let server = TestServer::start().await;
    let mut s = server.subscribe("c", "d").await;
    let _other = server.subscribe("c", "e").await;
    let r = server.admin().drop_device("c", "d").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(s.until_end().await.is_empty(), "its stream ends");
    assert!(server.presence("c", "d").await.is_none());
    let r = server.post("/push/c", &[], b"x").await;
    assert_eq!(r.json()["recipients"], 1, "no longer in audiences");
    server
        .admin()
        .drop_device("c", "d")
        .await
        .assert_error(404, "unknown_member");
    server
        .get("/admin/devices/c/d")
        .await
        .assert_error(404, "unknown_member");
    let e = server.get("/admin/devices/c/e").await;
    assert_eq!(e.status, 200, "{}", e.text());
    assert_eq!(e.json()["online"], true);
}

/// `GET /admin/events` is made an event at a time as it is sent. Built
/// whole, a page of events of control characters (each escaped to six
/// bytes in JSON) was one answer of tens of MB per request, held by a
/// client that never read it until `--send-timeout` (a resource probe:
/// five such clients pinned 375 MiB).
#[tokio::test]
async fn an_events_page_is_sent_as_made_and_a_client_that_does_not_read_holds_little() {
    let _heavy = pere_tests::heavy().await;
    let server = pere_tests::ServerProcess::start(&["--max-payload", "65536"]).await;
    let payload = "\u{1}".repeat(60_000);
    let mut ids = Vec::new();
    for _ in 0..100 {
        let r =
            pere_tests::request(server.addr, "POST", "/push/big", &[], payload.as_bytes()).await;
        assert_eq!(r.status, 201, "{}", r.text());
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    // A reader gets the page whole: 100 events of 360 KB of JSON each.
    let r = pere_tests::request(server.addr, "GET", "/admin/events/big", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let page = r.json();
    let page = page.as_array().unwrap();
    let got: Vec<&str> = page.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(got, ids);
    assert!(page.iter().all(|e| e["data"] == payload.as_str()));
    drop(r);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let before = server.rss_kib();
    // Three that ask and never read.
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut s = pere_tests::raw::small_buffer_connect(server.addr).await;
        tokio::io::AsyncWriteExt::write_all(
            &mut s,
            b"GET /admin/events/big HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .unwrap();
        idle.push(s);
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let grown = server.rss_kib().saturating_sub(before);
    // Built whole: each held 36 MB of JSON (more while it was built).
    assert!(
        grown < 40 * 1024,
        "three readers that do not read cost {grown} KiB"
    );
    assert_eq!(
        pere_tests::request(server.addr, "GET", "/healthz", &[], b"")
            .await
            .status,
        200
    );
    drop(idle);
}

#[tokio::test]
async fn channels_list_events_ids_members_and_online_devices() {
    let server = TestServer::start().await;
    let _a = server.subscribe("orders.eu", "a").await;
    drop(server.subscribe("orders.*", "b").await);
    server.wait_offline("orders.*", "b").await;
    let first = server.publish("orders.eu", "1").await;
    let last = server.publish("orders.eu", "2").await;
    let r = server.get("/admin/channels").await;
    assert_eq!(r.status, 200);
    let list = r.json();
    let eu = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "orders.eu")
        .unwrap_or_else(|| panic!("orders.eu listed: {list}"));
    assert_eq!(
        eu,
        &json!({
            "channel": "orders.eu",
            "events": 2,
            "oldest": first,
            "newest": last,
            "members": 2,
            "online": 1,
            "pattern": false,
        })
    );
}

/// Issue 18.6: `/admin/channels` counted a `shop.*` member under
/// `shop.eu`, `/admin/devices/shop.eu` showed `{}`, and patterns appeared
/// nowhere. Every view now agrees: the channel lists the pattern's
/// members (saying through which subscription), and the pattern is listed.
#[tokio::test]
async fn pattern_members_are_listed_under_the_channels_they_match() {
    let server = TestServer::start().await;
    let _star = server.subscribe("shop.*", "star").await;
    let _exact = server.subscribe("shop.eu", "exact").await;
    drop(server.subscribe("shop.**", "deep").await);
    server.wait_offline("shop.**", "deep").await;
    let id = server.publish("shop.eu", "x").await;
    let receipt = server.receipts("shop.eu", &id).await;
    assert_eq!(receipt["recipients"], 3, "{receipt}");

    let devices = server.admin().devices("shop.eu").await;
    let names: Vec<&String> = devices.as_object().unwrap().keys().collect();
    assert_eq!(names, ["deep", "exact", "star"], "{devices}");
    assert_eq!(devices["star"]["subscription"], "shop.*", "{devices}");
    assert_eq!(devices["star"]["online"], true, "{devices}");
    assert_eq!(devices["deep"]["subscription"], "shop.**", "{devices}");
    assert_eq!(devices["exact"]["subscription"], "shop.eu", "{devices}");
    let star = server.get("/admin/devices/shop.eu/star").await;
    assert_eq!(star.status, 200, "{}", star.text());
    assert_eq!(star.json()["subscription"], "shop.*");

    let channels = server.admin().channels().await;
    let find = |name: &str| {
        channels
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["channel"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} listed: {channels}"))
    };
    let eu = find("shop.eu");
    assert_eq!(
        (eu["members"].as_u64(), eu["online"].as_u64()),
        (Some(3), Some(2))
    );
    let star = find("shop.*");
    assert_eq!(star["pattern"], true, "{star}");
    assert_eq!(
        (
            star["members"].as_u64(),
            star["online"].as_u64(),
            star["events"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{star}"
    );

    // Dropping it from the channel says where it is a member.
    let r = server.admin().drop_device("shop.eu", "star").await;
    r.assert_error(404, "unknown_member");
    assert!(
        r.text().contains("DELETE /admin/devices/shop.*/star"),
        "{}",
        r.text()
    );
}

/// Presence is kept "per device per channel" (contract §5). A device on
/// `orders.*` showed, under `orders.eu`, the pattern's latest delivery and
/// receipt, both of them an `orders.us` event.
#[tokio::test]
async fn a_pattern_members_presence_under_a_channel_is_that_channels() {
    let server = TestServer::start().await;
    let mut star = server.subscribe("orders.*", "star").await;
    let eu = server.publish("orders.eu", "1").await;
    let us = server.publish("orders.us", "2").await;
    assert_eq!(star.ids(2).await, [eu.clone(), us.clone()]);
    server.ack("orders.us", "star", &us).await;
    server.wait_acked("orders.us", &us, "star").await;

    let devices = server.admin().devices("orders.eu").await;
    let p = &devices["star"];
    assert_eq!(p["subscription"], "orders.*", "{devices}");
    assert_eq!(p["last_delivered"], eu.as_str(), "{devices}");
    assert_eq!(p["last_acked"], Value::Null, "{devices}");
    let devices = server.admin().devices("orders.us").await;
    assert_eq!(devices["star"]["last_delivered"], us.as_str(), "{devices}");
    assert_eq!(devices["star"]["last_acked"], us.as_str(), "{devices}");
    // The pattern's own view keeps the subscription's newest.
    let pattern = server.presence("orders.*", "star").await.unwrap();
    assert_eq!(pattern["last_delivered"], us.as_str(), "{pattern}");

    // On a channel none of whose retained events reached it: none.
    drop(star);
    server.wait_offline("orders.*", "star").await;
    server.publish("orders.asia", "3").await;
    let devices = server.admin().devices("orders.asia").await;
    assert_eq!(devices["star"]["last_delivered"], Value::Null, "{devices}");
    assert_eq!(devices["star"]["online"], false, "{devices}");
    let one = server.get("/admin/devices/orders.eu/star").await.json();
    assert_eq!(one["last_delivered"], eu.as_str(), "{one}");
}

#[tokio::test]
async fn healthz_says_ok() {
    let server = TestServer::start().await;
    let r = server.get("/healthz").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain"))
    );
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let server = TestServer::start().await;
    let mut s = server.subscribe("c", "d").await;
    server.publish("c", "x").await;
    s.messages(1).await;
    let r = server.get("/metrics").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.headers
    );
    let text = r.text();
    assert!(text.contains("# TYPE pere_events_published_total counter\n"));
    assert!(text.contains("\npere_events_published_total 1\n"), "{text}");
    assert!(text.contains("\npere_streams_open 1\n"), "{text}");
    assert!(text.ends_with('\n'));
    // Every sample line is `name{labels} value` under a TYPE line.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
        let metric = name.split('{').next().unwrap();
        // A histogram's samples are its name plus _bucket, _sum, _count.
        let histogram = ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            metric
                .strip_suffix(suffix)
                .is_some_and(|family| text.contains(&format!("# TYPE {family} histogram\n")))
        });
        assert!(
            histogram || text.contains(&format!("# TYPE {metric} ")),
            "{metric} has a TYPE"
        );
    }
}

#[tokio::test]
async fn the_root_greets_like_pere() {
    let server = TestServer::start().await;
    let r = server.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["message"], "PERE server up and running");
}

#[tokio::test]
async fn cors_preflight_allows_pere_headers_on_publish_and_feedback() {
    let server = TestServer::start().await;
    for (path, method) in [
        ("/push/c", "POST"),
        ("/feedback/c", "POST"),
        ("/feed/c", "GET"),
        ("/receipts/c/1", "GET"),
        ("/admin/devices/c/d", "DELETE"),
    ] {
        let r = server
            .request(
                "OPTIONS",
                path,
                &[
                    ("Origin", "http://example.com"),
                    ("Access-Control-Request-Method", method),
                    (
                        "Access-Control-Request-Headers",
                        "device,last-event-id,idempotency-key,authorization,content-type",
                    ),
                ],
                b"",
            )
            .await;
        assert!(
            r.status == 200 || r.status == 204,
            "{path}: {} {}",
            r.status,
            r.text()
        );
        assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{path}");
        let methods = r
            .header("access-control-allow-methods")
            .unwrap_or_default()
            .to_ascii_uppercase();
        assert!(methods.contains(method), "{path}: {methods}");
        let allowed: Vec<String> = r
            .header("access-control-allow-headers")
            .unwrap_or_default()
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .collect();
        for h in [
            "device",
            "last-event-id",
            "idempotency-key",
            "authorization",
            "content-type",
        ] {
            assert!(allowed.iter().any(|a| a == h), "{path}: {h} in {allowed:?}");
        }
    }
}

#[tokio::test]
async fn simple_responses_carry_cors_headers() {
    let server = TestServer::start().await;
    let r = server
        .post("/push/c", &[("Origin", "http://example.com")], b"x")
        .await;
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let r = server.get("/nope").await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("*"),
        "errors too"
    );
}

#[tokio::test]
async fn the_web_page_is_served() {
    let server = TestServer::start().await;
    let r = server.get("/subscriber.html").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/html"))
    );
}

/// Dropping a device from one channel of a stream opened on two leaves the
/// stream open for the other, counted, and the device goes offline there
/// when it closes.
#[tokio::test]
async fn dropping_one_membership_of_a_two_channel_stream_keeps_it_for_the_other() {
    let server = TestServer::start().await;
    let mut stream = server
        .open("/feed?channel=a&channel=b", &[("device", "d")])
        .await;
    let r = server.admin().drop_device("a", "d").await;
    assert_eq!(r.status, 200, "{}", r.text());
    server.publish("b", "still").await;
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next_message())
        .await
        .expect("the stream carries on")
        .expect("an event");
    assert!(got.data.contains("still"), "{got:?}");
    assert_eq!(server.admin().open_streams().await, 1);
    assert_eq!(server.admin().devices("b").await["d"]["connections"], 1);
    drop(stream);
    eventually("d is offline on b once its stream closed", || async {
        let devices = server.admin().devices("b").await;
        devices["d"]["online"] == false && devices["d"]["connections"] == 0
    })
    .await;
    assert_eq!(server.admin().open_streams().await, 0);
}
