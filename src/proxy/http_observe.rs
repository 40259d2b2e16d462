//! Passive HTTP/1.x observation for request metrics (`istio_requests_total`,
//! `istio_request_duration_milliseconds`): the relay shows each chunk of bytes to an
//! [`HttpObserver`], which frames requests and responses (heads via `httparse`, bodies by
//! Content-Length, chunked encoding or close) without touching the bytes. Anything it cannot
//! follow (not HTTP/1.x, upgrades, CONNECT, malformed framing) switches it off for the rest of
//! the connection: observation never affects traffic.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Largest request or response head followed; beyond it the connection is not observed.
const MAX_HEAD: usize = 64 * 1024;
/// Largest chunk-size or trailer line followed.
const MAX_LINE: usize = 4 * 1024;
const MAX_HEADERS: usize = 96;
/// Requests sent ahead of their responses (pipelining) that are remembered.
const MAX_PENDING: usize = 128;

/// One finished request/response exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub method: String,
    pub status: u16,
    /// From the request's first byte to the response's last.
    pub duration: Duration,
}

#[derive(Debug)]
enum Chunked {
    Size(Vec<u8>),
    Data(u64),
    DataEnd(u8),
    Trailer(Vec<u8>),
}

#[derive(Debug)]
enum Body {
    Fixed(u64),
    Chunked(Chunked),
    UntilClose,
}

#[derive(Debug)]
enum Side {
    Head {
        buf: Vec<u8>,
        started: Option<Instant>,
    },
    Body(Body),
}

impl Side {
    fn head() -> Self {
        Side::Head {
            buf: Vec::new(),
            started: None,
        }
    }
}

struct Pending {
    method: String,
    start: Instant,
}

/// Follows one connection; call it with each chunk as it is relayed.
pub struct HttpObserver {
    request: Side,
    response: Side,
    pending: VecDeque<Pending>,
    current: Option<(Pending, u16)>,
    off: bool,
    record: Box<dyn FnMut(Exchange) + Send>,
}

impl std::fmt::Debug for HttpObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpObserver")
            .field("off", &self.off)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl HttpObserver {
    pub fn new(record: Box<dyn FnMut(Exchange) + Send>) -> Self {
        HttpObserver {
            request: Side::head(),
            response: Side::head(),
            pending: VecDeque::new(),
            current: None,
            off: false,
            record,
        }
    }

    /// Whether it still follows the connection.
    pub fn is_following(&self) -> bool {
        !self.off
    }

    /// Bytes from the client towards the server.
    pub fn on_request(&mut self, mut input: &[u8], now: Instant) {
        while !input.is_empty() && !self.off {
            match &mut self.request {
                Side::Head { buf, started } => {
                    let start = *started.get_or_insert(now);
                    let old = buf.len();
                    buf.extend_from_slice(input);
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let mut req = httparse::Request::new(&mut headers);
                    match req.parse(buf) {
                        Ok(httparse::Status::Complete(n)) => {
                            input = &input[n.saturating_sub(old)..];
                            let method = req.method.unwrap_or("").to_string();
                            let upgrade = req
                                .headers
                                .iter()
                                .any(|h| h.name.eq_ignore_ascii_case("upgrade"));
                            if method == "CONNECT" || upgrade || self.pending.len() >= MAX_PENDING {
                                self.off = true;
                                return;
                            }
                            let Some(body) = body_of(req.headers, false) else {
                                self.off = true;
                                return;
                            };
                            self.pending.push_back(Pending { method, start });
                            self.request = match body {
                                Body::Fixed(0) => Side::head(),
                                // A request without a length has no body (RFC 9112 §6.3).
                                Body::UntilClose => Side::head(),
                                b => Side::Body(b),
                            };
                        }
                        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return,
                        _ => {
                            self.off = true;
                            return;
                        }
                    }
                }
                Side::Body(body) => match consume(body, input) {
                    Some((used, done)) => {
                        input = &input[used..];
                        if done {
                            self.request = Side::head();
                        }
                    }
                    None => self.off = true,
                },
            }
        }
    }

    /// Bytes from the server towards the client.
    pub fn on_response(&mut self, mut input: &[u8], now: Instant) {
        while !input.is_empty() && !self.off {
            match &mut self.response {
                Side::Head { buf, .. } => {
                    let old = buf.len();
                    buf.extend_from_slice(input);
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let mut resp = httparse::Response::new(&mut headers);
                    match resp.parse(buf) {
                        Ok(httparse::Status::Complete(n)) => {
                            input = &input[n.saturating_sub(old)..];
                            let status = resp.code.unwrap_or(0);
                            if status == 101 {
                                self.off = true;
                                return;
                            }
                            if (100..200).contains(&status) {
                                // Interim (100 Continue): the real response follows.
                                self.response = Side::head();
                                continue;
                            }
                            let Some(request) = self.pending.pop_front() else {
                                self.off = true;
                                return;
                            };
                            let no_body =
                                request.method == "HEAD" || status == 204 || status == 304;
                            let body = if no_body {
                                Some(Body::Fixed(0))
                            } else {
                                body_of(resp.headers, true)
                            };
                            let Some(body) = body else {
                                self.off = true;
                                return;
                            };
                            self.current = Some((request, status));
                            match body {
                                Body::Fixed(0) => self.finish(now),
                                b => self.response = Side::Body(b),
                            }
                        }
                        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return,
                        _ => {
                            self.off = true;
                            return;
                        }
                    }
                }
                Side::Body(body) => match consume(body, input) {
                    Some((used, done)) => {
                        input = &input[used..];
                        if done {
                            self.finish(now);
                        }
                    }
                    None => self.off = true,
                },
            }
        }
    }

    /// The server closed its side: a response delimited by close is complete.
    pub fn on_response_end(&mut self, now: Instant) {
        if !self.off && matches!(self.response, Side::Body(Body::UntilClose)) {
            self.finish(now);
        }
    }

    fn finish(&mut self, now: Instant) {
        self.response = Side::head();
        if let Some((request, status)) = self.current.take() {
            (self.record)(Exchange {
                method: request.method,
                status,
                duration: now.saturating_duration_since(request.start),
            });
        }
    }
}

