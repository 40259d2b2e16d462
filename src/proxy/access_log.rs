//! Access logs: one line per HTTP request the HTTP layer terminates and per TCP connection the
//! L4 relay carries, in Istio's default text format or with its default JSON keys (formatting
//! is pure and golden-tested), written to stdout by one dedicated thread so the data path
//! never waits on the terminal or the container runtime's log pipe.

use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::authz::{Policy, Reason};
use crate::snapshot::AccessLogFormat;

/// Lines queued for the writer thread; beyond this a line is dropped (and counted) rather
/// than making a request wait for stdout.
pub const QUEUE_LINES: usize = 8192;

/// What one access log line says. Borrowed: built at the call site and formatted at once.
/// `None` is a field weft does not know: `-` in text, `null` in JSON, never a guess.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub start: SystemTime,
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
    /// `HTTP/1.1`, `HTTP/2`; None for a TCP connection.
    pub protocol: Option<&'a str>,
    /// 0 when there is no HTTP response (a TCP connection), as Envoy prints it.
    pub response_code: u16,
    /// Envoy's response flags (`UF`, `UC`, …); `-` when none.
    pub response_flags: &'a str,
    pub response_code_details: Option<&'a str>,
    pub connection_termination_details: Option<&'a str>,
    pub upstream_transport_failure_reason: Option<&'a str>,
    /// Request body bytes (HTTP), or bytes from the downstream (TCP).
    pub bytes_received: u64,
    /// Response body bytes (HTTP), or bytes to the downstream (TCP).
    pub bytes_sent: u64,
    pub duration: Duration,
    pub x_forwarded_for: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub authority: Option<&'a str>,
    pub upstream_host: Option<SocketAddr>,
    /// Istio's cluster name: `inbound|<port>||`, `outbound|<port>||<host>`, `PassthroughCluster`.
    pub upstream_cluster: Option<&'a str>,
    pub downstream_local_address: Option<SocketAddr>,
    pub downstream_remote_address: Option<SocketAddr>,
    pub requested_server_name: Option<&'a str>,
    /// SPIFFE IDs (`spiffe://…`) of the two ends, where mTLS proved them.
    pub source_principal: Option<&'a str>,
    pub destination_principal: Option<&'a str>,
}

impl<'a> Entry<'a> {
    /// An entry with nothing known but its start; callers fill in what they know.
    pub fn new(start: SystemTime) -> Self {
        Entry {
            start,
            method: None,
            path: None,
            protocol: None,
            response_code: 0,
            response_flags: "-",
            response_code_details: None,
            connection_termination_details: None,
            upstream_transport_failure_reason: None,
            bytes_received: 0,
            bytes_sent: 0,
            duration: Duration::ZERO,
            x_forwarded_for: None,
            user_agent: None,
            request_id: None,
            authority: None,
            upstream_host: None,
            upstream_cluster: None,
            downstream_local_address: None,
            downstream_remote_address: None,
            requested_server_name: None,
            source_principal: None,
            destination_principal: None,
        }
    }

    /// One line, newline-terminated.
    pub fn format(&self, format: AccessLogFormat) -> String {
        match format {
            AccessLogFormat::Json => self.json(),
            AccessLogFormat::Text => self.text(),
        }
    }

    /// Istio's default text format (pilot's `EnvoyTextLogFormat`):
    ///
    /// ```text
    /// [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE%
    /// %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS%
    /// "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
    /// %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
    /// "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW%
    /// %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS%
    /// %REQUESTED_SERVER_NAME% %ROUTE_NAME%
    /// ```
    ///
    /// followed by weft's two fields, the source and destination principals, so a parser
    /// that reads Istio's fields by position still works.
    pub fn text(&self) -> String {
        let mut s = String::with_capacity(384);
        s.push('[');
        push_time(&mut s, self.start);
        s.push_str("] \"");
        push_text(&mut s, self.method);
        s.push(' ');
        push_text(&mut s, self.path);
        s.push(' ');
        push_text(&mut s, self.protocol);
        let _ = write!(s, "\" {} ", self.response_code);
        push_text(&mut s, Some(self.response_flags));
        s.push(' ');
        push_text(&mut s, self.response_code_details);
        s.push(' ');
        push_text(&mut s, self.connection_termination_details);
        s.push_str(" \"");
        push_text(&mut s, self.upstream_transport_failure_reason);
        let _ = write!(
            s,
            "\" {} {} {} - \"",
            self.bytes_received,
            self.bytes_sent,
            self.duration.as_millis()
        );
        push_text(&mut s, self.x_forwarded_for);
        s.push_str("\" \"");
        push_text(&mut s, self.user_agent);
        s.push_str("\" \"");
        push_text(&mut s, self.request_id);
        s.push_str("\" \"");
        push_text(&mut s, self.authority);
        s.push_str("\" \"");
        push_addr(&mut s, self.upstream_host);
        s.push_str("\" ");
        push_text(&mut s, self.upstream_cluster);
        // The upstream local address: weft does not read it back from its sockets.
        s.push_str(" - ");
        push_addr(&mut s, self.downstream_local_address);
        s.push(' ');
        push_addr(&mut s, self.downstream_remote_address);
        s.push(' ');
        push_text(&mut s, self.requested_server_name);
        // No routes yet: the route name is unknown.
        s.push_str(" - ");
        push_text(&mut s, self.source_principal);
        s.push(' ');
        push_text(&mut s, self.destination_principal);
        s.push('\n');
        s
    }

