//! `docs/PROTOCOL.md` against the code: its error table (§8.1) lists every
//! [`ErrorCode`] once, with the code's status, and nothing else; every code
//! is answered somewhere; and every `docs/PROTOCOL.md §n` a comment cites
//! exists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use pere_http::ErrorCode;

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

/// A source file without its test module (the crates keep it last).
fn without_tests(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.split("#[cfg(test)]")
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_error_table_lists_every_error_code_once_with_its_status() {
    let doc = protocol();
    let rows = table(&doc);
    let mut listed: BTreeMap<&str, u16> = BTreeMap::new();
    for (code, status) in &rows {
        assert!(
            listed.insert(code, *status).is_none(),
            "docs/PROTOCOL.md §8.1 lists `{code}` twice"
        );
    }
    let known: BTreeMap<&str, u16> = ErrorCode::ALL
        .iter()
        .map(|c| (c.as_str(), c.status().as_u16()))
        .collect();
    assert_eq!(known.len(), ErrorCode::ALL.len(), "two codes share a name");
    let missing: Vec<&&str> = known.keys().filter(|c| !listed.contains_key(*c)).collect();
    assert!(
        missing.is_empty(),
        "codes of ErrorCode that docs/PROTOCOL.md §8.1 does not list: {missing:?}"
    );
    let stale: Vec<&&str> = listed.keys().filter(|c| !known.contains_key(*c)).collect();
    assert!(
        stale.is_empty(),
        "codes docs/PROTOCOL.md §8.1 lists that ErrorCode does not have: {stale:?}"
    );
    for (code, status) in &known {
        assert_eq!(
            listed[code], *status,
            "`{code}`: ErrorCode answers it with {status}, docs/PROTOCOL.md §8.1 says {}",
            listed[code]
        );
        assert_eq!(
            ErrorCode::from_wire(code).map(ErrorCode::as_str),
            Some(*code)
        );
    }
}

/// A code nothing answers with is a row of the table that lies: every
/// variant is named outside the enum's own definition.
#[test]
fn every_error_code_is_answered_somewhere() {
    let root = repo();
    let mut files = Vec::new();
    rust_files(&root.join("crates/pere-http/src"), &mut files);
    let mut sources = String::new();
    for file in &files {
        let text = without_tests(file);
        if file.ends_with("error.rs") {
            // Only the mapping of the hub's errors, not the enum's tables.
            let from = text
                .find("impl From<pere_core::Error> for ApiError")
                .expect("error.rs maps pere_core::Error to ApiError");
            sources.push_str(&text[from..]);
        } else {
            sources.push_str(&text);
        }
    }
    let unused: Vec<String> = ErrorCode::ALL
        .iter()
        .map(|c| format!("{c:?}"))
        .filter(|name| !sources.contains(&format!("ErrorCode::{name}")))
        .collect();
    assert!(
        unused.is_empty(),
        "error codes no code of pere-http answers with: {unused:?}"
    );
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
