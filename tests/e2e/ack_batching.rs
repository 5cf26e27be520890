//! Issue 16, receipts as cheap as deliveries: `pere.js` (in Chromium, see
//! `web.rs` for the driver) and `pere-sub` coalesce the receipts of a burst
//! of events into a few batch requests (docs/PROTOCOL.md §4.1) instead of one
//! `POST /feedback` per event, every event still ends up `acked`, and an
//! item the server refuses fails that receipt alone.
//!
//! Requests are counted from the server's side: `/metrics` counts answers
//! by status class (§6.3), and in each measured window the test knows every
//! other request that was made (its publishes and one `/metrics` reading),
//! so the rest of the answers are receipt requests. A page's own count
//! (Resource Timing) agrees, and stands in where the page's loading falls
//! inside the window.

use std::net::SocketAddr;
use std::process::Stdio;

use pere_tests::{ServerProcess, TestServer, metric, request};
use serde_json::{Value, json};

use crate::cli::Proc;
use crate::web::Browser;

/// Events in a burst.
const BURST: usize = 200;

/// Answers the server gave so far, of every status class (a refused
/// single receipt is a `404`). This reading's own answer is counted after
/// it was rendered: the next reading includes it.
async fn answered(addr: SocketAddr) -> u64 {
    let r = request(addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let total: f64 = (1..=5)
        .map(|class| {
            let name = format!(r#"pere_http_responses_total{{class="{class}xx"}}"#);
            metric(&text, &name).unwrap_or_else(|| panic!("{name} in /metrics"))
        })
        .sum();
    total as u64
}

/// Receipt requests answered between two readings of [`answered`], when the
/// only other requests in between were `publishes` and the first reading.
fn receipt_requests(before: u64, after: u64, publishes: usize) -> u64 {
    after - before - 1 - publishes as u64
}

/// Publishes `n` events on `channels` (in turn) from 8 connections at once;
/// returns each event's `(channel, id)`.
async fn publish_burst(addr: SocketAddr, channels: &[&str], n: usize) -> Vec<(String, String)> {
    let mut tasks = Vec::new();
    for lane in 0..8 {
        let channels: Vec<String> = channels.iter().map(|c| c.to_string()).collect();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for k in (lane..n).step_by(8) {
                let channel = &channels[k % channels.len()];
                let path = format!("/push/{channel}");
                let r = request(addr, "POST", &path, &[], format!("event {k}").as_bytes()).await;
                assert_eq!(r.status, 201, "publish: {}", r.text());
                ids.push((
                    channel.clone(),
                    r.json()["id"].as_str().unwrap().to_string(),
                ));
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    ids
}

/// Receipt requests the page made (Resource Timing; its buffer was made
/// large enough first).
async fn page_receipt_requests(browser: &mut Browser) -> u64 {
    browser
        .eval(
            "performance.getEntriesByType('resource')\
             .filter((e) => new URL(e.name).pathname.startsWith('/feedback/')).length",
        )
        .await
        .unwrap()
        .as_u64()
        .unwrap()
}

/// The receipt of `device` for event `id` on `channel`, as the server has it.
async fn receipt(addr: SocketAddr, channel: &str, id: &str, device: &str) -> Value {
    let r = request(addr, "GET", &format!("/receipts/{channel}/{id}"), &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["devices"][device].clone()
}

/// A busy page: 200 events published at once, from several connections,
/// to an open subscriber page. Before issue 16 it sent 200 receipt requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pere_js_acks_a_burst_of_events_in_a_few_requests() {
    let server = TestServer::start().await;
    let device = "W0039000000160";
    let mut browser = Browser::launch().await;
    browser
        .open(
            &server.url(&format!("/subscriber.html?device={device}&channel=burst")),
            800,
            700,
        )
        .await;
    browser.wait_for_badge("open").await;
    server.wait_online("burst", device).await;
    browser
        .eval("performance.setResourceTimingBufferSize(100000)")
        .await
        .unwrap();

    let before = answered(server.addr).await;
    let ids = publish_burst(server.addr, &["burst"], BURST).await;
    browser
        .wait_for(
            "every event received and acked",
            &format!(
                "document.getElementById('counts').textContent === '{BURST} received · {BURST} acked'"
            ),
        )
        .await;
    let after = answered(server.addr).await;

    let requests = receipt_requests(before, after, BURST);
    // The page lists a request once it has read the whole answer, which
    // can be a moment after the server counted it (seen in a full run: 3
    // answered, 2 listed): wait for the page to list what was answered.
    let mut page = page_receipt_requests(&mut browser).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while page < requests && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        page = page_receipt_requests(&mut browser).await;
    }
    eprintln!("pere.js, live burst: {requests} receipt requests for {BURST} events");
    assert_eq!(
        requests, page,
        "the server counts what the page sent ({page} receipt requests)"
    );
    assert!(
        requests * 4 <= BURST as u64,
        "{BURST} events were acked in {requests} requests: receipts are not coalesced"
    );
    for (channel, id) in &ids {
        let r = receipt(server.addr, channel, id, device).await;
        assert_eq!(r["state"], "acked", "event {id}: {r}");
        assert_eq!(r["status"], "ok", "event {id}: {r}");
    }
    browser.close().await;
    server.stop().await;
}

/// Opens `subscribe(options)` of `/pere.js` in a page of the server's
/// origin as `window.sub`; resolves on its `pere.hello`. Events go to
/// `window.seen`, then to `on_event` (JavaScript, given the event `e`).
fn subscribe_js(options: &str, on_event: &str) -> String {
    format!(
        r#"(async () => {{
            const m = await import('/pere.js');
            performance.setResourceTimingBufferSize(100000);
            window.seen = [];
            return await new Promise((resolve) => {{
                window.sub = m.subscribe({{
                    ...{options},
                    onEvent: (e) => {{ window.seen.push(e); {on_event} }},
                    onHello: () => resolve(true),
                }});
            }});
        }})()"#
    )
}

