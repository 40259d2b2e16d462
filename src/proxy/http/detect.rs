//! Is a connection HTTP? Decided from its first bytes, as Istio's sniffing does: an HTTP/1
//! request line (checked by `httparse`) or the HTTP/2 connection preface. Pure and total: any
//! bytes give an answer, and the reader asks for at most [`MAX_DETECT_BYTES`].

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A request line longer than this is not one we terminate: the connection stays L4.
pub const MAX_DETECT_BYTES: usize = 8 * 1024;

/// Methods whose requests are terminated: RFC 9110's, PATCH, and WebDAV's (as Envoy's HTTP
/// inspector knows them). A request with another method is relayed as bytes.
const METHODS: &[&[u8]] = &[
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
    b"REPORT",
    b"SEARCH",
    b"MKCALENDAR",
    b"ACL",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    NeedMore,
    Http1,
    Http2,
    NotHttp,
}

/// Classifies the first bytes of a (decrypted) stream.
pub fn detect(buf: &[u8]) -> Detected {
    if buf.is_empty() {
        return Detected::NeedMore;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Detected::Http2
        } else {
            Detected::NeedMore
        };
    }
    // A method we know, or the start of one: an echo, a database protocol or a greeting is
    // told apart at its first bytes instead of at the timeout.
    let token_end = buf.iter().position(|&b| b == b' ').unwrap_or(buf.len());
    let token = &buf[..token_end];
    let known = METHODS.iter().any(|m| {
        if token_end < buf.len() {
            *m == token
        } else {
            m.starts_with(token)
        }
    });
    if !known {
        return Detected::NotHttp;
    }
    // Only the request line decides: headers may take a while and are hyper's to judge.
    let line = match buf.iter().position(|&b| b == b'\n') {
        Some(end) => &buf[..=end],
        None => buf,
    };
    let mut no_headers = [];
    let mut req = httparse::Request::new(&mut no_headers);
    match req.parse(line) {
        // A complete head with no headers at all (`GET / HTTP/1.0\r\n\r\n` read in one go).
        Ok(httparse::Status::Complete(_)) => Detected::Http1,
        Ok(httparse::Status::Partial) if req.version.is_some() => Detected::Http1,
        Ok(httparse::Status::Partial) if line.len() < buf.len() => Detected::NotHttp,
        Ok(httparse::Status::Partial) if buf.len() < MAX_DETECT_BYTES => Detected::NeedMore,
        // The first header was already in view: the request line parsed.
        Err(httparse::Error::TooManyHeaders) => Detected::Http1,
        _ => Detected::NotHttp,
    }
}

/// Reads from `stream` onto `buf` until [`detect`] decides or `timeout` passes (a silent
/// client, or one that stops mid-line, is not HTTP). Returns the verdict; `buf` holds every
/// byte read, for the next handler to replay.
pub async fn read_until_detected<S>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Detected
where
    S: AsyncRead + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match detect(buf) {
            Detected::NeedMore if buf.len() < MAX_DETECT_BYTES => {}
            Detected::NeedMore => return Detected::NotHttp,
            verdict => return verdict,
        }
        let mut chunk = [0u8; 2048];
        let room = (MAX_DETECT_BYTES - buf.len()).min(chunk.len());
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk[..room])).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return Detected::NotHttp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_and_the_h2_preface_are_recognised() {
        use Detected::*;
        let cases: &[(&[u8], Detected)] = &[
            (b"", NeedMore),
            (b"G", NeedMore),
            (b"GET /v1/charges HT", NeedMore),
            (b"GET /v1/charges HTTP/1.1\r\n", Http1),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Http1),
            (b"GET / HTTP/1.0\r\n\r\n", Http1),
            (b"POST /x?y=1 HTTP/1.1\r\nContent-Length: 3\r\n", Http1),
            (b"PRI * HTTP/2.0\r\n", NeedMore),
            (H2_PREFACE, Http2),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04", Http2),
            (b"hello", NotHttp),
            (b"PO", NeedMore),
            (b"POST", NeedMore),
            (b"POSTX / HTTP/1.1\r\n", NotHttp),
            (b"BREW /pot HTTP/1.1\r\n", NotHttp),
            (b"hello world\n", NotHttp),
            (b"GET / HTTP/9\r\n", NotHttp),
            (b"\x00\x01\x02", NotHttp),
            (b"SSH-2.0-OpenSSH_9.6\r\n", NotHttp),
            // A Redis inline command looks like a word then a space: not a request line.
            (b"PING\r\n", NotHttp),
        ];
        for (input, want) in cases {
            assert_eq!(detect(input), *want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn an_endless_request_line_is_not_http() {
        let mut long = b"GET /".to_vec();
        long.resize(MAX_DETECT_BYTES, b'a');
        assert_eq!(detect(&long), Detected::NotHttp);
    }

    #[tokio::test]
    async fn reading_stops_at_the_verdict_or_the_timeout() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = tokio::io::duplex(1024);
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = b"".to_vec();
        let d = read_until_detected(&mut server, &mut buf, Duration::from_secs(5)).await;
        assert_eq!(d, Detected::Http1);
        assert!(buf.starts_with(b"GET /a"));

        // A silent client: not HTTP after the timeout, nothing read.
        let (_quiet, mut server) = tokio::io::duplex(1024);
        let mut buf = Vec::new();
        let d = read_until_detected(&mut server, &mut buf, Duration::from_millis(50)).await;
        assert_eq!(d, Detected::NotHttp);
        assert!(buf.is_empty());
    }
}
