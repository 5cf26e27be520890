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