/// Each receipt's promise settles with its own item of the batch answer
/// (docs/PROTOCOL.md §4.1): an id the server does not know rejects that
/// receipt alone; a request that fails as a whole rejects every receipt in
/// it, and they can be sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pere_js_fails_only_the_receipt_the_server_refused() {
    let server = TestServer::start().await;
    let device = "W-items";
    let mut browser = Browser::launch().await;
    browser.open(&server.url("/healthz"), 800, 600).await;
    let opened = browser
        .eval(&subscribe_js(
            &format!("{{ channel: 'items', device: '{device}' }}"),
            "",
        ))
        .await
        .unwrap();
    assert_eq!(opened, Value::Bool(true));
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(server.publish("items", &format!("item {n}")).await);
    }
    browser
        .wait_for("five events", "window.seen.length === 5")
        .await;

    // Asked for together: one batch, with an id no event has.
    let before = answered(server.addr).await;
    let settled = browser
        .eval(&format!(
            r#"Promise.allSettled([sub.ack('{}'), sub.ack('1', 'x'), sub.ack('{}', 'printed'), sub.ack('{}')])
               .then((rs) => rs.map((r) => r.status === 'fulfilled' ? r.value.state : [r.reason.code, r.reason.status]))"#,
            ids[0], ids[1], ids[2]
        ))
        .await
        .unwrap();
    let after = answered(server.addr).await;
    assert_eq!(
        settled,
        json!(["acked", ["unknown_event", 404], "acked", "acked"]),
        "each receipt gets its own item's result"
    );
    assert_eq!(
        receipt_requests(before, after, 0),
        1,
        "four receipts asked for at once go in one request"
    );
    assert_eq!(
        receipt(server.addr, "items", &ids[1], device).await["status"],
        "printed"
    );

    // The request fails as a whole: every receipt in it is rejected.
    browser.block_receipts(true).await;
    let failed = browser
        .eval(&format!(
            "Promise.allSettled([sub.ack('{}'), sub.ack('{}')]).then((rs) => rs.map((r) => r.reason?.code))",
            ids[3], ids[4]
        ))
        .await
        .unwrap();
    assert_eq!(failed, json!(["network", "network"]));
    browser.block_receipts(false).await;
    let again = browser
        .eval(&format!(
            "Promise.all([sub.ack('{}'), sub.ack('{}')]).then((rs) => rs.map((r) => r.state))",
            ids[3], ids[4]
        ))
        .await
        .unwrap();
    assert_eq!(again, json!(["acked", "acked"]));
    for id in &ids {
        server.wait_acked("items", id, device).await;
    }
    browser.close().await;
    server.stop().await;
}

/// On a pattern, each event is acknowledged on its own channel (learned
/// from the envelope), in batches per channel. The burst is the events a
/// returning device missed, all sent to it when it comes back
/// (docs/PROTOCOL.md §5.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pere_js_on_a_pattern_batches_each_channel_s_receipts_on_that_channel() {
    let server = TestServer::start().await;
    let device = "W0039000000170";
    // A member of `multi.*` that went away.
    drop(server.subscribe("multi.*", device).await);
    server.wait_offline("multi.*", device).await;
    let ids = publish_burst(server.addr, &["multi.a", "multi.b"], BURST).await;

    let mut browser = Browser::launch().await;
    browser.open(&server.url("/healthz"), 800, 600).await;
    browser
        .eval("window.acked = 0; window.failed = []; true")
        .await
        .unwrap();
    // Every event the device missed is acked as it arrives.
    let opened = browser
        .eval(&subscribe_js(
            &format!("{{ channel: 'multi.*', device: '{device}' }}"),
            "window.sub.ack(e.id).then(() => { window.acked += 1 }, (err) => window.failed.push(err.code));",
        ))
        .await
        .unwrap();
    assert_eq!(opened, Value::Bool(true));
    browser
        .wait_for(
            "every missed event acked",
            &format!("window.acked === {BURST} || window.failed.length > 0"),
        )
        .await;
    assert_eq!(browser.eval("window.failed").await.unwrap(), json!([]));
    let paths = browser
        .eval(
            "[...new Set(performance.getEntriesByType('resource')\
             .map((e) => new URL(e.name).pathname).filter((p) => p.startsWith('/feedback/')))].sort()",
        )
        .await
        .unwrap();
    assert_eq!(
        paths,
        json!(["/feedback/multi.a", "/feedback/multi.b"]),
        "each receipt names its event's own channel"
    );
    let requests = page_receipt_requests(&mut browser).await;
    eprintln!("pere.js, pattern, replayed burst: {requests} receipt requests for {BURST} events");
    assert!(
        requests * 4 <= BURST as u64,
        "{BURST} events were acked in {requests} requests: receipts are not coalesced"
    );
    for (channel, id) in &ids {
        let r = receipt(server.addr, channel, id, device).await;
        assert_eq!(r["state"], "acked", "event {id} on {channel}: {r}");
    }
    browser.close().await;
    server.stop().await;
}

