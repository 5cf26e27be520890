//! The web pages as they are live (issue 18.8, and issue 13's dedupe in
//! `pere.js`), in headless Chromium (see `web.rs` for the driver): the
//! dashboard follows receipts over the receipts stream instead of polling
//! each event, shows receipt statuses, patterns, and drops devices; `pere.js`
//! processes an event sent again once.

use pere_tests::{TestServer, eventually};
use serde_json::{Value, json};

use crate::web::Browser;

/// How many times the page fetched `path` (Resource Timing: every `fetch`
/// and every `EventSource` request it made).
async fn fetched(browser: &mut Browser, path: &str) -> u64 {
    let expression = format!(
        "performance.getEntriesByType('resource').filter((e) => new URL(e.name).pathname === {}).length",
        json!(path)
    );
    browser.eval(&expression).await.unwrap().as_u64().unwrap()
}

/// Waits for the dashboard's receipts stream, then stops its periodic
/// refresh: from then on only the stream (or a refresh asked for) changes
/// the page.
async fn live_without_polls(browser: &mut Browser) {
    browser
        .wait_for(
            "the receipts stream is live",
            "document.getElementById('live').textContent === 'receipts: live'",
        )
        .await;
    browser
        .eval("(() => { const s = document.getElementById('every'); s.value = '0'; s.dispatchEvent(new Event('change')); return true; })()")
        .await
        .unwrap();
}

/// The dashboard's receipts cell of event `id`, as `[acked, delivered,
/// recipients, bad-status devices, text]`.
fn receipt_cell(id: &str) -> String {
    format!(
        r#"(() => {{ const c = document.querySelector('#events tr[data-event-id="{id}"] td[data-acked]');
            return c ? [c.dataset.acked, c.dataset.delivered, c.dataset.recipients, c.dataset.badStatus, c.textContent] : null; }})()"#
    )
}

