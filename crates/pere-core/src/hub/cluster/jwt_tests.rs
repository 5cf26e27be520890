//! A stream opened with a JWT on one node makes its device a member on
//! every node: the others do not hold the JWT, and check, in log order,
//! only what they all know alike (whether its `jti` was revoked).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use super::apply_entry;
use super::snapshot_tests::{dev, pat};
use super::wire::Wire;
use crate::auth::{TokenHash, jti_key};
use crate::config::{HubConfig, Retention};
use crate::hub::{Hub, Inner};
use crate::jwt::{JwtConfig, JwtVerifier};
use crate::log::MemoryStore;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

/// Entry `n` of the log, by node `node`, holding `wires`.
fn entry(n: u64, node: &str, wires: &[Wire]) -> super::SharedEntry {
    super::snapshot_tests::entry(n, node, 10 + n, wires)
}

async fn secured(name: &str) -> Arc<Inner<MemoryStore>> {
    let auth = crate::AuthRegistry::default();
    auth.enable(Vec::new());
    auth.enable_jwt(
        JwtVerifier::new(&JwtConfig {
            secret: Some(SECRET.to_vec()),
            ..JwtConfig::default()
        })
        .unwrap(),
    );
    let store = MemoryStore::new(Retention::default());
    Hub::assemble(HubConfig::default(), store, Some(name), None, auth)
        .await
        .unwrap()
        .0
}

fn jwt(jti: &str) -> String {
    let exp = crate::jwt::unix_now() + 600;
    let claims =
        serde_json::json!({"sub": "phone-1", "subscribe": ["orders.*"], "exp": exp, "jti": jti});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET).unwrap(),
    )
    .unwrap()
}

/// The entry node `x` appends for a stream it opened with `jwt` (held
/// there, so it knows its `jti`).
fn subscribe(jwt: &str, jti: &str) -> Wire {
    Wire::Subscribe {
        patterns: vec![pat("orders.eu")],
        device: Some(dev("phone-1")),
        last_event_id: None,
        token: Some(TokenHash::of(jwt).0),
        jti: Some(jti_key(jti).0),
    }
}

fn member(node: &Inner<MemoryStore>) -> bool {
    node.state()
        .memberships
        .sub(&pat("orders.eu"))
        .is_some_and(|s| s.members.contains_key(&dev("phone-1")))
}

#[tokio::test]
async fn a_jwt_stream_of_another_node_makes_its_device_a_member_on_every_node() {
    let (a, b) = (secured("a").await, secured("b").await);
    // b holds the JWT (a stream of its own with it); a never saw it.
    let token = jwt("s-1");
    let _held = b.auth.check(&token).unwrap();
    let open = entry(1, "x", &[subscribe(&token, "s-1")]);
    apply_entry(&a, open.clone(), None).await;
    apply_entry(&b, open, None).await;
    assert!(member(&b), "b holds the JWT");
    assert!(member(&a), "a does not hold it, and must agree");
}

#[tokio::test]
async fn a_revoked_jti_refuses_the_stream_of_another_node_on_every_node() {
    let (a, b) = (secured("a").await, secured("b").await);
    let token = jwt("s-2");
    let _held = b.auth.check(&token).unwrap();
    let revoke = Wire::Token {
        token: jti_key("s-2").0,
        grants: None,
        jti: true,
    };
    for (n, wires) in [(1, vec![revoke]), (2, vec![subscribe(&token, "s-2")])] {
        apply_entry(&a, entry(n, "x", &wires), None).await;
        apply_entry(&b, entry(n, "x", &wires), None).await;
    }
    assert!(!member(&a) && !member(&b));
}
