//! `docs/PROTOCOL.md` against the code: its error table (§8.1) lists every
//! `code` the server can answer, each once and with its status, and nothing
//! else; and every `docs/PROTOCOL.md §n` a comment cites exists.
//!
//! The codes are read from the sources, not from a running server: each
//! string literal in a place that makes an error answer — `ApiError::new`
//! or any call taking `StatusCode::X, "code"`, `ApiError::bad_request("code")`,
//! the `NameKind` arms of the `pere_core::Error` mapping, and the raw
//! `("NNN Reason", "code", …)` answers of `server.rs`. When the codes become
//! one enum, read them from it instead and keep the table checks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the repository")
        .to_path_buf()
}

fn protocol() -> String {
    let path = repo().join("docs/PROTOCOL.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The rows of §8.1's table: `(code, status)`, in order.
fn table(doc: &str) -> Vec<(String, u16)> {
    let start = doc
        .find("<!-- error-table:start -->")
        .expect("docs/PROTOCOL.md marks its error table with <!-- error-table:start -->");
    let end = doc[start..]
        .find("<!-- error-table:end -->")
        .expect("and ends it with <!-- error-table:end -->")
        + start;
    doc[start..end]
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let code = cells[1].trim_matches('`').to_string();
            let status = cells[2]
                .parse()
                .unwrap_or_else(|_| panic!("no status in the row {line:?}"));
            (code, status)
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A source file without its test module (the crates keep it last) and
/// without whitespace, so a call split over lines reads as one.
fn squeezed(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.chars().filter(|c| !c.is_whitespace()).collect()
}

fn status_named(name: &str) -> u16 {
    match name {
        "OK" => 200,
        "CREATED" => 201,
        "NO_CONTENT" => 204,
        "BAD_REQUEST" => 400,
        "UNAUTHORIZED" => 401,
        "FORBIDDEN" => 403,
        "NOT_FOUND" => 404,
        "METHOD_NOT_ALLOWED" => 405,
        "REQUEST_TIMEOUT" => 408,
        "CONFLICT" => 409,
        "PAYLOAD_TOO_LARGE" => 413,
        "URI_TOO_LONG" => 414,
        "TOO_MANY_REQUESTS" => 429,
        "REQUEST_HEADER_FIELDS_TOO_LARGE" => 431,
        "INTERNAL_SERVER_ERROR" => 500,
        "BAD_GATEWAY" => 502,
        "SERVICE_UNAVAILABLE" => 503,
        "INSUFFICIENT_STORAGE" => 507,
        "GATEWAY_TIMEOUT" => 504,
        other => panic!("StatusCode::{other}: add its number to status_named"),
    }
}

/// The string literal at the start of `rest` (after its opening quote), if
/// it is a snake_case code.
fn code_at(rest: &str) -> Option<&str> {
    let literal = &rest[..rest.find('"')?];
    let ok = literal.starts_with(|c: char| c.is_ascii_lowercase())
        && literal
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    ok.then_some(literal)
}

/// Every `(code, status)` the sources make an error answer with.
fn codes_in_sources() -> BTreeMap<String, BTreeSet<u16>> {
    let root = repo();
    let mut files = Vec::new();
    rust_files(&root.join("crates/pere-http/src"), &mut files);
    files.push(root.join("crates/pere-core/src/error.rs"));
    let mut found: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    let mut add = |code: &str, status: u16| {
        if status >= 400 {
            found.entry(code.to_string()).or_default().insert(status);
        }
    };
    for file in &files {
        let src = squeezed(file);
        // `StatusCode::X,"code"`; also remembers the last status named, for
        // the `NameKind` arms that follow one.
        let mut last_status = 0;
        let mut i = 0;
        while i < src.len() {
            let rest = &src[i..];
            if let Some(after) = rest.strip_prefix("StatusCode::") {
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                    .collect();
                last_status = status_named(&name);
                if let Some(code) = after[name.len()..].strip_prefix(",\"").and_then(code_at) {
                    add(code, last_status);
                }
            } else if let Some(after) = rest.strip_prefix("bad_request(\"") {
                if let Some(code) = code_at(after) {
                    add(code, 400);
                }
            } else if let Some(after) = rest.strip_prefix("NameKind::") {
                let name_len = after
                    .chars()
                    .take_while(char::is_ascii_alphanumeric)
                    .count();
                if let Some(code) = after[name_len..].strip_prefix("=>\"").and_then(code_at) {
                    add(code, last_status);
                }
            } else if let Some(after) = rest.strip_prefix("(\"") {
                // `("431 Request Header Fields Too Large", "headers_too_large", …)`,
                // spaces squeezed out.
                let digits = after
                    .get(..3)
                    .filter(|d| d.bytes().all(|b| b.is_ascii_digit()));
                if let Some(status) = digits.and_then(|d| d.parse().ok()) {
                    let reason_len = after[3..]
                        .chars()
                        .take_while(char::is_ascii_alphabetic)
                        .count();
                    if let Some(code) = after[3 + reason_len..]
                        .strip_prefix("\",\"")
                        .and_then(code_at)
                    {
                        add(code, status);
                    }
                }
            }
            i += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
    found
}

#[test]
fn the_error_table_lists_every_code_the_server_answers_once_with_its_status() {
    let doc = protocol();
    let rows = table(&doc);
    let mut listed: BTreeMap<&str, u16> = BTreeMap::new();
    for (code, status) in &rows {
        assert!(
            listed.insert(code, *status).is_none(),
            "docs/PROTOCOL.md §8.1 lists `{code}` twice"
        );
    }
    let found = codes_in_sources();
    assert!(
        found.len() >= 10,
        "the source scan found only {found:?}: did the code move?"
    );

    let missing: Vec<&String> = found
        .keys()
        .filter(|c| !listed.contains_key(c.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "codes the server answers but docs/PROTOCOL.md §8.1 does not list: {missing:?}"
    );
    let stale: Vec<&&str> = listed.keys().filter(|c| !found.contains_key(**c)).collect();
    assert!(
        stale.is_empty(),
        "codes docs/PROTOCOL.md §8.1 lists but no code answers: {stale:?}"
    );
    for (code, statuses) in &found {
        let documented = listed[code.as_str()];
        assert_eq!(
            statuses,
            &BTreeSet::from([documented]),
            "`{code}`: the code answers it with {statuses:?}, docs/PROTOCOL.md §8.1 says {documented}"
        );
    }
}

/// The `## n.` and `### n.m` headings of the document.
fn sections(doc: &str) -> BTreeSet<String> {
    doc.lines()
        .filter_map(|line| {
            let title = line
                .strip_prefix("### ")
                .or_else(|| line.strip_prefix("## "))?;
            let number = title.split(' ').next()?.trim_end_matches('.');
            number
                .split('.')
                .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
                .then(|| number.to_string())
        })
        .collect()
}

#[test]
fn every_cited_section_exists() {
    let doc = protocol();
    let known = sections(&doc);
    for n in 1..=10 {
        assert!(
            known.contains(&n.to_string()),
            "no §{n} in docs/PROTOCOL.md"
        );
    }
    let root = repo();
    let mut files = Vec::new();
    for dir in ["crates", "bins", "tests", "web"] {
        collect(&root.join(dir), &mut files);
    }
    files.push(root.join("README.md"));
    const CITE: &str = "docs/PROTOCOL.md §";
    let mut wrong = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for (at, _) in text.match_indices(CITE) {
            let number: String = text[at + CITE.len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let number = number.trim_end_matches('.');
            // `§n` in prose about citations is not one.
            if !number.is_empty() && !known.contains(number) {
                wrong.push(format!("{}: §{number}", file.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "citations of sections docs/PROTOCOL.md does not have: {wrong:?}"
    );
}

/// Source and web files under `dir`, skipping build output.
fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target") {
                collect(&path, out);
            }
        } else if path
            .extension()
            .is_some_and(|e| ["rs", "js", "html", "md"].iter().any(|x| e == *x))
        {
            out.push(path);
        }
    }
}
