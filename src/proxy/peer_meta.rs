//! Peer metadata: the first bytes a weft client sends inside a `weft/1` mTLS connection,
//! naming its workload and the Service it dialled, so the server's metrics carry the
//! `source_*` labels (workload, app, version, canonical service and revision, cluster) and
//! `destination_service` (Istio's sidecars do the same with their metadata-exchange filter;
//! the certificate only proves namespace and service account).
//!
//! ```text
//! magic  EF 77 6D 01          ("\xEFwm\x01": no text or TLS protocol starts with 0xEF)
//! length u16, big-endian      at most MAX_META_BYTES
//! body   JSON {"workload": "web", "namespace": "pets", "service": "db.pets.svc.cluster.local",
//!              "app": "web", "version": "v1", "canonicalService": "web",
//!              "canonicalRevision": "v1", "cluster": "Kubernetes"}
//! ```
//!
//! The server believes none of it beyond the labels: the workload only when the control plane
//! knows a workload of that name running as the service account the client's certificate
//! proves, in that namespace ([`vouched`]), the Service only when the server's own config
//! says that Service targets the port. A stream that does not start with the magic (a client
//! from before this frame) is relayed untouched; a malformed frame is dropped and the
//! connection carries on with the labels `unknown`. `app` through `cluster` came later: a
//! client that does not send them gets them reported unknown, and an older server ignores
//! them. Every value is a bounded Kubernetes name or label value, so a peer cannot grow a
//! label beyond that.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::snapshot::{KnownPeer, WorkloadMeta, is_valid_host, spiffe_namespace};

pub const MAGIC: [u8; 4] = [0xEF, b'w', b'm', 0x01];
/// Largest body accepted: three names fit many times over.
pub const MAX_META_BYTES: usize = 1024;
const HEADER: usize = MAGIC.len() + 2;

/// Longest label value Kubernetes allows: the bound on every value from pod labels.
const MAX_LABEL_VALUE: usize = 63;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerMeta {
    pub workload: String,
    pub namespace: String,
    /// Host of the Service the client dialled; absent for a pod dialled by IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The client workload's [`WorkloadMeta`] beyond its name; empty (not sent): unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub app: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub canonical_service: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub canonical_revision: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
}

/// What the first bytes of a stream are.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A prefix of the frame: read more.
    NeedMore,
    /// Not a metadata frame: every byte belongs to the application.
    Absent,
    /// A frame of `len` bytes, valid or not (`None`), followed by application bytes.
    Frame(Option<PeerMeta>, usize),
}

impl PeerMeta {
    /// What a client says about itself: its workload's metadata (None: it has none, and
    /// names only the namespace its certificate proves, if any) and the Service it dialled.
    pub fn of(
        workload: Option<&WorkloadMeta>,
        namespace: Option<&str>,
        service: Option<String>,
    ) -> PeerMeta {
        match workload {
            Some(w) => PeerMeta {
                workload: w.name.clone(),
                namespace: w.namespace.clone(),
                service,
                app: w.app.clone(),
                version: w.version.clone(),
                canonical_service: w.canonical_service.clone(),
                canonical_revision: w.canonical_revision.clone(),
                cluster: w.cluster.clone(),
            },
            None => PeerMeta {
                workload: super::metrics::UNKNOWN.to_string(),
                namespace: namespace.unwrap_or(super::metrics::UNKNOWN).to_string(),
                service,
                ..PeerMeta::default()
            },
        }
    }

