//! Auth in the hub: a secured hub refuses token-less and ungranted
//! subscribes, and a grant changed or a token revoked at run time reaches
//! open streams at once (docs/PROTOCOL.md §7).

#![allow(clippy::unwrap_used)]

use super::tests::{WAIT, dev, hub, next, pat, publish};
use super::*;
use crate::auth::{Grants, Token};

pub(super) fn grants(subject: &str, subscribe: &[&str]) -> Grants {
    Grants {
        subject: dev(subject),
        subscribe: subscribe.iter().map(|p| pat(p)).collect(),
        publish: Vec::new(),
        admin: false,
    }
}

async fn secured() -> (Hub, Token) {
    let hub = hub().await;
    let token = Token::new("phone-token-0123456789").unwrap();
    hub.auth()
        .enable(vec![(token.clone(), grants("phone", &["a", "b"]))]);
    (hub, token)
}

async fn open(hub: &Hub, token: &Token, device: &str, patterns: &[&str]) -> Result<Subscription> {
    hub.subscribe_with_token(
        SubscribeRequest {
            device: Some(dev(device)),
            patterns: patterns.iter().map(|p| pat(p)).collect(),
            resume: Resume::Now,
        },
        None,
        Some(token.hash()),
    )
    .await
}

#[tokio::test]
async fn the_writer_checks_subject_and_grants() {
    let (hub, token) = secured().await;
    assert!(open(&hub, &token, "phone", &["a", "b"]).await.is_ok());
    assert!(matches!(
        open(&hub, &token, "other", &["a"]).await,
        Err(Error::Forbidden(_))
    ));
    assert!(matches!(
        open(&hub, &token, "phone", &["a", "c"]).await,
        Err(Error::Forbidden(_))
    ));
    let unknown = Token::new("nobody-knows-this-1").unwrap();
    assert!(matches!(
        open(&hub, &unknown, "phone", &["a"]).await,
        Err(Error::Unauthorized(_))
    ));
}

#[tokio::test]
async fn revoking_a_token_ends_its_streams_without_draining_them() {
    let (hub, token) = secured().await;
    let mut s = open(&hub, &token, "phone", &["a"]).await.unwrap();
    publish(&hub, "a", "queued before the revocation").await;
    hub.delete_token(token.hash()).await.unwrap();
    let end = tokio::time::timeout(WAIT, s.next()).await.unwrap();
    assert!(end.is_none(), "the stream ended, its queue unread");
    assert!(matches!(
        hub.delete_token(token.hash()).await,
        Err(Error::UnknownToken(_))
    ));
}

#[tokio::test]
async fn removing_one_grant_filters_that_channel_only() {
    let (hub, token) = secured().await;
    let mut s = open(&hub, &token, "phone", &["a", "b"]).await.unwrap();
    let replaced = hub
        .put_token(&token, grants("phone", &["b"]))
        .await
        .unwrap();
    assert!(replaced);
    publish(&hub, "a", "not granted any more").await;
    publish(&hub, "b", "still granted").await;
    assert_eq!(next(&mut s).await.payload_str(), "still granted");
    // Granted again: `a` flows again.
    hub.put_token(&token, grants("phone", &["a", "b"]))
        .await
        .unwrap();
    publish(&hub, "a", "granted again").await;
    assert_eq!(next(&mut s).await.payload_str(), "granted again");
    // Nothing left: the stream closes.
    hub.put_token(&token, grants("phone", &["c"]))
        .await
        .unwrap();
    let end = tokio::time::timeout(WAIT, s.next()).await.unwrap();
    assert!(end.is_none());
    assert_eq!(hub.connections().await.unwrap().total, 0);
}

#[tokio::test]
async fn only_an_admin_token_turns_auth_on_at_run_time() {
    let hub = hub().await;
    let token = Token::new("phone-token-0123456789").unwrap();
    assert!(matches!(
        hub.put_token(&token, grants("phone", &["a"])).await,
        Err(Error::AuthDisabled)
    ));
    assert!(!hub.auth().is_enabled());
    let mut admin = grants("ops", &[]);
    admin.admin = true;
    let admin_token = Token::new("admin-token-0123456789").unwrap();
    assert!(!hub.put_token(&admin_token, admin).await.unwrap());
    assert!(hub.auth().is_enabled());
    assert!(hub.put_token(&token, grants("phone", &["a"])).await.is_ok());
}
