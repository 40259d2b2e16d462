//! The kubelet API that `kubectl logs` and `kubectl exec` reach through the API server:
//! HTTPS with client certificates of the cluster CA, `/containerLogs/...` and `/exec/...`
//! over WebSockets (`v5.channel.k8s.io`; the node declares ExtendWebSocketsToKubelet so the
//! API server proxies the stream here unchanged) or over SPDY/3.1 (`v4.channel.k8s.io` and
//! older, as client-go's SPDY executor asks; framing in `spdy.rs`), as a kubelet serves both.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
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
use crate::spdy::{self, Frame, HeaderCompressor, HeaderDecompressor};

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
    req: Request,
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
    // The API server turns PodExecOptions into these (kubelet's ExecStdinParam and friends).
    let flag = |name: &str| {
        q.iter()
            .any(|(k, v)| k == name && (v == "1" || v == "true"))
    };
    let tty = flag("tty");
    let opts = ExecOptions {
        stdin: flag("input"),
        stdout: flag("output"),
        // As on a kubelet: a terminal merges stderr into stdout.
        stderr: flag("error") && !tty,
        tty,
    };
    let cmd = match pod::exec_command(&app.ctx, &rt, &container, command) {
        Ok(cmd) => cmd,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e:#}")).into_response(),
    };
    let (mut parts, body) = req.into_parts();
    if header_has(&parts.headers, header::UPGRADE, "spdy/3.1") {
        return spdy_exec(Request::from_parts(parts, body), cmd, opts);
    }
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &app).await {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    ws.protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .on_upgrade(move |socket| async move {
            if let Err(e) = stream_exec(socket, cmd, opts).await {
                tracing::debug!("exec stream: {e:#}");
            }
        })
}

/// Which of the process's streams the client asked for.
#[derive(Clone, Copy)]
struct ExecOptions {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

/// Whether any `name` header lists `token` (comma-separated, case-insensitive).
fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    header_tokens(headers, name)
        .iter()
        .any(|t| t.eq_ignore_ascii_case(token))
}

fn header_tokens(headers: &HeaderMap, name: impl header::AsHeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The SPDY subprotocols served, as a kubelet's SupportedStreamingProtocols (less v1, which
/// no current client asks for). v5 is WebSocket-only: over SPDY a kubelet answers v4 to
/// client-go's offer of v5, v4, v3, v2, and so does this.
const SPDY_PROTOCOLS: [&str; 3] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
];

/// How long the client has to open its streams after the upgrade (a kubelet's default).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The SPDY handshake: 101 with the negotiated protocol, then the session on the raw
/// connection once hyper hands it over.
fn spdy_exec(mut req: Request, cmd: tokio::process::Command, opts: ExecOptions) -> Response {
    if !header_has(req.headers(), header::CONNECTION, "upgrade") {
        return (
            StatusCode::BAD_REQUEST,
            "SPDY upgrade without Connection: Upgrade",
        )
            .into_response();
    }
    if !(opts.stdin || opts.stdout || opts.stderr) {
        return (
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 of stdin, stdout, stderr",
        )
            .into_response();
    }
    let offered = header_tokens(req.headers(), "x-stream-protocol-version");
    // The client's order decides, among the protocols served (httpstream.Handshake's rule).
    let Some(protocol) = offered
        .iter()
        .find_map(|p| SPDY_PROTOCOLS.iter().find(|s| **s == p.as_str()).copied())
    else {
        return Response::builder()
            .status(StatusCode::FORBIDDEN)
            .header(
                "x-accepted-stream-protocol-versions",
                SPDY_PROTOCOLS.join(", "),
            )
            .body(Body::from(format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, \
                 server accepts {SPDY_PROTOCOLS:?}"
            )))
            .unwrap_or_default();
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(io) => {
                if let Err(e) = spdy_session(TokioIo::new(io), cmd, opts, protocol).await {
                    tracing::debug!("exec over SPDY: {e:#}");
                }
            }
            Err(e) => tracing::debug!("exec over SPDY: upgrade: {e}"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "SPDY/3.1")
        .header("x-stream-protocol-version", protocol)
        .body(Body::empty())
        .unwrap_or_default()
}

