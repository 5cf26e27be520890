//! Graceful shutdown: open streams end cleanly and the server returns.

use pere_tests::{TestServer, WAIT};

#[tokio::test]
async fn shutdown_ends_open_streams_and_the_server_returns() {
    let server = TestServer::start().await;
    let mut a = server.stream("/feed/c", &[("device", "a")]).await;
    let mut b = server.stream("/feed?channel=c&channel=d.*", &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.next_event().await.unwrap().event, "pere.hello");
    assert_eq!(b.next_event().await.unwrap().event, "pere.hello");
    tokio::time::timeout(WAIT, server.stop())
        .await
        .expect("the server stops within the timeout");
    assert!(
        a.until_end().await.is_empty(),
        "the stream ends after shutdown"
    );
    assert!(b.until_end().await.is_empty());
}

/// Issue 18.1: a publish waiting for receipts is answered when shutdown
/// begins, with the event's id and its receipts so far, instead of being
/// cut after the grace period (its publisher could not tell it had been
/// published).
#[tokio::test]
async fn a_held_wait_is_answered_at_shutdown_with_the_receipts_so_far() {
    let server = TestServer::start().await;
    let mut d = server.subscribe("c", "d").await;
    let addr = server.addr;
    let publish = tokio::spawn(async move {
        pere_tests::request(addr, "POST", "/push/c?wait=acked&timeout=60000", &[], b"x").await
    });
    let id = d.messages(1).await.remove(0).id;
    let stopping = std::time::Instant::now();
    let stop = tokio::spawn(server.stop());
    let r = tokio::time::timeout(std::time::Duration::from_secs(3), publish)
        .await
        .expect("answered at once, not after the grace period")
        .unwrap();
    assert!(stopping.elapsed() < std::time::Duration::from_secs(3));
    assert_eq!(r.status, 201, "{}", r.text());
    let body = r.json();
    assert_eq!(body["id"], id.as_str(), "{body}");
    assert_eq!(body["delivered"], 1, "{body}");
    assert_eq!(body["unacked"], serde_json::json!(["d"]), "{body}");
    assert_eq!(body["timed_out"], true, "{body}");
    assert_eq!(body["shutting_down"], true, "{body}");
    tokio::time::timeout(WAIT, stop).await.unwrap().unwrap();
}

/// SIGHUP reloads the certificate of a TLS server; a server without TLS
/// has nothing to reload and goes on (it used to die at once: SIGHUP's
/// default action, sent by `systemctl reload` or a closed terminal).
#[tokio::test]
async fn sighup_without_tls_is_logged_and_the_server_goes_on() {
    let server = pere_tests::ServerProcess::start(&[]).await;
    let mut s = server.subscribe("c", "d").await;
    for _ in 0..2 {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &server.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
    pere_tests::eventually("SIGHUP is logged twice", || async {
        server.log().matches("nothing to reload").count() == 2
    })
    .await;
    let id = server.publish("c", "after SIGHUP").await;
    assert_eq!(s.ids(1).await, [id]);
    let log = server.stop();
    assert!(!log.contains("panicked"), "{log}");
}
