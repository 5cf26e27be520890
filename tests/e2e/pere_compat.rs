//! The original PERE clients, replayed byte for byte: `publisher.rb`
//! (RestClient), `subscriber.rb` (em-eventsource + RestClient) and
//! `public/subscriber.html` (EventSource + jQuery). They must work unchanged
//! (PROTOCOL's compatibility promise).

use pere_tests::{SseStream, TestServer, send_raw};
use serde_json::{Value, json};

const HOST: &str = "Host: 127.0.0.1:4567\r\n";

/// `RestClient.post "http://HOST:4567/push/CHANNEL_1", json_msg,
/// content_type: :json, accept: :json`, as it goes on the wire.
fn publisher_rb(json_msg: &str) -> Vec<u8> {
    format!(
        "POST /push/CHANNEL_1 HTTP/1.1\r\n\
         Accept: application/json\r\n\
         Accept-Encoding: gzip;q=1.0,deflate;q=0.6,identity;q=0.3\r\n\
         User-Agent: rest-client/2.0.2 (linux-gnu x86_64) ruby/2.1.5p273\r\n\
         Content-Type: application/json\r\n\
         Content-Length: {}\r\n\
         {HOST}\r\n\
         {json_msg}",
        json_msg.len()
    )
    .into_bytes()
}

/// em-eventsource's `GET`: `device` and `Cache-Control` headers, no
/// `Accept`; `Last-Event-Id` when it reconnects.
fn subscriber_rb_feed(device: &str, last_event_id: Option<&str>) -> Vec<u8> {
    let mut out = format!(
        "GET /feed/CHANNEL_1 HTTP/1.1\r\n\
         Cache-Control: no-cache\r\n\
         device: {device}\r\n"
    );
    if let Some(id) = last_event_id {
        out.push_str(&format!("Last-Event-Id: {id}\r\n"));
    }
    out.push_str("User-Agent: EventMachine HttpClient\r\n");
    out.push_str(HOST);
    out.push_str("\r\n");
    out.into_bytes()
}

/// `RestClient.post "http://HOST:4567/feedback/CHANNEL_1", {status: "rx
/// ok"}, {device: device, last_event_id: last_event_id}`: RestClient
/// capitalizes the header names and turns `_` into `-`.
fn subscriber_rb_feedback(device: &str, last_event_id: &str) -> Vec<u8> {
    let body = "status=rx+ok";
    format!(
        "POST /feedback/CHANNEL_1 HTTP/1.1\r\n\
         Accept: */*\r\n\
         Accept-Encoding: gzip;q=1.0,deflate;q=0.6,identity;q=0.3\r\n\
         User-Agent: rest-client/2.0.2 (linux-gnu x86_64) ruby/2.1.5p273\r\n\
         Device: {device}\r\n\
         Last-Event-Id: {last_event_id}\r\n\
         Content-Length: {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n\
         {HOST}\r\n\
         {body}",
        body.len()
    )
    .into_bytes()
}

/// The web page's `new EventSource('/feed/CHANNEL_1?device=…')`.
fn browser_feed(device: &str) -> Vec<u8> {
    format!(
        "GET /feed/CHANNEL_1?device={device} HTTP/1.1\r\n\
         {HOST}\
         Connection: keep-alive\r\n\
         Accept: text/event-stream\r\n\
         Cache-Control: no-cache\r\n\
         User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36\r\n\
         Referer: http://127.0.0.1:4567/subscriber.html\r\n\
         Accept-Language: en-US,en;q=0.9\r\n\r\n"
    )
    .into_bytes()
}