/// The stream ids the client opened, by their `streamtype` header.
#[derive(Default)]
struct SpdyStreams {
    error: Option<u32>,
    stdin: Option<u32>,
    stdout: Option<u32>,
    stderr: Option<u32>,
    resize: Option<u32>,
    /// The highest stream id seen, for GOAWAY.
    last: u32,
}

impl SpdyStreams {
    /// Records a stream; false for a type no exec uses (it is still answered).
    fn add(&mut self, id: u32, kind: &str) -> bool {
        self.last = self.last.max(id);
        let slot = match kind {
            "error" => &mut self.error,
            "stdin" => &mut self.stdin,
            "stdout" => &mut self.stdout,
            "stderr" => &mut self.stderr,
            "resize" => &mut self.resize,
            _ => return false,
        };
        *slot = Some(id);
        true
    }
}

/// One exec over SPDY: wait for the client's streams (error, then the ones `opts` names),
/// run the process with its stdio piped to them, write the exit status on the error stream,
/// then GOAWAY and close.
async fn spdy_session<T>(
    io: T,
    cmd: tokio::process::Command,
    opts: ExecOptions,
    protocol: &'static str,
) -> anyhow::Result<()>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(io);
    let (out, out_rx) = tokio::sync::mpsc::channel::<Frame>(64);
    let writer = tokio::spawn(write_frames(wr, out_rx));
    let mut inflate = HeaderDecompressor::new();
    let mut streams = SpdyStreams::default();
    let expected = 1
        + usize::from(opts.stdin)
        + usize::from(opts.stdout)
        + usize::from(opts.stderr)
        + usize::from(opts.tty && protocol != "v2.channel.k8s.io");
    let mut received = 0;
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    // Stdin that arrives before the process starts (a client may write right after its
    // last stream is answered), and whether the client already ended it.
    let mut early_stdin = Vec::new();
    let mut stdin_done = false;
    while received < expected {
        let frame = tokio::time::timeout_at(deadline, spdy::read_frame(&mut rd, &mut inflate))
            .await
            .context("timed out waiting for client to create streams")??;
        let Some(frame) = frame else { return Ok(()) };
        match frame {
            Frame::SynStream {
                stream,
                flags,
                headers,
                ..
            } => {
                let kind = stream_type(&headers);
                out.send(reply(stream)).await?;
                if streams.add(stream, kind) {
                    received += 1;
                    if kind == "stdin" && flags & spdy::FLAG_FIN != 0 {
                        stdin_done = true;
                    }
                } else {
                    tracing::debug!("exec over SPDY: unexpected stream type {kind:?}");
                }
            }
            Frame::Data {
                stream,
                flags,
                data,
            } if Some(stream) == streams.stdin => {
                early_stdin.extend_from_slice(&data);
                stdin_done |= flags & spdy::FLAG_FIN != 0;
            }
            Frame::Ping { id } => out.send(Frame::Ping { id }).await?,
            Frame::GoAway { .. } => return Ok(()),
            _ => {}
        }
    }
    let error_stream = streams.error.context("the client opened no error stream")?;

    let process = match spawn_exec(cmd, opts) {
        Ok(process) => process,
        Err(e) => {
            let status = exec_status(protocol, None, &format!("starting the command: {e}"));
            finish_spdy(&out, &streams, error_stream, status).await;
            drop(out);
            let _ = writer.await;
            let drain =
                async { while let Ok(Some(_)) = spdy::read_frame(&mut rd, &mut inflate).await {} };
            let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
            return Ok(());
        }
    };
    let ExecProcess {
        mut child,
        stdin,
        stdout,
        stderr,
        terminal,
    } = process;
    let mut pumps = Vec::new();
    for (reader, stream) in [(stdout, streams.stdout), (stderr, streams.stderr)] {
        if let (Some(reader), Some(stream)) = (reader, stream) {
            pumps.push(tokio::spawn(pump_to_stream(reader, stream, out.clone())));
        }
    }
    // Stdin goes through a task of its own so the frame reader keeps answering PINGs while
    // a write to the process waits; a process that never reads stops the reader after a few
    // chunks, the back pressure left for a client that ignores windows (see write_frames).
    let (stdin_tx, stdin_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let stdin_task = match (stdin, streams.stdin) {
        (Some(w), Some(id)) => Some(tokio::spawn(pump_stdin(w, id, stdin_rx, out.clone()))),
        _ => None,
    };
    let mut stdin_tx = if stdin_task.is_some() {
        if !early_stdin.is_empty() {
            let _ = stdin_tx.send(early_stdin).await;
        }
        (!stdin_done).then_some(stdin_tx)
    } else {
        None
    };
    // The reader holds a weak sender: the writer ends (and closes our side) once the
    // session's own senders are done, while the reader goes on draining what the client
    // still sends until it closes its side.
    let reader = tokio::spawn({
        let out = out.downgrade();
        let (stdin_id, resize_id) = (streams.stdin, streams.resize);
        let mut resizes = Vec::new();
        async move {
            loop {
                let frame = match spdy::read_frame(&mut rd, &mut inflate).await {
                    Ok(Some(frame)) => frame,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!("exec over SPDY: {e:#}");
                        return;
                    }
                };
                match frame {
                    Frame::Data {
                        stream,
                        flags,
                        data,
                    } if Some(stream) == stdin_id => {
                        if let Some(tx) = &stdin_tx
                            && !data.is_empty()
                            && tx.send(data).await.is_err()
                        {
                            stdin_tx = None;
                        }
                        if flags & spdy::FLAG_FIN != 0 {
                            stdin_tx = None;
                        }
                    }
                    Frame::RstStream { stream, .. } if Some(stream) == stdin_id => {
                        stdin_tx = None;
                    }
                    Frame::Data { stream, data, .. } if Some(stream) == resize_id => {
                        if let Some(terminal) = &terminal {
                            terminal.apply_resizes(&mut resizes, &data);
                        }
                    }
                    // A stream opened late (or of a kind no exec uses) still gets its reply.
                    Frame::SynStream { stream, .. } => {
                        if let Some(out) = out.upgrade() {
                            let _ = out.send(reply(stream)).await;
                        }
                    }
                    Frame::Ping { id } => {
                        if let Some(out) = out.upgrade() {
                            let _ = out.send(Frame::Ping { id }).await;
                        }
                    }
                    Frame::GoAway { .. } => return,
                    // WINDOW_UPDATE: see write_frames.
                    _ => {}
                }
            }
        }
    });
    let mut reader = reader;
    let exited = tokio::select! {
        status = async {
            for p in pumps {
                let _ = p.await;
            }
            child.wait().await
        } => Some(status),
        // The client went away mid-command: end the process, as the connection is its only
        // way out.
        _ = &mut reader => None,
    };
    if let Some(task) = stdin_task {
        task.abort();
    }
    let Some(status) = exited else {
        drop(child);
        writer.abort();
        return Ok(());
    };
    let code = status.map(|s| s.code().unwrap_or(137)).unwrap_or(137);
    let status = exec_status(protocol, Some(code), "");
    finish_spdy(&out, &streams, error_stream, status).await;
    drop(out);
    let _ = writer.await;
    // Closing while the client's bytes sit unread would reset the connection, and a reset
    // can discard our last frames before the client reads them: let the client, which
    // closes once it has the status, close first.
    if tokio::time::timeout(CLOSE_GRACE, &mut reader)
        .await
        .is_err()
    {
        reader.abort();
    }
    Ok(())
}