    /// The client's workload metadata as the server's metrics use it (empty: unknown).
    pub fn workload(&self) -> WorkloadMeta {
        WorkloadMeta {
            name: self.workload.clone(),
            namespace: self.namespace.clone(),
            app: self.app.clone(),
            version: self.version.clone(),
            canonical_service: self.canonical_service.clone(),
            canonical_revision: self.canonical_revision.clone(),
            cluster: self.cluster.clone(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Names are bounded by Kubernetes; a body that still does not fit is sent without
        // the later fields, then empty (a longer frame would be an older server's app bytes).
        let body = [
            serde_json::to_vec(self).unwrap_or_default(),
            serde_json::to_vec(&PeerMeta {
                workload: self.workload.clone(),
                namespace: self.namespace.clone(),
                service: self.service.clone(),
                ..PeerMeta::default()
            })
            .unwrap_or_default(),
        ]
        .into_iter()
        .find(|b| b.len() <= MAX_META_BYTES)
        .unwrap_or_default();
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn valid(&self) -> bool {
        let label = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        // A label value: empty (not sent), or at most 63 of the characters Kubernetes
        // allows in one.
        let value = |s: &str| {
            s.len() <= MAX_LABEL_VALUE
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        label(&self.workload)
            && label(&self.namespace)
            && self.namespace.len() <= 63
            && self.service.as_deref().is_none_or(is_valid_host)
            && [&self.app, &self.version, &self.canonical_revision, &self.cluster]
                .into_iter()
                .all(|v| value(v))
            // Falls back to the workload name, which may be longer than a label value.
            && (self.canonical_service.is_empty() || label(&self.canonical_service))
    }
}

/// The client workload a server reports, from the client's frame `meta` and the identity its
/// certificate proved (a SPIFFE ID): None (every `source_*` label but the namespace
/// `unknown`, as Istio reports a peer without metadata) unless the claimed namespace is the
/// proven one and, when the snapshot carries the mesh's workloads (`peers`, sorted by
/// identity and name), one of them has the claimed name and that identity. The labels are
/// then the control plane's for that workload: the client's own app, version, canonical
/// service and revision and cluster only where they equal one the control plane knows for it
/// (two during a rollout that changes the version label). Without the table (an operator from
/// before it) the namespace check is all there is.
pub fn vouched(
    peers: Option<&[KnownPeer]>,
    identity: &str,
    meta: &PeerMeta,
) -> Option<WorkloadMeta> {
    if spiffe_namespace(identity) != Some(meta.namespace.as_str()) {
        return None;
    }
    let claimed = meta.workload();
    let Some(peers) = peers else {
        return Some(claimed);
    };
    // Sorted by (identity, name): the entries of this workload are one run.
    let key = (identity, meta.workload.as_str());
    let start = peers.partition_point(|p| (p.identity.as_str(), p.workload.name.as_str()) < key);
    let run: Vec<&WorkloadMeta> = peers[start..]
        .iter()
        .take_while(|p| (p.identity.as_str(), p.workload.name.as_str()) == key)
        .map(|p| &p.workload)
        .filter(|w| w.namespace == meta.namespace)
        .collect();
    run.iter()
        .find(|w| ***w == claimed)
        .or_else(|| run.first())
        .map(|w| (*w).clone())
}

/// Parses the start of a stream. Pure and total: any bytes give an answer.
pub fn parse(buf: &[u8]) -> Parsed {
    let magic = buf.len().min(MAGIC.len());
    if buf[..magic] != MAGIC[..magic] {
        return Parsed::Absent;
    }
    if buf.len() < HEADER {
        return Parsed::NeedMore;
    }
    let len = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
    if len > MAX_META_BYTES {
        // Not a frame this proxy wrote; too long to skip safely.
        return Parsed::Absent;
    }
    let Some(body) = buf.get(HEADER..HEADER + len) else {
        return Parsed::NeedMore;
    };
    let meta = serde_json::from_slice::<PeerMeta>(body)
        .ok()
        .filter(PeerMeta::valid);
    Parsed::Frame(meta, HEADER + len)
}

/// Reads the frame from the start of `stream`, waiting at most `timeout` (a client that sent
/// nothing yet is not waited for longer). Returns the metadata and the application bytes that
/// were read with it, to be relayed first.
pub async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> (Option<PeerMeta>, Vec<u8>) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; HEADER + MAX_META_BYTES];
    loop {
        match parse(&buf) {
            Parsed::Absent => return (None, buf),
            Parsed::Frame(meta, used) => return (meta, buf.split_off(used)),
            Parsed::NeedMore => {}
        }
        // Never read past the frame's end by more than one chunk; what comes after is kept.
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return (None, buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn meta() -> PeerMeta {
        PeerMeta {
            workload: "bookbuyer".into(),
            namespace: "bookstore".into(),
            service: Some("bookstore.bookstore.svc.cluster.local".into()),
            app: "bookbuyer".into(),
            version: "v1".into(),
            canonical_service: "bookbuyer".into(),
            canonical_revision: "v1".into(),
            cluster: "Kubernetes".into(),
        }
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&(body.len() as u16).to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn the_workload_metadata_travels_whole() {
        let w = WorkloadMeta::from_labels(
            "bookbuyer",
            "bookstore",
            &[
                ("app".to_string(), "bookbuyer".to_string()),
                ("version".to_string(), "v1".to_string()),
            ]
            .into(),
            crate::snapshot::DEFAULT_CLUSTER,
        );
        let sent = PeerMeta::of(
            Some(&w),
            None,
            Some("bookstore.bookstore.svc.cluster.local".into()),
        );
        assert_eq!(sent, meta());
        let bytes = sent.encode();
        let Parsed::Frame(Some(got), _) = parse(&bytes) else {
            panic!("{bytes:?}")
        };
        assert_eq!(got.workload(), w);
        // Without workload metadata a client names only its proven namespace.
        let anonymous = PeerMeta::of(None, Some("bookstore"), None);
        assert_eq!(
            (anonymous.workload.as_str(), anonymous.namespace.as_str()),
            ("unknown", "bookstore")
        );
        assert_eq!(anonymous.workload().app, "");
    }

    #[test]
    fn a_frame_from_a_client_before_the_workload_fields_still_counts() {
        let bytes = frame(br#"{"workload":"web","namespace":"pets"}"#);
        let Parsed::Frame(Some(got), _) = parse(&bytes) else {
            panic!("{bytes:?}")
        };
        let w = got.workload();
        assert_eq!((w.name.as_str(), w.namespace.as_str()), ("web", "pets"));
        // Not sent: unknown, which the metrics report as Istio reports an unknown peer.
        assert_eq!((w.app, w.canonical_revision, w.cluster), Default::default());
    }

    #[test]
    fn workload_fields_are_bounded_label_values() {
        let long = "a".repeat(64);
        let long_name = "a".repeat(254);
        for (field, value) in [
            ("app", long.as_str()),
            ("version", "v 1"),
            ("canonicalRevision", "v1\\n"),
            ("cluster", "\\u00e9"),
            ("canonicalService", long_name.as_str()),
        ] {
            let body = format!(r#"{{"workload":"web","namespace":"pets","{field}":"{value}"}}"#);
            let bytes = frame(body.as_bytes());
            assert_eq!(parse(&bytes), Parsed::Frame(None, bytes.len()), "{body}");
        }
        // A canonical service may be as long as a workload name.
        let body = format!(
            r#"{{"workload":"web","namespace":"pets","canonicalService":"{}"}}"#,
            "a".repeat(253)
        );
        assert!(matches!(
            parse(&frame(body.as_bytes())),
            Parsed::Frame(Some(_), _)
        ));
    }

    #[test]
    fn a_frame_too_long_for_older_servers_drops_the_later_fields_first() {
        let mut big = meta();
        big.workload = "w".repeat(253);
        big.service = Some(format!(
            "{}.{}.bookstore.svc.cluster.local",
            "s".repeat(63),
            "t".repeat(63)
        ));
        big.canonical_service = "c".repeat(253);
        big.app = "a".repeat(63);
        big.version = "v".repeat(63);
        big.canonical_revision = "r".repeat(63);
        big.cluster = "k".repeat(63);
        assert!(serde_json::to_vec(&big).unwrap().len() > MAX_META_BYTES);
        let bytes = big.encode();
        assert!(bytes.len() <= HEADER + MAX_META_BYTES);
        let Parsed::Frame(Some(got), _) = parse(&bytes) else {
            panic!("{bytes:?}")
        };
        assert_eq!((got.workload, got.service), (big.workload, big.service));
        assert_eq!(got.app, "");
    }

    #[test]
    fn a_frame_round_trips_and_says_how_long_it_was() {
        let mut bytes = meta().encode();
        let len = bytes.len();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(parse(&bytes), Parsed::Frame(Some(meta()), len));
        // Every strict prefix asks for more.
        for cut in 0..len {
            assert_eq!(parse(&bytes[..cut]), Parsed::NeedMore, "cut at {cut}");
        }
    }

    #[test]
    fn application_bytes_are_never_taken_for_a_frame() {
        for first in [
            &b"GET /"[..],
            b"\x16\x03\x01",
            b"SSH-2.0",
            b"\xEFwx",
            b"\x00",
        ] {
            assert_eq!(parse(first), Parsed::Absent, "{first:?}");
        }
        let mut long = MAGIC.to_vec();
        long.extend_from_slice(&((MAX_META_BYTES + 1) as u16).to_be_bytes());
        assert_eq!(parse(&long), Parsed::Absent);
    }

    #[test]
    fn a_malformed_or_invalid_body_is_consumed_but_not_believed() {
        let frame = |body: &[u8]| {
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&(body.len() as u16).to_be_bytes());
            b.extend_from_slice(body);
            b
        };
        for body in [
            &b"{"[..],
            b"[]",
            br#"{"workload":"","namespace":"a"}"#,
            br#"{"workload":"w","namespace":"a b"}"#,
            br#"{"workload":"w","namespace":"a","service":"Not A Host"}"#,
        ] {
            let bytes = frame(body);
            assert_eq!(parse(&bytes), Parsed::Frame(None, bytes.len()), "{body:?}");
        }
    }

    fn known(identity: &str, name: &str, namespace: &str, version: &str) -> KnownPeer {
        KnownPeer {
            identity: identity.into(),
            workload: WorkloadMeta::from_labels(
                name,
                namespace,
                &[
                    ("app".to_string(), name.to_string()),
                    ("version".to_string(), version.to_string()),
                ]
                .into(),
                crate::snapshot::DEFAULT_CLUSTER,
            ),
        }
    }

    const BUYER: &str = "spiffe://cluster.local/ns/bookstore/sa/bookbuyer";

    fn table() -> Vec<KnownPeer> {
        let mut t = vec![
            known(BUYER, "bookbuyer", "bookstore", "v1"),
            known(BUYER, "bookbuyer", "bookstore", "v2"),
            known(
                "spiffe://cluster.local/ns/bookstore/sa/bookstore",
                "bookstore",
                "bookstore",
                "v1",
            ),
            known(
                "spiffe://cluster.local/ns/other/sa/bookbuyer",
                "intruder",
                "other",
                "v1",
            ),
        ];
        t.sort();
        t
    }

    #[test]
    fn a_claimed_workload_counts_only_if_it_runs_as_the_proven_service_account() {
        let t = table();
        // The workload it is, running as the service account it proves: believed.
        assert_eq!(
            vouched(Some(&t), BUYER, &meta()),
            Some(t[0].workload.clone())
        );
        // Another workload of the same namespace, not of that service account (before the
        // fix the namespace alone let this through).
        let mut other = meta();
        other.workload = "bookstore".into();
        assert_eq!(vouched(Some(&t), BUYER, &other), None);
        // A name nobody runs.
        let mut made_up = meta();
        made_up.workload = "fabricated-0001".into();
        assert_eq!(vouched(Some(&t), BUYER, &made_up), None);
        // A workload of another namespace's service account of the same name.
        let mut foreign = meta();
        foreign.workload = "intruder".into();
        assert_eq!(vouched(Some(&t), BUYER, &foreign), None);
        // The namespace must still be the proven one.
        let mut moved = meta();
        moved.namespace = "other".into();
        assert_eq!(vouched(Some(&t), BUYER, &moved), None);
        // Without the table (an older operator) the namespace check is all there is.
        assert_eq!(vouched(None, BUYER, &made_up), Some(made_up.workload()));
    }

    #[test]
    fn the_other_labels_are_the_control_planes_unless_they_match() {
        let t = table();
        // A version the control plane knows for the workload (a rollout): the client's word.
        let mut v2 = meta();
        v2.version = "v2".into();
        v2.canonical_revision = "v2".into();
        assert_eq!(
            vouched(Some(&t), BUYER, &v2).map(|w| w.version),
            Some("v2".into())
        );
        // Labels it made up: the control plane's own, not the client's.
        let mut lying = meta();
        lying.app = "payments".into();
        lying.version = "v9".into();
        lying.cluster = "elsewhere".into();
        let got = vouched(Some(&t), BUYER, &lying);
        assert_eq!(got.as_ref().map(|w| w.app.as_str()), Some("bookbuyer"));
        assert_eq!(got.as_ref().map(|w| w.version.as_str()), Some("v1"));
        assert_eq!(got.map(|w| w.cluster), Some("Kubernetes".to_string()));
        // An older client that sends the name only gets the control plane's labels too.
        let bare = PeerMeta {
            workload: "bookbuyer".into(),
            namespace: "bookstore".into(),
            ..PeerMeta::default()
        };
        assert_eq!(vouched(Some(&t), BUYER, &bare), Some(t[0].workload.clone()));
    }

    #[tokio::test]
    async fn read_returns_the_bytes_that_followed_the_frame() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let mut sent = meta().encode();
        sent.extend_from_slice(b"hello");
        client.write_all(&sent).await.unwrap();
        let (got, rest) = read(&mut server, Duration::from_secs(5)).await;
        assert_eq!(got, Some(meta()));
        assert_eq!(rest, b"hello");
    }

    #[tokio::test]
    async fn a_client_without_the_frame_loses_no_byte() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(b"\xEFw-not-meta").await.unwrap();
        let (got, rest) = read(&mut server, Duration::from_secs(5)).await;
        assert_eq!(got, None);
        assert_eq!(rest, b"\xEFw-not-meta");
        // A silent one is not waited for beyond the timeout.
        let (_quiet, mut server) = tokio::io::duplex(64);
        let (got, rest) = read(&mut server, Duration::from_millis(50)).await;
        assert_eq!((got, rest), (None, Vec::new()));
    }
}
