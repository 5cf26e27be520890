//! `receipt_request`: the parser that decides which receipts the server
//! reads itself (`pere_http::server::conn::posts`) never panics, never
//! takes a request it has not wholly received, and takes only what it is
//! meant to: a whole HTTP/1.1 `POST /feedback/:channel` framed by one
//! `Content-Length` of at most 8 KiB, without `Transfer-Encoding`,
//! `Upgrade`, `Expect` or `Connection: close`, with a head within the
//! server's limit, whose request and body are exactly what the bytes say.

use hyper::Method;
use pere_http::fuzzing::receipt_request as parse;
use pere_http::server::router::Route;

/// Input: the bytes a client sent (the server peeks at most 32 KiB).
pub fn receipt_request(data: &[u8]) {
    let data = &data[..data.len().min(32 * 1024)];
    let Some((request, body, channel, len)) = parse(data) else {
        return;
    };
    assert!(len <= data.len(), "request longer than the input");
    let whole = &data[..len];
    assert!(whole.starts_with(b"POST /feedback/"));
    super::assert_routed(&request, Method::POST, Route::Feedback(channel.clone()));
    let head_len = len - body.len();
    assert!(
        head_len <= pere_http::server::DEFAULT_MAX_HEADER_BYTES,
        "a head over the limit taken (hyper answers it 431)"
    );
    let head = &whole[..head_len];
    assert!(
        head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n"),
        "the body starts after the blank line"
    );
    assert_eq!(&whole[head_len..], &body[..], "the body as sent");
    assert!(body.len() <= 8 * 1024);
    super::assert_target_as_sent(&request, head);
    let lengths: Vec<_> = request.headers().get_all("content-length").iter().collect();
    assert_eq!(lengths.len(), 1, "one Content-Length");
    assert_eq!(
        lengths[0]
            .to_str()
            .ok()
            .and_then(|v| v.parse::<usize>().ok()),
        Some(body.len()),
        "the body is what Content-Length says"
    );
    super::assert_plain_headers(request.headers(), head);
    // What follows does not change it, and less of it is no request.
    let mut longer = whole.to_vec();
    longer.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    let again = parse(&longer).expect("the same request with more after it");
    assert_eq!(again.3, len);
    assert_eq!(again.0.uri(), request.uri());
    assert_eq!(again.0.headers(), request.headers());
    assert_eq!(again.1, body);
    for cut in [len - 1, head_len - 1, len / 2] {
        assert!(parse(&whole[..cut]).is_none(), "a partial request taken");
    }
}
