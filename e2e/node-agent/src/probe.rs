//! Container probes, sent as the kubelet sends them: network probes from the node to the pod
//! IP (so traffic capture inside the pod sees them), exec probes inside the container.

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A named port resolves through the container's ports, as the kubelet does.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

pub enum Outcome {
    Success,
    Failure(String),
}

/// One probe attempt. `exec` runs a command inside the container and returns its exit code.
pub async fn check<F, Fut>(
    probe: &Probe,
    container: &Container,
    pod_ip: Ipv4Addr,
    exec: F,
) -> Outcome
where
    F: FnOnce(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<i32>>,
{
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    let attempt = async move {
        if let Some(http) = &probe.http_get {
            let port = resolve_port(&http.port, container).ok_or("probe port does not resolve")?;
            let host = http.host.clone().unwrap_or_else(|| pod_ip.to_string());
            let path = http.path.clone().unwrap_or_else(|| "/".into());
            let mut stream = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| e.to_string())?;
            let mut request = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.37\r\nAccept: */*\r\nConnection: close\r\n"
            );
            for h in http.http_headers.iter().flatten() {
                request.push_str(&format!("{}: {}\r\n", h.name, h.value));
            }
            request.push_str("\r\n");
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut head = vec![0u8; 64];
            let n = stream.read(&mut head).await.map_err(|e| e.to_string())?;
            let line = String::from_utf8_lossy(&head[..n]).to_string();
            let code: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or("malformed HTTP response")?;
            return if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            };
        }
        if let Some(tcp) = &probe.tcp_socket {
            let port = resolve_port(&tcp.port, container).ok_or("probe port does not resolve")?;
            let host = tcp.host.clone().unwrap_or_else(|| pod_ip.to_string());
            TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
            return Ok(());
        }
        if let Some(grpc) = &probe.grpc {
            // The gRPC health protocol needs HTTP/2; the node agent checks that the port accepts
            // connections and speaks HTTP/2 (answers the connection preface with a SETTINGS frame).
            let port = u16::try_from(grpc.port).map_err(|_| "bad port")?;
            let mut stream = TcpStream::connect((pod_ip, port))
                .await
                .map_err(|e| e.to_string())?;
            stream
                .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                .await
                .map_err(|e| e.to_string())?;
            let mut frame = [0u8; 9];
            stream
                .read_exact(&mut frame)
                .await
                .map_err(|e| e.to_string())?;
            return if frame[3] == 0x4 {
                Ok(())
            } else {
                Err("not an HTTP/2 server".into())
            };
        }
        if let Some(exec_probe) = &probe.exec {
            let code = exec(exec_probe.command.clone().unwrap_or_default())
                .await
                .map_err(|e| e.to_string())?;
            return if code == 0 {
                Ok(())
            } else {
                Err(format!("command exited with {code}"))
            };
        }
        Err("probe has no handler".to_string())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(())) => Outcome::Success,
        Ok(Err(e)) => Outcome::Failure(e),
        Err(_) => Outcome::Failure(format!("probe timed out after {}s", timeout.as_secs())),
    }
}
