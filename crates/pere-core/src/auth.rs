//! Bearer tokens and what they grant (docs/PROTOCOL.md §7): [`Token`], [`Grants`],
//! [`TokenHash`] and the [`AuthRegistry`] the hub and the HTTP layer consult.
//!
//! # Secrets
//! A token is a bearer secret. The registry, the journal and every listing
//! know a token only by its SHA-256 ([`TokenHash`]); the value itself is
//! never stored, logged, or shown (`Debug` prints a fingerprint).
//!
//! Looking a presented token up means hashing it and finding the digest in a
//! map. The time that takes depends on the digest, not on how many leading
//! characters of a guess are right, so it gives an attacker no oracle: the
//! same argument that makes hashed-token lookups constant-time in effect
//! without comparing against every entry.
//!
//! # Two tables
//! Tokens come from the `--auth` file (the *base*, read at start) and from
//! the admin API at run time (journaled, replayed at recovery). A run-time
//! change — including revoking a token that the file defines — wins over
//! the file, so a revoked token stays revoked after a restart even though
//! the file still lists it.
//!
//! # JWTs
//! With a [`JwtVerifier`] ([`AuthRegistry::enable_jwt`]) a presented token
//! that is no static token and has a JWT's shape is verified instead
//! ([`AuthRegistry::check`]). A verified JWT is known by its hash like any
//! token, for as long as a request or a stream holds its [`Access`] (a
//! lease in a table of live JWTs): the hub's writer then finds its grants
//! when a stream opens, and its streams when its `jti` is revoked. A `jti`
//! is revoked as a run-time token is, by a journaled tombstone, under
//! [`jti_key`]: the hash of `jti:` and the id, which no static token can
//! have (`:` is not in a token's alphabet).
//!
//! What this module does not do: parse HTTP headers (pere-http does), or
//! close streams (the hub's writer does, when it applies a change; pere-http
//! ends a JWT's streams at its `exp`).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::jwt::{JwtRefusal, JwtVerifier, unix_now};
use crate::name::{ChannelName, DeviceId, Pattern};

mod file;
pub use file::{parse_auth_file, parse_grants};

/// Shortest token accepted, in bytes: a bearer secret shorter than 128 bits
/// of random text can be guessed.
pub const MIN_TOKEN_LEN: usize = 16;
/// Longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 512;
/// Most patterns in one grant list: the journal stores the count as a u16,
/// and nobody needs more than a thousand grants on one token.
pub const MAX_GRANTS: usize = 1024;

/// A bearer token value (a secret). Only the `--auth` file and the admin API
/// create one; `Debug` and `Display` show its fingerprint, never the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Box<str>);

impl Token {
    /// Validates `text` as a token: [`MIN_TOKEN_LEN`] to [`MAX_TOKEN_LEN`]
    /// bytes of RFC 6750's `b64token` alphabet (`A-Z a-z 0-9 - . _ ~ + / =`),
    /// so that it fits an `Authorization: Bearer` header and a URL unchanged.
    ///
    /// # Errors
    /// [`Error::InvalidToken`], whose message never contains the value.
    pub fn new(text: &str) -> Result<Self> {
        if text.len() < MIN_TOKEN_LEN {
            return Err(Error::InvalidToken(format!(
                "a token is at least {MIN_TOKEN_LEN} bytes long, this one has {}",
                text.len()
            )));
        }
        if text.len() > MAX_TOKEN_LEN {
            return Err(Error::InvalidToken(format!(
                "a token is at most {MAX_TOKEN_LEN} bytes long, this one has {}",
                text.len()
            )));
        }
        if !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
        {
            return Err(Error::InvalidToken(
                "a token may only contain A-Z a-z 0-9 - . _ ~ + / =".into(),
            ));
        }
        Ok(Self(text.into()))
    }

    /// The token's SHA-256, the only form in which it is kept.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({})", self.hash().fingerprint())
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hash().fingerprint())
    }
}

