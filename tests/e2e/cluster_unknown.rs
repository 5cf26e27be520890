//! An append whose outcome a node cannot know — Redis hung after taking
//! the command, and answered nothing before the timeout — lands on the log
//! at most once: what the node sends again does not add to it.

use std::time::{Duration, Instant};

use crate::cluster::Cluster;

/// One of a device's two streams ends while Redis hangs: the node's entry
/// saying so times out unanswered, yet Redis runs it once it wakes up.
/// Sent again with the node's next entry, the stream's end was applied
/// twice, and the device, still streaming, was counted offline on every
/// node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_only_the_node_knew_is_applied_once_when_redis_hangs_mid_append() {
    let cluster = Cluster::start(2, &[]).await;
    let mut kept = cluster.subscribe(0, "news", "d1").await;
    let ended = cluster.subscribe(0, "news", "d1").await;
    pere_tests::eventually("two streams counted on both nodes", || async {
        cluster.presence(0, "news", "d1").await["connections"] == 2
            && cluster.presence(1, "news", "d1").await["connections"] == 2
    })
    .await;
    cluster.redis.freeze().unwrap();
    drop(ended);
    // Longer than the command timeout (3 s): the entry the node sent is
    // in Redis's socket buffer, unanswered.
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.redis.thaw().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        let r = cluster
            .node(0)
            .request("POST", "/push/news", &[], b"after")
            .await;
        if r.status == 201 {
            break r.json()["id"].as_str().unwrap().parse::<u64>().unwrap();
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(Instant::now() < deadline, "still refused: {}", r.text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let got = crate::cluster::read(&mut kept, 1).await;
    assert_eq!(got[0].0, id, "the stream that stayed goes on: {got:?}");
    for node in 0..2 {
        // Both nodes have read the publish's entry, which came after.
        pere_tests::eventually("the publish applied", || async {
            let r = cluster
                .node(node)
                .request("GET", "/admin/events/news", &[], b"")
                .await;
            r.text().contains(&id.to_string())
        })
        .await;
        let d1 = cluster.presence(node, "news", "d1").await;
        assert_eq!(d1["online"], true, "node {node}: {d1}");
        assert_eq!(
            d1["connections"], 1,
            "node {node}: one stream ended, once: {d1}"
        );
    }
}
