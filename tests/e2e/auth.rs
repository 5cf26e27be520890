//! Auth (docs/PROTOCOL.md §7, issue 6) through the real `pere-server` binary with an
//! `--auth` file: 401/403 on every endpoint family, receipts only as
//! oneself, the admin token API, persistence across a restart, and changes
//! applied to open streams (revocation closes, a removed grant filters).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pere_tests::{Client, Response, ServerProcess, WAIT, eventually, temp_dir};

const ADMIN: &str = "admin-token-00000000001";
const PHONE: &str = "phone-token-00000000001";
const PHONE2: &str = "phone-token-00000000002";
const BACKEND: &str = "backend-token-000000001";
const ALL_TOKENS: &[&str] = &[ADMIN, PHONE, PHONE2, BACKEND, NEW];
/// Created at run time through the admin API.
const NEW: &str = "runtime-token-000000001";

fn auth_file() -> PathBuf {
    let dir = temp_dir("auth");
    let path = dir.join("auth.json");
    let json = serde_json::json!({ "tokens": {
        ADMIN: { "subject": "ops", "admin": true },
        PHONE: { "subject": "phone-1", "subscribe": ["orders.*", "news"] },
        PHONE2: { "subject": "phone-2", "subscribe": ["orders.*", "news"] },
        BACKEND: { "subject": "backend", "publish": ["orders.**", "news"] },
    }});
    std::fs::write(&path, json.to_string()).unwrap();
    path
}

