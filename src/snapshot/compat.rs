//! Proxies of older revisions: the features a proxy announces on its config stream, and how a snapshot is lowered, failing closed, for one that lacks them.
//!
//! A canary upgrade runs two proxy revisions against one operator. A snapshot field an older
//! proxy does not know is ignored by it (serde skips unknown fields), but a new *value* of a
//! known field (an enum variant such as `tls: "SIMPLE"`) makes it reject the whole snapshot:
//! one DestinationRule would freeze the config of every proxy of the older revision. So a
//! proxy names what it implements (`&features=tls-origination,…`, [`Features::query_value`]),
//! and the operator, for a proxy that lacks a feature the mesh's config uses, sends that proxy
//! a snapshot in which each Service that needs the feature answers 503 with a body that says
//! why, instead of the new value. Never plaintext where the config asks for TLS. The proxy
//! runs the rest of its config as usual, and `weft proxy-status` names what was lowered.
//!
//! Proxies that predate this module send no `features`: they are the ones the lowering is
//! for. An unknown feature name (from a newer proxy) is ignored.

use super::{ClientTls, Service};
use crate::route::action::{Actions, DirectResponse};
use crate::route::model::{HttpRoute, Origination};

/// One capability a proxy may lack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// DestinationRule `tls.mode` SIMPLE / MUTUAL: the proxy originates TLS (issue 19/20).
    TlsOrigination,
    /// Origination with certificate files in the proxy's container (`caCertificates`,
    /// `clientCertificate`, `privateKey`). A proxy with [`Feature::TlsOrigination`] alone
    /// would skip those fields and verify the server against the system roots: a wider trust
    /// than the rule asks for.
    TlsOriginationFiles,
    /// A redirect that replaces the matched path prefix (the Gateway API's
    /// `ReplacePrefixMatch`): an older proxy would skip the prefix and redirect to the new
    /// prefix alone, dropping the rest of the path.
    RedirectPrefix,
    /// ServiceEntry `resolution: DNS` with `endpoints` (`dnsEndpoints` of an egress port): an
    /// older proxy would skip them and send to the address the app dialled.
    DnsEndpoints,
}

impl Feature {
    pub const ALL: [Feature; 4] = [
        Feature::TlsOrigination,
        Feature::TlsOriginationFiles,
        Feature::RedirectPrefix,
        Feature::DnsEndpoints,
    ];

    /// The name on the stream request.
    pub fn name(self) -> &'static str {
        match self {
            Feature::TlsOrigination => "tls-origination",
            Feature::TlsOriginationFiles => "tls-origination-files",
            Feature::RedirectPrefix => "redirect-prefix",
            Feature::DnsEndpoints => "dns-endpoints",
        }
    }

    fn bit(self) -> u32 {
        match self {
            Feature::TlsOrigination => 1,
            Feature::TlsOriginationFiles => 2,
            Feature::RedirectPrefix => 4,
            Feature::DnsEndpoints => 8,
        }
    }
}

/// A set of [`Feature`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features(u32);

/// The longest `features` value the operator reads (a proxy names a few short words).
pub const MAX_FEATURES_LEN: usize = 512;

impl Features {
    /// Every feature this build implements: what weft-proxy announces.
    pub fn all() -> Self {
        Features(Feature::ALL.iter().fold(0, |bits, f| bits | f.bit()))
    }

    /// The set a `features` query value names: comma-separated names, unknown ones (a newer
    /// proxy's) ignored, a value past [`MAX_FEATURES_LEN`] read as none.
    pub fn parse(value: Option<&str>) -> Self {
        let Some(value) = value.filter(|v| v.len() <= MAX_FEATURES_LEN) else {
            return Features::default();
        };
        Features(
            value
                .split(',')
                .filter_map(|name| Feature::ALL.into_iter().find(|f| f.name() == name.trim()))
                .fold(0, |bits, f| bits | f.bit()),
        )
    }

