//! The text fields of a `multipart/form-data` body (RFC 7578), for receipts
//! a page sends with `FormData`: `fetch(url, {method: "POST", body: new
//! FormData(form)})` sends this, not a URL-encoded form. Read as a form it
//! lost its fields: the id (`400 missing_event_id`), or, with the id in a
//! header, the status (stored as `ok`, silently).
//!
//! Only what a receipt carries is read: each part's field name and its text.
//! Parts with a `filename` (uploads) are skipped. The framing is checked
//! strictly: a body that says multipart and is not gets `400 invalid_body`.

use crate::error::{ApiError, ErrorCode, escape};

/// Longest boundary RFC 2046 allows.
const MAX_BOUNDARY: usize = 70;

/// The boundary of a `Content-Type` that is `multipart/form-data` with one;
/// `None` for any other type (and for a multipart type without a usable
/// boundary, which is read as before: as a form or as JSON).
pub(super) fn boundary(content_type: &str) -> Option<&str> {
    let mut params = content_type.split(';');
    let media = params.next()?.trim();
    if !media.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    let value = params.find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim())
    })?;
    let value = match value.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"')?,
        None => value,
    };
    (!value.is_empty() && value.len() <= MAX_BOUNDARY).then_some(value)
}

/// The `(name, text)` of each field of `body`, in order. Linear in the
/// body: each byte is looked at a bounded number of times, whatever the
/// number of parts (a 1 MiB body of tiny parts must not cost seconds).
///
/// # Errors
/// `400 invalid_body` when the body is not `multipart/form-data` framed by
/// `boundary`; `400 invalid_utf8` when a field it takes is not UTF-8 (an
/// upload may be anything: it is skipped).
pub(super) fn fields(body: &[u8], boundary: &str) -> Result<Vec<(String, String)>, ApiError> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    // Every delimiter but a first one at the very start begins a line.
    let mut next_line = b"\n".to_vec();
    next_line.extend_from_slice(delimiter);
    let start = if body.starts_with(delimiter) {
        0
    } else {
        find(body, &next_line)
            .map(|at| at + 1)
            .ok_or_else(|| bad(&format!("no `--{boundary}` line opens it")))?
    };
    let mut rest = &body[start + delimiter.len()..];
    let mut fields = Vec::new();
    loop {
        if rest.starts_with(b"--") {
            // The closing delimiter; what follows is an epilogue.
            return Ok(fields);
        }
        let blanks = rest
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count();
        rest =
            after_line_end(&rest[blanks..]).ok_or_else(|| bad("a delimiter line does not end"))?;
        let (head, after_head) =
            split_head(rest).ok_or_else(|| bad("a part's headers do not end"))?;
        let next = find(after_head, &next_line)
            .ok_or_else(|| bad(&format!("no closing `--{boundary}--`")))?;
        let content = &after_head[..next];
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        let head =
            std::str::from_utf8(head).map_err(|_| bad("a part's headers are not UTF-8 text"))?;
        if let Some(name) = field_name(head)? {
            let text = std::str::from_utf8(content).map_err(|e| {
                ApiError::new(
                    ErrorCode::InvalidUtf8,
                    format!(
                        "the receipt's form field `{}` is not UTF-8 text (invalid byte at offset {})",
                        escape(&name),
                        e.valid_up_to()
                    ),
                )
            })?;
            fields.push((name, text.to_string()));
        }
        rest = &after_head[next + next_line.len()..];
    }
}

/// Where `needle` (not empty) first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = hay[from..].iter().position(|&b| b == needle[0]) {
        let at = from + i;
        if hay[at..].starts_with(needle) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// What follows the next line end (CRLF, or a bare LF).
fn after_line_end(bytes: &[u8]) -> Option<&[u8]> {
    bytes
        .strip_prefix(b"\r\n")
        .or_else(|| bytes.strip_prefix(b"\n"))
}

/// A part's headers and what follows the empty line that ends them, read
/// line by line (so only the headers are looked at).
fn split_head(part: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut at = 0;
    loop {
        let end = at + part[at..].iter().position(|&b| b == b'\n')?;
        let line = &part[at..end];
        if line.is_empty() || line == b"\r" {
            return Some((&part[..at], &part[end + 1..]));
        }
        at = end + 1;
    }
}

