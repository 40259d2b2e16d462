//! The operator's HTTPS serving: its TLS certificate (webhook and discovery names) from the mesh
//! CA, swapped in place through a rustls resolver (renewed at half its lifetime or when the CA
//! changes, no restart, no dropped connection), and the accept loop [`serve_tls`] (also the
//! benchmark's), which reads on past the answer any request body a handler leaves unread.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::Router;
use hyper::Request;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::service::Service as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::discovery::PeerCert;
use crate::pki::MeshCa;

pub const SERVING_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Default)]
pub struct ServingCertResolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl ResolvesServerCert for ServingCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok()?.clone()
    }
}

impl ServingCertResolver {
    pub fn is_loaded(&self) -> bool {
        self.current.read().map(|c| c.is_some()).unwrap_or(false)
    }

    fn install(&self, chain_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes()).collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
        let provider = rustls::crypto::ring::default_provider();
        let certified = CertifiedKey::from_der(chain, key, &provider)?;
        if let Ok(mut current) = self.current.write() {
            *current = Some(Arc::new(certified));
        }
        Ok(())
    }
}

/// DNS names of the operator's Services in `namespace`.
pub fn dns_names(namespace: &str) -> Vec<String> {
    ["weft-webhook", "weft-operator"]
        .iter()
        .flat_map(|svc| {
            [
                format!("{svc}.{namespace}.svc"),
                format!("{svc}.{namespace}.svc.cluster.local"),
            ]
        })
        .collect()
}

/// Keeps `resolver` holding a certificate from the current CA.
pub async fn keep_serving_cert(
    resolver: Arc<ServingCertResolver>,
    mut ca: watch::Receiver<Option<Arc<MeshCa>>>,
    namespace: String,
) {
    let names = dns_names(&namespace);
    loop {
        let current = ca.borrow_and_update().clone();
        let mut renew_in = Duration::from_secs(5);
        if let Some(ca) = current {
            match ca.sign_serving(&names, SERVING_TTL) {
                Ok(cert) => match resolver.install(&cert.cert_chain_pem, &cert.key_pem) {
                    Ok(()) => {
                        let lifetime = cert
                            .not_after
                            .duration_since(SystemTime::now())
                            .unwrap_or_default();
                        renew_in = (lifetime / 2).max(Duration::from_secs(60));
                        tracing::info!(
                            renew_in_s = renew_in.as_secs(),
                            "serving certificate issued for {names:?}"
                        );
                    }
                    Err(e) => tracing::error!("serving certificate: {e:#}"),
                },
                Err(e) => tracing::error!("serving certificate: {e}"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(renew_in) => {}
            changed = ca.changed() => if changed.is_err() { return },
        }
    }
}

// === the accept loop ===

/// The TLS acceptor: the hot-swapped serving certificate and, when `client_roots` is
/// given, optional client certificates verified against the mesh roots (the CSR endpoint
/// is reached without one; the config stream needs one).
pub fn acceptor(
    resolver: &Arc<ServingCertResolver>,
    client_roots: Option<&MeshCa>,
) -> tokio_rustls::TlsAcceptor {
    let builder = rustls::ServerConfig::builder();
    let verifier = client_roots.and_then(|ca| {
        let mut roots = rustls::RootCertStore::empty();
        for der in crate::pki::certificates_from_pem(&ca.roots_pem()).ok()? {
            roots.add(der.into()).ok()?;
        }
        rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .allow_unauthenticated()
            .build()
            .ok()
    });
    let mut config = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    }
    .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// What the client certificate of an accepted connection proves.
pub fn peer_cert(certs: Option<&[rustls::pki_types::CertificateDer<'_>]>) -> PeerCert {
    let Some(leaf) = certs.and_then(|c| c.first()) else {
        return PeerCert::default();
    };
    let expires = x509_parser::parse_x509_certificate(leaf)
        .ok()
        .and_then(|(_, c)| {
            k8s_openapi::jiff::Timestamp::from_second(c.validity().not_after.timestamp()).ok()
        })
        .map(|t| t.to_string());
    PeerCert {
        spiffe_id: crate::pki::spiffe_id_of(leaf),
        expires,
    }
}

/// HTTPS on `addr` with the hot-swapped serving certificate (and, with `client_roots`, the
/// peer's proven identity as a [`PeerCert`] request extension).
pub async fn serve_tls(
    addr: SocketAddr,
    resolver: Arc<ServingCertResolver>,
    app: Router,
    client_roots: Option<watch::Receiver<Option<Arc<MeshCa>>>>,
) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, "cannot listen: {e}");
            return;
        }
    };
    serve_tls_on(listener, resolver, app, client_roots).await;
}

