//! The web pages (`web/`) in a real browser: headless Chromium against a
//! `TestServer` on 127.0.0.1.
//!
//! Chromium is driven over the DevTools protocol with
//! `--remote-debugging-pipe`: JSON messages, each ended by a NUL byte,
//! written to the browser's fd 3 and read from its fd 4. A `sh -c 'exec …
//! 3<&0 4>&1'` wrapper maps those onto the child's stdin and stdout, so no
//! WebSocket client, no npm, no `unsafe`. The test reads the page's DOM with
//! `Runtime.evaluate` and asserts receipts from the server's side.
//!
//! Chromium comes from Debian (`apt-get install -y chromium`); set
//! `PERE_CHROMIUM` to use another binary. Set `PERE_WEB_SCREENSHOTS=DIR`
//! to save screenshots of the pages as the tests see them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use pere_tests::{TestServer, WAIT};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout, timeout_at};

/// Flags that keep headless Chromium quiet and offline: without the
/// background-networking ones it tries to reach the internet.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--password-store=basic",
    "--mute-audio",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
];

/// Where to look for Chromium when `PERE_CHROMIUM` is not set.
const CHROMIUM_NAMES: &[&str] = &[
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
];

/// The Chromium binary, or a failure that says how to install it.
fn chromium_path() -> PathBuf {
    if let Some(path) = std::env::var_os("PERE_CHROMIUM") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "PERE_CHROMIUM={} is not a file",
            path.display()
        );
        return path;
    }
    let dirs = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&dirs) {
        for name in CHROMIUM_NAMES {
            let path = dir.join(name);
            if path.is_file() {
                return path;
            }
        }
    }
    panic!(
        "the web tests need headless Chromium, and none was found on PATH \
         (looked for {CHROMIUM_NAMES:?}): install it with `apt-get install -y chromium` \
         or set PERE_CHROMIUM=/path/to/chromium"
    );
}

/// A headless Chromium with one page, driven over the DevTools pipe
/// (`tls.rs` drives it over HTTPS too).
pub(crate) struct Browser {
    child: Child,
    /// Commands go here (the browser's fd 3).
    commands: ChildStdin,
    /// Answers and events, read from the browser's fd 4 by a task.
    messages: mpsc::UnboundedReceiver<Value>,
    next_id: u64,
    /// The page's DevTools session, once [`Browser::open`] attached one.
    session: Option<String>,
    /// Console output and uncaught exceptions of the page, for failure messages.
    console: Vec<String>,
    /// `Network.responseReceived` events, once `Network.enable` was called.
    pub(crate) responses: Vec<Value>,
    /// Temporary directory: the fresh profile and Chromium's own log.
    root: PathBuf,
}

impl Browser {
    /// Starts Chromium with a fresh profile.
    pub(crate) async fn launch() -> Self {
        Self::launch_with(&[]).await
    }

