//! Retention while running, through the real binary: `--max-age` drops
//! events as they age (not only at the next start), channels emptied by
//! retention are reclaimed, and `--max-channels` bounds how many are held.

use std::time::Duration;

use pere_tests::{Connection, ServerProcess, SseStream, eventually, temp_dir};

async fn publish(conn: &mut Connection, channel: &str, body: &str) -> (u16, serde_json::Value) {
    let r = conn
        .request("POST", &format!("/push/{channel}"), &[], body.as_bytes())
        .await;
    (r.status, r.json())
}

#[tokio::test]
async fn max_age_drops_events_while_running_with_the_file_store() {
    let dir = temp_dir("max-age");
    let server =
        ServerProcess::start(&["--data-dir", dir.to_str().unwrap(), "--max-age", "1s"]).await;
    let mut conn = Connection::open(server.addr).await;
    let (status, first) = publish(&mut conn, "aging", "old").await;
    assert_eq!(status, 201, "{first}");
    eventually("the event aged out of /admin/events", || async {
        let r = server.get("/admin/events/aging").await;
        r.status == 200 && r.json() == serde_json::json!([])
    })
    .await;
    let r = server.get("/admin/channels").await;
    assert_eq!(
        r.json(),
        serde_json::json!([]),
        "nothing retained, nothing listed"
    );
    let id = first["id"].as_str().unwrap();
    let r = server.get(&format!("/receipts/aging/{id}")).await;
    r.assert_error(404, "unknown_event");
    // A client resuming from before it is told what it lost.
    let mut s = SseStream::open(
        server.addr,
        "/feed/aging?lastEventId=1",
        &[("device", "late")],
    )
    .await;
    let gap = loop {
        let e = s.next_event().await.expect("an event");
        if e.event == "pere.gap" {
            break e;
        }
    };
    assert!(gap.data.contains("\"from\""), "{}", gap.data);
    drop(s);
    let log = server.stop();
    assert!(!log.contains("panicked"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn max_channels_bounds_the_channels_held_and_frees_them_with_retention() {
    let server = ServerProcess::start(&["--max-channels", "5", "--max-age", "1s"]).await;
    let mut conn = Connection::open(server.addr).await;
    for i in 0..5 {
        let (status, body) = publish(&mut conn, &format!("c{i}"), "x").await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = publish(&mut conn, "c0", "again").await;
    assert_eq!(status, 201, "an existing channel takes more: {body}");
    let r = conn.request("POST", "/push/c5", &[], b"x").await;
    r.assert_error(507, "channel_limit");
    assert!(r.text().contains("--max-channels"), "{}", r.text());
    eventually("retention frees the channels", || async {
        Connection::open(server.addr)
            .await
            .request("POST", "/push/c5", &[], b"x")
            .await
            .status
            == 201
    })
    .await;
    let log = server.stop();
    assert!(!log.contains("panicked"), "{log}");
}

/// A publish to a fresh channel used to keep ~6 KiB for good (its payload
/// held the whole 8 KiB read buffer it arrived in, and the channel's
/// bookkeeping was never reclaimed): 200,000 of them took a gigabyte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_channels_cost_little_and_are_reclaimed_when_they_expire() {
    const CHANNELS: usize = 10_000;
    const CONNECTIONS: usize = 8;
    // One malloc arena: glibc gives each thread that allocates under
    // contention an arena of its own, and memory freed in one is not
    // reused by another, so on a loaded machine the second round could
    // grow the server by a whole round although the first was reclaimed
    // (seen in full test runs: 2,680-3,860 bytes per channel, against
    // 1,400-1,500 with one arena under the same load). The test is about
    // what the server keeps, not about glibc's arenas.
    let server =
        ServerProcess::start_with_env(&["--max-age", "2s"], &[("MALLOC_ARENA_MAX", "1")]).await;
    let addr = server.addr;
    let round = |tag: &'static str| async move {
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..CONNECTIONS {
            tasks.spawn(async move {
                let mut conn = Connection::open(addr).await;
                for i in (c..CHANNELS).step_by(CONNECTIONS) {
                    let r = conn
                        .request("POST", &format!("/push/{tag}{i}"), &[], br#"{"n":1}"#)
                        .await;
                    assert_eq!(r.status, 201, "{}", r.text());
                }
            });
        }
        while let Some(t) = tasks.join_next().await {
            t.unwrap();
        }
    };
    let base = server.rss_kib();
    round("first").await;
    let first = server.rss_kib().saturating_sub(base);
    let per_channel = first * 1024 / CHANNELS as u64;
    eprintln!("first round: {first} KiB, {per_channel} bytes per channel");
    assert!(
        per_channel < 2500,
        "{per_channel} bytes per fresh channel with one small event"
    );
    let reclaimed = |tag: &'static str| async move {
        eventually(
            &format!("the {tag} round's channels are reclaimed"),
            || async {
                Connection::open(addr)
                    .await
                    .request("GET", "/admin/channels", &[], b"")
                    .await
                    .json()
                    == serde_json::json!([])
            },
        )
        .await;
        // The next maintenance tick forgets the channels themselves.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    };
    // Then the same again, twice: the memory of the earlier rounds is
    // reused, not added to. Measured from the start, not between rounds
    // (the allocator may have given reclaimed memory back, to take it
    // again now). One round more than "the same again": under load
    // glibc's heap does not always reuse the first round's memory for the
    // second (its freed pieces lie between what stays, and the hash
    // tables regrow elsewhere), which cost up to a whole round in full
    // test runs (2,493 bytes per channel after two rounds), but the third
    // round then fits in what the first two freed; a server that kept
    // what each round made would hold three rounds.
    reclaimed("first").await;
    round("second").await;
    let two = server.rss_kib().saturating_sub(base);
    reclaimed("second").await;
    round("third").await;
    let three = server.rss_kib().saturating_sub(base);
    let per = |kib: u64| kib * 1024 / CHANNELS as u64;
    eprintln!(
        "after two rounds: {two} KiB ({} bytes per channel), after three: {three} KiB ({})",
        per(two),
        per(three)
    );
    // A budget rather than the first round's figure, which a busy machine
    // lowers when the round runs past `--max-age`: a round costs ~1,250
    // bytes per channel, three kept would be ~3,750. Each round also
    // leaves its channels' tombstones (what retention dropped, for a
    // device that comes back: ~100 bytes each, the newest 100,000 kept),
    // and under load the single heap's slack (seen: 1,556-2,526 after
    // three rounds while three busy loops ran).
    assert!(
        per(three) < 3500,
        "three rounds grew the server by {three} KiB ({} bytes per channel of one round), \
         two by {two} KiB, the first alone by {first} KiB: rounds are kept, not reclaimed",
        per(three)
    );
    let log = server.stop();
    assert!(!log.contains("panicked"), "{log}");
}

/// A retained event keeps its payload, not also its encoded frame: a 64 KiB
/// payload of line breaks encodes to 7 × 64 KiB (`data: ` and a line end
/// per line), and 3 channels of such events delivered to readers once held
/// 1.5 GB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_events_do_not_keep_their_encoded_frames() {
    const EVENTS: usize = 300;
    let server = ServerProcess::start(&[]).await;
    let addr = server.addr;
    let payload = "\n".repeat(64 * 1024);
    let mut readers = Vec::new();
    for c in 0..3 {
        let mut s = SseStream::open(addr, &format!("/feed/lines{c}"), &[("device", "r")]).await;
        assert_eq!(s.next_event().await.unwrap().event, "pere.hello");
        readers.push(tokio::spawn(async move {
            let mut n = 0;
            while n < EVENTS / 3 {
                s.next_message().await.expect("an event");
                n += 1;
            }
        }));
    }
    let before = server.rss_kib();
    let mut conn = Connection::open(addr).await;
    for i in 0..EVENTS {
        let r = conn
            .request(
                "POST",
                &format!("/push/lines{}", i % 3),
                &[],
                payload.as_bytes(),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    for r in readers {
        tokio::time::timeout(Duration::from_secs(60), r)
            .await
            .expect("the readers get every event")
            .unwrap();
    }
    let grown_mib = server.rss_kib().saturating_sub(before) / 1024;
    eprintln!("{EVENTS} retained events of 64 KiB: RSS grew {grown_mib} MiB");
    // The payloads: 18.75 MiB. Their frames would add 131 MiB.
    assert!(
        grown_mib < 60,
        "grew {grown_mib} MiB for 18.75 MiB of payloads"
    );
    let log = server.stop();
    assert!(!log.contains("panicked"), "{log}");
}