/// [`serve_tls`] on a listener the caller bound (an ephemeral port in tests and benchmarks).
pub async fn serve_tls_on(
    listener: tokio::net::TcpListener,
    resolver: Arc<ServingCertResolver>,
    app: Router,
    mut client_roots: Option<watch::Receiver<Option<Arc<MeshCa>>>>,
) {
    let current = |roots: &mut Option<watch::Receiver<Option<Arc<MeshCa>>>>| {
        let ca = roots.as_mut().and_then(|r| r.borrow_and_update().clone());
        acceptor(&resolver, ca.as_deref())
    };
    let mut acceptor = current(&mut client_roots);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if client_roots
            .as_ref()
            .is_some_and(|r| r.has_changed().unwrap_or(false))
        {
            acceptor = current(&mut client_roots);
        }
        let (acceptor, mut app) = (acceptor.clone(), app.clone());
        let with_peer = client_roots.is_some();
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            if with_peer {
                app = app.layer(axum::Extension(peer_cert(
                    tls.get_ref().1.peer_certificates(),
                )));
            }
            let app = TowerToHyperService::new(app);
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                app.call(request.map(UnreadBody::new))
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await;
        });
    }
}

// === request bodies a handler leaves unread ===

/// Most of an unread request body read (and thrown away) after the answer.
pub const DRAIN_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Longest time spent reading it.
const DRAIN_MAX_TIME: Duration = Duration::from_secs(10);

/// A request body that, when a handler drops it before its end (a body over a route's limit is
/// refused once the limit's worth is read), is read on to its end in the background and
/// thrown away. Every route of every port served here gets it.
///
/// Why: without it, h2 ends such a stream with RST_STREAM(NO_ERROR) right after the complete
/// answer, as RFC 9113 §8.1 allows, but a client still uploading may take the reset for a
/// failure: curl 7.88 (nghttp2 1.52) reports "Stream error in the HTTP/2 framing layer" (exit
/// 92) and loses the 413 it had received. On HTTP/1.1, hyper closes the connection with the
/// rest unread, and the kernel answers the bytes still arriving with a TCP reset that in some
/// runs overtakes the 413 (curl: "Send failure: Broken pipe", exit 55). Reading on lets the
/// client read the answer and then finish or abandon its upload itself (curl stops sending and
/// resets the stream with STREAM_CLOSED); the connection keeps serving. Past
/// [`DRAIN_MAX_BYTES`] or [`DRAIN_MAX_TIME`] the body is dropped after all, and h2 sends its
/// RST_STREAM(NO_ERROR) then, never before the answer's last frame: the response half holds
/// the stream open until it is sent.
struct UnreadBody {
    body: Option<Incoming>,
}

impl UnreadBody {
    fn new(body: Incoming) -> Self {
        Self { body: Some(body) }
    }
}

impl Body for UnreadBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for UnreadBody {
    fn drop(&mut self) {
        let Some(body) = self.body.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        // Handlers and connections run on the runtime, so one is there; without one the body
        // is simply dropped (the RST_STREAM or connection close described above).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(body));
        }
    }
}

/// Reads `body` to its end, at most [`DRAIN_MAX_BYTES`] within [`DRAIN_MAX_TIME`].
async fn drain(mut body: Incoming) {
    let read_all = async {
        let mut read: u64 = 0;
        while let Some(Ok(frame)) =
            std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            read += frame.data_ref().map_or(0, |data| data.len() as u64);
            if read > DRAIN_MAX_BYTES {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_MAX_TIME, read_all).await;
}
