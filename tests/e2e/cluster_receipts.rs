//! A receipts stream (`GET /receipts/:channel`) resumes on any node of a
//! cluster: every node records the same receipt changes under the same
//! numbers; and `/admin/connections` counts every node's streams (issue
//! 15, docs/PROTOCOL.md §5.6, §6 and §10).

use pere_http::sse::SseEvent;

use crate::cluster::{Cluster, ack, read};

/// The next `n` receipt changes of a receipts stream (keepalives and
/// control events skipped).
async fn changes(stream: &mut pere_tests::SseStream, n: usize) -> Vec<SseEvent> {
    let mut out = Vec::new();
    while out.len() < n {
        let e = stream
            .next_event()
            .await
            .expect("the receipts stream goes on");
        assert_ne!(e.event, "pere.gap", "no gap: {e:?}");
        if e.event == "receipt" || e.event == "overdue" {
            out.push(e);
        }
    }
    out
}

#[tokio::test]
async fn a_receipts_stream_resumes_on_another_node_with_the_same_numbers() {
    let cluster = Cluster::start(3, &[]).await;
    let mut on_0 = cluster.node(0).stream("/receipts/orders", &[]).await;
    assert_eq!(on_0.status, 200, "{}", on_0.text());
    let mut phone = cluster.subscribe(1, "orders", "phone").await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(cluster.publish(2, "orders", &format!("e{n}")).await);
    }
    let got = read(&mut phone, 3).await;
    assert_eq!(got.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids);
    for id in &ids {
        ack(cluster.node(2), "orders", "phone", *id).await;
    }
    // Three deliveries and three acknowledgements, as node 0 numbers them.
    let all = changes(&mut on_0, 6).await;
    let states: Vec<String> = all
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
            format!(
                "{}:{}",
                v["id"].as_str().unwrap(),
                v["state"].as_str().unwrap()
            )
        })
        .collect();
    let mut expected: Vec<String> = ids.iter().map(|id| format!("{id}:delivered")).collect();
    expected.extend(ids.iter().map(|id| format!("{id}:acked")));
    let mut sorted = states.clone();
    sorted.sort_by_key(|s| s.ends_with("acked"));
    assert_eq!(sorted, expected, "{states:?}");
    drop(on_0);

    // The client comes back on node 1 with the number of the third change:
    // it gets the other three, numbered as node 0 numbered them.
    let last = all[2].id.clone();
    let mut on_1 = cluster
        .node(1)
        .stream("/receipts/orders", &[("Last-Event-ID", &last)])
        .await;
    assert_eq!(on_1.status, 200, "{}", on_1.text());
    assert_eq!(changes(&mut on_1, 3).await, all[3..].to_vec());
    // And on node 2, which no receipts stream ever followed before.
    let mut on_2 = cluster
        .node(2)
        .stream("/receipts/orders", &[("Last-Event-ID", &all[0].id)])
        .await;
    assert_eq!(changes(&mut on_2, 5).await, all[1..].to_vec());
}

#[tokio::test]
async fn admin_connections_count_every_node_s_streams() {
    let cluster = Cluster::start(2, &[]).await;
    let _phone = cluster.subscribe(0, "orders", "phone").await;
    // Anonymous streams (no device) are in no membership: their node tells
    // the others how many it holds.
    let _a = cluster.node(1).stream("/feed/orders", &[]).await;
    let _b = cluster
        .node(1)
        .stream("/feed?channel=orders&channel=news.*", &[])
        .await;
    let expected = serde_json::json!({ "news.*": 1, "orders": 3, "total number": 3 });
    for node in 0..2 {
        pere_tests::eventually("every node counts every node's streams", || async {
            let r = cluster.node(node).get("/admin/connections").await;
            r.json() == expected
        })
        .await;
    }
}

/// The state of `device`'s receipt of event `id`, as `node` tells it.
async fn state_on(cluster: &Cluster, node: usize, channel: &str, id: u64, device: &str) -> String {
    let summary = cluster
        .node(node)
        .get(&format!("/receipts/{channel}/{id}"))
        .await
        .json();
    summary["devices"][device]["state"]
        .as_str()
        .unwrap_or("none")
        .to_owned()
}

/// Events written by replay reach every node's receipts, as live ones do
/// (docs/PROTOCOL.md §4, §5): a late joiner's replay adds it to the
/// audience, and a member's redelivery makes it `delivered`, with no live
/// event after them and the stream still open.
#[tokio::test]
async fn events_written_by_replay_are_delivered_on_every_node() {
    let cluster = Cluster::start(3, &[]).await;
    let old = cluster.publish(0, "jobs", "old").await;
    let mut late =
        super::cluster::subscribe_with(cluster.node(1), "jobs?replay=all", "late", &[]).await;
    assert_eq!(read(&mut late, 1).await[0].0, old);
    for node in 0..3 {
        pere_tests::eventually("the replay is told to every node", || async {
            state_on(&cluster, node, "jobs", old, "late").await == "delivered"
        })
        .await;
    }
    // Its receipt on another node is taken, as on a single node.
    ack(cluster.node(2), "jobs", "late", old).await;

    // A member that acknowledges, away while an event is published, is
    // sent it again on another node.
    let mut phone = cluster.subscribe(0, "jobs", "phone").await;
    let first = cluster.publish(0, "jobs", "first").await;
    assert_eq!(read(&mut phone, 1).await[0].0, first);
    ack(cluster.node(0), "jobs", "phone", first).await;
    drop(phone);
    let missed = cluster.publish(1, "jobs", "missed").await;
    assert_eq!(
        state_on(&cluster, 2, "jobs", missed, "phone").await,
        "pending"
    );
    let mut phone = cluster.subscribe(2, "jobs", "phone").await;
    assert_eq!(read(&mut phone, 1).await[0].0, missed);
    for node in 0..3 {
        pere_tests::eventually("the redelivery is told to every node", || async {
            state_on(&cluster, node, "jobs", missed, "phone").await == "delivered"
        })
        .await;
    }
    drop(late);
}

/// Each of a device's streams counts its writes, on every node, as a
/// single node counts them (docs/PROTOCOL.md §5.5: `deliveries` is the
/// writes of the event to the device's streams).
#[tokio::test]
async fn a_device_s_two_streams_on_two_nodes_count_two_deliveries() {
    let cluster = Cluster::start(3, &[]).await;
    let mut on_1 = cluster.subscribe(1, "jobs", "tablet").await;
    let mut on_2 = cluster.subscribe(2, "jobs", "tablet").await;
    let id = cluster.publish(0, "jobs", "page").await;
    assert_eq!(read(&mut on_1, 1).await[0].0, id);
    assert_eq!(read(&mut on_2, 1).await[0].0, id);
    for node in 0..3 {
        pere_tests::eventually("both writes are counted on every node", || async {
            let summary = cluster
                .node(node)
                .get(&format!("/receipts/jobs/{id}"))
                .await
                .json();
            summary["devices"]["tablet"]["deliveries"] == 2
        })
        .await;
    }
}