/// How a message's body is delimited; `None` when the headers make framing ambiguous.
fn body_of(headers: &[httparse::Header<'_>], response: bool) -> Option<Body> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let value = std::str::from_utf8(h.value).ok()?;
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            if !chunked {
                return response.then_some(Body::UntilClose);
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n: u64 = std::str::from_utf8(h.value).ok()?.trim().parse().ok()?;
            if length.is_some_and(|l| l != n) {
                return None;
            }
            length = Some(n);
        }
    }
    match (chunked, length) {
        (true, _) => Some(Body::Chunked(Chunked::Size(Vec::new()))),
        (false, Some(n)) => Some(Body::Fixed(n)),
        (false, None) if response => Some(Body::UntilClose),
        (false, None) => Some(Body::Fixed(0)),
    }
}

/// Consumes body bytes; returns how many belonged to the body and whether it ended.
fn consume(body: &mut Body, input: &[u8]) -> Option<(usize, bool)> {
    match body {
        Body::Fixed(left) => {
            let n = (*left).min(input.len() as u64);
            *left -= n;
            Some((n as usize, *left == 0))
        }
        Body::UntilClose => Some((input.len(), false)),
        Body::Chunked(state) => {
            let mut used = 0;
            while used < input.len() {
                let rest = &input[used..];
                match state {
                    Chunked::Size(line) | Chunked::Trailer(line) => {
                        let end = rest.iter().position(|b| *b == b'\n');
                        let take = end.map_or(rest.len(), |p| p + 1);
                        line.extend_from_slice(&rest[..take]);
                        used += take;
                        if line.len() > MAX_LINE {
                            return None;
                        }
                        if end.is_none() {
                            continue;
                        }
                        if matches!(state, Chunked::Trailer(_)) {
                            let blank =
                                matches!(state, Chunked::Trailer(l) if l == b"\r\n" || l == b"\n");
                            if blank {
                                return Some((used, true));
                            }
                            *state = Chunked::Trailer(Vec::new());
                        } else {
                            let Chunked::Size(l) = state else {
                                return None;
                            };
                            let size = match httparse::parse_chunk_size(l) {
                                Ok(httparse::Status::Complete((_, size))) => size,
                                _ => return None,
                            };
                            *state = if size == 0 {
                                Chunked::Trailer(Vec::new())
                            } else {
                                Chunked::Data(size)
                            };
                        }
                    }
                    Chunked::Data(left) => {
                        let n = (*left).min(rest.len() as u64);
                        *left -= n;
                        used += n as usize;
                        if *left == 0 {
                            *state = Chunked::DataEnd(2);
                        }
                    }
                    Chunked::DataEnd(left) => {
                        let n = (*left as usize).min(rest.len());
                        *left -= n as u8;
                        used += n;
                        if *left == 0 {
                            *state = Chunked::Size(Vec::new());
                        }
                    }
                }
            }
            Some((used, false))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn observer() -> (HttpObserver, Arc<Mutex<Vec<Exchange>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let o = HttpObserver::new(Box::new(move |e| sink.lock().unwrap().push(e)));
        (o, seen)
    }

    fn statuses(seen: &Arc<Mutex<Vec<Exchange>>>) -> Vec<(String, u16)> {
        seen.lock()
            .unwrap()
            .iter()
            .map(|e| (e.method.clone(), e.status))
            .collect()
    }

    /// Feeds `bytes` in pieces of `step` bytes.
    fn feed(o: &mut HttpObserver, request: bool, bytes: &[u8], step: usize) {
        let now = Instant::now();
        for piece in bytes.chunks(step.max(1)) {
            if request {
                o.on_request(piece, now);
            } else {
                o.on_response(piece, now);
            }
        }
    }

    #[test]
    fn keep_alive_exchanges_are_counted_whatever_the_chunking() {
        let req = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n";
        for step in [1, 3, 7, 1000] {
            let (mut o, seen) = observer();
            feed(&mut o, true, req, step);
            feed(&mut o, false, resp, step);
            assert!(o.is_following(), "step {step}");
            assert_eq!(
                statuses(&seen),
                vec![("GET".into(), 200), ("POST".into(), 503)],
                "step {step}"
            );
        }
    }

    #[test]
    fn head_204_and_interim_responses_have_no_body() {
        let (mut o, seen) = observer();
        feed(&mut o, true, b"HEAD / HTTP/1.1\r\n\r\nPUT / HTTP/1.1\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n", 1000);
        feed(&mut o, true, b"x", 1);
        feed(&mut o, false, b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", 1000);
        assert_eq!(
            statuses(&seen),
            vec![("HEAD".into(), 200), ("PUT".into(), 204)]
        );
    }

    #[test]
    fn a_response_delimited_by_close_completes_at_the_end() {
        let (mut o, seen) = observer();
        feed(&mut o, true, b"GET / HTTP/1.0\r\n\r\n", 1000);
        feed(
            &mut o,
            false,
            b"HTTP/1.0 404 Not Found\r\n\r\nnothing here",
            1000,
        );
        assert!(statuses(&seen).is_empty());
        o.on_response_end(Instant::now());
        assert_eq!(statuses(&seen), vec![("GET".into(), 404)]);
    }

    #[test]
    fn what_it_cannot_follow_turns_it_off() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"\x16\x03\x01\x00\x05hello", b""),
            (b"SSH-2.0-OpenSSH\r\n", b""),
            (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", b""),
            (b"CONNECT x:443 HTTP/1.1\r\n\r\n", b""),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                b"",
            ),
            (b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 101 Switching\r\n\r\n"),
            (b"", b"HTTP/1.1 200 OK\r\n\r\n"),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                b"",
            ),
        ];
        for (req, resp) in cases {
            let (mut o, seen) = observer();
            feed(&mut o, true, req, 1000);
            feed(&mut o, false, resp, 1000);
            assert!(!o.is_following(), "{:?}", String::from_utf8_lossy(req));
            assert!(statuses(&seen).is_empty());
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let (mut o, _) = observer();
            let mut bytes = b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for _ in 0..64 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let alphabet = b"0123456789abcdef\r\n;: xHTTP/1.";
                bytes.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            feed(&mut o, true, &bytes, (seed % 5) as usize + 1);
            feed(&mut o, false, &bytes, 3);
            o.on_response_end(Instant::now());
        }
    }
}
