//! The destination reporter's labels of an inbound connection: made from what the connection
//! proved and said (mTLS identity, peer metadata) and from a config, so that a connection
//! that outlives its config (HTTP keep-alive, a pooled HTTP/2 connection between proxies) is
//! labelled by the current one, as each of its requests is authorized by the current one.

use super::ProxyContext;
use super::metrics::{Reporter, SecurityPolicy, TcpLabels};
use super::peer_meta::{self, PeerMeta};
use crate::snapshot::{SnapshotIndex, spiffe_namespace};

/// What an inbound connection brings to its labels, config aside.
#[derive(Debug, Clone)]
pub struct LabelSource {
    /// The port the client dialled (the app's port).
    pub port: u16,
    /// Set when the connection is mesh mTLS.
    pub mtls: Option<MtlsPeer>,
}

/// What an mTLS connection proved and said.
#[derive(Debug, Clone)]
pub struct MtlsPeer {
    /// The identity this proxy proved (`destination_principal`).
    pub own_identity: String,
    /// The client's SPIFFE identity, when its certificate named one.
    pub identity: Option<String>,
    /// The client's peer metadata, when it sent any.
    pub meta: Option<PeerMeta>,
}

impl LabelSource {
    /// The labels under `snapshot`: the destination from our workload and the Service the
    /// port belongs to (the one the client says it dialled, where the config lists it for the
    /// port); the source from the client's word where its certificate and the config vouch
    /// for it ([`peer_meta::vouched`]), within the bound on peer-named series.
    pub fn labels(&self, ctx: &ProxyContext, snapshot: &SnapshotIndex) -> TcpLabels {
        let security = match self.mtls {
            Some(_) => SecurityPolicy::mutual_tls,
            None => SecurityPolicy::none,
        };
        let mut labels = TcpLabels::new(Reporter::destination, security);
        if let Some(w) = &snapshot.snapshot.workload {
            labels.fill_destination(w);
        }
        let inbound = &snapshot.snapshot.inbound;
        let claimed = self
            .mtls
            .as_ref()
            .filter(|m| m.identity.is_some())
            .and_then(|m| m.meta.as_ref())
            .and_then(|meta| meta.service.as_deref());
        if let Some(host) = inbound.destination_service(self.port, claimed) {
            labels = labels.with_service(host);
        }
        let Some(mtls) = &self.mtls else {
            return labels;
        };
        labels.destination_principal = mtls.own_identity.clone();
        let Some(id) = &mtls.identity else {
            return labels;
        };
        if let Some(ns) = spiffe_namespace(id) {
            labels.source_workload_namespace = ns.to_string();
        }
        if let Some(meta) = &mtls.meta {
            let peers = snapshot.snapshot.peers.as_deref();
            if let Some(workload) = peer_meta::vouched(peers, id, meta)
                && ctx.metrics.peers.admit(&workload)
            {
                labels.fill_source(&workload);
            }
        }
        labels.source_principal = id.clone();
        labels
    }
}