    /// The value weft-proxy puts on its stream request.
    pub fn query_value(self) -> String {
        Feature::ALL
            .into_iter()
            .filter(|f| self.has(*f))
            .map(Feature::name)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn has(self, f: Feature) -> bool {
        self.0 & f.bit() != 0
    }

    fn with(self, f: Feature) -> Self {
        Features(self.0 | f.bit())
    }

    /// Whether some feature of `self` is missing from `proxy`.
    pub fn beyond(self, proxy: Features) -> bool {
        self.0 & !proxy.0 != 0
    }
}

/// The features a list of Services needs a proxy to have.
pub fn needed(services: &[Service]) -> Features {
    let mut needs = Features::default();
    if services.iter().any(originates) {
        needs = needs.with(Feature::TlsOrigination);
    }
    if services
        .iter()
        .any(|s| originations(s).any(Origination::uses_files))
    {
        needs = needs.with(Feature::TlsOriginationFiles);
    }
    if services
        .iter()
        .flat_map(|s| &s.http)
        .any(redirects_by_prefix)
    {
        needs = needs.with(Feature::RedirectPrefix);
    }
    needs
}

/// The features an egress table needs a proxy to have (those [`lower_egress`] lowers by
/// itself; TLS origination on it shows in the headless Services).
pub fn egress_needed(egress: &[crate::route::egress::ExternalService]) -> Features {
    let mut needs = Features::default();
    if egress
        .iter()
        .flat_map(|h| &h.ports)
        .any(|p| !p.dns_endpoints.is_empty())
    {
        needs = needs.with(Feature::DnsEndpoints);
    }
    needs
}

fn redirects_by_prefix(r: &HttpRoute) -> bool {
    r.actions
        .redirect
        .as_ref()
        .is_some_and(|r| r.prefix.is_some())
}

fn originates(s: &Service) -> bool {
    s.tls.is_some_and(ClientTls::originates) || s.subset_tls.values().any(|m| m.originates())
}

/// The origination settings of a Service: its own and its subsets'.
fn originations(s: &Service) -> impl Iterator<Item = &Origination> {
    s.traffic.origination.iter().chain(
        s.subset_traffic
            .values()
            .filter_map(|t| t.origination.as_ref()),
    )
}

/// Lowers `services` in place for a proxy that has only `proxy`'s features, failing closed:
/// one line per Service changed, naming what its requests now get.
///
/// TLS origination: a Service whose own mode is SIMPLE/MUTUAL loses its endpoints and routes
/// and answers every request with 503 and the reason (a connection to a TCP port of it is
/// closed: no endpoints); a subset whose mode is SIMPLE/MUTUAL loses its endpoints (requests
/// routed to it get the proxy's 503 "no healthy upstream"). Coarser than the newer proxy's
/// behaviour (a route of that host to another Service is lost too), never plaintext.
pub fn lower(proxy: Features, services: &mut [Service]) -> Vec<String> {
    let mut notes = Vec::new();
    if !proxy.has(Feature::RedirectPrefix) {
        lower_redirects(services, &mut notes);
    }
    if proxy.has(Feature::TlsOrigination) {
        if !proxy.has(Feature::TlsOriginationFiles) {
            lower_files(services, &mut notes);
        }
        return notes;
    }
    for s in services.iter_mut().filter(|s| originates(s)) {
        let at = format!("{}:{}", s.name, s.port);
        if let Some(mode) = s.tls.filter(|m| m.originates()) {
            let why = format!(
                "TLS origination to {at} (DestinationRule tls.mode {}) needs a weft-proxy with feature {}; this pod's proxy is of an older revision: upgrade it (weft proxy-status)",
                mode.name(),
                Feature::TlsOrigination.name()
            );
            s.endpoints.clear();
            s.subsets.values_mut().for_each(Vec::clear);
            s.subset_tls.clear();
            s.l4 = Default::default();
            s.http = vec![HttpRoute {
                name: "weft/lowered".into(),
                matches: Vec::new(),
                destinations: Vec::new(),
                actions: Actions {
                    direct_response: Some(DirectResponse {
                        status: 503,
                        body: Some(format!("{why}\n")),
                    }),
                    ..Default::default()
                },
            }];
            notes.push(format!("{at}: answers 503: {why}"));
        }
        s.tls = s.tls.filter(|m| !m.originates());
        s.traffic.origination = None;
        let lowered: Vec<String> = s
            .subset_tls
            .iter()
            .filter(|(_, m)| m.originates())
            .map(|(name, _)| name.clone())
            .collect();
        for subset in &lowered {
            if let Some(endpoints) = s.subsets.get_mut(subset) {
                endpoints.clear();
            }
            s.subset_tls.remove(subset);
            notes.push(format!(
                "{at} subset {subset}: no endpoints (its DestinationRule tls.mode SIMPLE/MUTUAL needs feature {}; upgrade the proxy)",
                Feature::TlsOrigination.name()
            ));
        }
        for policy in s.subset_traffic.values_mut() {
            policy.origination = None;
        }
    }
    notes
}

/// For a proxy that cannot redirect by prefix: each such route answers 503 with the reason
/// instead of sending the client to a wrong path.
fn lower_redirects(services: &mut [Service], notes: &mut Vec<String>) {
    for s in services.iter_mut() {
        let at = format!("{}:{}", s.name, s.port);
        for r in s.http.iter_mut().filter(|r| redirects_by_prefix(r)) {
            let why = format!(
                "route {} redirects by path prefix (ReplacePrefixMatch), which needs a weft-proxy with feature {}; this pod's proxy is of an older revision: upgrade it (weft proxy-status)",
                r.name,
                Feature::RedirectPrefix.name()
            );
            notes.push(format!("{at}: {why}"));
            r.actions = Actions {
                direct_response: Some(DirectResponse {
                    status: 503,
                    body: Some(format!("{why}\n")),
                }),
                ..Default::default()
            };
        }
    }
}

/// For a proxy that originates TLS but does not read certificate files: each origination
/// with files is marked refused (a field it knows), so it refuses those connections instead
/// of skipping the files and trusting the system roots.
fn lower_files(services: &mut [Service], notes: &mut Vec<String>) {
    for s in services.iter_mut() {
        let at = format!("{}:{}", s.name, s.port);
        let subsets = s.subset_traffic.values_mut();
        for o in s
            .traffic
            .origination
            .iter_mut()
            .chain(subsets.filter_map(|t| t.origination.as_mut()))
        {
            if o.uses_files() && o.refused.is_none() {
                o.refused = Some(format!(
                    "certificate files (caCertificates, clientCertificate, privateKey) need a weft-proxy with feature {}; this pod's proxy is of an older revision: upgrade it (weft proxy-status)",
                    Feature::TlsOriginationFiles.name()
                ));
                notes.push(format!(
                    "{at}: TLS origination refused: its certificate files need feature {}; upgrade the proxy",
                    Feature::TlsOriginationFiles.name()
                ));
            }
        }
    }
}

/// For a proxy lacking TLS origination, the ports of ServiceEntry hosts it would relay as bytes
/// although a DestinationRule originates TLS there: the operator lays that rule on an
/// address-less Service named after the host (in `headless`, [`lower`] makes it answer 503),
/// but an older proxy relays a TCP or TLS port of an entry by address without reading that
/// Service. Such a port is given to it as HTTP instead, so it reads the app's bytes as HTTP
/// and serves them by the lowered Service (503) or closes the connection: never plaintext on.
pub fn lower_egress(
    proxy: Features,
    headless: &[Service],
    egress: &mut [crate::route::egress::ExternalService],
) -> Vec<String> {
    use crate::route::egress::PortProtocol;
    let mut notes = Vec::new();
    if !proxy.has(Feature::DnsEndpoints) {
        for host in egress.iter_mut() {
            host.ports.retain(|port| {
                if port.dns_endpoints.is_empty() {
                    return true;
                }
                notes.push(format!(
                    "{}:{} (ServiceEntry {}): not declared to this proxy: its endpoints are resolved by name (resolution DNS), which needs feature {}; upgrade the proxy",
                    host.host,
                    port.number,
                    host.source,
                    Feature::DnsEndpoints.name()
                ));
                false
            });
        }
    }
    if proxy.has(Feature::TlsOrigination) {
        return notes;
    }
    for host in egress.iter_mut() {
        for port in host
            .ports
            .iter_mut()
            .filter(|p| p.protocol != PortProtocol::Http)
        {
            let originated = headless.iter().any(|s| {
                s.name == host.host
                    && s.port == port.number
                    && s.tls.is_some_and(ClientTls::originates)
            });
            if originated {
                port.protocol = PortProtocol::Http;
                notes.push(format!(
                    "{}:{} (ServiceEntry {}): read as HTTP and answered 503, not relayed: its DestinationRule originates TLS, which needs feature {}; upgrade the proxy",
                    host.host,
                    port.number,
                    host.source,
                    Feature::TlsOrigination.name()
                ));
            }
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{ProxySnapshot, decode_snapshot};
    use serde_json::json;

    fn service(tls: Option<ClientTls>, subset: Option<(&str, ClientTls)>) -> Service {
        let mut s: Service = serde_json::from_value(json!({
            "clusterIp": "198.19.0.10", "port": 443, "name": "api.pets.svc.cluster.local",
            "protocol": "http",
            "endpoints": [{"ip": "198.18.0.7", "port": 8443, "meshed": false},
                          {"ip": "198.18.0.8", "port": 8443, "meshed": false}],
            "subsets": {"v1": [0], "v2": [1]}
        }))
        .unwrap();
        s.tls = tls;
        if let Some((name, mode)) = subset {
            s.subset_tls.insert(name.into(), mode);
        }
        s
    }

    #[test]
    fn features_round_trip_and_unknown_or_oversized_values_name_nothing() {
        let all = Features::all();
        assert!(all.has(Feature::TlsOrigination));
        assert_eq!(
            all.query_value(),
            "tls-origination,tls-origination-files,redirect-prefix,dns-endpoints"
        );
        assert_eq!(Features::parse(Some(&all.query_value())), all);
        assert_eq!(
            Features::parse(Some(
                "delta, tls-origination-files ,from-the-future,tls-origination,redirect-prefix,dns-endpoints"
            )),
            all
        );
        assert_eq!(Features::parse(None), Features::default());
        assert_eq!(Features::parse(Some("tls")), Features::default());
        let long = format!("tls-origination,{}", "x".repeat(MAX_FEATURES_LEN));
        assert_eq!(Features::parse(Some(&long)), Features::default());
        assert!(!Features::default().has(Feature::TlsOrigination));
    }

    #[test]
    fn only_services_that_originate_need_the_feature() {
        let plain = [
            service(None, None),
            service(
                Some(ClientTls::IstioMutual),
                Some(("v1", ClientTls::Disable)),
            ),
        ];
        assert_eq!(needed(&plain), Features::default());
        assert!(!needed(&plain).beyond(Features::default()));
        for s in [
            service(Some(ClientTls::Simple), None),
            service(None, Some(("v2", ClientTls::Mutual))),
        ] {
            let needs = needed(std::slice::from_ref(&s));
            assert!(needs.has(Feature::TlsOrigination));
            assert!(needs.beyond(Features::default()));
            assert!(!needs.beyond(Features::all()));
        }
    }

    /// What an older proxy would decode: the snapshot schema minus the new variants. A
    /// lowered list must decode with it (no `SIMPLE`/`MUTUAL` left).
    fn older_proxy_reads(services: &[Service]) -> bool {
        let text = serde_json::to_string(services).unwrap();
        !text.contains("\"SIMPLE\"") && !text.contains("\"MUTUAL\"")
    }

    #[test]
    fn a_host_that_originates_answers_503_with_the_reason_and_keeps_no_endpoint() {
        let mut services = vec![
            service(
                Some(ClientTls::Mutual),
                Some(("v1", ClientTls::IstioMutual)),
            ),
            service(None, None),
        ];
        services[1].port = 80;
        let untouched = services[1].clone();
        // A proxy with the feature gets the list as it is.
        let mut same = services.clone();
        assert!(lower(Features::all(), &mut same).is_empty());
        assert_eq!(same, services);

        let notes = lower(Features::default(), &mut services);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].contains("api.pets.svc.cluster.local:443"),
            "{}",
            notes[0]
        );
        assert!(notes[0].contains("MUTUAL") && notes[0].contains("upgrade"));
        let s = &services[0];
        assert!(s.endpoints.is_empty() && s.subsets.values().all(Vec::is_empty));
        assert_eq!(s.tls, None);
        assert!(s.subset_tls.is_empty());
        let [route] = s.http.as_slice() else {
            panic!("one route: {:?}", s.http)
        };
        let answer = route.actions.direct_response.as_ref().unwrap();
        assert_eq!(answer.status, 503);
        assert!(answer.body.as_ref().unwrap().contains("tls-origination"));
        assert_eq!(services[1], untouched);
        assert!(older_proxy_reads(&services));
        // Every endpoint is gone, so no path of an older proxy reaches the server in
        // plaintext; and the lowered snapshot is a valid one.
        let snapshot: ProxySnapshot = serde_json::from_value(json!({
            "schemaVersion": 1, "version": "v1",
            "identity": "spiffe://cluster.local/ns/pets/sa/web", "trustDomain": "cluster.local",
            "inbound": {"defaultMode": "PERMISSIVE"},
            "outbound": {"services": services}
        }))
        .unwrap();
        decode_snapshot(&serde_json::to_vec(&snapshot).unwrap()).unwrap();
    }

    #[test]
    fn a_serviceentry_tcp_port_that_originates_is_read_as_http_by_an_older_proxy() {
        use crate::route::egress::{ExternalService, PortProtocol};
        let entry: ExternalService = serde_json::from_value(json!({
            "host": "db.example.com", "namespace": "pets", "source": "pets/db",
            "ports": [{"number": 5432, "protocol": "tcp"}, {"number": 443, "protocol": "tls"},
                      {"number": 80, "protocol": "http"}],
            "resolution": "DNS", "location": "MESH_EXTERNAL"
        }))
        .unwrap();
        let mut headless = vec![service(Some(ClientTls::Simple), None)];
        headless[0].name = "db.example.com".into();
        headless[0].port = 5432;
        let mut egress = vec![entry.clone()];
        assert!(lower_egress(Features::all(), &headless, &mut egress).is_empty());
        assert_eq!(egress, std::slice::from_ref(&entry));
        let notes = lower_egress(Features::default(), &headless, &mut egress);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("db.example.com:5432"), "{}", notes[0]);
        let protocols: Vec<PortProtocol> = egress[0].ports.iter().map(|p| p.protocol).collect();
        // Only the originated port changes; the TLS port with no rule is the app's own TLS.
        assert_eq!(
            protocols,
            [PortProtocol::Http, PortProtocol::Tls, PortProtocol::Http]
        );
    }