async fn start(extra: &[&str]) -> ServerProcess {
    let file = auth_file();
    let mut args = vec!["--auth", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    ServerProcess::start(&args).await
}

/// The server's callers, one per token of the `--auth` file (and the one
/// created at run time).
struct Callers {
    admin: Client,
    phone: Client,
    phone2: Client,
    backend: Client,
    new: Client,
}

fn callers(server: &ServerProcess) -> Callers {
    Callers {
        admin: server.with_token(ADMIN),
        phone: server.with_token(PHONE),
        phone2: server.with_token(PHONE2),
        backend: server.with_token(BACKEND),
        new: server.with_token(NEW),
    }
}

fn assert_no_token_in(text: &str, what: &str) {
    for t in ALL_TOKENS {
        assert!(!text.contains(t), "{what} contains a token value: {text}");
    }
}

/// One request of each endpoint family that needs a caller.
fn guarded_requests() -> Vec<(&'static str, String, Vec<u8>)> {
    vec![
        ("POST", "/push/orders.eu".into(), b"x".to_vec()),
        ("GET", "/feed/orders.eu".into(), vec![]),
        ("GET", "/feed?channel=news&channel=orders.eu".into(), vec![]),
        (
            "POST",
            "/feedback/orders.eu".into(),
            br#"{"id":"1"}"#.to_vec(),
        ),
        ("GET", "/receipts/orders.eu/1".into(), vec![]),
        ("GET", "/receipts/orders.eu".into(), vec![]),
        ("GET", "/admin/connections".into(), vec![]),
        ("GET", "/admin/channels".into(), vec![]),
        ("GET", "/admin/events/orders.eu".into(), vec![]),
        ("GET", "/admin/devices/orders.eu".into(), vec![]),
        ("DELETE", "/admin/devices/orders.eu/phone-1".into(), vec![]),
        ("GET", "/admin/tokens".into(), vec![]),
        (
            "PUT",
            format!("/admin/tokens/{NEW}"),
            br#"{"subject":"x"}"#.to_vec(),
        ),
        ("DELETE", format!("/admin/tokens/{PHONE}"), vec![]),
        ("GET", "/metrics".into(), vec![]),
    ]
}

#[tokio::test]
async fn every_endpoint_family_answers_401_without_a_valid_token() {
    let server = start(&[]).await;
    for (method, path, body) in guarded_requests() {
        for headers in [
            vec![],
            vec![("Authorization", "Bearer not-a-known-token-at-all")],
            vec![("Authorization", "Basic YWRtaW46YWRtaW4=")],
        ] {
            let r = server.request(method, &path, &headers, &body).await;
            r.assert_error(401, "unauthorized");
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer realm=\"pere\""),
                "{method} {path}"
            );
        }
        // An unknown token in the query string is refused the same way.
        let sep = if path.contains('?') { '&' } else { '?' };
        let r = server
            .request(
                method,
                &format!("{path}{sep}access_token=not-a-known-token-at-all"),
                &[],
                &body,
            )
            .await;
        r.assert_error(401, "unauthorized");
        assert_no_token_in(&r.text(), "a 401 body");
    }
    // The open routes stay open: health, the greeting, pages, preflights.
    assert_eq!(server.get("/healthz").await.status, 200);
    assert_eq!(server.get("/").await.status, 200);
    assert_eq!(server.get("/subscriber.html").await.status, 200);
    assert_eq!(
        server.request("OPTIONS", "/push/x", &[], b"").await.status,
        204
    );
    // Nothing was published or revoked by all that.
    let r = server.with_token(ADMIN).admin().tokens().await;
    assert_eq!(r.json()["tokens"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn tokens_reach_only_what_they_grant() {
    let server = start(&[]).await;
    let Callers {
        admin,
        phone,
        backend,
        ..
    } = callers(&server);
    let forbidden = |r: Response, what: &str| {
        assert_eq!(r.status, 403, "{what}: {}", r.text());
        r.assert_error(403, "forbidden");
        assert_no_token_in(&r.text(), what);
    };
    // A phone cannot publish, nor subscribe outside its grants.
    forbidden(
        phone.post("/push/orders.eu", &[], b"x").await,
        "phone publishes",
    );
    forbidden(
        phone.get("/feed/orders.eu.paris").await,
        "phone subscribes beyond orders.*",
    );
    forbidden(
        phone.get("/feed/orders.**").await,
        "phone subscribes to a wider pattern",
    );
    // One channel not granted refuses the whole stream.
    forbidden(
        phone.get("/feed?channel=news&channel=secret").await,
        "phone asks for news and secret",
    );
    // The backend publishes but does not subscribe.
    forbidden(backend.get("/feed/news").await, "backend subscribes");
    forbidden(
        backend.post("/push/other", &[], b"x").await,
        "backend publishes outside its grants",
    );
    // Receipts belong to publishers and operators, not to devices.
    let id = backend.publish("orders.eu", "one").await;
    forbidden(
        phone.get(&format!("/receipts/orders.eu/{id}")).await,
        "phone reads receipts",
    );
    forbidden(
        phone.get("/receipts/orders.eu").await,
        "phone streams receipts",
    );
    backend.receipts("orders.eu", &id).await;
    // Admin routes need an admin token.
    for path in ["/admin/connections", "/admin/tokens", "/metrics"] {
        forbidden(phone.get(path).await, path);
        forbidden(backend.get(path).await, path);
        let r = admin.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    // What is granted works, with the token in the header or the query.
    let mut s = phone.open("/feed/orders.eu", &[]).await;
    let r = server
        .stream(&format!("/feed/news?access_token={PHONE2}"), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    backend.publish("orders.eu", "two").await;
    assert_eq!(s.messages(1).await[0].data, "two");
    assert_no_token_in(&server.log(), "the server log");
}

#[tokio::test]
async fn a_device_acknowledges_and_subscribes_only_as_itself() {
    let server = start(&[]).await;
    let Callers { phone, backend, .. } = callers(&server);
    let mut s = phone.open("/feed/orders.eu", &[]).await;
    let id = backend.publish("orders.eu", "ack me").await;
    let e = s.messages(1).await.remove(0);
    assert_eq!(e.id, id);
    let body = format!(r#"{{"id":"{id}"}}"#);
    let json = ("Content-Type", "application/json");
    // Another device's name, as header or parameter: 403.
    phone
        .feedback("orders.eu", &[("device", "phone-2"), json], body.as_bytes())
        .await
        .assert_error(403, "forbidden");
    phone
        .post(
            "/feedback/orders.eu?device=phone-2",
            &[json],
            body.as_bytes(),
        )
        .await
        .assert_error(403, "forbidden");
    // Nobody acked for phone-2 through all that.
    let summary = backend.receipts("orders.eu", &id).await;
    assert_eq!(summary["acked"], 0, "{summary}");
    // A stream opened under another device's name: 403 as well.
    phone
        .request("GET", "/feed/orders.eu", &[("device", "phone-2")], b"")
        .await
        .assert_error(403, "forbidden");
    // As itself (named or not) the receipt is recorded under the subject.
    let r = phone.feedback("orders.eu", &[json], body.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["device"], "phone-1");
    let r = phone
        .feedback("orders.eu", &[("device", "phone-1"), json], body.as_bytes())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A receipt needs the subscribe grant of its channel.
    phone
        .feedback("secret", &[json], body.as_bytes())
        .await
        .assert_error(403, "forbidden");
}

#[tokio::test]
async fn the_admin_api_manages_tokens_and_never_shows_their_values() {
    let server = start(&[]).await;
    let Callers {
        admin,
        backend,
        new,
        ..
    } = callers(&server);
    let list = admin.admin().tokens().await;
    assert_eq!(list.status, 200);
    assert_no_token_in(&list.text(), "GET /admin/tokens");
    let tokens = list.json()["tokens"].as_array().unwrap().clone();
    assert_eq!(tokens.len(), 4);
    assert!(
        tokens
            .iter()
            .all(|t| t["token"].as_str().unwrap().starts_with("sha256:") && t["origin"] == "file"),
        "{tokens:?}"
    );
    // Create.
    let grants = br#"{"subject":"kiosk-9","subscribe":["news"],"publish":[],"admin":false}"#;
    let r = admin.admin().put_token(NEW, grants).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["created"], true);
    assert_eq!(r.json()["subject"], "kiosk-9");
    assert_no_token_in(&r.text(), "PUT answer");
    let mut s = new.open("/feed/news", &[]).await;
    backend.publish("news", "hello kiosk").await;
    assert_eq!(s.messages(1).await[0].data, "hello kiosk");
    // Change: 200, and it applies (orders.eu is now granted).
    let wider = br#"{"subject":"kiosk-9","subscribe":["news","orders.*"]}"#;
    let r = admin.admin().put_token(NEW, wider).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["created"], false);
    assert_eq!(new.stream("/feed/orders.eu", &[]).await.status, 200);
    let list = admin.admin().tokens().await;
    let runtime: Vec<_> = list.json()["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["origin"] == "runtime")
        .cloned()
        .collect();
    assert_eq!(runtime.len(), 1, "{}", list.text());
    assert_eq!(runtime[0]["subject"], "kiosk-9");
    // Revoke: 200, then 401 for the token and 404 for a second revoke.
    let r = admin.admin().revoke_token(NEW).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_no_token_in(&r.text(), "DELETE answer");
    new.get("/feed/news")
        .await
        .assert_error(401, "unauthorized");
    admin
        .admin()
        .revoke_token(NEW)
        .await
        .assert_error(404, "unknown_token");
    // Bad input is 400, and the answer does not repeat the token.
    let r = admin.admin().put_token("short-secret", grants).await;
    r.assert_error(400, "invalid_token");
    assert!(!r.text().contains("short-secret"), "{}", r.text());
    for bad in [
        &b"not json"[..],
        br#"{"subject":"a b"}"#,
        br#"{"subject":"k","subscribe":["a b"]}"#,
        br#"{"subject":"k","extra":1}"#,
        // An array serde would read as the struct: an admin token.
        br#"["k",[],[],true]"#,
        b"\xff\xfe",
    ] {
        let r = admin.admin().put_token(NEW, bad).await;
        r.assert_error(400, "invalid_body");
        assert_no_token_in(&r.text(), "a 400 body");
        // The parser's reason in full, not cut after a few characters
        // nor with the sentence's own quotes escaped.
        if std::str::from_utf8(bad).is_err() {
            continue;
        }
        let sentence = r.json()["error"].as_str().unwrap().to_string();
        assert!(
            sentence.starts_with("the body is not {\"subject\""),
            "{sentence}"
        );
        let reason = sentence.split("}: ").nth(1).unwrap_or_default();
        assert!(reason.chars().count() > 12, "{sentence}");
    }
    let log = server.stop();
    assert!(log.contains("token"), "token changes are logged: {log}");
    assert_no_token_in(&log, "the server log");
}

#[tokio::test]
async fn run_time_tokens_survive_a_restart_with_the_file_store() {
    let dir = temp_dir("auth-store");
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    let server = start(&["--data-dir", data, "--fsync", "never"]).await;
    let admin = server.with_token(ADMIN);
    let grants = br#"{"subject":"kiosk-9","subscribe":["news"]}"#;
    let r = admin.admin().put_token(NEW, grants).await;
    assert_eq!(r.status, 201, "{}", r.text());
    // Revoking a token of the file sticks, although the file still has it.
    let r = admin.admin().revoke_token(PHONE2).await;
    assert_eq!(r.status, 200, "{}", r.text());
    server.stop();

    let server = start(&["--data-dir", data]).await;
    let Callers {
        phone, phone2, new, ..
    } = callers(&server);
    assert_eq!(new.stream("/feed/news", &[]).await.status, 200);
    phone2
        .get("/feed/news")
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(phone.stream("/feed/news", &[]).await.status, 200);
    server.stop();

    // Without --auth, a store that holds run-time tokens stays secured.
    let server = ServerProcess::start(&["--data-dir", data]).await;
    server
        .get("/feed/news")
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(
        server
            .with_token(NEW)
            .stream("/feed/news", &[])
            .await
            .status,
        200
    );
    let log = server.stop();
    assert_no_token_in(&log, "the server log");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn revoking_a_token_closes_its_streams_within_a_second() {
    let server = start(&[]).await;
    let Callers {
        admin,
        phone,
        phone2,
        backend,
        new,
    } = callers(&server);
    let mut phone_stream = phone
        .open("/feed?channel=orders.eu&channel=news", &[])
        .await;
    let mut receipts = backend.stream("/receipts/orders.eu", &[]).await;
    assert_eq!(
        receipts.status,
        200,
        "stream /receipts/orders.eu refused: {}",
        receipts.text()
    );
    let mut other = phone2.open("/feed/orders.eu", &[]).await;
    let started = Instant::now();
    let r = admin.admin().revoke_token(PHONE).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = admin.admin().revoke_token(BACKEND).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rest = tokio::time::timeout(Duration::from_secs(1), phone_stream.until_end())
        .await
        .expect("the revoked token's stream closes within a second");
    assert!(
        rest.iter().all(|e| e.event.starts_with("pere.")),
        "{rest:?}"
    );
    tokio::time::timeout(
        Duration::from_secs(1).saturating_sub(started.elapsed()) + Duration::from_secs(1),
        receipts.until_end(),
    )
    .await
    .expect("a receipts stream of a revoked token closes too");
    // The other token's stream is untouched.
    let grants = br#"{"subject":"pub-2","publish":["orders.eu"]}"#;
    let r = admin.admin().put_token(NEW, grants).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = new.post("/push/orders.eu", &[], b"still here").await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(other.messages(1).await[0].data, "still here");
    eventually(
        "the closed stream is gone from /admin/connections",
        || async { admin.admin().open_streams().await == 1 },
    )
    .await;
}

#[tokio::test]
async fn removing_a_grant_stops_that_channel_and_keeps_the_stream() {
    let server = start(&[]).await;
    let Callers {
        admin,
        phone,
        backend,
        ..
    } = callers(&server);
    let mut s = phone
        .open("/feed?channel=orders.eu&channel=news", &[])
        .await;
    backend.publish("orders.eu", "before").await;
    assert_eq!(s.messages(1).await[0].data, "before");
    let narrower = br#"{"subject":"phone-1","subscribe":["news"]}"#;
    let r = admin.admin().put_token(PHONE, narrower).await;
    assert_eq!(r.status, 200, "{}", r.text());
    backend.publish("orders.eu", "filtered").await;
    backend.publish("news", "delivered").await;
    let next = s.messages(1).await.remove(0);
    assert_eq!(
        next.data, "delivered",
        "the channel whose grant went is skipped; the other continues"
    );
    // Giving the grant back lets that channel through again.
    let wider = br#"{"subject":"phone-1","subscribe":["news","orders.*"]}"#;
    let r = admin.admin().put_token(PHONE, wider).await;
    assert_eq!(r.status, 200, "{}", r.text());
    backend.publish("orders.eu", "again").await;
    assert_eq!(s.messages(1).await[0].data, "again");
    // Removing every grant the stream uses closes it.
    let none = br#"{"subject":"phone-1","subscribe":["elsewhere"]}"#;
    admin.admin().put_token(PHONE, none).await;
    tokio::time::timeout(WAIT, s.until_end())
        .await
        .expect("a stream with nothing left closes");
}

#[tokio::test]
async fn the_first_run_time_admin_token_turns_auth_on() {
    let server = ServerProcess::start(&[]).await;
    // A device token first would lock everyone out of /admin: refused.
    server
        .admin()
        .put_token(NEW, br#"{"subject":"kiosk"}"#)
        .await
        .assert_error(409, "auth_disabled");
    // Streams opened while auth is off, which nothing grants once it is on.
    let mut open = server.stream("/feed/news", &[]).await;
    assert_eq!(open.status, 200, "{}", open.text());
    let mut device = server.open("/feed/news", &[("device", "eve")]).await;
    let mut receipts = server.stream("/receipts/news", &[]).await;
    assert_eq!(receipts.status, 200, "{}", receipts.text());
    let r = server
        .admin()
        .put_token(NEW, br#"{"subject":"ops","admin":true}"#)
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    server
        .admin()
        .tokens()
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(server.with_token(NEW).admin().tokens().await.status, 200);
    // They close (what was published since, they are not sent).
    let grants = br#"{"subject":"backend","publish":["news"]}"#;
    let r = server
        .with_token(NEW)
        .admin()
        .put_token(BACKEND, grants)
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = server
        .with_token(BACKEND)
        .post("/push/news", &[], b"after auth came on")
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    for (name, stream) in [
        ("anonymous", &mut open),
        ("device", &mut device),
        ("receipts", &mut receipts),
    ] {
        let rest = tokio::time::timeout(WAIT, stream.until_end())
            .await
            .unwrap_or_else(|_| panic!("the {name} stream closes"));
        assert!(
            rest.iter().all(|e| e.data != "after auth came on"),
            "{name}: {rest:?}"
        );
    }
}

#[tokio::test]
async fn pere_pub_and_pere_sub_send_their_token() {
    let server = start(&[]).await;
    let addr = server.addr.to_string();
    let sub = tokio::process::Command::new(pere_tests::bin("pere-sub"))
        .args([
            &addr,
            "orders.eu",
            "--json",
            "--count",
            "1",
            "--timeout",
            "10s",
        ])
        .env("PERE_TOKEN", PHONE)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually("pere-sub is connected", || async {
        server.with_token(ADMIN).admin().open_streams().await == 1
    })
    .await;
    let out = tokio::process::Command::new(pere_tests::bin("pere-pub"))
        .args([
            &addr,
            "orders.eu",
            "--data",
            "from the cli",
            "--token",
            BACKEND,
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let sub = tokio::time::timeout(WAIT, sub.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&sub.stdout);
    assert!(
        sub.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&sub.stderr)
    );
    assert!(stdout.contains("from the cli"), "{stdout}");
    // pere-sub acknowledged as the token's subject.
    eventually("phone-1 acked through pere-sub", || async {
        let receipts = server.with_token(BACKEND).receipts("orders.eu", &id).await;
        receipts["devices"]["phone-1"]["state"] == "acked"
    })
    .await;
    // Without a token the tools fail clearly.
    let out = tokio::process::Command::new(pere_tests::bin("pere-pub"))
        .args([&addr, "orders.eu", "--data", "x"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn preflights_allow_the_authorization_header_for_the_listed_origins() {
    let server = start(&["--cors-origin", "https://app.example"]).await;
    for path in ["/push/orders.eu", "/feedback/orders.eu", "/feed/news"] {
        let r = server
            .request(
                "OPTIONS",
                path,
                &[
                    ("Origin", "https://app.example"),
                    ("Access-Control-Request-Method", "POST"),
                    (
                        "Access-Control-Request-Headers",
                        "authorization, content-type",
                    ),
                ],
                b"",
            )
            .await;
        assert_eq!(r.status, 204, "{path}: {}", r.text());
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://app.example")
        );
        // A listed origin may send credentials (`withCredentials`, a
        // gateway's cookie); `*` never allows them.
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        let allowed = r
            .header("access-control-allow-headers")
            .unwrap()
            .to_ascii_lowercase();
        assert!(allowed.contains("authorization"), "{allowed}");
        assert!(allowed.contains("content-type"), "{allowed}");
        assert!(
            r.header("access-control-allow-methods")
                .unwrap()
                .contains("POST")
        );
        // Another origin gets no CORS grant.
        let r = server
            .request("OPTIONS", path, &[("Origin", "https://evil.example")], b"")
            .await;
        assert_eq!(r.header("access-control-allow-origin"), None);
    }
    // An actual cross-origin error still carries the CORS headers, so the
    // page can read the 401.
    let r = server
        .request(
            "POST",
            "/push/orders.eu",
            &[("Origin", "https://app.example")],
            b"x",
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
}

#[tokio::test]
async fn the_load_modes_send_a_token_or_refuse_one() {
    let server = start(&[]).await;
    let addr = server.addr.to_string();
    let out = tokio::process::Command::new(pere_tests::bin("pere-pub"))
        .args([
            &addr,
            "orders.eu",
            "--concurrency",
            "2",
            "--count",
            "20",
            "--token",
            BACKEND,
            "--quiet",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["published"], 20, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    let events = server.with_token(ADMIN).admin().events("orders.eu").await;
    assert_eq!(events.as_array().map(Vec::len), Some(20), "{events}");
    // A token speaks for one device; the device swarm says so.
    let out = tokio::process::Command::new(pere_tests::bin("pere-sub"))
        .args([
            &addr,
            "orders.eu",
            "--devices",
            "3",
            "--count",
            "1",
            "--token",
            PHONE,
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An operator sees tokens by fingerprint only (`GET /admin/tokens`), and
/// could not revoke one by it: the fingerprint was taken for a token's
/// value, and not found (a probe's finding). `DELETE
/// /admin/tokens/sha256:…` now revokes the live token it names.
#[tokio::test]
async fn a_token_is_revoked_by_its_fingerprint() {
    let server = start(&[]).await;
    let c = callers(&server);
    let fingerprint = pere_core::auth::TokenHash::of(PHONE).fingerprint();
    let listed = c.admin.get("/admin/tokens").await.json();
    assert!(
        listed["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["token"] == fingerprint.as_str()),
        "{listed}"
    );
    assert_eq!(
        c.phone.request("HEAD", "/feed/news", &[], b"").await.status,
        200
    );
    let r = c
        .admin
        .delete(&format!("/admin/tokens/{fingerprint}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({ "token": fingerprint, "revoked": true })
    );
    assert_eq!(
        c.phone.request("HEAD", "/feed/news", &[], b"").await.status,
        401
    );
    assert_eq!(
        c.phone2
            .request("HEAD", "/feed/news", &[], b"")
            .await
            .status,
        200,
        "only that one"
    );
    let again = c
        .admin
        .delete(&format!("/admin/tokens/{fingerprint}"))
        .await;
    again.assert_error(404, "unknown_token");
    let bad = c.admin.delete("/admin/tokens/sha256:not-hex-digits").await;
    bad.assert_error(400, "invalid_token");
    assert_no_token_in(&server.log(), "the log");
}
