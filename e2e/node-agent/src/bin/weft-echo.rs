//! weft-echo: the local cluster's test HTTP app. Answers every request with who served it, so
//! tests can tell pods apart through a Service; `/healthz` follows a readiness switch that
//! `/set-ready?false` and `/set-ready?true` flip (to test endpoint removal).
//! Env: PORT (default 8080), MESSAGE (prefix of the answer), POD_NAME, FAIL_EVERY (N: every
//! Nth request other than `/healthz` is answered `503 failed`, to test retries), DELAY_MS (every
//! answer other than `/healthz` waits this long first, to hold requests in flight).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let message = std::env::var("MESSAGE").unwrap_or_else(|_| "hello".into());
    let who = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default();
    let ready = Arc::new(AtomicBool::new(true));
    let fail_every: u64 = std::env::var("FAIL_EVERY")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let delay = std::time::Duration::from_millis(
        std::env::var("DELAY_MS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    );
    let listener = TcpListener::bind(("0.0.0.0", port)).await?;
    eprintln!("weft-echo listening on :{port}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = term.recv() => { eprintln!("weft-echo: SIGTERM, exiting"); return Ok(()); }
        };
        let (message, who, ready) = (message.clone(), who.clone(), ready.clone());
        let served = served.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut reader = BufReader::new(read);
            loop {
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                    return;
                }
                let mut content_length = 0usize;
                let mut close = false;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        content_length = v.trim().parse().unwrap_or(0);
                    }
                    if lower.starts_with("connection:") && lower.contains("close") {
                        close = true;
                    }
                    if line == "\r\n" || line == "\n" {
                        break;
                    }
                }
                let mut body = vec![0u8; content_length.min(1 << 20)];
                if reader.read_exact(&mut body).await.is_err() {
                    return;
                }
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .to_string();
                if !delay.is_zero() && path != "/healthz" {
                    tokio::time::sleep(delay).await;
                }
                let (code, text) = match path.as_str() {
                    "/healthz" if ready.load(Ordering::Relaxed) => (200, "ok\n".to_string()),
                    "/healthz" => (503, "not ready\n".to_string()),
                    "/set-ready?false" => {
                        ready.store(false, Ordering::Relaxed);
                        (200, "ready=false\n".to_string())
                    }
                    "/set-ready?true" => {
                        ready.store(true, Ordering::Relaxed);
                        (200, "ready=true\n".to_string())
                    }
                    _ if fail_every > 0
                        && served
                            .fetch_add(1, Ordering::Relaxed)
                            .is_multiple_of(fail_every) =>
                    {
                        (503, "failed\n".to_string())
                    }
                    _ => (
                        200,
                        format!(
                            "{message} from {who} path={path} peer={peer} bytes={}\n",
                            body.len()
                        ),
                    ),
                };
                let response = format!(
                    "HTTP/1.1 {code} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{text}",
                    if code == 200 {
                        "OK"
                    } else {
                        "Service Unavailable"
                    },
                    text.len()
                );
                if write.write_all(response.as_bytes()).await.is_err() || close {
                    return;
                }
            }
        });
    }
}
