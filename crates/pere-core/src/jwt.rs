//! Bearer tokens that are JWTs (docs/PROTOCOL.md §7.4): [`JwtVerifier`]
//! checks a token's signature and claims with the `jsonwebtoken` crate and
//! turns them into [`Grants`] with an expiry ([`Verified`]).
//!
//! A backend mints one per user (HS256 with a shared secret, or RS256 /
//! ES256 with its private key) and the server verifies it without any call:
//!
//! ```json
//! {"sub":"phone-1","subscribe":["orders.*"],"publish":[],"admin":false,
//!  "exp":1767225600,"aud":"pere","iss":"shop","jti":"b3f1…"}
//! ```
//!
//! `exp` is required and checked without leeway: the server closes a
//! token's streams at `exp`, and a reconnection with it must not succeed
//! then. `aud` is checked as RFC 7519 §4.1.3 says: a token that names an
//! audience is accepted only by a server configured with that audience
//! (`--jwt-audience`), and such a server requires one. Likewise `iss` with
//! `--jwt-issuer`. The HMAC comparison is aws-lc's, in constant time.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::auth::{Grants, MAX_GRANTS};
use crate::error::{Error, Result};
use crate::name::{DeviceId, Pattern};

/// Shortest HS256 secret accepted, in bytes: RFC 7518 §3.2 asks for a key
/// at least as long as the hash (256 bits).
pub const MIN_SECRET_LEN: usize = 32;

/// How the server checks JWTs (`--jwt-secret`, `--jwt-public-key`,
/// `--jwt-audience`, `--jwt-issuer`).
#[derive(Clone, Default)]
pub struct JwtConfig {
    /// The HS256 secret.
    pub secret: Option<Vec<u8>>,
    /// A PEM public key (RSA for RS256, P-256 for ES256).
    pub public_key_pem: Option<Vec<u8>>,
    /// The audience tokens must name, when set.
    pub audience: Option<String>,
    /// The issuer tokens must name, when set.
    pub issuer: Option<String>,
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret is a secret.
        f.debug_struct("JwtConfig")
            .field("secret", &self.secret.as_ref().map(|_| "…"))
            .field("public_key", &self.public_key_pem.is_some())
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish()
    }
}

/// Checks JWTs; built once from a [`JwtConfig`].
pub struct JwtVerifier {
    hmac: Option<(DecodingKey, Validation)>,
    public: Option<(DecodingKey, Validation)>,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("hs256", &self.hmac.is_some())
            .field(
                "public",
                &self.public.as_ref().map(|(_, v)| v.algorithms.clone()),
            )
            .finish()
    }
}

/// What a valid JWT grants, and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Its grants (`sub` is the subject).
    pub grants: Grants,
    /// Its `exp`, in seconds since the Unix epoch.
    pub expires: u64,
    /// Its `jti`, when it has one: revocable by `DELETE /admin/tokens/jti:…`.
    pub jti: Option<String>,
}

/// Why a JWT was refused: each a sentence for the `401`, never quoting the
/// token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtRefusal {
    /// `exp` has passed.
    #[error("the token expired")]
    Expired,
    /// The signature does not verify with the server's key.
    #[error("the token's signature is not valid")]
    BadSignature,
    /// Signed with an algorithm the server has no key for.
    #[error("the token is signed with {0}, which this server does not accept ({1})")]
    Algorithm(String, String),
    /// `aud` does not name this server's audience (or names one when the
    /// server has none).
    #[error("the token's audience (aud) is not this server's")]
    Audience,
    /// `iss` is not the expected issuer.
    #[error("the token's issuer (iss) is not the one this server accepts")]
    Issuer,
    /// Not a JWT, or claims of the wrong shape.
    #[error("the token is not a valid JWT: {0}")]
    Malformed(String),
    /// Its `jti` was revoked.
    #[error("the token was revoked")]
    Revoked,
}

/// The claims PERE reads; `aud`, `iss` and `nbf` are checked by
/// `jsonwebtoken` itself.
#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    admin: bool,
    exp: u64,
    #[serde(default)]
    jti: Option<String>,
    /// Read only for its type: RFC 7519 §4.1.1 makes `iss` one string,
    /// while `jsonwebtoken` takes a list holding `--jwt-issuer` too.
    #[serde(default, rename = "iss")]
    _iss: Option<String>,
}