    /// Istio's default JSON keys (`EnvoyJSONLogFormatIstio`), in its order, plus
    /// `source_principal` and `destination_principal`. Numbers are JSON numbers, unknown
    /// fields `null`, as Envoy writes them.
    pub fn json(&self) -> String {
        #[derive(Serialize)]
        struct Json<'a> {
            start_time: &'a str,
            route_name: Option<&'a str>,
            method: Option<&'a str>,
            path: Option<&'a str>,
            protocol: Option<&'a str>,
            response_code: u16,
            response_flags: &'a str,
            response_code_details: Option<&'a str>,
            connection_termination_details: Option<&'a str>,
            upstream_transport_failure_reason: Option<&'a str>,
            bytes_received: u64,
            bytes_sent: u64,
            duration: u64,
            upstream_service_time: Option<u64>,
            x_forwarded_for: Option<&'a str>,
            user_agent: Option<&'a str>,
            request_id: Option<&'a str>,
            authority: Option<&'a str>,
            upstream_host: Option<SocketAddr>,
            upstream_cluster: Option<&'a str>,
            upstream_local_address: Option<SocketAddr>,
            downstream_local_address: Option<SocketAddr>,
            downstream_remote_address: Option<SocketAddr>,
            requested_server_name: Option<&'a str>,
            source_principal: Option<&'a str>,
            destination_principal: Option<&'a str>,
        }
        let mut start = String::with_capacity(24);
        push_time(&mut start, self.start);
        let line = Json {
            start_time: &start,
            route_name: None,
            method: self.method,
            path: self.path,
            protocol: self.protocol,
            response_code: self.response_code,
            response_flags: self.response_flags,
            response_code_details: self.response_code_details,
            connection_termination_details: self.connection_termination_details,
            upstream_transport_failure_reason: self.upstream_transport_failure_reason,
            bytes_received: self.bytes_received,
            bytes_sent: self.bytes_sent,
            duration: self.duration.as_millis() as u64,
            upstream_service_time: None,
            x_forwarded_for: self.x_forwarded_for,
            user_agent: self.user_agent,
            request_id: self.request_id,
            authority: self.authority,
            upstream_host: self.upstream_host,
            upstream_cluster: self.upstream_cluster,
            upstream_local_address: None,
            downstream_local_address: self.downstream_local_address,
            downstream_remote_address: self.downstream_remote_address,
            requested_server_name: self.requested_server_name,
            source_principal: self.source_principal,
            destination_principal: self.destination_principal,
        };
        let mut s = serde_json::to_string(&line).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// Envoy's `response_code_details` / `connection_termination_details` for an authorization
/// denial: `rbac_access_denied_matched_policy[<policy>]`, the DENY policy and rule that
/// matched (`ns[<ns>]-policy[<name>]-rule[<i>]`, Envoy's naming of Istio policies), or
/// `none` when ALLOW policies exist and none matched. None when the reason is not a denial.
pub fn denial_details(policies: &[Policy], reason: Reason) -> Option<String> {
    match reason {
        Reason::Denied(r) => {
            let name = policies
                .get(r.policy)
                .map(|p| p.name.as_str())
                .unwrap_or("?");
            let policy = match name.split_once('/') {
                Some((ns, name)) => format!("ns[{ns}]-policy[{name}]"),
                None => format!("policy[{name}]"),
            };
            Some(format!(
                "rbac_access_denied_matched_policy[{policy}-rule[{}]]",
                r.rule
            ))
        }
        Reason::NoAllowMatched => Some("rbac_access_denied_matched_policy[none]".to_string()),
        Reason::Allowed(_) | Reason::NoAllowPolicy => None,
    }
}

/// A metrics label value as a log field: `unknown` is not known.
pub fn known(label: &str) -> Option<&str> {
    (label != crate::proxy::metrics::UNKNOWN && !label.is_empty()).then_some(label)
}

/// A value in a text line: `-` when unknown or empty; quotes, backslashes and control
/// characters escaped so one entry stays one parseable line.
fn push_text(s: &mut String, v: Option<&str>) {
    match v {
        None | Some("") => s.push('-'),
        Some(v) => {
            for c in v.chars() {
                match c {
                    '"' => s.push_str("\\\""),
                    '\\' => s.push_str("\\\\"),
                    c if c.is_control() => {
                        let _ = write!(s, "\\x{:02x}", c as u32);
                    }
                    c => s.push(c),
                }
            }
        }
    }
}

fn push_addr(s: &mut String, a: Option<SocketAddr>) {
    match a {
        Some(a) => {
            let _ = write!(s, "{a}");
        }
        None => s.push('-'),
    }
}

/// Envoy's `%START_TIME%` default: UTC, milliseconds, `2026-12-06T01:12:31.123Z`.
fn push_time(s: &mut String, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let _ = write!(
        s,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    );
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A random UUID v4 (RFC 9562), the `x-request-id` Envoy generates for a request without
/// one. From the process's TLS random source (the OS); None if it fails.
pub fn request_id() -> Option<String> {
    let text = request_id_text()?;
    Some(String::from_utf8_lossy(&text).into_owned())
}

/// Random bytes drawn from the OS at once, [`request_id_text`]'s reserve: a `getrandom` per
/// request was a syscall on every request of the proxy's busiest path.
const RANDOM_RESERVE: usize = 16 * 64;

/// [`request_id`] as its 36 ASCII bytes, without an allocation. The bytes come from the same
/// source (rustls' CSPRNG, the OS), fetched 64 ids at a time per thread.
pub fn request_id_text() -> Option<[u8; 36]> {
    use std::cell::RefCell;
    static RANDOM: OnceLock<&'static dyn rustls::crypto::SecureRandom> = OnceLock::new();
    thread_local! {
        static RESERVE: RefCell<([u8; RANDOM_RESERVE], usize)> =
            const { RefCell::new(([0; RANDOM_RESERVE], RANDOM_RESERVE)) };
    }
    let random = RANDOM.get_or_init(|| rustls::crypto::ring::default_provider().secure_random);
    let mut b = [0u8; 16];
    RESERVE.with(|reserve| {
        let (bytes, used) = &mut *reserve.borrow_mut();
        if *used + 16 > RANDOM_RESERVE {
            random.fill(bytes).ok()?;
            *used = 0;
        }
        b.copy_from_slice(&bytes[*used..*used + 16]);
        // Each id's bytes are handed out once.
        bytes[*used..*used + 16].fill(0);
        *used += 16;
        Some(())
    })?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut at = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[at] = b'-';
            at += 1;
        }
        out[at] = HEX[usize::from(byte >> 4)];
        out[at + 1] = HEX[usize::from(byte & 0x0f)];
        at += 2;
    }
    Some(out)
}