/// The SHA-256 of a token: how the registry, the journal and the admin API
/// name it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// The hash of any presented text (valid token or not).
    pub fn of(text: &str) -> Self {
        Self(Sha256::digest(text.as_bytes()).into())
    }

    /// A short public name for the token: `sha256:` and the first 12 hex
    /// digits of its hash. Enough to tell tokens apart in a listing, useless
    /// to recover one.
    pub fn fingerprint(&self) -> String {
        let mut out = String::from("sha256:");
        for b in &self.0[..6] {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

/// What a token allows (docs/PROTOCOL.md §7).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// The device the token speaks for: a stream or receipt made with it is
    /// this device's.
    pub subject: DeviceId,
    /// Channels and patterns it may subscribe to (and acknowledge on).
    #[serde(default)]
    pub subscribe: Vec<Pattern>,
    /// Channels and patterns it may publish to (and read receipts of).
    #[serde(default)]
    pub publish: Vec<Pattern>,
    /// Whether it may use `/admin/*` and `/metrics`, and read any receipts.
    #[serde(default)]
    pub admin: bool,
}

impl Grants {
    /// Whether every channel of `pattern` is covered by a subscribe grant.
    pub fn may_subscribe(&self, pattern: &Pattern) -> bool {
        self.subscribe.iter().any(|g| pattern.is_covered_by(g))
    }

    /// Whether `channel` is covered by a publish grant.
    pub fn may_publish(&self, channel: &ChannelName) -> bool {
        self.publish.iter().any(|g| g.matches(channel))
    }

    /// Whether the receipts of the channels of `pattern` may be read: they
    /// belong to the channel's publishers, and to operators.
    pub fn may_read_receipts(&self, pattern: &Pattern) -> bool {
        self.admin || self.publish.iter().any(|g| pattern.is_covered_by(g))
    }

    /// What these grants allow of an open stream of `device` on `patterns`.
    pub fn reach(&self, device: Option<&DeviceId>, patterns: &[Pattern]) -> Reach {
        if device != Some(&self.subject) {
            return Reach::None;
        }
        if patterns.iter().all(|p| self.may_subscribe(p)) {
            return Reach::All;
        }
        let any = patterns
            .iter()
            .any(|p| self.subscribe.iter().any(|g| p.overlaps(g)));
        if any {
            Reach::Some(self.subscribe.clone().into())
        } else {
            Reach::None
        }
    }
}

/// What a token's grants allow of a stream that is already open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Everything it subscribed to.
    All,
    /// Only channels matching these grant patterns: the rest is filtered.
    Some(Arc<[Pattern]>),
    /// Nothing (or another device): the stream must close.
    None,
}

/// A caller that presented a known token.
#[derive(Clone, Debug)]
pub struct Access {
    /// Which token.
    pub token: TokenHash,
    /// Its grants when it was presented.
    pub grants: Arc<Grants>,
    /// A JWT's `exp` (Unix seconds); `None` for a static token.
    pub expires: Option<u64>,
    /// Keeps a JWT in the table of live JWTs while this is held.
    _lease: Option<Arc<Lease>>,
}

/// Why a presented token was refused (`401`); never quotes it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a known static token (nor a JWT, when JWTs are on).
    #[error("the token is unknown or was revoked")]
    Unknown,
    /// A JWT that does not verify.
    #[error(transparent)]
    Jwt(#[from] JwtRefusal),
}

/// The name under which a JWT's `jti` is revoked: the hash of `jti:` and
/// the id (see the module docs).
pub fn jti_key(jti: &str) -> TokenHash {
    TokenHash::of(&format!("jti:{jti}"))
}

/// A JWT some request or stream holds.
#[derive(Debug)]
struct LiveJwt {
    grants: Arc<Grants>,
    expires: u64,
    jti: Option<TokenHash>,
    /// How many [`Lease`]s hold it.
    leases: usize,
}

type LiveJwts = Mutex<HashMap<TokenHash, LiveJwt>>;

/// One holder of a [`LiveJwt`]; the last one's drop removes it.
#[derive(Debug)]
struct Lease {
    table: Arc<LiveJwts>,
    token: TokenHash,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(live) = table.get_mut(&self.token) {
            live.leases -= 1;
            if live.leases == 0 {
                table.remove(&self.token);
            }
        }
    }
}

/// Where a token in the registry comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The `--auth` file.
    File,
    /// The admin API (journaled).
    Runtime,
}

impl Origin {
    /// `file` or `runtime`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::File => "file",
            Origin::Runtime => "runtime",
        }
    }
}

impl Access {
    fn of(token: TokenHash, grants: Arc<Grants>) -> Self {
        Self {
            token,
            grants,
            expires: None,
            _lease: None,
        }
    }
}

#[derive(Debug, Default)]
struct Tables {
    base: HashMap<TokenHash, Arc<Grants>>,
    /// Run-time changes; `None` revokes (a tombstone that also hides a file
    /// token of the same hash).
    runtime: HashMap<TokenHash, Option<Arc<Grants>>>,
}