/// Whether `pem` has a private key block (`BEGIN RSA PRIVATE KEY`, `BEGIN
/// PRIVATE KEY`, `BEGIN EC PRIVATE KEY`, `BEGIN ENCRYPTED PRIVATE KEY`).
fn holds_private_key(pem: &[u8]) -> bool {
    String::from_utf8_lossy(pem)
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with("PRIVATE KEY-----"))
}

/// Whether `pem` is an EC public key (`BEGIN PUBLIC KEY`) on another curve
/// than P-256: the DER of every P-256 one begins with the same algorithm
/// and curve identifiers, whose base64 is this prefix. Another form (a
/// certificate) is not told apart here.
fn is_public_key_off_p256(pem: &[u8]) -> bool {
    const P256_SPKI: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE";
    let text = String::from_utf8_lossy(pem);
    let mut lines = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN PUBLIC KEY-----"));
    if lines.next().is_none() {
        return false;
    }
    let body: String = lines
        .take_while(|l| !l.starts_with("-----END"))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect();
    !body.starts_with(P256_SPKI)
}

/// Longest `jti` accepted, and revoked by `DELETE /admin/tokens/jti:<jti>`.
pub const MAX_JTI_LEN: usize = 256;

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

impl JwtVerifier {
    /// Builds a verifier: HS256 with `secret`, RS256 or ES256 with the
    /// public key (its kind picks the algorithm), or both.
    ///
    /// # Errors
    /// [`Error::Config`] for neither, a secret shorter than
    /// [`MIN_SECRET_LEN`], or a key that is not an RSA or EC public key in
    /// PEM.
    pub fn new(config: &JwtConfig) -> Result<Self> {
        let validation = |alg: Algorithm| {
            let mut v = Validation::new(alg);
            v.leeway = 0;
            v.validate_nbf = true;
            let mut required = vec!["exp", "sub"];
            if let Some(aud) = &config.audience {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            if let Some(iss) = &config.issuer {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            v.set_required_spec_claims(&required);
            v
        };
        let hmac = match &config.secret {
            None => None,
            Some(secret) if secret.len() < MIN_SECRET_LEN => {
                return Err(Error::Config(format!(
                    "the JWT secret has {} bytes; HS256 needs at least {MIN_SECRET_LEN} (e.g. `openssl rand -base64 48`)",
                    secret.len()
                )));
            }
            Some(secret) => Some((
                DecodingKey::from_secret(secret).map_err(|e| Error::Config(e.to_string()))?,
                validation(Algorithm::HS256),
            )),
        };
        let public = match &config.public_key_pem {
            None => None,
            Some(pem) if holds_private_key(pem) => {
                // jsonwebtoken takes an RSA private key as the public one
                // and then refuses every token as badly signed.
                return Err(Error::Config(
                    "the JWT public key file holds a private key: give the public half (`openssl pkey -in KEY -pubout`); the private key belongs with whoever issues the tokens"
                        .into(),
                ));
            }
            Some(pem) => {
                let key = DecodingKey::from_rsa_pem(pem)
                    .map(|k| (k, Algorithm::RS256))
                    .or_else(|_| DecodingKey::from_ec_pem(pem).map(|k| (k, Algorithm::ES256)))
                    .map_err(|_| {
                        Error::Config(
                            "the JWT public key is not an RSA or EC (P-256) public key in PEM"
                                .into(),
                        )
                    })?;
                if key.1 == Algorithm::ES256 && is_public_key_off_p256(pem) {
                    // Taken, it would refuse every token as badly signed.
                    return Err(Error::Config(
                        "the JWT public key is an EC key on a curve other than P-256: ES256 needs P-256 (`openssl ecparam -name prime256v1`)"
                            .into(),
                    ));
                }
                Some((key.0, validation(key.1)))
            }
        };
        if hmac.is_none() && public.is_none() {
            return Err(Error::Config(
                "JWT needs a secret (HS256) or a public key (RS256/ES256)".into(),
            ));
        }
        Ok(Self { hmac, public })
    }

    /// The algorithms this verifier accepts: `HS256` with a secret, and
    /// `RS256` or `ES256` by the public key's kind.
    pub fn algorithms(&self) -> Vec<&'static str> {
        let mut algs = Vec::new();
        if self.hmac.is_some() {
            algs.push("HS256");
        }
        if let Some((_, validation)) = &self.public {
            algs.extend(validation.algorithms.iter().map(|alg| match alg {
                Algorithm::RS256 => "RS256",
                Algorithm::ES256 => "ES256",
                _ => "other",
            }));
        }
        algs
    }

    /// Whether `text` has a JWT's shape (three base64url parts), so that
    /// it is checked as one rather than looked up as a static token.
    pub fn looks_like_jwt(text: &str) -> bool {
        let parts = text.split('.').collect::<Vec<_>>();
        parts.len() == 3
            && parts[..2].iter().all(|p| !p.is_empty())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    }

    /// Checks `token`'s signature and claims at time `now` (Unix seconds).
    ///
    /// # Errors
    /// A [`JwtRefusal`] saying why (never quoting the token).
    pub fn verify(&self, token: &str, now: u64) -> std::result::Result<Verified, JwtRefusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| refusal(e.kind()))?;
        let (key, validation) = [&self.hmac, &self.public]
            .into_iter()
            .flatten()
            .find(|(_, v)| v.algorithms.contains(&header.alg))
            .ok_or_else(|| JwtRefusal::Algorithm(format!("{:?}", header.alg), self.accepted()))?;
        let claims = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| refusal(e.kind()))?
            .claims;
        // `jsonwebtoken` accepts a token in its `exp` second; the server
        // closes streams at `exp`, so a token is dead from then on.
        if claims.exp <= now {
            return Err(JwtRefusal::Expired);
        }
        // One that could not be revoked is not accepted at all.
        if let Some(jti) = &claims.jti
            && (jti.is_empty() || jti.len() > MAX_JTI_LEN)
        {
            return Err(JwtRefusal::Malformed(format!(
                "its jti is {} bytes; 1 to {MAX_JTI_LEN} are accepted (DELETE /admin/tokens/jti:<jti> revokes it)",
                jti.len()
            )));
        }
        Ok(Verified {
            grants: grants(&claims)?,
            expires: claims.exp,
            jti: claims.jti,
        })
    }

    /// The algorithms this verifier has keys for, for a refusal.
    fn accepted(&self) -> String {
        [&self.hmac, &self.public]
            .into_iter()
            .flatten()
            .flat_map(|(_, v)| v.algorithms.iter().map(|a| format!("{a:?}")))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn refusal(kind: &ErrorKind) -> JwtRefusal {
    match kind {
        ErrorKind::ExpiredSignature => JwtRefusal::Expired,
        ErrorKind::InvalidSignature => JwtRefusal::BadSignature,
        ErrorKind::InvalidAudience => JwtRefusal::Audience,
        ErrorKind::InvalidIssuer => JwtRefusal::Issuer,
        ErrorKind::MissingRequiredClaim(claim) => {
            JwtRefusal::Malformed(format!("the claim `{claim}` is required"))
        }
        ErrorKind::InvalidClaimFormat(claim) => {
            JwtRefusal::Malformed(format!("the claim `{claim}` has the wrong type"))
        }
        ErrorKind::ImmatureSignature => JwtRefusal::Malformed("it is not valid yet (nbf)".into()),
        ErrorKind::Json(e) => JwtRefusal::Malformed(format!("its JSON: {e}")),
        ErrorKind::InvalidAlgorithm => JwtRefusal::Algorithm(
            "an algorithm".into(),
            "its header and the key disagree".into(),
        ),
        _ => JwtRefusal::Malformed("not three base64url parts of JSON and signature".into()),
    }
}

/// The claims as [`Grants`], validated as the `--auth` file's are.
fn grants(claims: &Claims) -> std::result::Result<Grants, JwtRefusal> {
    let bad = |e: Error| JwtRefusal::Malformed(e.to_string());
    let patterns = |list: &[String]| -> std::result::Result<Vec<Pattern>, JwtRefusal> {
        if list.len() > MAX_GRANTS {
            return Err(JwtRefusal::Malformed(format!(
                "a grant list has more than {MAX_GRANTS} patterns"
            )));
        }
        list.iter().map(|p| Pattern::new(p).map_err(bad)).collect()
    };
    Ok(Grants {
        subject: DeviceId::new(&claims.sub).map_err(bad)?,
        subscribe: patterns(&claims.subscribe)?,
        publish: patterns(&claims.publish)?,
        admin: claims.admin,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn verifier(aud: Option<&str>, iss: Option<&str>) -> JwtVerifier {
        JwtVerifier::new(&JwtConfig {
            secret: Some(SECRET.to_vec()),
            audience: aud.map(str::to_string),
            issuer: iss.map(str::to_string),
            ..JwtConfig::default()
        })
        .unwrap()
    }

    fn mint(claims: serde_json::Value, secret: &[u8]) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn claims_become_grants_and_every_refusal_has_its_reason() {
        let now = unix_now();
        let v = verifier(Some("pere"), Some("shop"));
        let ok = json!({"sub":"phone-1","subscribe":["orders.*"],"publish":["cmd"],
            "exp": now + 60, "aud":"pere","iss":"shop","jti":"j-1"});
        let got = v.verify(&mint(ok.clone(), SECRET), now).unwrap();
        assert_eq!(got.grants.subject.as_str(), "phone-1");
        assert!(!got.grants.admin);
        assert_eq!(got.expires, now + 60);
        assert_eq!(got.jti.as_deref(), Some("j-1"));
        let with = |field: &str, value: serde_json::Value| {
            let mut c = ok.clone();
            c[field] = value;
            mint(c, SECRET)
        };
        let cases = [
            (with("exp", json!(now - 1)), JwtRefusal::Expired),
            (with("exp", json!(now)), JwtRefusal::Expired),
            (
                mint(ok.clone(), b"another-secret-another-secret-xx"),
                JwtRefusal::BadSignature,
            ),
            (with("aud", json!("other")), JwtRefusal::Audience),
            (with("iss", json!("other")), JwtRefusal::Issuer),
        ];
        for (token, want) in cases {
            assert_eq!(v.verify(&token, now).unwrap_err(), want);
        }
        for token in [
            with("sub", json!("bad device")),
            with("subscribe", json!(["bad pattern"])),
            with("admin", json!("yes")),
            with("nbf", json!(now + 100)),
            // A jti that could not be revoked.
            with("jti", json!("")),
            with("jti", json!("j".repeat(MAX_JTI_LEN + 1))),
            // One issuer, not a list that holds the expected one.
            with("iss", json!(["shop"])),
            "a.b.c".to_string(),
        ] {
            assert!(matches!(
                v.verify(&token, now),
                Err(JwtRefusal::Malformed(_))
            ));
        }
        let longest = with("jti", json!("j".repeat(MAX_JTI_LEN)));
        assert!(v.verify(&longest, now).is_ok());
        let mut no_exp = ok.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert!(matches!(
            v.verify(&mint(no_exp, SECRET), now),
            Err(JwtRefusal::Malformed(_))
        ));
        // A token naming an audience, on a server that has none: refused.
        let open = verifier(None, None);
        assert_eq!(
            open.verify(&mint(ok.clone(), SECRET), now).unwrap_err(),
            JwtRefusal::Audience
        );
    }

    #[test]
    fn short_secrets_and_missing_keys_are_configuration_errors() {
        assert!(JwtVerifier::new(&JwtConfig::default()).is_err());
        let short = JwtConfig {
            secret: Some(b"short".to_vec()),
            ..JwtConfig::default()
        };
        let err = JwtVerifier::new(&short).unwrap_err().to_string();
        assert!(!err.contains("short"), "{err}");
        let junk = JwtConfig {
            public_key_pem: Some(
                b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_vec(),
            ),
            ..JwtConfig::default()
        };
        assert!(JwtVerifier::new(&junk).is_err());
        // ES256 is P-256: a key on another curve would verify nothing.
        let key = |pem: &str| JwtConfig {
            public_key_pem: Some(pem.as_bytes().to_vec()),
            ..JwtConfig::default()
        };
        let p256 = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE5kWxpaleHOYL/c5Rjmb4V4U+zeKl
5BqA9ECqAWDrQwed7yA6yzEL9X1sRAlDzjz/1aBvw0SSZHd/X/uLykRu4Q==
-----END PUBLIC KEY-----
";
        let p384 = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEM96j+mD7u2rhbDm1tJhq0yistk93RZTC
mahU03RmYPhsU+4e9Uj1SmmAATnl+zQwaSlgIsimadoVPFG2Cpp5IveUXeT+wA1p
sSoplaBAa4SU53vHGJ88ckdNpSF8I+rF
-----END PUBLIC KEY-----
";
        assert_eq!(
            JwtVerifier::new(&key(p256)).unwrap().algorithms(),
            ["ES256"]
        );
        let both = JwtConfig {
            secret: Some(vec![7; 32]),
            ..key(p256)
        };
        assert_eq!(
            JwtVerifier::new(&both).unwrap().algorithms(),
            ["HS256", "ES256"]
        );
        // The same key in a certificate, as jsonwebtoken takes it.
        let cert = "-----BEGIN CERTIFICATE-----
MIIBbjCCAROgAwIBAgIUGsLZgMl/AZJbMcom85klRyVPo2EwCgYIKoZIzj0EAwIw
DDEKMAgGA1UEAwwBdDAeFw0yNjEyMDQyMjE0MDJaFw0zNjEyMDEyMjE0MDJaMAwx
CjAIBgNVBAMMAXQwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATmRbGlqV4c5gv9
zlGOZvhXhT7N4qXkGoD0QKoBYOtDB53vIDrLMQv1fWxECUPOPP/VoG/DRJJkd39f
+4vKRG7ho1MwUTAdBgNVHQ4EFgQUCmBPzOHg9nR3iwni5dJEgeBrUuowHwYDVR0j
BBgwFoAUCmBPzOHg9nR3iwni5dJEgeBrUuowDwYDVR0TAQH/BAUwAwEB/zAKBggq
hkjOPQQDAgNJADBGAiEAlApk4REzY1DQXZMxijr1lNWI0rTIg+1byYcrdUOLGkkC
IQCjSLa0mOBtWCXZr+11Smeg2qeX60sLdmxqw63tcQL+DA==
-----END CERTIFICATE-----
";
        if let Err(err) = JwtVerifier::new(&key(cert)) {
            assert!(!err.to_string().contains("curve"), "{err}");
        }
        let err = JwtVerifier::new(&key(p384)).unwrap_err().to_string();
        assert!(err.contains("P-256"), "{err}");
    }

    /// An RSA private key given as the public one was taken (jsonwebtoken
    /// reads its public half) and then every token was "not validly
    /// signed"; every private key block is now a clear start-up error.
    #[test]
    fn a_private_key_given_as_the_public_key_is_a_configuration_error() {
        // A throwaway 1024-bit test key (`openssl genpkey -algorithm RSA`).
        let rsa = "-----BEGIN PRIVATE KEY-----
MIICdgIBADANBgkqhkiG9w0BAQEFAASCAmAwggJcAgEAAoGBAL3xaWUp+QtCiCsv
86xEJ4Euv2VqXmZHoEfBkPHA/uKUAzaLwOuWlixvSWTNXLGcK4jncn10aqWESjk6
v/HYMJ+dGat4VfSK2N1f8omyYbn5U92Q/UvpM1+gDJ8TWwcLMbbg0tDBn0Fx5KPM
f/wjwDdxiIzKqHH9/Ont/V1GFoufAgMBAAECgYEAriUF0mB3GuG24pGmQQyDg6cO
h7bMMc39n4xSjbO6fJXjlEDxcY2wxbCKg8bc82IRcAVzLJ5toK73Nh0tGlhxynDu
ENJXAjcVb8nZPeHPbirmD+5wC3zKAQVG3B4KQmh9T6PuzmwFYGvpmeVrtp3cuiJS
AJ8/BuKprxgKINJ26bECQQDdwHfSM0KueQupsWbSQ0OscVIvP+qCr3phiT50+GS1
0vdobD/oZ9zdG0vc9zpd4U2A6ij3cyL6C6z0T6iYHSslAkEA20dMyNe/yLEmSX64
MfEUJxWS671JfJQcqyqfv3IUvB50nZFf2TnLQVSfPG4ySaCKDBt1e+b/vqeZhjzb
XxhicwJAHwOiPoXo15oaZXtoVBQQTPf0dKNN20VLqoSVdaqf+0YsUDCDp6+PFmWQ
8LCrOyIdwt/9Js61n58ua2UQwWWi+QJAeUSRPnGy6ratye9+xn/g+UyBGEZyoab3
w+GqvyHEPdVKAOoo6+V+dv7poW3/+aADOHbnHkK+JR5jVU3KtGiz6QJAdX9iPq1B
N4PCXmVsOSjZlrLOoVlweu3RfLeMdtD+/7CkkUI5fO4ACsl3kjZj5agKLmPr8La7
BCeoSgoMz/z3xQ==
-----END PRIVATE KEY-----
";
        let pems = [
            rsa,
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
        ];
        for pem in pems {
            let config = JwtConfig {
                public_key_pem: Some(pem.as_bytes().to_vec()),
                ..JwtConfig::default()
            };
            let err = JwtVerifier::new(&config).unwrap_err().to_string();
            assert!(err.contains("private key"), "{pem}: {err}");
        }
    }

    #[test]
    fn only_three_base64url_parts_look_like_a_jwt() {
        assert!(JwtVerifier::looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(JwtVerifier::looks_like_jwt("eyJh.eyJz."));
        for not in [
            "static-token-0123456789",
            "a.b",
            "a.b.c.d",
            ".b.c",
            "a+b.c.d",
        ] {
            assert!(!JwtVerifier::looks_like_jwt(not), "{not}");
        }
    }
}
