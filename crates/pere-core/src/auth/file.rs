//! Grants as people write them: the `--auth` file and the body of
//! `PUT /admin/tokens/:token`. Stricter than the [`Grants`] type's own
//! serde form (which other encodings share): grants are a JSON object, a
//! token appears once in the file, and a list holds at most
//! [`MAX_GRANTS`] patterns, as the admin API allows.

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

use super::{Grants, MAX_GRANTS, Token};
use crate::error::{Error, Result};

/// The `--auth` file: `{"tokens":{"<token>":{grants…}}}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    tokens: Entries,
}

/// The file's tokens in file order. A JSON object may repeat a key, and
/// the last would silently win (a second entry could make a token admin):
/// a repeated token is an error, named by its position, never its value.
struct Entries(Vec<(String, Grants)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of tokens")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Entries, A::Error> {
                let mut seen = HashSet::new();
                let mut out = Vec::new();
                while let Some(token) = map.next_key::<String>()? {
                    let at = out.len() + 1;
                    if !seen.insert(token.clone()) {
                        return Err(de::Error::custom(format!(
                            "token #{at} is given twice (the first time as #{})",
                            out.iter()
                                .position(|(t, _)| *t == token)
                                .map_or(0, |i| i + 1)
                        )));
                    }
                    let Object(grants) = map.next_value::<Object<Grants>>()?;
                    out.push((token, grants));
                }
                Ok(Entries(out))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

/// A `T` read from a JSON object only (serde reads a struct from an array
/// too: `["ops",[],[],true]` would be an admin token).
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(ObjectVisitor(PhantomData))
            .map(Object)
    }
}

/// Why grants were refused, or `Ok` when their lists are within
/// [`MAX_GRANTS`].
fn check_lists(grants: &Grants) -> std::result::Result<(), String> {
    if grants.subscribe.len() > MAX_GRANTS || grants.publish.len() > MAX_GRANTS {
        return Err(format!(
            "a token grants at most {MAX_GRANTS} patterns per list"
        ));
    }
    Ok(())
}

/// Parses the `--auth` file's JSON into tokens and grants, in file order.
///
/// # Errors
/// [`Error::Config`] for invalid JSON, an unknown field, grants that are
/// not an object, a token given twice, a list longer than
/// [`MAX_GRANTS`], an invalid name or an invalid token; messages name the
/// token by position and subject only.
pub fn parse_auth_file(text: &str) -> Result<Vec<(Token, Grants)>> {
    // serde_json quotes the value that failed (a name, a type), never a map
    // key, so its message cannot contain a token; the test below holds it
    // to that.
    let file: AuthFile = serde_json::from_str(text).map_err(|e| {
        Error::Config(format!(
            "the auth file is not {{\"tokens\":{{\"<token>\":{{\"subject\":…,\"subscribe\":[…],\"publish\":[…],\"admin\":false}}}}}}: {e}"
        ))
    })?;
    let mut out = Vec::with_capacity(file.tokens.0.len());
    for (i, (text, grants)) in file.tokens.0.into_iter().enumerate() {
        let named = |e: &dyn fmt::Display| {
            Error::Config(format!(
                "token #{} of the auth file (subject `{}`): {e}",
                i + 1,
                grants.subject
            ))
        };
        let token = Token::new(&text).map_err(|e| named(&e))?;
        check_lists(&grants).map_err(|e| named(&e))?;
        out.push((token, grants));
    }
    Ok(out)
}

/// Parses the grants of `PUT /admin/tokens/:token`: a JSON object of the
/// same shape as the file's (the hub checks the lists' lengths).
///
/// # Errors
/// The JSON parser's reason, which may quote the body: the caller escapes
/// it into its own sentence.
pub fn parse_grants(text: &str) -> std::result::Result<Grants, String> {
    let Object(grants) = serde_json::from_str::<Object<Grants>>(text).map_err(|e| e.to_string())?;
    Ok(grants)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_auth_file_parses_and_errors_never_quote_tokens() {
        let ok = r#"{"tokens":{"tok-phone-0123456789":{"subject":"phone-1","subscribe":["orders.*"],"publish":[]},
            "tok-admin-0123456789":{"subject":"ops","admin":true}}}"#;
        let tokens = parse_auth_file(ok).unwrap();
        assert_eq!(tokens.len(), 2);
        assert!(tokens[1].1.admin, "in file order");
        let many = format!(
            r#"{{"tokens":{{"long-enough-secret-1":{{"subject":"d","publish":[{}]}}}}}}"#,
            vec!["\"a\""; MAX_GRANTS + 1].join(",")
        );
        for bad in [
            r#"{"tokens":{"short-secret":{"subject":"d"}}}"#,
            r#"{"tokens":{"long-enough-secret-1":{"subject":"d","sub":[]}}}"#,
            r#"{"tokens":{"long-enough-secret-1":{"subject":"bad device"}}}"#,
            r#"{"tokens":{"long-enough-secret-1": 5}}"#,
            // Grants as an array, which serde alone reads as a struct.
            r#"{"tokens":{"long-enough-secret-1":["d",[],[],true]}}"#,
            // The same token twice: the second would silently win.
            r#"{"tokens":{"long-enough-secret-1":{"subject":"d"},
                "long-enough-secret-1":{"subject":"d","admin":true}}}"#,
            &many,
        ] {
            let err = parse_auth_file(bad).unwrap_err().to_string();
            assert!(
                !err.contains("short-secret") && !err.contains("long-enough-secret-1"),
                "{err}"
            );
        }
        let twice = r#"{"tokens":{"long-enough-secret-1":{"subject":"d"},
            "long-enough-secret-1":{"subject":"d","admin":true}}}"#;
        let err = parse_auth_file(twice).unwrap_err().to_string();
        assert!(err.contains("token #2 is given twice"), "{err}");
        assert!(
            parse_auth_file(&many)
                .unwrap_err()
                .to_string()
                .contains("at most 1024"),
            "the admin API's limit"
        );
    }

    #[test]
    fn put_grants_are_an_object() {
        let g = parse_grants(r#"{"subject":"ops","admin":true}"#).unwrap();
        assert!(g.admin);
        for bad in [r#"["ops",[],[],true]"#, r#""ops""#, "null", "{}"] {
            assert!(parse_grants(bad).is_err(), "{bad}");
        }
    }
}