impl Tables {
    fn get(&self, hash: &TokenHash) -> Option<Arc<Grants>> {
        match self.runtime.get(hash) {
            Some(change) => change.clone(),
            None => self.base.get(hash).cloned(),
        }
    }
}

/// The token table: file tokens, run-time changes on top, and a change
/// counter that long-lived streams outside the hub watch.
///
/// The hub owns one ([`Hub::auth`](crate::Hub::auth)); only its writer task
/// applies run-time changes, in journal order.
#[derive(Debug)]
pub struct AuthRegistry {
    enabled: AtomicBool,
    tables: RwLock<Tables>,
    /// Bumped on every change; receipts streams (which the hub does not
    /// track) re-check their caller when it moves.
    changes: watch::Sender<u64>,
    /// Checks JWTs, once set.
    jwt: OnceLock<JwtVerifier>,
    /// JWTs that requests and streams hold, by hash.
    live: Arc<LiveJwts>,
    /// [`jti_key`]s being revoked: a revocation of one is no unknown token.
    jtis: Mutex<HashSet<TokenHash>>,
}

impl Default for AuthRegistry {
    fn default() -> Self {
        Self {
            enabled: AtomicBool::new(false),
            tables: RwLock::default(),
            changes: watch::Sender::new(0),
            jwt: OnceLock::new(),
            live: Arc::default(),
            jtis: Mutex::default(),
        }
    }
}

impl AuthRegistry {
    fn read(&self) -> RwLockReadGuard<'_, Tables> {
        // Every write replaces whole entries: a panic cannot leave a table
        // half-changed, so poisoning carries no information.
        self.tables.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether auth is on: every request but the open pages needs a token.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Turns auth on with the `--auth` file's tokens as the base table
    /// (replacing any earlier base). Run-time changes keep precedence.
    pub fn enable(&self, tokens: Vec<(Token, Grants)>) {
        {
            let mut tables = self.write();
            tables.base = tokens
                .into_iter()
                .map(|(t, g)| (t.hash(), Arc::new(g)))
                .collect();
        }
        self.enabled.store(true, Ordering::Release);
        self.bump();
    }

    /// Turns auth on with JWTs checked by `verifier` (besides static
    /// tokens). Only the first call counts.
    pub fn enable_jwt(&self, verifier: JwtVerifier) {
        let _ = self.jwt.set(verifier);
        self.enabled.store(true, Ordering::Release);
        self.bump();
    }

    /// Whether JWTs are checked.
    pub fn jwt_enabled(&self) -> bool {
        self.jwt.get().is_some()
    }

