//! The config stream's wire format (SPEC §8), shared by the operator's config server and the
//! proxy's client.
//!
//! - `GET /v1/config/stream?pod=<pod name>` over TLS with the proxy's workload certificate as
//!   the client certificate (HTTP/2 when both sides offer it). The server checks that the
//!   certificate's SPIFFE ID is the identity of that pod (namespace and service account).
//! - The response body is newline-delimited JSON: each non-empty line is one whole
//!   [`ProxySnapshot`](super::ProxySnapshot) or, when asked for, a delta (below). An empty line is a heartbeat, sent every
//!   [`HEARTBEAT`]; a client that hears nothing for [`SILENCE_LIMIT`] reconnects.
//! - After applying (or rejecting) a snapshot the proxy posts an [`Ack`] to `/v1/config/ack`
//!   on the same connection: the version it now runs and, for a rejected one, why. The
//!   operator keeps the last ack per stream; `weft proxy-status` reads them. An ack counts
//!   only on the connection that holds the pod's stream and only for versions that stream
//!   sent (409 otherwise); the version a proxy still runs after a rejection is kept only if
//!   this stream sent it.
//! - A server caps the open streams per workload identity and per pod (429 with
//!   `Retry-After` over a cap).
//!
//! - `&delta=1` on the stream request: the proxy reads delta lines ([`super::delta`], issue
//!   19's ≤ 10 KB per change). Opt-in, so a proxy of an older revision (a canary upgrade runs
//!   both) keeps getting whole snapshots only, and a newer proxy talking to an older operator
//!   (which ignores the parameter) does too.
//! - `&features=tls-origination,…` on the stream request: what the proxy implements
//!   ([`super::compat`]). A proxy that names no feature (an older revision) gets the config
//!   lowered, whole, wherever it uses a newer one: the Service in question answers 503 and
//!   says why, instead of carrying a value the proxy would reject the whole snapshot for.
//!
//! Whole snapshots and deltas. A stream's first line is always a whole snapshot, so a
//! (re)connecting proxy needs no history. With `delta=1`, a later line may be
//! `{"delta":{"base":"<version>","snapshot":{…},"services":[pieces],"headless":[pieces],
//! "peers":[pieces]}}`: `snapshot` is the new snapshot without `outbound.services`,
//! `outbound.headless` and `peers` (the big lists, most of the bytes), and each list is given
//! as pieces of the same list in version `base`, the one this stream sent last:
//! `{"keep":{"from":i,"len":n}}` (a run of base elements) and `{"add":[elements]}`. The
//! operator computes pieces in O(n) from a hash per element, serialized once per index, and
//! sends a delta only when it is smaller than the whole line; gateway pods always get whole
//! lines (their running lists carry resolved destinations, not what they were sent).
//!
//! The proxy applies a delta only onto the snapshot it runs, and only if that is `base`
//! (splicing the typed lists it holds: no second copy of the JSON is kept); the rebuilt
//! snapshot is then validated, applied and acked exactly as a whole one. Keeps must lie inside
//! the base list and not overlap, so a line rebuilds at most the base plus what it carries. A
//! delta for another base (the proxy rejected or never got the last line), one that does not
//! splice, or one that does not parse makes the proxy drop the stream and open a new one on
//! the same connection, whose first line is whole: a lost or bad line cannot corrupt state.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::MAX_SNAPSHOT_BYTES;

/// How often the server writes a heartbeat line on an idle stream.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// A client that reads nothing for this long treats the stream as dead.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(45);
/// Query parameter naming the proxy's pod.
pub const QUERY_POD: &str = "pod";
/// Query parameter asking for delta lines (value `1`).
pub const QUERY_DELTA: &str = "delta";
/// Query parameter naming what the proxy implements, comma-separated
/// ([`super::compat::Features`]).
pub const QUERY_FEATURES: &str = "features";
/// Largest ack body the server reads.
pub const MAX_ACK_BYTES: usize = 4096;

/// What the proxy reports after each snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ack {
    /// The proxy's pod (same as the stream's `pod` parameter).
    pub pod: String,
    /// The version the proxy runs now (the last good one after a rejection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Set when the proxy rejected the version it was sent: the version and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Rejected>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejected {
    pub version: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("config stream line is longer than {max} bytes without a newline")]
    TooLong { max: usize },
}

/// Splits the stream's bytes into lines. Bounded: at most `max` bytes are buffered, so a
/// sender that never writes a newline cannot make the proxy allocate without limit.
#[derive(Debug)]
pub struct LineDecoder {
    buf: Vec<u8>,
    max: usize,
}

impl Default for LineDecoder {
    fn default() -> Self {
        LineDecoder::new(MAX_SNAPSHOT_BYTES)
    }
}

impl LineDecoder {
    pub fn new(max: usize) -> Self {
        LineDecoder {
            buf: Vec::new(),
            max,
        }
    }

    /// Adds received bytes and returns the complete, non-empty lines they finish (without the
    /// newline; a trailing `\r` is dropped too). Heartbeats (empty lines) are skipped.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut lines = Vec::new();
        while let Some(i) = bytes.iter().position(|&b| b == b'\n') {
            if self.buf.len() + i > self.max {
                return Err(FrameError::TooLong { max: self.max });
            }
            let mut line = std::mem::take(&mut self.buf);
            line.extend_from_slice(&bytes[..i]);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if !line.is_empty() {
                lines.push(line);
            }
            bytes = &bytes[i + 1..];
        }
        if self.buf.len() + bytes.len() > self.max {
            return Err(FrameError::TooLong { max: self.max });
        }
        self.buf.extend_from_slice(bytes);
        Ok(lines)
    }

    /// Bytes of an unfinished line held now.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// One snapshot as a stream line (the JSON has no raw newlines: serde_json escapes them).
pub fn encode_line(snapshot_json: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(snapshot_json.len() + 1);
    line.extend_from_slice(snapshot_json);
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_reads_are_joined_and_heartbeats_skipped() {
        let mut d = LineDecoder::new(64);
        assert!(d.push(b"{\"a\"").unwrap().is_empty());
        assert_eq!(d.pending(), 4);
        let lines = d.push(b":1}\n\n\r\n{\"b\":2}\r\n{\"c\"").unwrap();
        assert_eq!(lines, vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]);
        assert_eq!(d.push(b":3}\n").unwrap(), vec![b"{\"c\":3}".to_vec()]);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn a_line_over_the_limit_is_an_error_whether_or_not_it_ends() {
        let mut d = LineDecoder::new(8);
        assert_eq!(
            d.push(b"123456789").unwrap_err(),
            FrameError::TooLong { max: 8 }
        );
        let mut d = LineDecoder::new(8);
        assert_eq!(d.push(b"12345").unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(
            d.push(b"6789\n").unwrap_err(),
            FrameError::TooLong { max: 8 }
        );
        // Exactly the limit is fine.
        let mut d = LineDecoder::new(8);
        assert_eq!(d.push(b"12345678\n").unwrap(), vec![b"12345678".to_vec()]);
    }

    #[test]
    fn acks_round_trip_and_omit_what_is_absent() {
        let ack = Ack {
            pod: "web-1".into(),
            version: Some("sha256:ab".into()),
            rejected: None,
        };
        let json = serde_json::to_string(&ack).unwrap();
        assert_eq!(json, r#"{"pod":"web-1","version":"sha256:ab"}"#);
        assert_eq!(serde_json::from_str::<Ack>(&json).unwrap(), ack);
        assert_eq!(encode_line(b"{}"), b"{}\n");
    }
}