/// The web page's `$.ajax({url:'/feedback/CHANNEL_1', type:'POST',
/// data:{status:'ok'}, headers:{device, 'Last-Event-ID'}})`.
fn browser_feedback(device: &str, last_event_id: &str) -> Vec<u8> {
    let body = "status=ok";
    format!(
        "POST /feedback/CHANNEL_1 HTTP/1.1\r\n\
         {HOST}\
         Connection: keep-alive\r\n\
         Content-Length: {}\r\n\
         Accept: */*\r\n\
         X-Requested-With: XMLHttpRequest\r\n\
         device: {device}\r\n\
         Last-Event-ID: {last_event_id}\r\n\
         Content-Type: application/x-www-form-urlencoded; charset=UTF-8\r\n\
         Origin: http://127.0.0.1:4567\r\n\
         Referer: http://127.0.0.1:4567/subscriber.html\r\n\r\n\
         {body}",
        body.len()
    )
    .into_bytes()
}

/// What em-eventsource hands to subscriber.rb.
#[derive(Debug, Default)]
struct RubySource {
    /// `on 'message'` calls: (data, the source's last_event_id then).
    messages: Vec<(String, Option<String>)>,
    /// Named events (`on name`): subscriber.rb registers none.
    named: Vec<(String, String)>,
    /// `@last_event_id`.
    last_event_id: Option<String>,
    /// `@retry`, in seconds, when a `retry:` line was taken.
    retry: Option<u64>,
    /// Bytes not yet ended by a blank line.
    buffer: String,
}

impl RubySource {
    /// em-eventsource's stream handling: the buffer is cut on "\n\n" (LF
    /// only), each block read line by line with
    /// `/^data:(.+)$/`, `/^id:(.+)$/`, `/^event:(.+)$/`, `/^retry:(.+)$/`
    /// and `strip`.
    fn feed(&mut self, text: &str) {
        self.buffer.push_str(text);
        while let Some(end) = self.buffer.find("\n\n") {
            let block = self.buffer[..end].to_string();
            self.buffer.drain(..end + 2);
            self.handle(&block);
        }
    }

    fn handle(&mut self, block: &str) {
        let mut data = String::new();
        let mut name = None;
        for line in block.split('\n') {
            // `(.+)`: at least one character after the colon.
            let field = |prefix: &str| {
                line.strip_prefix(prefix)
                    .filter(|rest| !rest.is_empty())
                    .map(str::to_string)
            };
            if let Some(v) = field("data:") {
                data.push_str(v.trim());
                data.push('\n');
            }
            if let Some(v) = field("id:") {
                self.last_event_id = Some(v.trim().to_string());
            }
            if let Some(v) = field("event:") {
                name = Some(v.trim().to_string());
            }
            if let Some(v) = field("retry:") {
                // `if m[1].strip! =~ /^[0-9]+$/`: `strip!` is nil when there
                // was nothing to strip, so only a spaced value is taken,
                // and then as seconds (`EM.add_timer`).
                let stripped = v.trim();
                if stripped != v && stripped.bytes().all(|b| b.is_ascii_digit()) {
                    self.retry = stripped.parse().ok();
                }
            }
        }
        if data.is_empty() {
            return;
        }
        data.pop();
        match name {
            None => self.messages.push((data, self.last_event_id.clone())),
            Some(name) => self.named.push((name, data)),
        }
    }
}

/// Reads `n` messages from `stream` (with the WHATWG decoder, to wait) and
/// returns what em-eventsource makes of the same bytes.
async fn ruby_reads(stream: &mut SseStream, n: usize) -> RubySource {
    stream.messages(n).await;
    let mut source = RubySource::default();
    source.feed(&stream.text());
    source
}

