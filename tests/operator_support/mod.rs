//! A fake Kubernetes API server for the operator's tests: objects kept by their URL path, GET,
//! create (POST to the collection) and replace (PUT, with resourceVersion conflicts), answered
//! with the API server's Status objects; and a switch that makes it hang (accept connections,
//! read requests, never answer) for one listener, as an API server cut off from one replica
//! by a network partition looks to that replica. Enough for the Lease, Secret and ConfigMap
//! calls the operator makes.

#![allow(dead_code)] // each test file uses part of it

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Clone, Default)]
pub struct FakeApiServer {
    objects: Arc<Mutex<HashMap<String, Value>>>,
    version: Arc<AtomicU64>,
}

/// One listener of a [`FakeApiServer`]: what one replica connects to.
pub struct Endpoint {
    pub addr: SocketAddr,
    pub client: kube::Client,
    /// Set: every request on this listener (and every one still waiting) never gets an answer.
    hung: Arc<AtomicBool>,
}

impl Endpoint {
    pub fn hang(&self, hung: bool) {
        self.hung.store(hung, Ordering::SeqCst);
    }
}

impl FakeApiServer {
    /// A listener on 127.0.0.1 serving this store.
    pub async fn listen(&self) -> Endpoint {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("a port on 127.0.0.1");
        let addr = listener.local_addr().expect("its address");
        let hung = Arc::new(AtomicBool::new(false));
        let app = Router::new().fallback({
            let (me, hung) = (self.clone(), hung.clone());
            move |method: Method, uri: Uri, body: Bytes| {
                let (me, hung) = (me.clone(), hung.clone());
                async move { me.answer(&hung, method, uri, body).await }
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Endpoint {
            addr,
            client: client_of(addr),
            hung,
        }
    }

    /// Stores `object` at `path` (e.g. /api/v1/namespaces/ns/secrets/name).
    pub fn put(&self, path: &str, mut object: Value) {
        let rv = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.objects
            .lock()
            .expect("store")
            .insert(path.to_string(), object);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.objects.lock().expect("store").get(path).cloned()
    }

    async fn answer(&self, hung: &AtomicBool, method: Method, uri: Uri, body: Bytes) -> Response {
        if hung.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let path = uri.path().trim_end_matches('/').to_string();
        let response = match method {
            Method::GET => match self.get(&path) {
                Some(o) => (StatusCode::OK, axum::Json(o)).into_response(),
                None => status(404, "NotFound", &format!("{path} not found")),
            },
            Method::POST => {
                let object: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let name = object["metadata"]["name"].as_str().unwrap_or_default();
                let at = format!("{path}/{name}");
                if self.get(&at).is_some() {
                    status(409, "AlreadyExists", &format!("{at} already exists"))
                } else {
                    self.put(&at, object);
                    (StatusCode::CREATED, axum::Json(self.get(&at))).into_response()
                }
            }
            Method::PUT => {
                let object: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                match self.get(&path) {
                    None => status(404, "NotFound", &format!("{path} not found")),
                    Some(stored)
                        if stored["metadata"]["resourceVersion"]
                            != object["metadata"]["resourceVersion"] =>
                    {
                        status(409, "Conflict", "the object has been modified")
                    }
                    Some(_) => {
                        self.put(&path, object);
                        (StatusCode::OK, axum::Json(self.get(&path))).into_response()
                    }
                }
            }
            _ => status(405, "MethodNotAllowed", "not in this fake"),
        };
        // A request that started before a hang does not get its answer either.
        if hung.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        response
    }
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                      "status": "Failure", "message": message, "reason": reason, "code": code});
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response()
}

/// A client of the fake at `addr` (plain HTTP).
pub fn client_of(addr: SocketAddr) -> kube::Client {
    let uri = format!("http://{addr}").parse().expect("a URL");
    kube::Client::try_from(kube::Config::new(uri)).expect("a kube client")
}

/// The config a test hands to code that makes its own clients.
pub fn config_of(addr: SocketAddr) -> kube::Config {
    kube::Config::new(format!("http://{addr}").parse().expect("a URL"))
}
