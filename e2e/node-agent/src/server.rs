//! The kubelet API that `kubectl logs` and `kubectl exec` reach through the API server:
//! HTTPS with client certificates of the cluster CA, `/containerLogs/...` and `/exec/...`
//! over WebSockets (`v5.channel.k8s.io`; the node declares ExtendWebSocketsToKubelet so the
//! API server proxies the stream here unchanged).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::config::Config;
use crate::node::PodTable;
use crate::pod::{self, NodeContext, PodRuntime};

#[derive(Clone)]
struct App {
    ctx: Arc<NodeContext>,
    pods: PodTable,
}

pub async fn serve(config: Config, ctx: Arc<NodeContext>, pods: PodTable) {
    if let Err(e) = serve_inner(config, ctx, pods).await {
        tracing::error!("kubelet API: {e:#}");
    }
}

async fn serve_inner(config: Config, ctx: Arc<NodeContext>, pods: PodTable) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&config.serving_cert)?.collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&config.serving_key)?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&config.client_ca)? {
        roots.add(ca?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build()?;
    let mut tls = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/containerLogs/{ns}/{pod}/{container}", get(logs))
        .route("/exec/{ns}/{pod}/{container}", get(exec).post(exec))
        .with_state(App { ctx, pods });
    let listener = tokio::net::TcpListener::bind((config.node_ip, config.port))
        .await
        .context("binding the kubelet port")?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = TowerToHyperService::new(app);
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await;
        });
    }
}

fn find(app: &App, ns: &str, name: &str) -> Option<Arc<PodRuntime>> {
    let table = app.pods.lock().ok()?;
    table
        .values()
        .map(|(rt, _)| rt.clone())
        .find(|rt| rt.namespace == ns && rt.name == name)
}