/// Issue 18.8: the dashboard read every shown event's receipts every 5 s.
/// It now follows the channel's receipts stream: with the periodic refresh
/// paused, receipts, statuses (issue 18.3) and new events still appear,
/// and no event's summary is read more than once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_follows_receipts_live_without_reading_them_again() {
    let server = TestServer::start().await;
    let _w1 = server.subscribe("CHANNEL_1", "worker-1").await;
    let _w9 = server.subscribe("CHANNEL_1", "worker-9").await;
    let first = server.publish("CHANNEL_1", r#"{"job":1}"#).await;

    let mut browser = Browser::launch().await;
    browser
        .open(&server.url("/dashboard.html?channel=CHANNEL_1"), 1200, 900)
        .await;
    browser
        .wait_for(
            "the first event with 0/2 acked",
            &format!(
                "(() => {{ const c = {}; return !!c && c[0] === '0' && c[2] === '2'; }})()",
                receipt_cell(&first)
            ),
        )
        .await;
    // No periodic refresh from now on: only the stream can update the page.
    live_without_polls(&mut browser).await;
    let summary = format!("/receipts/CHANNEL_1/{first}");
    assert_eq!(fetched(&mut browser, &summary).await, 1);

    server.ack_with("CHANNEL_1", "worker-1", &first, "ok").await;
    server
        .ack_with("CHANNEL_1", "worker-9", &first, "error: exit 4: boom")
        .await;
    browser
        .wait_for(
            "2/2 acked, worker-9's failure shown",
            &format!(
                "(() => {{ const c = {}; return !!c && c[0] === '2' && c[3] === 'worker-9' && c[4].includes('worker-9: error: exit 4: boom'); }})()",
                receipt_cell(&first)
            ),
        )
        .await;
    browser
        .wait_for(
            "worker-9's row shows its last receipt",
            &format!(
                r#"document.querySelector('#devices tr[data-device="worker-9"]')?.cells[6].textContent === '{first}'"#
            ),
        )
        .await;

    // A new event appears, and its deliveries are followed too.
    let second = server.publish("CHANNEL_1", r#"{"job":2}"#).await;
    browser
        .wait_for(
            "the new event, delivered to both",
            &format!(
                "(() => {{ const c = {}; return !!c && c[1] === '2'; }})()",
                receipt_cell(&second)
            ),
        )
        .await;
    server
        .ack_with("CHANNEL_1", "worker-1", &second, "ok")
        .await;
    browser
        .wait_for(
            "its receipt",
            &format!(
                "(() => {{ const c = {}; return !!c && c[0] === '1'; }})()",
                receipt_cell(&second)
            ),
        )
        .await;
    assert_eq!(
        fetched(&mut browser, &summary).await,
        1,
        "the first event's receipts were never read again"
    );
    assert!(
        fetched(&mut browser, &format!("/receipts/CHANNEL_1/{second}")).await <= 1,
        "the new event's receipts were read at most once"
    );
    browser.screenshot("pere-dashboard-live.png").await;
    browser.close().await;
    server.stop().await;
}

/// A device list the dashboard read before a receipt came (a refresh on
/// its way while the receipt streams in) does not undo what the stream
/// showed: the device's row keeps its last receipt. The late list used to
/// put "—" back, which made the test above fail now and then on a busy
/// machine; here the list is held back on purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_device_list_does_not_undo_a_live_receipt() {
    let server = TestServer::start().await;
    let _w9 = server.subscribe("CHANNEL_1", "worker-9").await;
    let first = server.publish("CHANNEL_1", r#"{"job":1}"#).await;
    let mut browser = Browser::launch().await;
    browser
        .open(&server.url("/dashboard.html?channel=CHANNEL_1"), 1200, 900)
        .await;
    let row = r#"document.querySelector('#devices tr[data-device="worker-9"]')"#;
    browser
        .wait_for("worker-9's row", &format!("!!{row}"))
        .await;
    // Only the refresh below reads the list, and its answer is held back
    // for a second once it has arrived.
    live_without_polls(&mut browser).await;
    browser
        .eval(
            r#"(() => {
                const real = window.fetch;
                window.heldLists = 0;
                window.fetch = (url, options) => {
                    const answer = real(url, options);
                    if (!String(url).includes('/admin/devices/')) return answer;
                    return answer.then((r) => new Promise((done) => setTimeout(() => {
                        window.heldLists += 1;
                        done(r);
                    }, 1000)));
                };
                return true;
            })()"#,
        )
        .await
        .unwrap();
    let list = "/admin/devices/CHANNEL_1";
    let before = fetched(&mut browser, list).await;
    browser
        .eval("(document.getElementById('refresh').click(), true)")
        .await
        .unwrap();
    browser
        .wait_for(
            "the refresh's device list has been read",
            &format!(
                "performance.getEntriesByType('resource').filter((e) => new URL(e.name).pathname === {}).length > {before}",
                json!(list)
            ),
        )
        .await;
    server.ack_with("CHANNEL_1", "worker-9", &first, "ok").await;
    let shows_receipt = format!("{row}?.cells[6].textContent === '{first}'");
    browser
        .wait_for("worker-9's row shows its receipt", &shows_receipt)
        .await;
    browser
        .wait_for(
            "the held list has been handed over",
            "window.heldLists >= 1",
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        browser.eval(&shows_receipt).await,
        Ok(Value::Bool(true)),
        "the late list undid the receipt"
    );
    browser.close().await;
    server.stop().await;
}

/// Devices named `__proto__` and `constructor` (valid device ids) are
/// counted like any other: the dashboard kept devices in plain objects,
/// where `devices["__proto__"]` is `Object.prototype`, so a late joiner by
/// that name was never counted and its receipt was written onto every
/// object of the page (a hostile probe's finding).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_named_like_object_properties_are_counted() {
    let server = TestServer::start().await;
    let _w1 = server.subscribe("CHANNEL_1", "worker-1").await;
    let first = server.publish("CHANNEL_1", r#"{"job":1}"#).await;
    let mut browser = Browser::launch().await;
    browser
        .open(&server.url("/dashboard.html?channel=CHANNEL_1"), 1200, 900)
        .await;
    browser
        .wait_for(
            "the event with 1 recipient",
            &format!(
                "(() => {{ const c = {}; return !!c && c[2] === '1'; }})()",
                receipt_cell(&first)
            ),
        )
        .await;
    live_without_polls(&mut browser).await;
    // Both join the event's audience by replay, after the page read it.
    let mut late = Vec::new();
    for device in ["__proto__", "constructor"] {
        let mut stream = server
            .open(
                "/feed/CHANNEL_1",
                &[("device", device), ("Last-Event-ID", "0")],
            )
            .await;
        // Replayed after the hello: only then may the device acknowledge
        // it (acknowledged sooner, it was refused as not yet sent).
        assert_eq!(stream.ids(1).await, std::slice::from_ref(&first));
        server.ack_with("CHANNEL_1", device, &first, "ok").await;
        late.push(stream);
    }
    server.ack_with("CHANNEL_1", "worker-1", &first, "ok").await;
    assert_eq!(server.receipts("CHANNEL_1", &first).await["acked"], 3);
    browser
        .wait_for(
            "3/3 acked",
            &format!(
                "(() => {{ const c = {}; return !!c && c[0] === '3' && c[2] === '3'; }})()",
                receipt_cell(&first)
            ),
        )
        .await;
    assert_eq!(
        browser
            .eval("[({}).state, ({}).status, ({}).acked_at].every((v) => v === undefined)")
            .await,
        Ok(Value::Bool(true)),
        "a receipt was written onto Object.prototype"
    );
    drop(late);
    browser.close().await;
    server.stop().await;
}

