//! The route table's types, as the snapshot carries them (JSON, camelCase). A Service entry
//! of the snapshot may carry `subsets` (DestinationRule subsets, resolved to its endpoints by
//! the control plane) and `http` routes (first match wins); without routes every request goes
//! to all its endpoints, as before routing existed.
//!
//! ```json
//! "subsets": {"v1": [0], "v2": [1, 2]},          // subset name -> indexes into `endpoints`
//! "http": [{
//!   "name": "shop/reviews",                         // namespace/resource, for logs and the CLI
//!   "matches": [{"headers": {"end-user": {"exact": "jason"}}}],   // any of; [] = all
//!   "destinations": [{"service": "reviews.shop.svc.cluster.local", "port": 9080,
//!                     "subset": "v2", "weight": 100}]
//! }, {
//!   "name": "shop/reviews",
//!   "destinations": [{"service": "reviews.shop.svc.cluster.local", "port": 9080,
//!                     "subset": "v1", "weight": 90},
//!                    {"service": "reviews.shop.svc.cluster.local", "port": 9080,
//!                     "subset": "v2", "weight": 10}]
//! }]
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::authz::model::Pattern;

use super::action::{Actions, HeaderEdits, MAX_RETRY_ATTEMPTS};

/// Most routes one Service may carry, and most destinations per route (Istio has no limit;
/// these keep one snapshot's work per request bounded).
pub const MAX_ROUTES: usize = 10_000;
pub const MAX_DESTINATIONS: usize = 256;

/// One HTTP route: the requests it takes and where they go.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    /// Where it came from (`<namespace>/<name>` of the VirtualService or TrafficSplit).
    pub name: String,
    /// Any one of these matches the request; none means every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RequestMatch>,
    /// Weighted destinations (weights need not sum to 100; zero weights get nothing). Empty
    /// only when the route redirects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<Destination>,
    /// Redirect, rewrite, header edits, fault, timeout, retries ([`super::action`]).
    #[serde(flatten)]
    pub actions: Actions,
}

/// Istio's `HTTPMatchRequest`: every condition given must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestMatch {
    /// The path (without the query string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    /// Lowercase header names; a header repeated is matched on its values joined by `,`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    /// Headers that must be absent or not match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub without_headers: BTreeMap<String, StringMatch>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, StringMatch>,
    /// The Service port the client dialled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Istio's `sourceLabels`: the client pods this match applies to. The control plane
    /// leaves the match out of the tables of proxies whose pod lacks them
    /// ([`super::source`]); the proxy never reads them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    /// Istio's `sourceNamespace`: the match applies to client pods of this namespace only,
    /// left out of other proxies' tables as `source_labels` are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
}

/// Istio's `StringMatch`: exactly one of exact, prefix or regex (RE2 syntax, whole value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(Pattern),
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(p) => value.starts_with(p.as_str()),
            StringMatch::Regex(r) => r.is_match(value),
        }
    }
}

/// Where a share of a route's requests goes: a port of a Service in the same snapshot, all
/// of its endpoints or one subset of them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// Host of a Service the snapshot lists (`outbound.services` or `outbound.headless`).
    pub service: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    pub weight: u32,
    /// Header edits for requests sent to this destination (after the route's) and for its
    /// responses (before the route's).
    #[serde(default, skip_serializing_if = "HeaderEdits::is_empty")]
    pub request_headers: HeaderEdits,
    #[serde(default, skip_serializing_if = "HeaderEdits::is_empty")]
    pub response_headers: HeaderEdits,
}

/// A DestinationRule's `tls.mode`, as the snapshot carries it per Service (and per subset).
/// `SIMPLE` and `MUTUAL` came later: a proxy older than them rejects the whole snapshot (an
/// unknown value) and keeps its last one, rather than sending plaintext where TLS was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTls {
    /// Plaintext, even to a meshed endpoint (a STRICT server then refuses it: 503 `UC`).
    Disable,
    /// mTLS with the mesh's certificates to every endpoint with a mesh identity.
    IstioMutual,
    /// TLS origination ([`Origination`]): the proxy opens TLS to the endpoint and verifies
    /// its certificate; the app sent plaintext.
    Simple,
    /// The same, presenting the client certificate of the `credentialName` Secret.
    Mutual,
}

impl ClientTls {
    /// The mode as a DestinationRule spells it.
    pub fn name(self) -> &'static str {
        match self {
            ClientTls::Disable => "DISABLE",
            ClientTls::IstioMutual => "ISTIO_MUTUAL",
            ClientTls::Simple => "SIMPLE",
            ClientTls::Mutual => "MUTUAL",
        }
    }

    /// SIMPLE or MUTUAL: the proxy originates TLS.
    pub fn originates(self) -> bool {
        matches!(self, ClientTls::Simple | ClientTls::Mutual)
    }
}