/// The field name of a part's `Content-Disposition: form-data; name=…`;
/// `None` for an upload (a `filename`), which a receipt never needs.
fn field_name(head: &str) -> Result<Option<String>, ApiError> {
    let disposition = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-disposition"))
        .map(|(_, value)| value)
        .ok_or_else(|| bad("a part has no Content-Disposition"))?;
    let mut params = disposition.split(';');
    let kind = params.next().unwrap_or_default().trim();
    if !kind.eq_ignore_ascii_case("form-data") {
        return Err(bad(&format!("a part is `{}`, not form-data", escape(kind))));
    }
    let mut name = None;
    for param in params {
        let Some((key, value)) = param.split_once('=') else {
            continue;
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        match key.trim().to_ascii_lowercase().as_str() {
            "filename" | "filename*" => return Ok(None),
            "name" => name = Some(value.to_string()),
            _ => {}
        }
    }
    name.map(Some)
        .ok_or_else(|| bad("a part's Content-Disposition has no name"))
}

fn bad(why: &str) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidBody,
        format!("the receipt body is not multipart/form-data as its Content-Type says: {why}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::handlers::feedback::MAX_FEEDBACK_BODY;
    use proptest::prelude::*;

    /// Encodes `fields` as a browser's `FormData` would (CRLF lines).
    fn encode(fields: &[(&str, &str)], boundary: &str) -> String {
        let mut out = String::new();
        for (name, value) in fields {
            out.push_str(&format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            ));
        }
        out.push_str(&format!("--{boundary}--\r\n"));
        out
    }

    #[test]
    fn the_boundary_of_a_form_data_type() {
        assert_eq!(
            boundary("multipart/form-data; boundary=----WebKitFormBoundaryX1"),
            Some("----WebKitFormBoundaryX1")
        );
        assert_eq!(
            boundary("Multipart/Form-Data;BOUNDARY=\"a b\""),
            Some("a b")
        );
        assert_eq!(boundary("multipart/form-data"), None);
        assert_eq!(boundary("multipart/form-data; boundary="), None);
        assert_eq!(boundary("multipart/mixed; boundary=x"), None);
        assert_eq!(boundary("application/x-www-form-urlencoded"), None);
        assert_eq!(
            boundary(&format!("multipart/form-data; boundary={}", "b".repeat(71))),
            None
        );
    }

    #[test]
    fn what_chromium_sends_for_form_data() {
        let body = "------WebKitFormBoundaryq2\r\n\
            Content-Disposition: form-data; name=\"last_event_id\"\r\n\r\n\
            1796292598807325\r\n\
            ------WebKitFormBoundaryq2\r\n\
            Content-Disposition: form-data; name=\"status\"\r\n\r\n\
            printed\r\nOK\r\n\
            ------WebKitFormBoundaryq2\r\n\
            Content-Disposition: form-data; name=\"photo\"; filename=\"a.txt\"\r\n\
            Content-Type: text/plain\r\n\r\n\
            not a field\r\n\
            ------WebKitFormBoundaryq2--\r\n";
        assert_eq!(
            fields(body.as_bytes(), "----WebKitFormBoundaryq2").unwrap(),
            [
                ("last_event_id".to_string(), "1796292598807325".to_string()),
                ("status".to_string(), "printed\r\nOK".to_string()),
            ]
        );
    }

    #[test]
    fn a_preamble_bare_line_feeds_and_an_empty_form_are_read() {
        let body = "preamble\n--b\nContent-Disposition: form-data; name=status\n\nok\n--b--";
        assert_eq!(
            fields(body.as_bytes(), "b").unwrap(),
            [("status".to_string(), "ok".to_string())]
        );
        assert!(fields(b"--b--\r\n", "b").unwrap().is_empty());
    }

    #[test]
    fn bodies_that_are_not_multipart_are_400() {
        for body in [
            "",
            "status=ok",
            "--b\r\nContent-Disposition: form-data; name=\"s\"\r\n\r\nno end",
            "--b\r\nContent-Disposition: form-data; name=\"s\"",
            "--b\r\n\r\nno disposition\r\n--b--",
            "--b\r\nContent-Disposition: attachment; name=\"s\"\r\n\r\nx\r\n--b--",
            "--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--",
            "--bx\r\n",
        ] {
            let err = fields(body.as_bytes(), "b").unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidBody, "{body:?}");
            assert!(err.message.contains("multipart"), "{}", err.message);
        }
    }

    #[test]
    fn an_upload_of_any_bytes_is_skipped_and_fields_must_be_text() {
        let mut body =
            b"--b\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"a.bin\"\r\n\r\n"
                .to_vec();
        body.extend_from_slice(&[0xff, 0xfe, 0x00, 0x80]);
        body.extend_from_slice(
            b"\r\n--b\r\nContent-Disposition: form-data; name=\"status\"\r\n\r\nok\r\n--b--\r\n",
        );
        assert_eq!(
            fields(&body, "b").unwrap(),
            [("status".to_string(), "ok".to_string())]
        );
        let bad = b"--b\r\nContent-Disposition: form-data; name=\"status\"\r\n\r\n\xff\r\n--b--";
        let err = fields(bad, "b").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidUtf8, "{}", err.message);
    }

    /// A body of the largest size made of tiny parts: each part costs its
    /// own bytes, not a search of the rest of the body (it took 28 s in a
    /// debug build, a request that held a worker that long).
    #[test]
    fn many_tiny_parts_cost_the_body_once() {
        for line_end in ["\r\n", "\n"] {
            let part = format!(
                "--b{line_end}Content-Disposition: form-data; name=x{line_end}{line_end}y{line_end}"
            );
            let count = MAX_FEEDBACK_BODY / part.len();
            let body = format!("{}--b--", part.repeat(count));
            let started = std::time::Instant::now();
            assert_eq!(fields(body.as_bytes(), "b").unwrap().len(), count);
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "{count} parts took {:?}",
                started.elapsed()
            );
        }
    }

    proptest! {
        /// What `encode` writes (as a browser does) reads back exactly,
        /// whatever the values hold but the delimiter line itself.
        #[test]
        fn encoded_fields_read_back(
            values in proptest::collection::vec("[ -~\r\n\u{e9}\u{1F600}]{0,40}", 0..4),
            boundary in "[0-9A-Za-z'()+_,./:=?-]{1,70}",
        ) {
            let delimiter = format!("\n--{boundary}");
            prop_assume!(values.iter().all(|v| !v.contains(&delimiter) && !format!("\n{v}").contains(&delimiter)));
            let named: Vec<(String, String)> = values
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("f{i}"), v.clone()))
                .collect();
            let pairs: Vec<(&str, &str)> = named.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            prop_assert_eq!(fields(encode(&pairs, &boundary).as_bytes(), &boundary).unwrap(), named);
        }

        /// Any text with any boundary: an answer, never a panic.
        #[test]
        fn any_text_is_read_or_refused(body in "[-a-z\r\n;=\" :]{0,200}", boundary in "[-a-z]{1,5}") {
            if let Err(err) = fields(body.as_bytes(), &boundary) {
                prop_assert_eq!(err.code, ErrorCode::InvalidBody);
            }
        }
    }
}