/// Issues 18.6 and 18.7: patterns are listed on the dashboard, a channel's
/// devices include its pattern members (saying through which
/// subscription), and a device can be dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_lists_patterns_and_drops_a_device() {
    let server = TestServer::start().await;
    let _star = server.subscribe("shop.*", "star").await;
    let mut exact = server.subscribe("shop.eu", "exact").await;
    server.publish("shop.eu", "x").await;

    let mut browser = Browser::launch().await;
    browser
        .open(&server.url("/dashboard.html"), 1200, 900)
        .await;
    browser
        .wait_for(
            "the pattern is listed",
            r#"document.querySelector('#channels tr[data-channel="shop.*"][data-pattern="true"]') !== null"#,
        )
        .await;
    browser
        .eval(r#"document.querySelector('#channels tr[data-channel="shop.eu"] button').click()"#)
        .await
        .unwrap();
    browser
        .wait_for(
            "the pattern member among shop.eu's devices",
            r#"document.querySelector('#devices tr[data-device="star"][data-subscription="shop.*"]') !== null
               && document.querySelector('#devices tr[data-device="exact"][data-subscription="shop.eu"]') !== null"#,
        )
        .await;
    // Drop asks for a confirmation: two clicks.
    let click = r#"document.querySelector('#devices tr[data-device="exact"] button.drop').click()"#;
    browser.eval(click).await.unwrap();
    browser
        .wait_for(
            "the button asks to confirm",
            r#"document.querySelector('#devices tr[data-device="exact"] button.drop').textContent === 'Confirm drop'"#,
        )
        .await;
    browser.eval(click).await.unwrap();
    eventually("exact is no longer a member of shop.eu", || async {
        server.presence("shop.eu", "exact").await.is_none()
    })
    .await;
    // Its stream ends (after the event it had not read yet).
    let rest = exact.until_end().await;
    assert!(rest.iter().all(|e| e.data == "x"), "{rest:?}");
    browser
        .wait_for(
            "its row is gone",
            r#"document.querySelector('#devices tr[data-device="exact"]') === null"#,
        )
        .await;
    let r = server.post("/push/shop.eu", &[], b"y").await;
    assert_eq!(r.json()["recipients"], 1, "only star is left: {}", r.text());
    browser.close().await;
    server.stop().await;
}