fn query_pairs(raw: &Option<String>) -> Vec<(String, String)> {
    raw.as_deref()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-decoding of a query component (`+` is a space).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn not_found(what: String) -> Response {
    (StatusCode::NOT_FOUND, what).into_response()
}

async fn logs(
    State(app): State<App>,
    Path((ns, name, container)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    let Some(rt) = find(&app, &ns, &name) else {
        return not_found(format!("pod {ns}/{name} is not on this node"));
    };
    let q = query_pairs(&q);
    let flag = |k: &str| {
        q.iter()
            .any(|(key, v)| key == k && (v == "true" || v == "1"))
    };
    let value = |k: &str| {
        q.iter()
            .find(|(key, _)| key == k)
            .and_then(|(_, v)| v.parse::<i64>().ok())
    };
    let Some(restart) = rt
        .state
        .lock()
        .ok()
        .and_then(|s| s.containers.get(&container).map(|c| c.restart_count))
    else {
        return not_found(format!("container {container} is not in pod {ns}/{name}"));
    };
    let restart = if flag("previous") {
        restart - 1
    } else {
        restart
    };
    let path = rt.log_path(&container, restart);
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        return (
            StatusCode::BAD_REQUEST,
            format!("container {container:?} in pod {name:?} has no logs yet (waiting to start)"),
        )
            .into_response();
    };
    let mut start = 0u64;
    if let Some(n) = value("tailLines") {
        let contents = tokio::fs::read(&path).await.unwrap_or_default();
        let mut seen = 0;
        let mut pos = contents.len();
        let body_end = if contents.ends_with(b"\n") {
            contents.len() - 1
        } else {
            contents.len()
        };
        for (i, b) in contents[..body_end].iter().enumerate().rev() {
            if *b == b'\n' {
                seen += 1;
                if seen == n {
                    pos = i + 1;
                    break;
                }
            }
            pos = i;
        }
        start = if n <= 0 {
            contents.len() as u64
        } else {
            pos as u64
        };
    }
    let _ = file.seek(std::io::SeekFrom::Start(start)).await;
    let follow = flag("follow");
    let stream = futures::stream::unfold(
        (file, rt, container, follow),
        |(mut file, rt, container, follow)| async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match file.read(&mut buf).await {
                    Ok(0) if follow => {
                        let running = rt
                            .state
                            .lock()
                            .ok()
                            .and_then(|s| s.containers.get(&container).map(|c| c.pid.is_some()))
                            .unwrap_or(false);
                        if !running && Arc::strong_count(&rt) <= 2 {
                            return None;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Ok(0) | Err(_) => return None,
                    Ok(n) => {
                        buf.truncate(n);
                        return Some((Ok::<_, std::io::Error>(buf), (file, rt, container, follow)));
                    }
                }
            }
        },
    );
    Response::builder()
        .header("content-type", "text/plain")
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}

async fn exec(
    State(app): State<App>,
    Path((ns, name, container)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(rt) = find(&app, &ns, &name) else {
        return not_found(format!("pod {ns}/{name} is not on this node"));
    };
    let q = query_pairs(&q);
    let command: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    let stdin = q
        .iter()
        .any(|(k, v)| k == "input" && (v == "1" || v == "true"));
    let cmd = match pod::exec_command(&app.ctx, &rt, &container, command) {
        Ok(cmd) => cmd,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e:#}")).into_response(),
    };
    ws.protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .on_upgrade(move |socket| async move {
            if let Err(e) = stream_exec(socket, cmd, stdin).await {
                tracing::debug!("exec stream: {e:#}");
            }
        })
}

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const CLOSE: u8 = 255;

async fn stream_exec(
    socket: WebSocket,
    mut cmd: tokio::process::Command,
    stdin: bool,
) -> anyhow::Result<()> {
    use std::process::Stdio;
    cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (mut sink, mut source) = socket.split();
    let mut child = cmd.spawn()?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let pump = |mut reader: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                channel: u8,
                tx: tokio::sync::mpsc::Sender<Vec<u8>>| {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = reader.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut frame = vec![channel];
                frame.extend_from_slice(&buf[..n]);
                if tx.send(frame).await.is_err() {
                    break;
                }
            }
        })
    };
    let out = child
        .stdout
        .take()
        .map(|o| pump(Box::new(o), STDOUT, tx.clone()));
    let err = child
        .stderr
        .take()
        .map(|e| pump(Box::new(e), STDERR, tx.clone()));
    drop(tx);
    let mut child_stdin = child.stdin.take();
    let input = tokio::spawn(async move {
        while let Some(Ok(msg)) = source.next().await {
            let Message::Binary(data) = msg else { continue };
            match data.first() {
                Some(&STDIN) => {
                    if let Some(w) = child_stdin.as_mut()
                        && w.write_all(&data[1..]).await.is_err()
                    {
                        child_stdin = None;
                    }
                }
                Some(&CLOSE) if data.get(1) == Some(&STDIN) => child_stdin = None,
                _ => {}
            }
        }
    });
    while let Some(frame) = rx.recv().await {
        sink.send(Message::Binary(frame.into())).await?;
    }
    for p in [out, err].into_iter().flatten() {
        let _ = p.await;
    }
    let status = child.wait().await?;
    input.abort();
    let code = status.code().unwrap_or(137);
    let body = if code == 0 {
        serde_json::json!({"metadata": {}, "status": "Success"})
    } else {
        serde_json::json!({
            "metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}
        })
    };
    let mut frame = vec![ERROR];
    frame.extend_from_slice(body.to_string().as_bytes());
    sink.send(Message::Binary(frame.into())).await?;
    // A normal closure (1000): clients treat any other close code as a stream error.
    let close = axum::extract::ws::CloseFrame {
        code: 1000,
        reason: "".into(),
    };
    let _ = sink.send(Message::Close(Some(close))).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn decodes_query_components() {
        assert_eq!(decode("wget+-qO-"), "wget -qO-");
        assert_eq!(decode("http%3A%2F%2Fsvc%2F"), "http://svc/");
        assert_eq!(decode("100%"), "100%");
    }
}