/// How a proxy originates TLS for `tls.mode` SIMPLE / MUTUAL (Istio's `ClientTLSSettings`),
/// as the snapshot carries it: only names, never key material. The certificates are the
/// proxy's own snapshot's `credentials` under `credential_name` (looked up in the proxy's
/// namespace, as Istio's SDS does).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Origination {
    /// The Secret holding `ca.crt` (the server's CA) and, for MUTUAL, `tls.crt`/`tls.key`.
    /// None: the server is verified against the system roots (SIMPLE only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    /// The server name sent; None: the host of the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// The server certificate must hold one of these names; empty: the SNI name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// Certificate files in the proxy's container (Istio's `caCertificates`,
    /// `clientCertificate`, `privateKey`; mounted with `sidecar.istio.io/userVolumeMount`),
    /// read when a connection is made: the server's CA instead of the system roots, and for
    /// MUTUAL the client's chain and key. Never beside `credential_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// Istio's `caCrl`: a file of certificate revocation lists the server's chain is checked
    /// against (Envoy's `crl`: a CA of the chain without its CRL fails verification).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,
    /// Why this origination cannot be done as asked (a field weft does not implement, such
    /// as a certificate file path); the proxy then refuses the connection (fail closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl Origination {
    /// Whether it names certificate files in the proxy's container.
    pub fn uses_files(&self) -> bool {
        self.ca_certificates.is_some()
            || self.client_certificate.is_some()
            || self.private_key.is_some()
            || self.ca_crl.is_some()
    }
}

/// The client-side policy the DestinationRules of one host set, and which rule set it: TLS
/// mode, load balancing and outlier detection, for the host and per subset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPolicy {
    pub mode: Option<ClientTls>,
    pub subsets: BTreeMap<String, ClientTls>,
    pub traffic: super::TrafficPolicy,
    /// Per subset, merged over `traffic`.
    pub subset_traffic: BTreeMap<String, super::TrafficPolicy>,
    /// `<namespace>/<name>` of the DestinationRule.
    pub rule: String,
    /// Every DestinationRule merged for this host (`<namespace>/<name>`, oldest first): what
    /// `weft describe pod` names as applying.
    pub rules: Vec<String>,
    /// Service port -> the whole policy at that port, where `portLevelSettings` (of the
    /// rule or of a subset) name it; it replaces the fields above for that port's entry.
    pub ports: BTreeMap<u16, PortPolicy>,
}

/// A host's client-side policy at one Service port (`portLevelSettings` applied, Istio's
/// `MergeTrafficPolicy`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortPolicy {
    pub mode: Option<ClientTls>,
    pub subsets: BTreeMap<String, ClientTls>,
    pub traffic: super::TrafficPolicy,
    pub subset_traffic: BTreeMap<String, super::TrafficPolicy>,
}

/// Checks a table the way the proxy needs it: bounded, with a destination per route and some
/// weight. `at` names the table in the message.
pub fn validate(at: &str, routes: &[HttpRoute]) -> Result<(), String> {
    if routes.len() > MAX_ROUTES {
        return Err(format!(
            "{at} has {} routes; at most {MAX_ROUTES} are accepted",
            routes.len()
        ));
    }
    for (i, r) in routes.iter().enumerate() {
        super::action::validate(&r.actions)
            .and_then(|()| {
                r.destinations.iter().try_for_each(|d| {
                    super::action::validate_edits(&d.request_headers)?;
                    super::action::validate_edits(&d.response_headers)
                })
            })
            .map_err(|e| format!("{at}.http[{i}] ({}): {e}", r.name))?;
        // A redirect or a direct response is the proxy's own answer: nothing is forwarded.
        if r.actions.redirect.is_some() || r.actions.direct_response.is_some() {
            if !r.destinations.is_empty() {
                return Err(format!(
                    "{at}.http[{i}] ({}) both answers itself (redirect or direct response) and has destinations",
                    r.name
                ));
            }
            continue;
        }
        if r.actions
            .retries
            .as_ref()
            .is_some_and(|x| x.attempts > MAX_RETRY_ATTEMPTS)
        {
            return Err(format!(
                "{at}.http[{i}] ({}) asks for more than {MAX_RETRY_ATTEMPTS} retries",
                r.name
            ));
        }
        if r.destinations.is_empty() || r.destinations.len() > MAX_DESTINATIONS {
            return Err(format!(
                "{at}.http[{i}] ({}) has {} destinations; 1 to {MAX_DESTINATIONS} are accepted",
                r.name,
                r.destinations.len()
            ));
        }
        if r.destinations.iter().all(|d| d.weight == 0) {
            return Err(format!(
                "{at}.http[{i}] ({}) gives every destination weight 0",
                r.name
            ));
        }
    }
    Ok(())
}