    /// An older proxy would skip `dnsEndpoints` and send to the address the app dialled: the
    /// port is not declared to it (REGISTRY_ONLY refuses it, ALLOW_ANY passes it through as
    /// any undeclared destination), and the note says why.
    #[test]
    fn a_port_with_dns_endpoints_is_not_declared_to_an_older_proxy() {
        use crate::route::egress::ExternalService;
        let entry: ExternalService = serde_json::from_value(json!({
            "host": "foo.bar.com", "namespace": "egress", "source": "egress/external-svc-dns",
            "ports": [{"number": 80, "protocol": "http",
                       "dnsEndpoints": [{"address": "us.foo.bar.com", "port": 8080}]},
                      {"number": 443, "protocol": "tls"}],
            "resolution": "DNS", "location": "MESH_EXTERNAL"
        }))
        .unwrap();
        let needs = egress_needed(std::slice::from_ref(&entry));
        assert!(needs.has(Feature::DnsEndpoints));
        assert!(!needs.beyond(Features::all()));
        assert!(!egress_needed(&[]).beyond(Features::default()));
        let mut egress = vec![entry.clone()];
        assert!(lower_egress(Features::all(), &[], &mut egress).is_empty());
        assert_eq!(egress, std::slice::from_ref(&entry));
        let older = Features::parse(Some(
            "tls-origination,tls-origination-files,redirect-prefix",
        ));
        let notes = lower_egress(older, &[], &mut egress);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].contains("foo.bar.com:80") && notes[0].contains("dns-endpoints"),
            "{}",
            notes[0]
        );
        let ports: Vec<u16> = egress[0].ports.iter().map(|p| p.number).collect();
        assert_eq!(ports, [443]);
    }

    #[test]
    fn a_subset_that_originates_loses_its_endpoints_and_the_others_keep_theirs() {
        let mut services = vec![service(
            Some(ClientTls::IstioMutual),
            Some(("v2", ClientTls::Simple)),
        )];
        let notes = lower(Features::default(), &mut services);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("subset v2"), "{}", notes[0]);
        let s = &services[0];
        assert_eq!(s.subsets["v2"], Vec::<usize>::new());
        assert_eq!(s.subsets["v1"], vec![0]);
        assert_eq!(s.endpoints.len(), 2);
        assert_eq!(s.tls, Some(ClientTls::IstioMutual));
        assert!(s.http.is_empty());
        assert!(older_proxy_reads(&services));
    }

    /// A proxy that originates but predates certificate files gets those originations marked
    /// refused (it would otherwise skip the files and trust the system roots); one without
    /// files, and a current proxy, are left as they are.
    #[test]
    fn origination_with_certificate_files_is_refused_for_a_proxy_that_cannot_read_them() {
        let files = Origination {
            ca_certificates: Some("/etc/partner/ca.pem".into()),
            ..Default::default()
        };
        let mut with_files = service(Some(ClientTls::Simple), Some(("v2", ClientTls::Simple)));
        with_files.traffic.origination = Some(files.clone());
        let mut v2 = with_files.traffic.clone();
        v2.origination = Some(files);
        with_files.subset_traffic.insert("v2".into(), v2);
        let mut secret = service(Some(ClientTls::Simple), None);
        secret.traffic.origination = Some(Origination {
            credential_name: Some("partner".into()),
            ..Default::default()
        });
        let table = vec![with_files, secret];
        let needs = needed(&table);
        assert!(needs.has(Feature::TlsOriginationFiles));
        let origination_only = Features::parse(Some("tls-origination"));
        assert!(needs.beyond(origination_only));
        assert!(!needs.beyond(Features::all()));

        let mut lowered = table.clone();
        let notes = lower(origination_only, &mut lowered);
        assert_eq!(notes.len(), 2, "{notes:?}");
        for o in [
            lowered[0].traffic.origination.as_ref(),
            lowered[0].subset_traffic["v2"].origination.as_ref(),
        ] {
            let why = o.and_then(|o| o.refused.as_deref()).unwrap_or_default();
            assert!(why.contains("tls-origination-files"), "{why}");
        }
        assert_eq!(lowered[1], table[1], "a Secret's origination is left alone");
        // Endpoints and modes stay: the proxy refuses these connections itself.
        assert_eq!(lowered[0].endpoints, table[0].endpoints);
        let mut current = table.clone();
        assert!(lower(Features::all(), &mut current).is_empty());
        assert_eq!(current, table);
    }

    /// A proxy without `redirect-prefix` gets such a route answering 503 with the reason, not
    /// a redirect to the new prefix alone; other routes stay.
    #[test]
    fn a_prefix_redirect_answers_503_for_a_proxy_that_cannot_do_it() {
        use crate::route::action::Redirect;
        let mut svc = service(None, None);
        let redirect = |prefix: Option<&str>| HttpRoute {
            name: "shop/r".into(),
            matches: Vec::new(),
            destinations: Vec::new(),
            actions: Actions {
                redirect: Some(Redirect {
                    uri: Some("/new/".into()),
                    authority: None,
                    scheme: None,
                    port: None,
                    code: 302,
                    prefix: prefix.map(str::to_string),
                }),
                ..Default::default()
            },
        };
        svc.http = vec![redirect(Some("/old/")), redirect(None)];
        let table = vec![svc];
        let needs = needed(&table);
        let older = Features::parse(Some("tls-origination,tls-origination-files"));
        assert!(needs.has(Feature::RedirectPrefix) && needs.beyond(older));
        let mut lowered = table.clone();
        let notes = lower(older, &mut lowered);
        assert_eq!(notes.len(), 1, "{notes:?}");
        let answer = lowered[0].http[0].actions.direct_response.as_ref();
        assert_eq!(answer.map(|d| d.status), Some(503));
        assert!(
            answer
                .and_then(|d| d.body.as_deref())
                .is_some_and(|b| b.contains("redirect-prefix"))
        );
        assert_eq!(
            lowered[0].http[1], table[0].http[1],
            "a whole-path redirect stays"
        );
        let mut current = table.clone();
        assert!(lower(Features::all(), &mut current).is_empty());
    }
}