/// Issue 13: `pere.js` drops an event whose id it already processed in the
/// same page, and acknowledges it again with the status it used. The path
/// is real: a receipt is lost (the page is offline when it sends it), the
/// page closes its subscription and opens another for the same device, and
/// the server sends every unacknowledged event again (docs/PROTOCOL.md §5.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pere_js_processes_a_redelivered_event_once_and_acks_it_again() {
    let server = TestServer::start().await;
    let mut browser = Browser::launch().await;
    // Any page of the server's origin can import the module.
    browser.open(&server.url("/healthz"), 800, 600).await;
    let opened = browser
        .eval(
            r#"(async () => {
                const m = await import('/pere.js');
                window.seen = [];
                window.subscribeAgain = () => new Promise((resolve) => {
                    window.sub = m.subscribe({
                        channel: 'dup', device: 'W-dup',
                        onEvent: (e) => window.seen.push(e.id),
                        onHello: () => resolve(true),
                    });
                });
                return await window.subscribeAgain();
            })()"#,
        )
        .await
        .unwrap();
    assert_eq!(opened, Value::Bool(true));
    let seen = |n: usize| format!("window.seen.length === {n}");

    // A: processed and acknowledged (the device now acknowledges: its
    // unacknowledged events are sent again when it comes back).
    let a = server.publish("dup", "a").await;
    browser.wait_for("a", &seen(1)).await;
    browser
        .eval(&format!("window.sub.ack('{a}', 'ok')"))
        .await
        .unwrap();
    server.wait_acked("dup", &a, "W-dup").await;

    // B: processed; its receipt ("done") is lost: the network is down.
    browser.block_receipts(true).await;
    let b = server.publish("dup", "b").await;
    browser.wait_for("b", &seen(2)).await;
    let failed = browser
        .eval(&format!(
            "window.sub.ack('{b}', 'done').then(() => 'sent', (e) => e.code)"
        ))
        .await
        .unwrap();
    assert_eq!(failed, "network", "the receipt could not be sent");
    // C: processed, not acknowledged (the page acks later, or never).
    let c = server.publish("dup", "c").await;
    browser.wait_for("c", &seen(3)).await;
    browser.block_receipts(false).await;

    // The page closes the subscription and opens another: no Last-Event-ID,
    // so B and C come again.
    browser
        .eval("(async () => { window.sub.close(); return await window.subscribeAgain(); })()")
        .await
        .unwrap();
    let receipt = server.wait_acked("dup", &b, "W-dup").await;
    assert_eq!(
        receipt["devices"]["W-dup"]["status"], "done",
        "B's receipt was sent again with the status the page used: {receipt}"
    );
    assert_eq!(receipt["devices"]["W-dup"]["deliveries"], 2, "{receipt}");
    eventually("C was sent again", || async {
        let r = server.receipts("dup", &c).await;
        r["devices"]["W-dup"]["deliveries"] == 2
    })
    .await;
    let d = server.publish("dup", "d").await;
    browser.wait_for("d", &seen(4)).await;
    assert_eq!(
        browser.eval("window.seen").await.unwrap(),
        json!([a, b, c, d]),
        "each event reached onEvent once"
    );
    let r = server.receipts("dup", &c).await;
    assert_eq!(
        r["devices"]["W-dup"]["state"], "delivered",
        "C was not acked for the page: {r}"
    );
    browser.close().await;
    server.stop().await;
}

/// A page on a pattern learns each event's channel (pere.js asks for
/// `?envelope=json`), shows it, hands the payload as published to the
/// page, and acknowledges each event on its own channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_page_on_a_pattern_shows_each_event_s_channel() {
    let server = TestServer::start().await;
    let device = "W0039000000017";
    let mut browser = Browser::launch().await;
    browser
        .open(
            &server.url(&format!(
                "/subscriber.html?device={device}&channel=orders.*"
            )),
            800,
            700,
        )
        .await;
    browser.wait_for_badge("open").await;
    server.wait_online("orders.*", device).await;
    let eu = server.publish("orders.eu", r#"{"order":1}"#).await;
    let us = server.publish("orders.us", "plain text").await;
    server.wait_acked("orders.eu", &eu, device).await;
    server.wait_acked("orders.us", &us, device).await;
    let rows = browser
        .eval(
            "JSON.stringify([...document.querySelectorAll('li.event')].map(r => \
             [r.dataset.eventId, r.dataset.channel, r.querySelector('.payload').textContent]))",
        )
        .await
        .unwrap();
    let rows: Value = serde_json::from_str(rows.as_str().unwrap()).unwrap();
    let mut rows = rows.as_array().unwrap().clone();
    rows.sort_by_key(|r| r[0].as_str().unwrap().to_string());
    assert_eq!(
        Value::Array(rows),
        json!([
            [eu, "orders.eu", "{\n  \"order\": 1\n}"],
            [us, "orders.us", "plain text"]
        ])
    );
    browser.close().await;
    server.stop().await;
}