    /// The JWT algorithms accepted (`HS256`, `RS256`, `ES256`), none when
    /// JWTs are off.
    pub fn jwt_algorithms(&self) -> Vec<&'static str> {
        self.jwt
            .get()
            .map(JwtVerifier::algorithms)
            .unwrap_or_default()
    }

    /// The caller behind a presented token, if the token is known.
    pub fn authenticate(&self, presented: &str) -> Option<Access> {
        self.check(presented).ok()
    }

    /// The caller behind a presented token: a static token, else a JWT
    /// (when JWTs are on), else why not.
    ///
    /// # Errors
    /// [`Refusal::Unknown`], or the [`JwtRefusal`] of a JWT.
    pub fn check(&self, presented: &str) -> std::result::Result<Access, Refusal> {
        let token = TokenHash::of(presented);
        {
            let tables = self.read();
            if let Some(change) = tables.runtime.get(&token) {
                return change
                    .clone()
                    .map(|g| Access::of(token, g))
                    .ok_or(Refusal::Unknown);
            }
            if let Some(grants) = tables.base.get(&token) {
                return Ok(Access::of(token, grants.clone()));
            }
        }
        let Some(verifier) = self
            .jwt
            .get()
            .filter(|_| JwtVerifier::looks_like_jwt(presented))
        else {
            return Err(Refusal::Unknown);
        };
        let verified = verifier.verify(presented, unix_now())?;
        let jti = verified.jti.as_deref().map(jti_key);
        if jti.is_some_and(|jti| self.is_revoked(&jti)) {
            return Err(JwtRefusal::Revoked.into());
        }
        let grants = Arc::new(verified.grants);
        let lease = {
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            let entry = live.entry(token).or_insert_with(|| LiveJwt {
                grants: grants.clone(),
                expires: verified.expires,
                jti,
                leases: 0,
            });
            entry.leases += 1;
            Lease {
                table: self.live.clone(),
                token,
            }
        };
        Ok(Access {
            token,
            grants,
            expires: Some(verified.expires),
            _lease: Some(Arc::new(lease)),
        })
    }

    /// The current grants of a token, if it exists: a static token, or a
    /// JWT that is held, unexpired and whose `jti` is not revoked.
    pub fn grants(&self, token: &TokenHash) -> Option<Arc<Grants>> {
        {
            let tables = self.read();
            if tables.runtime.contains_key(token) || tables.base.contains_key(token) {
                return tables.get(token);
            }
        }
        let (grants, jti) = {
            let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            let jwt = live.get(token).filter(|jwt| jwt.expires > unix_now())?;
            (jwt.grants.clone(), jwt.jti)
        };
        match jti {
            Some(jti) if self.is_revoked(&jti) => None,
            _ => Some(grants),
        }
    }

    /// Whether a [`jti_key`] was revoked.
    pub(crate) fn is_revoked(&self, jti: &TokenHash) -> bool {
        self.read().runtime.contains_key(jti)
    }

    /// Whether `token` is a static token (the `--auth` file's, or one
    /// created at run time), live or revoked: not a JWT.
    pub(crate) fn is_static(&self, token: &TokenHash) -> bool {
        let tables = self.read();
        tables.runtime.contains_key(token) || tables.base.contains_key(token)
    }

    /// The [`jti_key`] of a JWT held here, if it has a `jti`.
    pub(crate) fn jti_of(&self, token: &TokenHash) -> Option<TokenHash> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.get(token).and_then(|jwt| jwt.jti)
    }

    /// Notes that `key` is a [`jti_key`] about to be revoked.
    pub(crate) fn note_jti(&self, key: TokenHash) {
        self.jtis
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key);
    }

    /// Whether `key` is a [`jti_key`] (noted by [`note_jti`](Self::note_jti)).
    pub(crate) fn is_jti(&self, key: &TokenHash) -> bool {
        self.jtis
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(key)
    }

    /// The held JWTs whose `jti` is `key`: the tokens of the streams its
    /// revocation closes.
    pub(crate) fn tokens_of_jti(&self, key: &TokenHash) -> Vec<TokenHash> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.iter()
            .filter(|(_, jwt)| jwt.jti.as_ref() == Some(key))
            .map(|(token, _)| *token)
            .collect()
    }

    /// Every live token (by hash), with its grants and origin, sorted by
    /// subject then fingerprint.
    pub fn list(&self) -> Vec<(TokenHash, Arc<Grants>, Origin)> {
        let tables = self.read();
        let mut out: Vec<(TokenHash, Arc<Grants>, Origin)> = tables
            .runtime
            .iter()
            .filter_map(|(h, g)| g.clone().map(|g| (*h, g, Origin::Runtime)))
            .chain(
                tables
                    .base
                    .iter()
                    .filter(|(h, _)| !tables.runtime.contains_key(h))
                    .map(|(h, g)| (*h, g.clone(), Origin::File)),
            )
            .collect();
        out.sort_by(|a, b| (&a.1.subject, a.0).cmp(&(&b.1.subject, b.0)));
        out
    }

    /// Whether the journal holds any run-time change: a token created,
    /// changed or revoked at run time, a `jti` revoked. Each needed auth
    /// on, so a store holding one keeps it on (fails closed), also once
    /// every run-time token was revoked.
    pub fn has_runtime_changes(&self) -> bool {
        !self.read().runtime.is_empty()
    }

    /// A receiver that sees a new value after every change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Records a run-time change (`None` revokes). Writer task only, in
    /// journal order, and at recovery.
    pub(crate) fn apply(&self, token: TokenHash, grants: Option<Grants>) {
        self.write().runtime.insert(token, grants.map(Arc::new));
        self.bump();
    }

    /// The run-time changes (by hash) and the noted [`jti_key`]s, sorted:
    /// what a cluster snapshot keeps of the table.
    pub(crate) fn runtime_parts(&self) -> (Vec<(TokenHash, Option<Grants>)>, Vec<TokenHash>) {
        let mut runtime: Vec<(TokenHash, Option<Grants>)> = self
            .read()
            .runtime
            .iter()
            .map(|(h, g)| (*h, g.as_deref().cloned()))
            .collect();
        runtime.sort_unstable_by_key(|(h, _)| *h);
        let mut jtis: Vec<TokenHash> = self
            .jtis
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        jtis.sort_unstable();
        (runtime, jtis)
    }

    /// Takes back what [`AuthRegistry::runtime_parts`] gave, on top of the
    /// file's tokens.
    pub(crate) fn restore_runtime(
        &self,
        runtime: Vec<(TokenHash, Option<Grants>)>,
        jtis: Vec<TokenHash>,
    ) {
        {
            let mut tables = self.write();
            for (h, g) in runtime {
                tables.runtime.insert(h, g.map(Arc::new));
            }
        }
        self.jtis
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(jtis);
        self.bump();
    }

    /// Turns auth on without a file (the store holds run-time tokens: fail
    /// closed rather than open).
    pub(crate) fn enable_for_journal(&self) {
        self.enabled.store(true, Ordering::Release);
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn grants(subject: &str, subscribe: &[&str], publish: &[&str]) -> Grants {
        Grants {
            subject: DeviceId::new(subject).unwrap(),
            subscribe: subscribe.iter().map(|p| Pattern::new(p).unwrap()).collect(),
            publish: publish.iter().map(|p| Pattern::new(p).unwrap()).collect(),
            admin: false,
        }
    }

    fn pats(list: &[&str]) -> Vec<Pattern> {
        list.iter().map(|p| Pattern::new(p).unwrap()).collect()
    }

    #[test]
    fn tokens_are_validated_and_never_shown() {
        let t = Token::new("s3cr3t-s3cr3t-s3cr3t").unwrap();
        assert!(!format!("{t:?} {t}").contains("s3cr3t"));
        assert!(format!("{t}").starts_with("sha256:"));
        for bad in [
            "short",
            "has space in it, long enough",
            "tab\there-long-enough",
        ] {
            let err = Token::new(bad).unwrap_err().to_string();
            assert!(!err.contains(bad), "{err}");
        }
        assert!(Token::new(&"a".repeat(MAX_TOKEN_LEN + 1)).is_err());
        assert!(Token::new("abcDEF0123456789-._~+/=").is_ok());
    }

    #[test]
    fn grants_cover_patterns_and_channels() {
        let g = grants("phone-1", &["orders.**", "news"], &["cmd.*"]);
        assert!(g.may_subscribe(&Pattern::new("orders.eu.*").unwrap()));
        assert!(g.may_subscribe(&Pattern::new("news").unwrap()));
        assert!(!g.may_subscribe(&Pattern::new("**").unwrap()));
        assert!(g.may_publish(&ChannelName::new("cmd.x").unwrap()));
        assert!(!g.may_publish(&ChannelName::new("cmd.x.y").unwrap()));
        assert!(g.may_read_receipts(&Pattern::new("cmd.a").unwrap()));
        assert!(!g.may_read_receipts(&Pattern::new("news").unwrap()));
    }

    #[test]
    fn reach_of_an_open_stream_after_a_change() {
        let dev = DeviceId::new("phone-1").unwrap();
        let g = grants("phone-1", &["a", "b.eu"], &[]);
        assert_eq!(g.reach(Some(&dev), &pats(&["a", "b.eu"])), Reach::All);
        assert!(matches!(
            g.reach(Some(&dev), &pats(&["a", "c"])),
            Reach::Some(_)
        ));
        assert!(matches!(
            g.reach(Some(&dev), &pats(&["b.*"])),
            Reach::Some(_)
        ));
        assert_eq!(g.reach(Some(&dev), &pats(&["c", "b.us"])), Reach::None);
        let other = DeviceId::new("phone-2").unwrap();
        assert_eq!(g.reach(Some(&other), &pats(&["a"])), Reach::None);
        assert_eq!(g.reach(None, &pats(&["a"])), Reach::None);
    }

    #[test]
    fn runtime_changes_win_over_the_file() {
        let reg = AuthRegistry::default();
        assert!(!reg.is_enabled());
        let a = Token::new("token-a-0123456789").unwrap();
        let b = Token::new("token-b-0123456789").unwrap();
        reg.enable(vec![(a.clone(), grants("a", &["x"], &[]))]);
        assert!(reg.is_enabled());
        assert!(reg.authenticate("token-a-0123456789").is_some());
        assert!(reg.authenticate("token-a-012345678").is_none());
        let mut changes = reg.changes();
        reg.apply(a.hash(), None);
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        assert!(reg.authenticate("token-a-0123456789").is_none());
        // Loading the file again does not resurrect a revoked token.
        reg.enable(vec![(a.clone(), grants("a", &["x"], &[]))]);
        assert!(reg.grants(&a.hash()).is_none());
        reg.apply(b.hash(), Some(grants("b", &[], &["y"])));
        let list = reg.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].2, Origin::Runtime);
        assert!(reg.has_runtime_changes());
    }
}