/// How long a finished session waits for the client to close its side.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The `streamtype` header of a SYN_STREAM.
fn stream_type(headers: &spdy::Headers) -> &str {
    headers
        .iter()
        .find(|(k, _)| k == "streamtype")
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

fn reply(stream: u32) -> Frame {
    Frame::SynReply {
        stream,
        flags: 0,
        headers: vec![],
    }
}

/// What the error stream carries at the end: v4 a metav1.Status as JSON (exit code included),
/// v2/v3 nothing on success and the message otherwise.
fn exec_status(protocol: &str, code: Option<i32>, failure: &str) -> Vec<u8> {
    let message = match code {
        Some(0) => return status_bytes(protocol, None),
        Some(code) => format!("command terminated with non-zero exit code: exit status {code}"),
        None => failure.to_string(),
    };
    status_bytes(protocol, Some((message, code)))
}

fn status_bytes(protocol: &str, failure: Option<(String, Option<i32>)>) -> Vec<u8> {
    let v4 = protocol == "v4.channel.k8s.io";
    match failure {
        None if v4 => serde_json::json!({"metadata": {}, "status": "Success"})
            .to_string()
            .into_bytes(),
        None => Vec::new(),
        Some((message, Some(code))) if v4 => serde_json::json!({
            "metadata": {}, "status": "Failure", "message": message,
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}
        })
        .to_string()
        .into_bytes(),
        Some((message, None)) if v4 => serde_json::json!({
            "metadata": {}, "status": "Failure", "message": message,
            "reason": "InternalError", "code": 500
        })
        .to_string()
        .into_bytes(),
        Some((message, _)) => message.into_bytes(),
    }
}