/// Sends `signal` (`STOP`, `CONT`) to a process this test started.
fn signal(proc: &Proc, signal: &str) {
    let pid = proc.child.id().expect("the process is still running");
    let sent = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -{signal} {pid}");
}

/// Starts `pere-sub --json --count N` for `device` on `channel` and reads
/// its `pere.hello`.
async fn pere_sub(server: &ServerProcess, channel: &str, device: &str, count: usize) -> Proc {
    let addr = server.addr.to_string();
    let count = count.to_string();
    let mut sub = Proc::start(
        "pere-sub",
        &[
            &addr, channel, "--json", "--count", &count, "--device", device,
        ],
        Stdio::null(),
    );
    let hello = sub.json_line().await;
    assert_eq!(hello["event"], "pere.hello", "{hello}");
    sub
}

/// Publishes `n` events on `channel` while `sub` is stopped, so that they
/// reach it as one burst when it continues; returns their ids.
async fn burst_to_stopped(
    server: &ServerProcess,
    sub: &Proc,
    channel: &str,
    n: usize,
) -> Vec<String> {
    signal(sub, "STOP");
    let mut ids = Vec::new();
    for k in 0..n {
        let r = server
            .request(
                "POST",
                &format!("/push/{channel}"),
                &[],
                format!("event {k}").as_bytes(),
            )
            .await;
        assert_eq!(r.status, 201, "publish: {}", r.text());
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    signal(sub, "CONT");
    ids
}

/// `pere-sub` reading a burst of 200 events: before issue 16 it sent a
/// receipt request per event, waiting for each. `--count` still exits only
/// once every receipt is recorded.
#[tokio::test]
async fn pere_sub_acks_a_burst_of_events_in_a_few_requests() {
    let server = ServerProcess::start(&[]).await;
    let device = "H-burst";
    let mut sub = pere_sub(&server, "burst", device, BURST).await;
    let before = answered(server.addr).await;
    let ids = burst_to_stopped(&server, &sub, "burst", BURST).await;
    let lines = sub.success().await;
    let after = answered(server.addr).await;
    assert_eq!(lines.len(), BURST, "one line per event");
    let printed: Vec<String> = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(printed, ids, "every event, in order");

    let requests = receipt_requests(before, after, BURST);
    eprintln!("pere-sub, burst: {requests} receipt requests for {BURST} events");
    assert!(
        requests * 4 <= BURST as u64,
        "{BURST} events were acked in {requests} requests: receipts are not coalesced"
    );
    // Recorded before pere-sub exited: no waiting here.
    for id in &ids {
        let r = receipt(server.addr, "burst", id, device).await;
        assert_eq!(r["state"], "acked", "event {id}: {r}");
        assert_eq!(r["status"], "ok", "event {id}: {r}");
    }
    assert!(
        !sub.stderr_text().contains("failed"),
        "{}",
        sub.stderr_text()
    );
}

/// The server keeps 5 events: of a burst of 20, the receipts of the 15 it
/// no longer keeps fail (`unknown_event`, reported on stderr), and the
/// others, sent in the same batches, are recorded.
#[tokio::test]
async fn pere_sub_reports_the_receipts_the_server_refused_and_records_the_rest() {
    let server = ServerProcess::start(&["--history", "5"]).await;
    let device = "H-items";
    let mut sub = pere_sub(&server, "items", device, 20).await;
    let before = answered(server.addr).await;
    let ids = burst_to_stopped(&server, &sub, "items", 20).await;
    let lines = sub.success().await;
    let after = answered(server.addr).await;
    assert_eq!(lines.len(), 20, "a refused receipt does not stop pere-sub");
    let requests = receipt_requests(before, after, 20);
    assert!(
        requests * 2 <= 20,
        "20 receipts in {requests} requests: not coalesced"
    );

    let stderr = sub.stderr_text();
    for id in &ids[..15] {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("receipt for event {id} failed")))
            .unwrap_or_else(|| panic!("no failure reported for event {id}:\n{stderr}"));
        assert!(
            line.contains("unknown_event") || line.contains("404"),
            "{line}"
        );
    }
    for id in &ids[15..] {
        assert!(
            !stderr.contains(&format!("event {id} failed")),
            "event {id} is retained:\n{stderr}"
        );
        let r = receipt(server.addr, "items", id, device).await;
        assert_eq!(r["state"], "acked", "event {id}: {r}");
    }
}