    /// Starts Chromium with a fresh profile and `extra` flags.
    pub(crate) async fn launch_with(extra: &[String]) -> Self {
        let chromium = chromium_path();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let root = std::env::temp_dir().join(format!("pere-web-{}-{nanos}", std::process::id()));
        let profile = root.join("profile");
        std::fs::create_dir_all(&profile).unwrap();
        let log = std::fs::File::create(root.join("chromium.log")).unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null"#)
            .arg(&chromium)
            .args(CHROMIUM_FLAGS)
            .args(extra)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            // Its own process group, so a failed test can end Chromium's
            // helper processes too (see Drop).
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
        let commands = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, messages) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(0, &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                let Ok(message) = serde_json::from_slice::<Value>(&buf) else {
                    continue;
                };
                if tx.send(message).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            commands,
            messages,
            next_id: 0,
            session: None,
            console: Vec::new(),
            responses: Vec::new(),
            root,
        }
    }

    /// Chromium's own log, for failure messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.root.join("chromium.log")).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("dbus") && !l.contains("unexpected operator"))
            .collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Sends a DevTools command (to the page's session when `page`) and
    /// waits for its answer; events that arrive meanwhile are recorded.
    /// Blocks the page's receipt requests (`/feedback/…`) as a network
    /// that is down would, or lets them through again.
    pub(crate) async fn block_receipts(&mut self, blocked: bool) {
        let urls: &[&str] = if blocked { &["*/feedback/*"] } else { &[] };
        self.call(true, "Network.enable", json!({})).await.unwrap();
        self.call(true, "Network.setBlockedURLs", json!({ "urls": urls }))
            .await
            .unwrap();
    }

    pub(crate) async fn call(
        &mut self,
        page: bool,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if page {
            let session = self.session.clone().expect("a page is open");
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        if let Err(e) = self.commands.write_all(&bytes).await {
            panic!(
                "cannot talk to Chromium ({e}); its log:\n{}",
                self.log_tail()
            );
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let Ok(received) = timeout_at(deadline, self.messages.recv()).await else {
                panic!(
                    "Chromium did not answer {method} within {WAIT:?}; its log:\n{}",
                    self.log_tail()
                );
            };
            let Some(message) = received else {
                panic!("Chromium exited; its log:\n{}", self.log_tail());
            };
            if message["id"] == id {
                return match message.get("error") {
                    Some(error) => Err(format!("{method}: {error}")),
                    None => Ok(message["result"].clone()),
                };
            }
            self.record(&message);
        }
    }

    /// Keeps what the page logged, so a failing test can show it.
    fn record(&mut self, message: &Value) {
        let params = &message["params"];
        match message["method"].as_str() {
            Some("Runtime.consoleAPICalled") => {
                let args: Vec<String> = params["args"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|v| match &v["value"] {
                                Value::String(s) => s.clone(),
                                Value::Null => v["description"].as_str().unwrap_or("").into(),
                                other => other.to_string(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                self.console
                    .push(format!("console.{}: {}", params["type"], args.join(" ")));
            }
            Some("Runtime.exceptionThrown") => {
                let d = &params["exceptionDetails"];
                let text = d["exception"]["description"]
                    .as_str()
                    .or(d["text"].as_str())
                    .unwrap_or("?");
                self.console.push(format!("uncaught: {text}"));
            }
            Some("Network.responseReceived") => self.responses.push(params.clone()),
            Some("Log.entryAdded") => {
                let e = &params["entry"];
                self.console
                    .push(format!("{} {}: {}", e["source"], e["level"], e["text"]));
            }
            _ => {}
        }
    }

    /// Opens a page of `width`×`height` CSS pixels on `url`.
    pub(crate) async fn open(&mut self, url: &str, width: u32, height: u32) {
        let target = self
            .call(false, "Target.createTarget", json!({"url": "about:blank"}))
            .await
            .unwrap();
        let attached = self
            .call(
                false,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await
            .unwrap();
        self.session = Some(attached["sessionId"].as_str().unwrap().to_string());
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            self.call(true, domain, json!({})).await.unwrap();
        }
        self.resize(width, height).await;
        self.navigate(url).await;
    }

    pub(crate) async fn resize(&mut self, width: u32, height: u32) {
        self.call(
            true,
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}),
        )
        .await
        .unwrap();
    }

    pub(crate) async fn navigate(&mut self, url: &str) {
        let result = self
            .call(true, "Page.navigate", json!({"url": url}))
            .await
            .unwrap();
        assert!(
            result.get("errorText").is_none(),
            "navigating to {url} failed: {result}"
        );
    }

    /// Evaluates `expression` in the page (promises are awaited) and returns
    /// its value as JSON.
    pub(crate) async fn eval(&mut self, expression: &str) -> Result<Value, String> {
        let result = self
            .call(
                true,
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(details) = result.get("exceptionDetails") {
            return Err(details["exception"]["description"]
                .as_str()
                .unwrap_or("exception")
                .to_string());
        }
        Ok(result["result"]["value"].clone())
    }

    /// Polls `expression` until it is `true`, failing after `WAIT` with
    /// what the page shows and logged.
    pub(crate) async fn wait_for(&mut self, what: &str, expression: &str) {
        let deadline = Instant::now() + WAIT;
        let mut last = Ok(Value::Null);
        while Instant::now() < deadline {
            // Evaluating during a navigation may fail: try again.
            last = self.eval(expression).await;
            if last == Ok(Value::Bool(true)) {
                return;
            }
            sleep(Duration::from_millis(50)).await;
        }
        let text = self
            .eval("document.body ? document.body.innerText : '(no body)'")
            .await
            .unwrap_or_default();
        panic!(
            "timed out after {WAIT:?} waiting for: {what}\n\
             last value: {last:?}\n\
             page text:\n{}\n\
             page console:\n{}\n\
             Chromium log:\n{}",
            text.as_str().unwrap_or_default(),
            self.console.join("\n"),
            self.log_tail()
        );
    }

    /// Saves a PNG of the whole page to `$PERE_WEB_SCREENSHOTS/name` when
    /// that variable is set.
    pub(crate) async fn screenshot(&mut self, name: &str) {
        let Some(dir) = std::env::var_os("PERE_WEB_SCREENSHOTS") else {
            return;
        };
        let size = self
            .eval("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            .await
            .unwrap();
        let shot = self
            .call(
                true,
                "Page.captureScreenshot",
                json!({
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1},
                }),
            )
            .await
            .unwrap();
        let path = Path::new(&dir).join(name);
        std::fs::write(&path, base64_decode(shot["data"].as_str().unwrap())).unwrap();
        eprintln!("screenshot: {}", path.display());
    }

    /// Waits until the page's connection badge says `state` (`open`,
    /// `closed`).
    pub(crate) async fn wait_for_badge(&mut self, state: &str) {
        self.wait_for(
            &format!("the badge says {state}"),
            &format!("document.getElementById('state').dataset.state === '{state}'"),
        )
        .await;
    }

    /// Closes Chromium politely, then makes sure it is gone.
    pub(crate) async fn close(mut self) {
        let _ = timeout(
            Duration::from_secs(2),
            self.call(false, "Browser.close", json!({})),
        )
        .await;
        let _ = timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Still running (a test failed, or Browser.close did not work): end
        // Chromium's whole process group, which only it and its helpers are in.
        if let (Ok(None), Some(pid)) = (self.child.try_wait(), self.child.id()) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
            let _ = self.child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Decodes standard base64 (the DevTools screenshot format).
fn base64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// The device id the page shows.
pub(crate) async fn page_device(browser: &mut Browser) -> String {
    let device = browser
        .eval("document.getElementById('device').textContent")
        .await
        .unwrap();
    device.as_str().unwrap().to_string()
}

/// The event rows of the subscriber page, newest first:
/// `[id, type, receipt, payload text]`.
const ROWS: &str = r#"JSON.stringify([...document.querySelectorAll('#events li[data-event-id]')].map(
    (r) => [r.dataset.eventId, r.dataset.eventType, r.dataset.receipt, r.querySelector('.payload').textContent]))"#;

async fn rows(browser: &mut Browser) -> Vec<[String; 4]> {
    let text = browser.eval(ROWS).await.unwrap();
    serde_json::from_str(text.as_str().unwrap()).unwrap()
}

/// `true` once every event row of the page shows an acked receipt and there
/// are `n` of them.
fn all_acked(n: usize) -> String {
    format!(
        "(() => {{ const r = [...document.querySelectorAll('#events li[data-event-id]')]; \
         return r.length === {n} && r.every((e) => e.dataset.receipt === 'acked'); }})()"
    )
}

/// Chromium on `server`'s `/subscriber.html`, its stream open and its
/// device (the page's own) online on `CHANNEL_1`.
pub(crate) async fn subscriber_page(server: &TestServer) -> (Browser, String) {
    let mut browser = Browser::launch().await;
    browser
        .open(&server.url("/subscriber.html"), 1000, 800)
        .await;
    browser.wait_for_badge("open").await;
    let device = page_device(&mut browser).await;
    server.wait_online("CHANNEL_1", &device).await;
    (browser, device)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_page_in_chromium_shows_events_and_acks_them() {
    let server = TestServer::start().await;
    let (mut browser, device) = subscriber_page(&server).await;
    let badge = browser
        .eval("document.getElementById('state').innerText.trim()")
        .await
        .unwrap();
    assert_eq!(badge, "Open");
    assert_eq!(
        browser
            .eval("document.getElementById('channel').textContent")
            .await
            .unwrap(),
        "CHANNEL_1",
        "the default channel is PERE's"
    );
    assert!(
        device.len() == 14
            && device.starts_with("W0039")
            && device[5..].bytes().all(|b| b.is_ascii_digit()),
        "a generated device id is W0039 + 9 digits like PERE's page: {device:?}"
    );

    // Published over HTTP while the page is open.
    let payloads = [
        r#"{"order":42,"item":"green tea"}"#,
        "hello from the e2e test",
        "<b>not bold</b> & <img src=x onerror=alert(1)>",
    ];
    let mut ids = Vec::new();
    for p in payloads {
        ids.push(server.publish("CHANNEL_1", p).await);
    }

    // Acked, as the server sees it: the page's device, status "ok".
    for id in &ids {
        let receipt = server.wait_acked("CHANNEL_1", id, &device).await;
        assert_eq!(receipt["devices"][&device]["status"], "ok", "{receipt}");
        assert_eq!(receipt["acked"], 1, "{receipt}");
    }

    // Shown, newest first, each with its receipt.
    browser
        .wait_for("three rows, all acked", &all_acked(3))
        .await;
    let shown = rows(&mut browser).await;
    let shown_ids: Vec<&str> = shown.iter().map(|r| r[0].as_str()).collect();
    let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(shown_ids, newest_first, "rows are newest first");
    assert!(shown.iter().all(|r| r[1] == "message"), "{shown:?}");
    let json_row = &shown[2][3];
    assert!(
        json_row.contains("\"order\": 42") && json_row.contains("\"item\": \"green tea\""),
        "a JSON payload is pretty-printed: {json_row:?}"
    );
    assert_eq!(shown[1][3], "hello from the e2e test");
    assert_eq!(
        shown[0][3], payloads[2],
        "markup in a payload is shown as text"
    );
    assert_eq!(
        browser
            .eval("document.querySelectorAll('#events b, #events img').length")
            .await
            .unwrap(),
        0,
        "a payload never becomes markup"
    );
    let receipt_text = browser
        .eval("document.querySelector('#events .receipt').textContent")
        .await
        .unwrap();
    assert_eq!(receipt_text, "acked ✓");
    browser.screenshot("pere-subscriber.png").await;
    browser.resize(390, 844).await;
    browser.screenshot("pere-subscriber-phone.png").await;
    browser.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_page_keeps_its_device_across_reloads_and_gets_what_it_missed() {
    let server = TestServer::start().await;
    let mut browser = Browser::launch().await;
    let url = server.url("/subscriber.html");
    browser.open(&url, 800, 700).await;
    browser.wait_for_badge("open").await;
    let device = page_device(&mut browser).await;
    server.wait_online("CHANNEL_1", &device).await;
    let first = server.publish("CHANNEL_1", "before the reload").await;
    server.wait_acked("CHANNEL_1", &first, &device).await;

    // Leave the page: the stream closes; an event is published meanwhile.
    browser.navigate("about:blank").await;
    server.wait_offline("CHANNEL_1", &device).await;
    let missed = server.publish("CHANNEL_1", "while the page was away").await;

    browser.navigate(&url).await;
    browser.wait_for_badge("open").await;
    assert_eq!(
        page_device(&mut browser).await,
        device,
        "the device id is kept in localStorage"
    );
    server.wait_acked("CHANNEL_1", &missed, &device).await;
    browser
        .wait_for("the missed event, acked", &all_acked(1))
        .await;
    let shown = rows(&mut browser).await;
    assert_eq!(shown[0][0], missed, "only the missed event is replayed");
    assert_eq!(shown[0][3], "while the page was away");
    browser.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_page_says_when_events_were_lost() {
    let server = TestServer::builder().history(2).start().await;
    let mut ids = Vec::new();
    for n in 1..=4 {
        ids.push(server.publish("CHANNEL_1", &format!("event {n}")).await);
    }
    // Resuming after the first event: the second is no longer retained.
    let device = "W0039000000042";
    let mut browser = Browser::launch().await;
    browser
        .open(
            &server.url(&format!(
                "/subscriber.html?device={device}&lastEventId={}",
                ids[0]
            )),
            800,
            700,
        )
        .await;
    browser
        .wait_for(
            "a gap notice",
            "document.querySelector('#events [data-gap-from]') !== null",
        )
        .await;
    let gap = browser
        .eval(
            "(() => { const g = document.querySelector('#events [data-gap-from]'); \
             return [g.dataset.gapFrom, g.dataset.gapOldest, g.innerText]; })()",
        )
        .await
        .unwrap();
    assert_eq!(gap[0], ids[0].as_str(), "{gap}");
    assert_eq!(gap[1], ids[2].as_str(), "{gap}");
    assert!(
        gap[2].as_str().unwrap().contains("Events were lost"),
        "{gap}"
    );
    // The retained events are still replayed and acked.
    for id in &ids[2..] {
        server.wait_acked("CHANNEL_1", id, device).await;
    }
    browser
        .wait_for("the two replayed events, acked", &all_acked(2))
        .await;
    browser.screenshot("pere-subscriber-gap.png").await;
    browser.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_channels_presence_and_receipts() {
    let server = TestServer::start().await;
    let mut stream = server.stream("/feed/CHANNEL_1?device=DASH-1", &[]).await;
    assert_eq!(stream.status, 200);
    stream.next_event().await.unwrap(); // pere.hello: subscribed
    let acked = server.publish("CHANNEL_1", r#"{"n":1}"#).await;
    let pending = server.publish("CHANNEL_1", "two").await;
    let r = server
        .feedback(
            "CHANNEL_1",
            &[("device", "DASH-1"), ("Last-Event-ID", &acked)],
            b"status=ok",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let mut browser = Browser::launch().await;
    browser
        .open(&server.url("/dashboard.html"), 1200, 800)
        .await;
    browser
        .wait_for(
            "CHANNEL_1 listed with 2 events and 1 online",
            r#"(() => { const r = document.querySelector('#channels tr[data-channel="CHANNEL_1"]');
                return !!r && r.cells[1].textContent === '2' && r.cells[4].textContent === '1'; })()"#,
        )
        .await;
    browser
        .wait_for(
            "one open stream listed",
            "document.getElementById('streams-total').textContent === '1'",
        )
        .await;
    browser
        .eval(r#"document.querySelector('#channels tr[data-channel="CHANNEL_1"] button').click()"#)
        .await
        .unwrap();
    browser
        .wait_for(
            "DASH-1 online in the devices table",
            r#"document.querySelector('#devices tr[data-device="DASH-1"][data-online="true"]') !== null"#,
        )
        .await;
    let receipts = format!(
        r#"(() => {{
            const cell = (id) => document.querySelector(`#events tr[data-event-id="${{id}}"] td[data-acked]`);
            const a = cell('{acked}'), p = cell('{pending}');
            return !!a && !!p && a.dataset.acked === '1' && a.dataset.recipients === '1'
                && p.dataset.acked === '0' && p.textContent.includes('not acked: DASH-1');
        }})()"#
    );
    browser.wait_for("each event's receipts", &receipts).await;
    assert!(
        browser
            .eval("location.search")
            .await
            .unwrap()
            .as_str()
            .unwrap()
            .contains("channel=CHANNEL_1"),
        "the choice is kept in the URL"
    );
    browser.screenshot("pere-dashboard.png").await;
    browser.close().await;
    drop(stream);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_page_on_several_channels_acks_each_event_on_its_own() {
    let server = TestServer::start().await;
    let device = "W0039000000007";
    let mut browser = Browser::launch().await;
    browser
        .open(
            &server.url(&format!(
                "/subscriber.html?device={device}&channel=orders.eu&channel=alerts"
            )),
            800,
            700,
        )
        .await;
    browser.wait_for_badge("open").await;
    server.wait_online("alerts", device).await;
    let order = server.publish("orders.eu", "an order").await;
    let alert = server.publish("alerts", "an alert").await;
    // The event's channel is not on the wire: the page finds it.
    server.wait_acked("orders.eu", &order, device).await;
    server.wait_acked("alerts", &alert, device).await;
    browser.wait_for("both events acked", &all_acked(2)).await;
    browser.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_page_says_why_the_server_refused_the_stream() {
    let server = TestServer::start().await;
    let mut browser = Browser::launch().await;
    browser
        .open(&server.url("/subscriber.html?device=not%20valid"), 800, 700)
        .await;
    browser.wait_for_badge("closed").await;
    let detail = browser
        .eval("document.getElementById('detail').innerText")
        .await
        .unwrap();
    let detail = detail.as_str().unwrap();
    assert!(
        detail.contains("400 invalid_device") && detail.contains("not valid"),
        "the server's error is shown: {detail:?}"
    );
    browser.close().await;
    server.stop().await;
}
