//! Receipts sent back to back on one keep-alive connection (HTTP/1.1
//! pipelining, as a gateway forwarding many devices' receipts does): the
//! server reads the whole ones together and answers them in one write
//! (`server::conn::posts`). Each answer must be the one the request gets
//! on its own, in order, and whatever else follows on the connection is
//! still served.

use std::time::{Duration, Instant};

use pere_tests::{HttpReader, TestServer, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A receipt request on a kept-alive connection.
fn receipt(device: Option<&str>, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut out = b"POST /feedback/c HTTP/1.1\r\nHost: x\r\n".to_vec();
    if let Some(device) = device {
        out.extend_from_slice(format!("device: {device}\r\n").as_bytes());
    }
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
    out
}

/// Status, headers but `date`, and body of each of `n` answers.
async fn answers(reader: &mut HttpReader, n: usize) -> Vec<(u16, Vec<(String, String)>, String)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (status, headers) = reader.head().await;
        let body = reader.body(&headers, status).await;
        let mut headers: Vec<_> = headers
            .into_iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("date"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        headers.sort();
        out.push((status, headers, String::from_utf8(body).unwrap()));
    }
    out
}

#[tokio::test]
async fn pipelined_receipts_get_the_answers_they_get_one_at_a_time_in_order() {
    let server = TestServer::start().await;
    let mut d = server.subscribe("c", "d").await;
    let e1 = server.publish("c", "one").await;
    let e2 = server.publish("c", "two").await;
    assert_eq!(d.messages(2).await.len(), 2);
    let json = ("Content-Type", "application/json");
    let requests = [
        receipt(Some("d"), &[json], &format!(r#"{{"id":"{e1}"}}"#)),
        receipt(
            Some("d"),
            &[json],
            &format!(r#"{{"id":"{e2}","status":"first"}}"#),
        ),
        receipt(
            Some("d"),
            &[json],
            &format!(r#"{{"id":"{e2}","status":"second"}}"#),
        ),
        receipt(Some("d"), &[json], r#"{"id":"999999"}"#),
        receipt(Some("stranger"), &[json], &format!(r#"{{"id":"{e1}"}}"#)),
        receipt(None, &[json], &format!(r#"{{"id":"{e1}"}}"#)),
        receipt(Some("d"), &[json], r#"{"id":"#),
        receipt(
            Some("d"),
            &[json],
            &format!(r#"[{{"id":"{e1}"}},{{"id":"x"}}]"#),
        ),
        receipt(
            Some("d"),
            &[("Last-Event-ID", &e1), ("Origin", "http://page.example")],
            "status=ok",
        ),
        receipt(Some("d"), &[json], &format!(r#"{{"id":{e1}}}"#)),
    ];

    // All at once, then a request of another kind and one more receipt
    // behind them: those go to hyper, on the same connection.
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    let mut all = requests.concat();
    all.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    all.extend_from_slice(&requests[0]);
    conn.write_all(&all).await.unwrap();
    let mut reader = HttpReader::new(conn);
    let together = answers(&mut reader, requests.len() + 2).await;
    assert_eq!(
        together[requests.len()].0,
        200,
        "the health check behind them"
    );
    assert_eq!(together[requests.len() + 1], together[0]);

    // The receipts were recorded in request order: the later status won.
    let summary = server.get(&format!("/receipts/c/{e2}")).await.json();
    assert_eq!(summary["devices"]["d"]["status"], "second", "{summary}");

    // One at a time, each head ahead of its body, so that none is whole
    // when the server first looks: hyper serves them all.
    let mut reader = HttpReader::new(TcpStream::connect(server.addr).await.unwrap());
    let mut alone = Vec::new();
    for request in &requests {
        let split = request.len() - 2;
        reader.send(&request[..split]).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        reader.send(&request[split..]).await;
        alone.extend(answers(&mut reader, 1).await);
    }
    assert_eq!(together[..requests.len()], alone[..]);
    let statuses: Vec<u16> = alone.iter().map(|a| a.0).collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 404, 409, 400, 400, 200, 200, 200],
        "{alone:#?}"
    );
}

#[tokio::test]
async fn a_connection_that_served_receipts_is_closed_once_idle_and_at_shutdown() {
    let idle = Duration::from_millis(400);
    let server = TestServer::builder().idle_timeout(idle).start().await;
    let mut d = server.subscribe("c", "d").await;
    let e1 = server.publish("c", "one").await;
    assert_eq!(d.messages(1).await.len(), 1);
    let body = format!(r#"{{"id":"{e1}"}}"#);
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(&receipt(Some("d"), &[], &body))
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, conn.read_to_end(&mut answer))
        .await
        .expect("closed once idle")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        started.elapsed() >= idle,
        "closed after {:?}",
        started.elapsed()
    );

    // Shutdown does not wait for a quiet connection's idle timeout.
    let server2 = TestServer::start().await;
    let mut d = server2.subscribe("c", "d").await;
    let e1 = server2.publish("c", "one").await;
    assert_eq!(d.messages(1).await.len(), 1);
    let mut conn = TcpStream::connect(server2.addr).await.unwrap();
    let body = format!(r#"{{"id":"{e1}"}}"#);
    conn.write_all(&receipt(Some("d"), &[], &body))
        .await
        .unwrap();
    let mut reader = HttpReader::new(conn);
    assert_eq!(reader.head().await.0, 200);
    drop(d);
    tokio::time::timeout(Duration::from_secs(5), server2.stop())
        .await
        .expect("the server stops without waiting for the idle connection");
}

#[tokio::test]
async fn a_receipt_whose_head_is_over_the_limit_gets_431_as_any_request() {
    let server = TestServer::start().await;
    let mut d = server.subscribe("c", "d").await;
    let e1 = server.publish("c", "one").await;
    assert_eq!(d.messages(1).await.len(), 1);
    let body = format!(r#"{{"id":"{e1}"}}"#);
    let padding = "x".repeat(9000);
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(&receipt(Some("d"), &[("x-padding", &padding)], &body))
        .await
        .unwrap();
    let mut reader = HttpReader::new(conn);
    assert_eq!(reader.head().await.0, 431);
    let summary = server.get(&format!("/receipts/c/{e1}")).await.json();
    assert_eq!(summary["acked"], 0, "{summary}");
}