/// A publisher may name its events `error` or `open` (docs/PROTOCOL.md
/// §2 reserves only `pere.`). A browser's EventSource hands such events to
/// `onerror` and `onopen`: `pere.js` took one for a failed stream, closed
/// it and reconnected from before it, and so again, for as long as the
/// event was retained; every later event was lost to the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_named_error_or_open_do_not_break_the_subscriber_page() {
    let server = TestServer::start().await;
    let (mut browser, device) = crate::web::subscriber_page(&server).await;
    server.publish("CHANNEL_1?event=error", "named error").await;
    server.publish("CHANNEL_1?event=open", "named open").await;
    let after = server.publish("CHANNEL_1", "after them").await;
    let receipt = server.wait_acked("CHANNEL_1", &after, &device).await;
    assert_eq!(receipt["acked"], 1, "{receipt}");
    browser.wait_for_badge("open").await;
    browser.close().await;
    server.stop().await;
}

/// A receipt sent by Chromium's own `FormData` (multipart, its boundary)
/// is read as the form it is: id and status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_sent_as_form_data_by_chromium_is_read() {
    let server = TestServer::start().await;
    let mut stream = server.subscribe("fd", "page").await;
    let id = server.publish("fd", "x").await;
    assert_eq!(stream.messages(1).await[0].id, id);
    let mut browser = Browser::launch().await;
    browser.open(&server.url("/"), 800, 600).await;
    let script = format!(
        "(async () => {{ const form = new FormData(); form.append('last_event_id', '{id}'); \
         form.append('status', 'shown on screen'); \
         const r = await fetch('/feedback/fd', {{method: 'POST', headers: {{device: 'page'}}, body: form}}); \
         return [r.status, await r.text()]; }})()"
    );
    let answer = browser.eval(&script).await.unwrap();
    assert_eq!(answer[0], 200, "{answer}");
    let receipts = server.get_json(&format!("/receipts/fd/{id}")).await;
    assert_eq!(receipts["devices"]["page"]["state"], "acked", "{receipts}");
    assert_eq!(
        receipts["devices"]["page"]["status"], "shown on screen",
        "{receipts}"
    );
    browser.close().await;
    server.stop().await;
}

/// `subscriber.html?access_token=…` without `&device=`: the device is the
/// token's subject. The page used to send its own stored device id with
/// the token, which the server refuses (`403`, docs/PROTOCOL.md §1.3), so
/// a token alone never worked (a probe's finding); `pere.js` now takes
/// the device from `pere.hello` and acknowledges as it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_page_with_only_a_token_is_the_token_s_device() {
    const PHONE: &str = "phone-token-00000000001";
    const BACKEND: &str = "backend-token-000000001";
    const ADMIN: &str = "admin-token-00000000001";
    let path = pere_tests::temp_dir("page-auth").join("auth.json");
    let tokens = json!({ "tokens": {
        PHONE: { "subject": "phone-1", "subscribe": ["CHANNEL_1"] },
        BACKEND: { "subject": "backend", "publish": ["CHANNEL_1"] },
        ADMIN: { "subject": "ops", "admin": true },
    }});
    std::fs::write(&path, tokens.to_string()).unwrap();
    let server = pere_tests::ServerProcess::start(&["--auth", path.to_str().unwrap()]).await;
    let mut browser = Browser::launch().await;
    browser
        .open(
            &server.url(&format!("/subscriber.html?access_token={PHONE}")),
            900,
            700,
        )
        .await;
    browser.wait_for_badge("open").await;
    assert_eq!(crate::web::page_device(&mut browser).await, "phone-1");
    let id = server
        .with_token(BACKEND)
        .publish("CHANNEL_1", "for the phone")
        .await;
    let receipt = server
        .with_token(ADMIN)
        .wait_acked("CHANNEL_1", &id, "phone-1")
        .await;
    assert_eq!(receipt["devices"]["phone-1"]["status"], "ok", "{receipt}");

    // The token now speaks for another device: its stream closes, and the
    // page reconnects as the new subject (naming the old one was a 403).
    let changed = server
        .with_token(ADMIN)
        .admin()
        .put_token(PHONE, br#"{"subject":"phone-2","subscribe":["CHANNEL_1"]}"#)
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text());
    browser
        .wait_for(
            "the page reconnected as phone-2",
            "document.getElementById('device').textContent === 'phone-2' && document.getElementById('state').dataset.state === 'open'",
        )
        .await;
    let id = server
        .with_token(BACKEND)
        .publish("CHANNEL_1", "for phone-2")
        .await;
    server
        .with_token(ADMIN)
        .wait_acked("CHANNEL_1", &id, "phone-2")
        .await;
    browser.close().await;
}
