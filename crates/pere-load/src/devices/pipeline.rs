//! A receipt connection that pipelines HTTP/1.1: a window of requests is
//! written at once and their answers are read back in order, as a gateway
//! that forwards many devices' receipts over few keep-alive connections
//! would. hyper's client sends one request at a time, hence this one.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::connect_from;

/// Most header lines read in an answer.
const MAX_HEADERS: usize = 32;
/// Largest answer head read.
const MAX_HEAD: usize = 16 * 1024;
/// Largest answer body read.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// One keep-alive connection with requests in flight.
pub(super) struct Pipeline {
    stream: TcpStream,
    /// Bytes read and not yet taken as answers.
    buf: BytesMut,
}

/// Appends one request to `out`.
pub(super) fn write_request(out: &mut Vec<u8>, host: &str, path: &str, device: &str, body: &[u8]) {
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\ndevice: ");
    out.extend_from_slice(device.as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

/// Writes `requests` (`n` whole requests, see [`write_request`]) on the
/// connection in `slot`, opening one if there is none, and reads their `n`
/// answers within 30 s: `(status, body)` each, in order. A connection that
/// failed is dropped from `slot`.
pub(super) async fn exchange_window(
    server: SocketAddr,
    source: Option<IpAddr>,
    slot: &mut Option<Pipeline>,
    requests: &[u8],
    n: usize,
) -> Result<Vec<(u16, Bytes)>, String> {
    let conn = match slot {
        Some(c) => c,
        None => {
            let stream = connect_from(server, source, Duration::from_secs(10))
                .await
                .map_err(|e| format!("connect to {server} from {source:?}: {e}"))?;
            slot.insert(Pipeline {
                stream,
                buf: BytesMut::with_capacity(64 * 1024),
            })
        }
    };
    let window = async {
        conn.stream
            .write_all(requests)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut answers = Vec::with_capacity(n);
        while answers.len() < n {
            match parse_answer(&mut conn.buf)? {
                Some(answer) => answers.push(answer),
                None => {
                    if conn.buf.len() > MAX_HEAD + MAX_BODY {
                        return Err("answer too large".to_string());
                    }
                    conn.buf.reserve(64 * 1024);
                    let read = conn
                        .stream
                        .read_buf(&mut conn.buf)
                        .await
                        .map_err(|e| format!("read: {e}"))?;
                    if read == 0 {
                        return Err(format!(
                            "the server closed the connection after {} of {n} answers",
                            answers.len()
                        ));
                    }
                }
            }
        }
        Ok(answers)
    };
    match tokio::time::timeout(Duration::from_secs(30), window).await {
        Ok(Ok(answers)) => Ok(answers),
        Ok(Err(e)) => {
            *slot = None;
            Err(e)
        }
        Err(_) => {
            *slot = None;
            Err("no answer within 30 s".to_string())
        }
    }
}

/// Takes one whole answer (`Content-Length` framed) off the front of `buf`;
/// `None` until all of it is there.
fn parse_answer(buf: &mut BytesMut) -> Result<Option<(u16, Bytes)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut answer = httparse::Response::new(&mut headers);
    let head = match answer.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err("answer head too large".to_string());
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("unreadable answer: {e}")),
    };
    let status = answer.code.unwrap_or(0);
    let mut length = None;
    for h in answer.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("a chunked answer to a receipt".to_string());
        }
    }
    let length = length.ok_or("an answer without Content-Length")?;
    if length > MAX_BODY {
        return Err(format!("answer body of {length} bytes"));
    }
    if buf.len() < head + length {
        return Ok(None);
    }
    buf.advance(head);
    Ok(Some((status, buf.split_to(length).freeze())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn answers_are_taken_whole_and_in_order() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nab"[..],
        );
        assert_eq!(
            parse_answer(&mut buf).unwrap(),
            Some((200, Bytes::from_static(b"{}")))
        );
        assert_eq!(parse_answer(&mut buf).unwrap(), None, "one byte missing");
        buf.extend_from_slice(b"c");
        assert_eq!(
            parse_answer(&mut buf).unwrap(),
            Some((404, Bytes::from_static(b"abc")))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn unframed_answers_are_errors() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert!(parse_answer(&mut BytesMut::from(bad)).is_err());
        }
    }

    #[test]
    fn requests_are_framed() {
        let mut out = Vec::new();
        write_request(&mut out, "h:1", "/feedback/c", "d-1", b"{\"id\":\"1\"}");
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut req = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(len) = req.parse(&out).unwrap() else {
            panic!("partial");
        };
        assert_eq!(req.path, Some("/feedback/c"));
        assert_eq!(&out[len..], b"{\"id\":\"1\"}");
    }
}