#[tokio::test]
async fn publisher_rb_publishes_with_its_exact_request() {
    let server = TestServer::start().await;
    let mut s = server.subscribe("CHANNEL_1", "H0039512345678").await;
    let msg = r#"{"channel":"CHANNEL_1","device":"0039512345678","id":1,"time":"2014-12-01T09:35:33Z","data":"abc123"}"#;
    let r = send_raw(server.addr, &publisher_rb(msg)).await;
    assert!(
        (200..300).contains(&r.status),
        "RestClient needs a 2xx: {} {}",
        r.status,
        r.text()
    );
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "it asked for JSON"
    );
    assert!(
        r.header("content-encoding").is_none(),
        "an identity body is always acceptable"
    );
    let body = r.json();
    assert_eq!(body["channel"], "CHANNEL_1");
    assert_eq!(body["recipients"], 1);
    let e = s.messages(1).await.remove(0);
    assert_eq!(e.data, msg, "the payload arrives untouched");
    assert_eq!(e.id, body["id"].as_str().unwrap());
    let events = server.admin().events("CHANNEL_1").await;
    assert_eq!(
        events[0]["data"],
        serde_json::from_str::<Value>(msg).unwrap(),
        "PERE's payload is the envelope's data"
    );
}

#[tokio::test]
async fn subscriber_rb_reads_our_stream_with_its_own_parser() {
    let server = TestServer::start().await;
    let device = "H0039512345678";
    let mut s = SseStream::open_raw(server.addr, &subscriber_rb_feed(device, None)).await;
    assert_eq!(s.status, 200, "no Accept header is needed");
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    let msgs = [
        r#"{"channel":"CHANNEL_1","id":1,"data":"abc123"}"#,
        "two\nlines",
        "plain",
    ];
    let mut ids = Vec::new();
    for m in msgs {
        ids.push(server.publish("CHANNEL_1", m).await);
    }
    let ruby = ruby_reads(&mut s, 3).await;
    assert!(
        ruby.buffer.is_empty(),
        "every block ended: {:?}",
        ruby.buffer
    );
    assert_eq!(
        ruby.messages,
        vec![
            (msgs[0].to_string(), Some(ids[0].clone())),
            ("two\nlines".to_string(), Some(ids[1].clone())),
            ("plain".to_string(), Some(ids[2].clone())),
        ],
        "data and ids as subscriber.rb sees them"
    );
    assert_eq!(
        ruby.named
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["pere.hello"],
        "control events go to named handlers, which subscriber.rb has none of"
    );
    assert_eq!(
        ruby.retry, None,
        "`retry:3000` is unspaced, so em-eventsource does not read it as 3000 seconds"
    );
    assert!(
        s.text().starts_with("retry:3000\n\n"),
        "WHATWG clients still get 3000 ms"
    );
}