/// Writes lines to a sink (stdout) from one thread, started at the first line: a full queue
/// drops the line (counted, warned about) instead of blocking the request that made it.
pub struct Writer {
    sink: Mutex<Option<Box<dyn Write + Send>>>,
    tx: OnceLock<Option<SyncSender<String>>>,
    dropped: AtomicU64,
}

impl Writer {
    pub fn stdout() -> Self {
        Self::to(Box::new(std::io::stdout()))
    }

    pub fn to(sink: Box<dyn Write + Send>) -> Self {
        Writer {
            sink: Mutex::new(Some(sink)),
            tx: OnceLock::new(),
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues one line (newline-terminated).
    pub fn write(&self, line: String) {
        let tx = self.tx.get_or_init(|| {
            let sink = self.sink.lock().ok()?.take()?;
            let (tx, rx) = sync_channel(QUEUE_LINES);
            std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || drain(rx, sink))
                .ok()?;
            Some(tx)
        });
        let sent = match tx {
            Some(tx) => match tx.try_send(line) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            },
            None => false,
        };
        if !sent {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "access log lines dropped: stdout is not keeping up"
                );
            }
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The writer thread: buffered writes, flushed whenever the queue is empty, so a line is on
/// stdout as soon as nothing else is waiting.
fn drain(rx: Receiver<String>, sink: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, sink);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(line.as_bytes());
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(line.as_bytes());
        }
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::RuleRef;

    fn at() -> SystemTime {
        // 2026-12-06T01:12:31.123Z
        UNIX_EPOCH + Duration::from_millis(1_796_519_551_123)
    }

    fn http_entry() -> Entry<'static> {
        Entry {
            method: Some("POST"),
            path: Some("/v1/charges?id=7"),
            protocol: Some("HTTP/1.1"),
            response_code: 200,
            bytes_received: 12,
            bytes_sent: 34,
            duration: Duration::from_millis(5),
            user_agent: Some("curl/8.5.0"),
            request_id: Some("7f0e7c3a-1b2c-4d5e-8f90-a1b2c3d4e5f6"),
            authority: Some("api.demo:80"),
            upstream_host: Some("198.18.0.2:8082".parse().unwrap()),
            upstream_cluster: Some("inbound|8082||"),
            downstream_local_address: Some("198.18.0.2:8082".parse().unwrap()),
            downstream_remote_address: Some("198.18.0.1:40000".parse().unwrap()),
            source_principal: Some("spiffe://cluster.local/ns/demo/sa/client"),
            destination_principal: Some("spiffe://cluster.local/ns/demo/sa/server"),
            ..Entry::new(at())
        }
    }

    #[test]
    fn an_http_request_in_istios_text_format() {
        assert_eq!(
            http_entry().format(AccessLogFormat::Text),
            "[2026-12-06T01:12:31.123Z] \"POST /v1/charges?id=7 HTTP/1.1\" 200 - - - \"-\" 12 34 5 - \
             \"-\" \"curl/8.5.0\" \"7f0e7c3a-1b2c-4d5e-8f90-a1b2c3d4e5f6\" \"api.demo:80\" \
             \"198.18.0.2:8082\" inbound|8082|| - 198.18.0.2:8082 198.18.0.1:40000 - - \
             spiffe://cluster.local/ns/demo/sa/client spiffe://cluster.local/ns/demo/sa/server\n"
        );
    }

    #[test]
    fn an_http_request_with_istios_json_keys_and_null_for_the_unknown() {
        let line = http_entry().format(AccessLogFormat::Json);
        assert!(line.ends_with("}\n") && !line[..line.len() - 1].contains('\n'));
        assert_eq!(
            line,
            concat!(
                r#"{"start_time":"2026-12-06T01:12:31.123Z","route_name":null,"method":"POST","#,
                r#""path":"/v1/charges?id=7","protocol":"HTTP/1.1","response_code":200,"#,
                r#""response_flags":"-","response_code_details":null,"#,
                r#""connection_termination_details":null,"upstream_transport_failure_reason":null,"#,
                r#""bytes_received":12,"bytes_sent":34,"duration":5,"upstream_service_time":null,"#,
                r#""x_forwarded_for":null,"user_agent":"curl/8.5.0","#,
                r#""request_id":"7f0e7c3a-1b2c-4d5e-8f90-a1b2c3d4e5f6","authority":"api.demo:80","#,
                r#""upstream_host":"198.18.0.2:8082","upstream_cluster":"inbound|8082||","#,
                r#""upstream_local_address":null,"downstream_local_address":"198.18.0.2:8082","#,
                r#""downstream_remote_address":"198.18.0.1:40000","requested_server_name":null,"#,
                r#""source_principal":"spiffe://cluster.local/ns/demo/sa/client","#,
                r#""destination_principal":"spiffe://cluster.local/ns/demo/sa/server"}"#,
                "\n"
            )
        );
    }

    #[test]
    fn a_tcp_connection_knows_no_http_fields() {
        let e = Entry {
            bytes_received: 3,
            bytes_sent: 5,
            duration: Duration::from_millis(1500),
            upstream_host: Some("198.18.0.7:5432".parse().unwrap()),
            upstream_cluster: Some("outbound|5432||db.pets.svc.cluster.local"),
            downstream_remote_address: Some("198.18.0.1:40000".parse().unwrap()),
            ..Entry::new(UNIX_EPOCH)
        };
        assert_eq!(
            e.text(),
            "[1970-01-01T00:00:00.000Z] \"- - -\" 0 - - - \"-\" 3 5 1500 - \"-\" \"-\" \"-\" \"-\" \
             \"198.18.0.7:5432\" outbound|5432||db.pets.svc.cluster.local - - 198.18.0.1:40000 - - - -\n"
        );
        let v: serde_json::Value = serde_json::from_str(&e.json()).unwrap();
        assert_eq!(v["method"], serde_json::Value::Null);
        assert_eq!(v["protocol"], serde_json::Value::Null);
        assert_eq!(v["response_code"], 0);
        assert_eq!(v["duration"], 1500);
        assert_eq!(v["source_principal"], serde_json::Value::Null);
    }

    fn policy(name: &str, action: &str) -> Policy {
        serde_json::from_value(serde_json::json!({"name": name, "action": action, "rules": []}))
            .unwrap()
    }

    #[test]
    fn a_denied_request_names_the_policy_that_denied_it() {
        let policies = [
            policy("payments/allow-charges", "ALLOW"),
            policy("payments/deny-admin", "DENY"),
        ];
        let denied = denial_details(&policies, Reason::Denied(RuleRef { policy: 1, rule: 0 }));
        assert_eq!(
            denied.as_deref(),
            Some("rbac_access_denied_matched_policy[ns[payments]-policy[deny-admin]-rule[0]]")
        );
        assert_eq!(
            denial_details(&policies, Reason::NoAllowMatched).as_deref(),
            Some("rbac_access_denied_matched_policy[none]")
        );
        assert_eq!(
            denial_details(&policies, Reason::Allowed(RuleRef { policy: 0, rule: 0 })),
            None
        );
        let e = Entry {
            method: Some("GET"),
            path: Some("/admin"),
            protocol: Some("HTTP/2"),
            response_code: 403,
            response_code_details: denied.as_deref(),
            ..Entry::new(at())
        };
        let v: serde_json::Value = serde_json::from_str(&e.json()).unwrap();
        assert_eq!(v["response_code"], 403);
        assert_eq!(
            v["response_code_details"],
            "rbac_access_denied_matched_policy[ns[payments]-policy[deny-admin]-rule[0]]"
        );
        assert!(e.text().contains(
            "\"GET /admin HTTP/2\" 403 - rbac_access_denied_matched_policy[ns[payments]-policy[deny-admin]-rule[0]] -"
        ));
    }

    #[test]
    fn text_values_cannot_break_the_line() {
        let e = Entry {
            user_agent: Some("evil\" \"x\n[fake]\\"),
            authority: Some(""),
            ..Entry::new(UNIX_EPOCH)
        };
        let line = e.text();
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.contains(r#""evil\" \"x\x0a[fake]\\""#), "{line}");
        assert!(line.contains(r#""-" "-" "-""#), "{line}");
    }

    #[test]
    fn start_times_are_utc_with_milliseconds() {
        for (ms, want) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_796_519_551_123, "2026-12-06T01:12:31.123Z"),
            (4_102_444_799_999, "2099-12-31T23:59:59.999Z"),
        ] {
            let mut s = String::new();
            push_time(&mut s, UNIX_EPOCH + Duration::from_millis(ms));
            assert_eq!(s, want);
        }
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let a = request_id().unwrap();
        let b = request_id().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        let groups: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
        // Across several refills of the per-thread reserve: every id new and well-formed.
        let ids: std::collections::HashSet<String> =
            (0..3 * 64 + 5).map(|_| request_id().unwrap()).collect();
        assert_eq!(ids.len(), 3 * 64 + 5);
        for id in &ids {
            assert!(
                id.bytes()
                    .all(|c| c == b'-' || c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
                "{id}"
            );
            assert_eq!(&id[14..15], "4");
        }
    }

    #[test]
    fn the_writer_writes_each_line_whole() {
        #[derive(Clone, Default)]
        struct Shared(std::sync::Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Shared::default();
        let w = Writer::to(Box::new(out.clone()));
        for i in 0..100 {
            w.write(format!("line {i}\n"));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
            if text.lines().count() == 100 {
                assert!(
                    text.lines()
                        .enumerate()
                        .all(|(i, l)| l == format!("line {i}"))
                );
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{text}");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(w.dropped(), 0);
    }
}
