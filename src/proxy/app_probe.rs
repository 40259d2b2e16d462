//! App probes rewritten by the injector (SPEC §5): the kubelet calls
//! `:15020/app-health/<container>/<livez|readyz|startupz>` and the proxy runs the original
//! probe (from `WEFT_APP_PROBERS`) against the app from inside the pod, from 127.0.0.6 so
//! iptables does not capture it, which keeps probes working under STRICT mTLS.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::net::connect;
use crate::contract::INBOUND_PASSTHROUGH_SOURCE;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Enough of an HTTP response to read its status line.
const STATUS_LINE_MAX: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProbersError {
    #[error(
        "WEFT_APP_PROBERS is not the JSON the injector writes ({{\"<container>\": {{\"readyz\": <probe>}}}}): {0}"
    )]
    Json(#[from] serde_json::Error),
}

impl ProbersError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            ProbersError::Json(_) => "json",
        }
    }
}

/// The subset of a Kubernetes `Probe` the proxy can run. Named ports must have been resolved
/// to numbers by the injector.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    #[serde(default)]
    pub http_get: Option<HttpGet>,
    #[serde(default)]
    pub tcp_socket: Option<PortOnly>,
    #[serde(default)]
    pub grpc: Option<PortOnly>,
    #[serde(default)]
    pub timeout_seconds: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HttpGet {
    #[serde(default)]
    pub path: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub http_headers: Vec<Header>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct PortOnly {
    pub port: u16,
}

/// Container name → probe kind (`livez`, `readyz`, `startupz`) → original probe, or why it
/// could not be read (one odd probe fails only itself, not the proxy).
#[derive(Debug, Default)]
pub struct AppProbers(HashMap<String, HashMap<String, Result<Probe, String>>>);

impl AppProbers {
    /// Fails only when the whole value is not a map of maps.
    pub fn from_json(json: &str) -> Result<Self, ProbersError> {
        if json.trim().is_empty() {
            return Ok(AppProbers::default());
        }
        let raw: HashMap<String, HashMap<String, serde_json::Value>> = serde_json::from_str(json)?;
        Ok(AppProbers(
            raw.into_iter()
                .map(|(container, kinds)| {
                    let kinds = kinds
                        .into_iter()
                        .map(|(kind, v)| {
                            let probe = serde_json::from_value::<Probe>(v)
                                .map_err(|e| format!("probe not understood: {e}"));
                            (kind, probe)
                        })
                        .collect();
                    (container, kinds)
                })
                .collect(),
        ))
    }

    /// Runs the probe; `None` when there is no such probe.
    pub async fn probe(
        &self,
        container: &str,
        kind: &str,
        pod_ip: Option<IpAddr>,
    ) -> Option<Result<(), String>> {
        let probe = match self.0.get(container)?.get(kind)? {
            Ok(p) => p,
            Err(why) => return Some(Err(why.clone())),
        };
        let ip = pod_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let timeout = probe
            .timeout_seconds
            .map(|s| Duration::from_secs(u64::from(s.max(1))))
            .unwrap_or(DEFAULT_TIMEOUT);
        Some(
            tokio::time::timeout(timeout, run(probe, ip, timeout))
                .await
                .unwrap_or_else(|_| Err(format!("probe timed out after {timeout:?}"))),
        )
    }
}

async fn run(probe: &Probe, ip: IpAddr, timeout: Duration) -> Result<(), String> {
    let source = if ip.is_ipv4() {
        INBOUND_PASSTHROUGH_SOURCE.parse().ok()
    } else {
        None
    };
    let dial = |port: u16| connect(SocketAddr::new(ip, port), source, timeout);
    if let Some(http) = &probe.http_get {
        let mut stream = dial(http.port).await.map_err(|e| e.to_string())?;
        if http
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"))
        {
            // The kubelet does not verify HTTPS probe certificates either; a TCP connect is
            // the part we check until TLS probing lands.
            return Ok(());
        }
        let path = http.path.as_deref().unwrap_or("/");
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {ip}:{}\r\nUser-Agent: kube-probe/weft\r\nConnection: close\r\n",
            http.port
        );
        for h in &http.http_headers {
            if !h.name.contains(['\r', '\n']) && !h.value.contains(['\r', '\n']) {
                req.push_str(&format!("{}: {}\r\n", h.name, h.value));
            }
        }
        req.push_str("\r\n");
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; STATUS_LINE_MAX];
        let mut n = 0;
        while n < buf.len() && !buf[..n].contains(&b'\n') {
            let read = stream
                .read(&mut buf[n..])
                .await
                .map_err(|e| e.to_string())?;
            if read == 0 {
                break;
            }
            n += read;
        }
        return match status_code(&buf[..n]) {
            Some(code) if (200..400).contains(&code) => Ok(()),
            Some(code) => Err(format!("app answered HTTP {code}")),
            None => Err("app did not answer HTTP".into()),
        };
    }
    // tcpSocket, and gRPC until the health protocol is spoken: the port must accept.
    if let Some(p) = probe.tcp_socket.as_ref().or(probe.grpc.as_ref()) {
        return dial(p.port).await.map(|_| ()).map_err(|e| e.to_string());
    }
    Err("probe has no httpGet, tcpSocket or grpc action".into())
}

fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probers_parse_the_injector_json() {
        let p = AppProbers::from_json(
            r#"{"web": {"readyz": {"httpGet": {"path": "/ready", "port": 8080}, "timeoutSeconds": 3},
                        "livez": {"tcpSocket": {"port": 8080}}}}"#,
        )
        .unwrap();
        let readyz = p.0["web"]["readyz"].as_ref().unwrap();
        assert_eq!(readyz.http_get.as_ref().unwrap().port, 8080);
        assert!(AppProbers::from_json("").unwrap().0.is_empty());
        assert!(AppProbers::from_json("{\"web\": 1}").is_err());
    }

    #[tokio::test]
    async fn a_probe_the_proxy_cannot_read_fails_alone() {
        let p =
            AppProbers::from_json(r#"{"web": {"readyz": {"httpGet": {"port": "http"}}}}"#).unwrap();
        let result = p.probe("web", "readyz", None).await;
        assert!(matches!(result, Some(Err(why)) if why.contains("not understood")));
    }

    #[test]
    fn status_lines_are_read_strictly() {
        assert_eq!(status_code(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status_code(b"SSH-2.0-x\r\n"), None);
        assert_eq!(status_code(b""), None);
    }

    #[tokio::test]
    async fn an_http_probe_reports_the_app_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let p = AppProbers::from_json(&format!(
            r#"{{"web": {{"readyz": {{"httpGet": {{"path": "/", "port": {port}}}}}}}}}"#
        ))
        .unwrap();
        let local = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(p.probe("web", "readyz", local).await, Some(Ok(())));
        assert!(matches!(
            p.probe("web", "readyz", local).await,
            Some(Err(_))
        ));
        assert_eq!(p.probe("web", "livez", local).await, None);
    }
}