#[tokio::test]
async fn subscriber_rb_acks_each_message_and_resumes_with_last_event_id() {
    let server = TestServer::start().await;
    let device = "H0039512345678";
    let mut s = SseStream::open_raw(server.addr, &subscriber_rb_feed(device, None)).await;
    let first = server.publish("CHANNEL_1", "one").await;
    let ruby = ruby_reads(&mut s, 1).await;
    let (data, last) = &ruby.messages[0];
    assert_eq!(data, "one");
    let last = last.clone().expect("subscriber.rb has a last_event_id");
    assert_eq!(last, first);
    let r = send_raw(server.addr, &subscriber_rb_feedback(device, &last)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({ "id": first, "device": device, "state": "acked" })
    );
    let receipt = server.receipts("CHANNEL_1", &first).await;
    assert_eq!(receipt["devices"][device]["state"], "acked");
    assert_eq!(receipt["devices"][device]["status"], "rx ok");

    // The connection drops; events go on; em-eventsource reconnects with
    // `Last-Event-Id` and gets exactly what it missed.
    drop(s);
    server.wait_offline("CHANNEL_1", device).await;
    let missed = [
        server.publish("CHANNEL_1", "two").await,
        server.publish("CHANNEL_1", "three").await,
    ];
    let mut s = SseStream::open_raw(server.addr, &subscriber_rb_feed(device, Some(&last))).await;
    assert_eq!(s.status, 200);
    let ruby = ruby_reads(&mut s, 2).await;
    assert_eq!(
        ruby.messages,
        vec![
            ("two".to_string(), Some(missed[0].clone())),
            ("three".to_string(), Some(missed[1].clone())),
        ]
    );
    for id in &missed {
        let r = send_raw(server.addr, &subscriber_rb_feedback(device, id)).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let d = server.presence("CHANNEL_1", device).await.unwrap();
    assert_eq!(d["op"], "feedback");
    assert_eq!(d["Last-Event-Id"], missed[1].as_str());
}

#[tokio::test]
async fn the_web_page_subscribes_and_acks_like_a_browser() {
    let server = TestServer::start().await;
    let device = "W0039512345678";
    let mut s = SseStream::open_raw(server.addr, &browser_feed(device)).await;
    assert_eq!(s.status, 200);
    let id = server.publish("CHANNEL_1", r#"{"data":"abc123"}"#).await;
    let e = s.next_message().await.unwrap();
    assert_eq!(e.event, "message", "onmessage sees it");
    assert_eq!(e.id, id, "event.lastEventId");
    let r = send_raw(server.addr, &browser_feedback(device, &e.id)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        r.json(),
        json!({ "id": id, "device": device, "state": "acked" })
    );
    let receipt = server.receipts("CHANNEL_1", &id).await;
    assert_eq!(receipt["devices"][device]["status"], "ok");
}

#[tokio::test]
async fn admin_shows_pere_clients_after_their_receipts() {
    let server = TestServer::start().await;
    let ruby_device = "H0039512345678";
    let web_device = "W0039512345678";
    let mut ruby = SseStream::open_raw(server.addr, &subscriber_rb_feed(ruby_device, None)).await;
    let mut web = SseStream::open_raw(server.addr, &browser_feed(web_device)).await;
    assert_eq!(
        server.admin().connections().await,
        json!({ "CHANNEL_1": 2, "total number": 2 })
    );
    let msg = r#"{"channel":"CHANNEL_1","device":"0039512345678","id":1,"time":"2014-12-01T09:35:33Z","data":"abc123"}"#;
    let r = send_raw(server.addr, &publisher_rb(msg)).await;
    assert_eq!(r.json()["recipients"], 2);
    let id = r.json()["id"].as_str().unwrap().to_string();

    let source = ruby_reads(&mut ruby, 1).await;
    let last = source.messages[0].1.clone().unwrap();
    let r = send_raw(server.addr, &subscriber_rb_feedback(ruby_device, &last)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = web.next_message().await.unwrap();
    let r = send_raw(server.addr, &browser_feedback(web_device, &e.id)).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let devices = server.admin().devices("CHANNEL_1").await;
    for device in [ruby_device, web_device] {
        let d = &devices[device];
        assert_eq!(d["op"], "feedback", "{device}: {devices}");
        assert_eq!(d["Last-Event-Id"], id.as_str(), "{device}: {devices}");
        assert!(d["at"].as_str().is_some_and(|t| t.ends_with('Z')), "{d}");
        assert_eq!(d["online"], true, "{d}");
    }
    let receipt = server.receipts("CHANNEL_1", &id).await;
    assert_eq!(receipt["acked"], 2, "{receipt}");
    assert_eq!(receipt["pending"], json!([]), "{receipt}");
}

#[tokio::test]
async fn the_ruby_parser_model_follows_em_eventsource() {
    // The model itself, on hand-written streams, so a wrong model cannot
    // make the tests above pass by accident.
    let mut src = RubySource::default();
    src.feed("retry: 3000\n\nevent: pere.hello\ndata: {}\n\nid: 7\ndata: a\ndata:  b \n\n");
    assert_eq!(
        src.retry,
        Some(3000),
        "a spaced retry is taken (as seconds)"
    );
    assert_eq!(
        src.named,
        vec![("pere.hello".to_string(), "{}".to_string())]
    );
    assert_eq!(
        src.messages,
        vec![("a\nb".to_string(), Some("7".to_string()))]
    );
    let mut src = RubySource::default();
    src.feed("retry:3000\n\ndata: x\r\n\r\n");
    assert_eq!(src.retry, None, "an unspaced retry is ignored");
    assert!(src.messages.is_empty(), "CRLF does not end a block for it");
}