/// The end of an exec: the status on the error stream, every stream of ours finished, and
/// GOAWAY; `write_frames` then closes the connection.
async fn finish_spdy(
    out: &tokio::sync::mpsc::Sender<Frame>,
    streams: &SpdyStreams,
    error_stream: u32,
    status: Vec<u8>,
) {
    let _ = out
        .send(Frame::Data {
            stream: error_stream,
            flags: spdy::FLAG_FIN,
            data: status,
        })
        .await;
    let _ = out
        .send(Frame::GoAway {
            last_good: streams.last,
            status: spdy::GOAWAY_OK,
        })
        .await;
}

/// Copies a process output to a stream in DATA frames, then finishes the stream.
async fn pump_to_stream(
    mut reader: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    stream: u32,
    out: tokio::sync::mpsc::Sender<Frame>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = reader.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let frame = Frame::Data {
            stream,
            flags: 0,
            data: buf[..n].to_vec(),
        };
        if out.send(frame).await.is_err() {
            return;
        }
    }
    let _ = out
        .send(Frame::Data {
            stream,
            flags: spdy::FLAG_FIN,
            data: vec![],
        })
        .await;
}

/// Writes the client's stdin to the process and gives the client its window back as the
/// bytes are consumed (SPDY/3.1: the stream's and the session's, 64 KiB each to start).
/// Closing the process's stdin when the channel ends is the EOF the client sent.
async fn pump_stdin(
    mut w: Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
    stream: u32,
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    out: tokio::sync::mpsc::Sender<Frame>,
) {
    let mut unacknowledged = 0u32;
    while let Some(data) = rx.recv().await {
        if w.write_all(&data).await.is_err() {
            return;
        }
        unacknowledged += data.len() as u32;
        // Half the window consumed: a peer that honours windows never stalls.
        if unacknowledged >= spdy::INITIAL_WINDOW / 2 {
            for id in [stream, 0] {
                let update = Frame::WindowUpdate {
                    stream: id,
                    delta: unacknowledged,
                };
                let _ = out.send(update).await;
            }
            unacknowledged = 0;
        }
    }
}

/// Encodes and writes frames in order (the header compressor is one stream per direction),
/// then closes the connection. Outgoing data is not held to the peer's window: client-go's
/// spdystream neither sends WINDOW_UPDATE nor honours one, so a sender that waited for one
/// would stall every output past 64 KiB; a kubelet (spdystream on both sides) does the same.
async fn write_frames<W: tokio::io::AsyncWrite + Unpin>(
    mut w: W,
    mut rx: tokio::sync::mpsc::Receiver<Frame>,
) {
    let Ok(mut deflate) = HeaderCompressor::new() else {
        return;
    };
    while let Some(frame) = rx.recv().await {
        let bytes = match frame.encode(&mut deflate) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::debug!("exec over SPDY: encoding {frame:?}: {e:#}");
                return;
            }
        };
        if w.write_all(&bytes).await.is_err() {
            return;
        }
        if rx.is_empty() && w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// An exec's process with its stdio as the client asked: pipes, or with `tty` one
/// pseudo-terminal for stdin and stdout (stderr merged into it, as on a kubelet).
struct ExecProcess {
    child: tokio::process::Child,
    stdin: Option<Box<dyn tokio::io::AsyncWrite + Unpin + Send>>,
    stdout: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>,
    stderr: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>,
    terminal: Option<Terminal>,
}

