//! JWT bearer tokens (docs/PROTOCOL.md §7.4, issue 17) through the real
//! `pere-server` binary: tokens minted here with `jsonwebtoken`, HS256 from
//! `--jwt-secret-file` and ES256/RS256 from `--jwt-public-key`, beside the
//! static tokens of `--auth`; refusals, revocation by `jti` (live, and
//! after a restart), and streams closed at `exp`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pere_tests::{ServerProcess, SseStream, WAIT, temp_dir};
use serde_json::{Value, json};

const SECRET: &str = "jwt-secret-for-the-tests-0123456789abcdef";
const ADMIN: &str = "admin-token-00000000001";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A directory with the secret and an `--auth` file of one static admin
/// token.
fn files() -> (PathBuf, PathBuf, PathBuf) {
    let dir = temp_dir("jwt");
    let secret = dir.join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let auth = dir.join("auth.json");
    let tokens = json!({"tokens": {ADMIN: {"subject": "ops", "admin": true}}});
    std::fs::write(&auth, tokens.to_string()).unwrap();
    (dir, secret, auth)
}

async fn start(extra: &[&str]) -> (ServerProcess, PathBuf) {
    let (dir, secret, auth) = files();
    let mut args = vec![
        "--jwt-secret-file",
        secret.to_str().unwrap(),
        "--jwt-audience",
        "pere",
        "--jwt-issuer",
        "shop",
        "--auth",
        auth.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    (ServerProcess::start(&args).await, dir)
}

/// Claims of a phone: subscribes to `orders.*`, for `secs` seconds.
fn phone(secs: u64) -> Value {
    json!({"sub": "phone-1", "subscribe": ["orders.*"], "exp": now() + secs,
           "aud": "pere", "iss": "shop"})
}

fn hs256(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

async fn stream(server: &ServerProcess, token: &str, path: &str) -> SseStream {
    server.with_token(token).stream(path, &[]).await
}

async fn publish(server: &ServerProcess, channel: &str, data: &str) {
    let backend = hs256(
        &json!({"sub": "backend", "publish": ["**"], "exp": now() + 60, "aud": "pere", "iss": "shop"}),
        SECRET,
    );
    // Static and JWT publishers alike.
    for token in [ADMIN, backend.as_str()] {
        let r = server
            .with_token(token)
            .post(&format!("/push/{channel}"), &[], data.as_bytes())
            .await;
        if r.status == 201 {
            return;
        }
        assert_eq!(r.status, 403, "{}", r.text());
    }
    panic!("nobody could publish");
}

/// Reads until the stream ends, failing after `limit`; when it ended.
async fn ended_within(s: &mut SseStream, limit: Duration) -> Instant {
    tokio::time::timeout(limit, s.until_end())
        .await
        .expect("the stream ends in time");
    Instant::now()
}

#[tokio::test]
async fn jwts_are_accepted_beside_static_tokens_and_refused_with_a_reason() {
    let (server, dir) = start(&[]).await;
    let token = hs256(&phone(60), SECRET);
    // In the header, and in the query as EventSource sends it.
    let mut s = stream(&server, &token, "/feed/orders.eu").await;
    assert_eq!(s.status, 200, "{}", s.text());
    let hello = s.next_event().await.unwrap();
    assert!(
        hello.data.contains("\"device\":\"phone-1\""),
        "{}",
        hello.data
    );
    let q = server
        .stream(&format!("/feed/orders.us?access_token={token}"), &[])
        .await;
    assert_eq!(q.status, 200, "{}", q.text());
    publish(&server, "orders.eu", "e1").await;
    assert_eq!(s.messages(1).await[0].data, "e1");
    // Not granted: 403, as for a static token.
    let refused = stream(&server, &token, "/feed/news").await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    // A JWT admin reaches /admin; the static admin token still works.
    let admin = hs256(
        &json!({"sub": "ops2", "admin": true, "exp": now() + 60, "aud": "pere", "iss": "shop"}),
        SECRET,
    );
    for t in [admin.as_str(), ADMIN] {
        let r = server.with_token(t).admin().tokens().await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let with = |field: &str, value: Value| {
        let mut c = phone(60);
        c[field] = value;
        c
    };
    let cases = [
        (hs256(&with("exp", json!(now() - 5)), SECRET), "expired"),
        (
            hs256(&phone(60), "another-secret-0123456789abcdef-xyz"),
            "signature",
        ),
        (hs256(&with("aud", json!("elsewhere")), SECRET), "audience"),
        (hs256(&with("iss", json!("someone")), SECRET), "issuer"),
        (
            hs256(&with("sub", json!("not a device")), SECRET),
            "not a valid JWT",
        ),
        // The signature is checked before the claims are read.
        (
            "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln".to_string(),
            "signature",
        ),
        ("not.a.jwt".to_string(), "not a valid JWT"),
    ];
    for (bad, why) in cases {
        let r = stream(&server, &bad, "/feed/orders.eu").await;
        assert_eq!(r.status, 401, "{why}: {}", r.text());
        let body: Value = serde_json::from_slice(&r.raw).unwrap();
        assert_eq!(body["code"], "unauthorized", "{body}");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(why), "{why}: {message} ({bad})");
        assert!(!message.contains(&bad), "the token is never quoted");
        assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"pere\""));
    }
    let log = server.stop();
    assert!(!log.contains(&token), "a token appeared in the log");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_revoked_jti_closes_its_streams_and_stays_revoked_after_a_restart() {
    let data = temp_dir("jwt-data");
    let data_arg = data.display().to_string();
    let (server, dir) = start(&["--data-dir", &data_arg, "--fsync", "never"]).await;
    let mut claims = phone(600);
    claims["jti"] = json!("session-42");
    let token = hs256(&claims, SECRET);
    let mut other_claims = phone(600);
    other_claims["jti"] = json!("session-43");
    let other = hs256(&other_claims, SECRET);
    let mut s = stream(&server, &token, "/feed/orders.eu").await;
    assert_eq!(s.status, 200, "{}", s.text());
    let mut kept = stream(&server, &other, "/feed/orders.eu").await;
    assert_eq!(kept.status, 200, "{}", kept.text());
    // Revoked by an admin: the stream closes within a second.
    let admin = server.with_token(ADMIN);
    let revoked_at = Instant::now();
    let r = admin.admin().revoke_token("jti:session-42").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["jti"], "session-42");
    let ended = ended_within(&mut s, WAIT).await;
    assert!(
        ended - revoked_at < Duration::from_secs(1),
        "closed {:?} after the revocation",
        ended - revoked_at
    );
    // The other session is untouched.
    publish(&server, "orders.eu", "after").await;
    assert_eq!(kept.messages(1).await[0].data, "after");
    let again = stream(&server, &token, "/feed/orders.eu").await;
    assert_eq!(again.status, 401);
    assert!(again.text().contains("revoked"), "{}", again.text());
    // A jti never seen can be revoked ahead of its first use.
    let mut future = phone(600);
    future["jti"] = json!("session-44");
    let r = admin.admin().revoke_token("jti:session-44").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = stream(&server, &hs256(&future, SECRET), "/feed/orders.eu").await;
    assert_eq!(r.status, 401);
    // Only an admin revokes.
    let r = server
        .with_token(&other)
        .admin()
        .revoke_token("jti:session-43")
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    drop(kept);
    server.stop();
    // Journaled: still revoked after a restart.
    let (server, dir2) = start(&["--data-dir", &data_arg, "--fsync", "never"]).await;
    let r = stream(&server, &token, "/feed/orders.eu").await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = stream(&server, &other, "/feed/orders.eu").await;
    assert_eq!(r.status, 200, "{}", r.text());
    drop(r);
    server.stop();
    for d in [dir, dir2, data] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[tokio::test]
async fn an_open_stream_closes_at_its_token_s_exp() {
    let (server, dir) = start(&[]).await;
    let exp = now() + 3;
    let mut claims = phone(0);
    claims["exp"] = json!(exp);
    let token = hs256(&claims, SECRET);
    let mut s = stream(&server, &token, "/feed/orders.eu").await;
    assert_eq!(s.status, 200, "{}", s.text());
    publish(&server, "orders.eu", "before exp").await;
    assert_eq!(s.messages(1).await[0].data, "before exp");
    tokio::time::timeout(WAIT, s.until_end())
        .await
        .expect("the stream ends at exp");
    let ended = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    assert!(
        ended >= Duration::from_secs(exp) - Duration::from_millis(50),
        "ended at {ended:?}, before exp {exp}"
    );
    assert!(
        ended < Duration::from_secs(exp + 1),
        "ended at {ended:?}, well after exp {exp}"
    );
    // And it cannot come back.
    let r = stream(&server, &token, "/feed/orders.eu").await;
    assert_eq!(r.status, 401);
    assert!(r.text().contains("expired"), "{}", r.text());
    server.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn public_keys_verify_es256_and_rs256_tokens() {
    let dir = temp_dir("jwt-keys");
    let keys = [
        (&rcgen::PKCS_ECDSA_P256_SHA256, Algorithm::ES256),
        (&rcgen::PKCS_RSA_SHA256, Algorithm::RS256),
    ];
    for (alg, jwt_alg) in keys {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let public = dir.join(format!("{jwt_alg:?}.pub.pem"));
        std::fs::write(&public, key.public_key_pem()).unwrap();
        let server = ServerProcess::start(&["--jwt-public-key", public.to_str().unwrap()]).await;
        let private = key.serialize_pem();
        let encoding = match jwt_alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(private.as_bytes()).unwrap(),
            _ => EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
        };
        let claims = json!({"sub": "phone-1", "subscribe": ["orders.*"], "exp": now() + 60});
        let token = jsonwebtoken::encode(&Header::new(jwt_alg), &claims, &encoding).unwrap();
        let s = stream(&server, &token, "/feed/orders.eu").await;
        assert_eq!(s.status, 200, "{jwt_alg:?}: {}", s.text());
        // HS256 is refused when only a public key is configured (and so is
        // the classic confusion: the public key as an HMAC secret).
        let confused = hs256(&claims, &key.public_key_pem());
        let r = stream(&server, &confused, "/feed/orders.eu").await;
        assert_eq!(r.status, 401, "{}", r.text());
        assert!(r.text().contains("HS256"), "{}", r.text());
        drop(s);
        server.stop();
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_tools_send_a_jwt_as_their_token() {
    let (server, dir) = start(&[]).await;
    let addr = server.addr.to_string();
    let mut claims = phone(60);
    // Claims long enough to pass the 512 bytes of a static token.
    claims["subscribe"] = json!(
        (0..40)
            .map(|i| format!("orders.shop{i:03}"))
            .chain(["orders.*".to_string()])
            .collect::<Vec<_>>()
    );
    let token = hs256(&claims, SECRET);
    assert!(token.len() > 512, "{}", token.len());
    let backend = hs256(
        &json!({"sub": "backend", "publish": ["orders.**"], "exp": now() + 60, "aud": "pere", "iss": "shop"}),
        SECRET,
    );
    let published = tokio::process::Command::new(pere_tests::bin("pere-pub"))
        .args([&addr, "orders.eu", "--data", "via jwt", "--token", &backend])
        .output()
        .await
        .unwrap();
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    let sub = tokio::process::Command::new(pere_tests::bin("pere-sub"))
        .args([
            &addr,
            "orders.eu",
            "--count",
            "1",
            "--replay-all",
            "--token",
            &token,
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, sub)
        .await
        .expect("pere-sub ends after one event")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("via jwt"),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop();
    let _ = std::fs::remove_dir_all(dir);
}
