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

/// The `(name, text)` of each field of `body`, in order.
///
/// # Errors
/// `400 invalid_body` when the body is not `multipart/form-data` framed by
/// `boundary`.
pub(super) fn fields(body: &str, boundary: &str) -> Result<Vec<(String, String)>, ApiError> {
    let delimiter = format!("--{boundary}");
    // The first delimiter opens the body or a line after a preamble.
    let start = if body.starts_with(&delimiter) {
        0
    } else {
        body.find(&format!("\n{delimiter}"))
            .map(|at| at + 1)
            .ok_or_else(|| bad(&format!("no `{delimiter}` line opens it")))?
    };
    let mut rest = &body[start + delimiter.len()..];
    let mut fields = Vec::new();
    loop {
        if rest.starts_with("--") {
            // The closing delimiter; what follows is an epilogue.
            return Ok(fields);
        }
        rest = after_line_end(rest.trim_start_matches([' ', '\t']))
            .ok_or_else(|| bad("a delimiter line does not end"))?;
        let (head, after_head) =
            split_head(rest).ok_or_else(|| bad("a part's headers do not end"))?;
        let next = after_head
            .find(&format!("\n{delimiter}"))
            .ok_or_else(|| bad(&format!("no closing `{delimiter}--`")))?;
        let content = &after_head[..next];
        let content = content.strip_suffix('\r').unwrap_or(content);
        if let Some(name) = field_name(head)? {
            fields.push((name, content.to_string()));
        }
        rest = &after_head[next + 1 + delimiter.len()..];
    }
}

/// What follows the next line end (CRLF, or a bare LF).
fn after_line_end(text: &str) -> Option<&str> {
    text.strip_prefix("\r\n")
        .or_else(|| text.strip_prefix('\n'))
}

/// A part's headers and what follows the empty line that ends them.
fn split_head(part: &str) -> Option<(&str, &str)> {
    if let Some(content) = after_line_end(part) {
        return Some(("", content));
    }
    let crlf = part.find("\r\n\r\n").map(|at| (at, at + 4));
    let lf = part.find("\n\n").map(|at| (at, at + 2));
    let (end, content) = match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    Some((&part[..end], &part[content..]))
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
            fields(body, "----WebKitFormBoundaryq2").unwrap(),
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
            fields(body, "b").unwrap(),
            [("status".to_string(), "ok".to_string())]
        );
        assert!(fields("--b--\r\n", "b").unwrap().is_empty());
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
            let err = fields(body, "b").unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidBody, "{body:?}");
            assert!(err.message.contains("multipart"), "{}", err.message);
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
            prop_assert_eq!(fields(&encode(&pairs, &boundary), &boundary).unwrap(), named);
        }

        /// Any text with any boundary: an answer, never a panic.
        #[test]
        fn any_text_is_read_or_refused(body in "[-a-z\r\n;=\" :]{0,200}", boundary in "[-a-z]{1,5}") {
            if let Err(err) = fields(&body, &boundary) {
                prop_assert_eq!(err.code, ErrorCode::InvalidBody);
            }
        }
    }
}