fn spawn_exec(mut cmd: tokio::process::Command, opts: ExecOptions) -> std::io::Result<ExecProcess> {
    use std::process::Stdio;
    type Reader = Box<dyn tokio::io::AsyncRead + Unpin + Send>;
    type Writer = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;
    let pipe = |wanted: bool| {
        if wanted {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    cmd.kill_on_drop(true);
    if !opts.tty {
        cmd.stdin(pipe(opts.stdin))
            .stdout(pipe(opts.stdout))
            .stderr(pipe(opts.stderr));
        let mut child = cmd.spawn()?;
        return Ok(ExecProcess {
            stdin: child.stdin.take().map(|w| Box::new(w) as Writer),
            stdout: child.stdout.take().map(|r| Box::new(r) as Reader),
            stderr: child.stderr.take().map(|r| Box::new(r) as Reader),
            child,
            terminal: None,
        });
    }
    let pty = nix::pty::openpty(None, None).map_err(std::io::Error::from)?;
    cmd.stdin(Stdio::from(pty.slave.try_clone()?))
        .stdout(Stdio::from(pty.slave.try_clone()?))
        .stderr(Stdio::from(pty.slave));
    let child = cmd.spawn()?;
    // The command keeps its copies of the terminal's process side until dropped, and the
    // controller side reads the end of output only once every copy is closed.
    drop(cmd);
    let controller = || -> std::io::Result<tokio::fs::File> {
        Ok(tokio::fs::File::from_std(std::fs::File::from(
            pty.master.try_clone()?,
        )))
    };
    Ok(ExecProcess {
        child,
        stdin: opts
            .stdin
            .then(|| controller().map(|f| Box::new(f) as Writer))
            .transpose()?,
        // Reading the controller side fails with EIO once the process side is closed: the
        // output pumps take any error as its end.
        stdout: Some(Box::new(controller()?) as Reader),
        stderr: None,
        terminal: Some(Terminal(pty.master)),
    })
}

/// The controller side of an exec's pseudo-terminal, kept to resize it.
struct Terminal(std::os::fd::OwnedFd);

nix::ioctl_write_ptr_bad!(set_window_size, nix::libc::TIOCSWINSZ, nix::pty::Winsize);

/// One resize event, as client-go's remotecommand sends it (a JSON object per event).
#[derive(serde::Deserialize)]
struct TerminalSize {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}

impl Terminal {
    /// Applies every complete resize event in `pending` + `data`, keeping an incomplete tail.
    fn apply_resizes(&self, pending: &mut Vec<u8>, data: &[u8]) {
        pending.extend_from_slice(data);
        let mut events = serde_json::Deserializer::from_slice(pending).into_iter::<TerminalSize>();
        let mut consumed = 0;
        loop {
            match events.next() {
                Some(Ok(size)) => {
                    self.resize(size.width, size.height);
                    consumed = events.byte_offset();
                }
                // The rest of an event comes in a later frame.
                Some(Err(e)) if e.is_eof() => break,
                // Not a size: drop what is buffered rather than stall on it.
                Some(Err(_)) => {
                    consumed = pending.len();
                    break;
                }
                None => {
                    consumed = pending.len();
                    break;
                }
            }
        }
        pending.drain(..consumed);
    }

    fn resize(&self, width: u16, height: u16) {
        use std::os::fd::AsRawFd;
        let size = nix::pty::Winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one Winsize through the pointer, which is valid for the
        // call; the descriptor is this terminal's own open controller side.
        if let Err(e) = unsafe { set_window_size(self.0.as_raw_fd(), &size) } {
            tracing::debug!("exec: resizing the terminal: {e}");
        }
    }
}

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

async fn stream_exec(
    socket: WebSocket,
    cmd: tokio::process::Command,
    opts: ExecOptions,
) -> anyhow::Result<()> {
    let (mut sink, mut source) = socket.split();
    let ExecProcess {
        mut child,
        stdin,
        stdout,
        stderr,
        terminal,
    } = spawn_exec(cmd, opts)?;
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
    let out = stdout.map(|o| pump(o, STDOUT, tx.clone()));
    let err = stderr.map(|e| pump(e, STDERR, tx.clone()));
    drop(tx);
    let mut child_stdin = stdin;
    let mut resizes = Vec::new();
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
                Some(&RESIZE) => {
                    if let Some(terminal) = &terminal {
                        terminal.apply_resizes(&mut resizes, &data[1..]);
                    }
                }
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
    use super::*;
    use tokio::io::{AsyncRead, AsyncWrite};

    /// The client's half of an exec over SPDY, as client-go opens it: one stream per type,
    /// each waiting for its reply.
    struct Client<R, W> {
        rd: R,
        wr: W,
        deflate: HeaderCompressor,
        inflate: HeaderDecompressor,
        next: u32,
    }

    impl
        Client<
            tokio::io::ReadHalf<tokio::io::DuplexStream>,
            tokio::io::WriteHalf<tokio::io::DuplexStream>,
        >
    {
        /// A client on our end of an in-memory connection to a session.
        fn new(ours: tokio::io::DuplexStream) -> Self {
            let (rd, wr) = tokio::io::split(ours);
            Client {
                rd,
                wr,
                deflate: HeaderCompressor::new().unwrap(),
                inflate: HeaderDecompressor::new(),
                next: 1,
            }
        }
    }

    impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Client<R, W> {
        async fn send(&mut self, frame: Frame) {
            let bytes = frame.encode(&mut self.deflate).unwrap();
            self.wr.write_all(&bytes).await.unwrap();
        }

        async fn recv(&mut self) -> Option<Frame> {
            spdy::read_frame(&mut self.rd, &mut self.inflate)
                .await
                .unwrap()
        }

        async fn open(&mut self, kind: &str) -> u32 {
            let stream = self.next;
            self.next += 2;
            self.send(Frame::SynStream {
                stream,
                associated: 0,
                priority: 0,
                flags: 0,
                headers: vec![("streamtype".into(), kind.into())],
            })
            .await;
            assert_eq!(self.recv().await, Some(reply(stream)), "reply to {kind}");
            stream
        }
    }

    /// Runs `script` under sh in a session over an in-memory pipe; returns the bytes each
    /// stream received (stdout, stderr, error) and whether the session ended with GOAWAY.
    async fn run(
        script: &str,
        protocol: &'static str,
        stdin: &[u8],
    ) -> (Vec<u8>, Vec<u8>, Vec<u8>, bool) {
        let (ours, theirs) = tokio::io::duplex(8 * 1024);
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", script]);
        let opts = ExecOptions {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        };
        let session = tokio::spawn(spdy_session(theirs, cmd, opts, protocol));
        let mut c = Client::new(ours);
        let error = c.open("error").await;
        let input = c.open("stdin").await;
        let stdout = c.open("stdout").await;
        let stderr = c.open("stderr").await;
        c.send(Frame::Ping { id: 9 }).await;
        let (mut rd, mut inflate) = (c.rd, c.inflate);
        let (mut wr, mut deflate) = (c.wr, c.deflate);
        // Write stdin while reading, as a client does: a large input must not deadlock
        // against a large output.
        let stdin = stdin.to_vec();
        let writer = tokio::spawn(async move {
            for chunk in stdin.chunks(32 * 1024) {
                let data = Frame::Data {
                    stream: input,
                    flags: 0,
                    data: chunk.to_vec(),
                };
                wr.write_all(&data.encode(&mut deflate).unwrap())
                    .await
                    .unwrap();
            }
            let fin = Frame::Data {
                stream: input,
                flags: spdy::FLAG_FIN,
                data: vec![],
            };
            wr.write_all(&fin.encode(&mut deflate).unwrap())
                .await
                .unwrap();
            wr
        });
        let (mut out, mut err, mut status) = (vec![], vec![], vec![]);
        let (mut pong, mut goaway, mut finished) = (false, false, 0);
        while let Some(frame) = spdy::read_frame(&mut rd, &mut inflate).await.unwrap() {
            match frame {
                Frame::Data {
                    stream,
                    flags,
                    data,
                } => {
                    let sink = if stream == stdout {
                        &mut out
                    } else if stream == stderr {
                        &mut err
                    } else {
                        assert_eq!(stream, error);
                        assert_eq!(finished, 2, "the status comes after stdout and stderr end");
                        &mut status
                    };
                    sink.extend_from_slice(&data);
                    finished += usize::from(flags & spdy::FLAG_FIN != 0);
                }
                Frame::Ping { id } => pong = id == 9,
                Frame::GoAway { last_good, .. } => {
                    assert_eq!(last_good, stderr);
                    goaway = true;
                }
                Frame::WindowUpdate { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(pong, "PING answered");
        assert_eq!(finished, 3, "stdout, stderr and error each end with FIN");
        // The client closes once it has the status; the session then ends at once, not
        // after its grace period.
        drop(rd);
        drop(writer.await.unwrap());
        tokio::time::timeout(CLOSE_GRACE / 2, session)
            .await
            .expect("the session ends when the client closes")
            .unwrap()
            .unwrap();
        (out, err, status, goaway)
    }

    #[tokio::test]
    async fn spdy_exec_pipes_stdio_and_reports_the_exit_code() {
        let (out, err, status, goaway) = run(
            "cat; echo oops >&2; exit 3",
            "v4.channel.k8s.io",
            b"through stdin\n",
        )
        .await;
        assert_eq!(out, b"through stdin\n");
        assert_eq!(err, b"oops\n");
        assert!(goaway);
        let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
        assert_eq!(status["status"], "Failure");
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(status["details"]["causes"][0]["message"], "3");
    }

    #[tokio::test]
    async fn spdy_exec_moves_more_than_a_window_each_way() {
        // 300 KB in and out: past the 64 KiB initial window in both directions.
        let input: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let (out, _, status, _) = run("cat", "v4.channel.k8s.io", &input).await;
        assert_eq!(out.len(), input.len());
        assert!(out == input, "stdout differs from stdin");
        let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
        assert_eq!(status["status"], "Success");
    }

    #[tokio::test]
    async fn spdy_exec_v3_reports_failure_as_text_and_success_as_nothing() {
        let (_, _, status, _) = run("exit 5", "v3.channel.k8s.io", b"").await;
        assert_eq!(
            String::from_utf8_lossy(&status),
            "command terminated with non-zero exit code: exit status 5"
        );
        let (_, _, status, _) = run("true", "v3.channel.k8s.io", b"").await;
        assert!(status.is_empty());
    }

    #[tokio::test]
    async fn spdy_exec_with_a_tty_gives_a_terminal_and_resizes_it() {
        let (ours, theirs) = tokio::io::duplex(8 * 1024);
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args([
            "-c",
            "read line; stty size; test -t 0 && test -t 1 && echo is-a-tty; exit 4",
        ]);
        let opts = ExecOptions {
            stdin: true,
            stdout: true,
            stderr: false,
            tty: true,
        };
        let session = tokio::spawn(spdy_session(theirs, cmd, opts, "v4.channel.k8s.io"));
        let mut c = Client::new(ours);
        let error = c.open("error").await;
        let input = c.open("stdin").await;
        let stdout = c.open("stdout").await;
        let resize = c.open("resize").await;
        // One event split across two frames, as a stream may deliver it.
        for part in [&b"{\"Width\":100,"[..], b"\"Height\":40}"] {
            c.send(Frame::Data {
                stream: resize,
                flags: 0,
                data: part.to_vec(),
            })
            .await;
        }
        c.send(Frame::Data {
            stream: input,
            flags: 0,
            data: b"go\n".to_vec(),
        })
        .await;
        let (mut out, mut status) = (Vec::new(), Vec::new());
        while let Some(frame) = c.recv().await {
            if let Frame::Data { stream, data, .. } = frame {
                if stream == stdout {
                    out.extend_from_slice(&data);
                } else if stream == error {
                    status.extend_from_slice(&data);
                }
            }
        }
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.contains("40 100"),
            "stty size through the terminal: {out:?}"
        );
        assert!(out.contains("is-a-tty"), "{out:?}");
        let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
        assert_eq!(status["details"]["causes"][0]["message"], "4");
        drop(c);
        tokio::time::timeout(CLOSE_GRACE / 2, session)
            .await
            .expect("the session ends when the client closes")
            .unwrap()
            .unwrap();
    }

    #[test]
    fn spdy_protocol_negotiation_follows_the_client_order_among_those_served() {
        let mut h = HeaderMap::new();
        for v in ["v5.channel.k8s.io", "v4.channel.k8s.io, v3.channel.k8s.io"] {
            h.append("x-stream-protocol-version", v.parse().unwrap());
        }
        let offered = header_tokens(&h, "x-stream-protocol-version");
        assert_eq!(offered.len(), 3);
        let chosen = offered
            .iter()
            .find_map(|p| SPDY_PROTOCOLS.iter().find(|s| **s == p.as_str()));
        assert_eq!(chosen, Some(&"v4.channel.k8s.io"));
        h.insert(header::UPGRADE, "SPDY/3.1".parse().unwrap());
        assert!(header_has(&h, header::UPGRADE, "spdy/3.1"));
    }

    #[test]
    fn decodes_query_components() {
        assert_eq!(decode("wget+-qO-"), "wget -qO-");
        assert_eq!(decode("http%3A%2F%2Fsvc%2F"), "http://svc/");
        assert_eq!(decode("100%"), "100%");
    }
}
