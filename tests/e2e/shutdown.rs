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
