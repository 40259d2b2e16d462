//! The Gateway API's `ReferenceGrant`s as the route and Gateway compilers ask them: may an
//! object of (group, kind) in one namespace refer to an object of (group, kind, name) in
//! another? Kube-free: the operator hands over the grants it watches.

/// One `ReferenceGrant`, in the namespace whose objects it lets others refer to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    pub namespace: String,
    /// (group, kind, namespace) of the referring objects (`spec.from[]`).
    pub from: Vec<(String, String, String)>,
    /// (group, kind, name) of the objects referred to (`spec.to[]`; no name: every one).
    pub to: Vec<(String, String, Option<String>)>,
}

/// Every grant of the cluster. A reference within one namespace needs none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReferenceGrants(pub Vec<Grant>);

/// No grant at all: every cross-namespace reference is refused.
pub static NONE: ReferenceGrants = ReferenceGrants(Vec::new());

/// One side of a reference: group (`""` for the core group), kind, namespace.
#[derive(Debug, Clone, Copy)]
pub struct Ref<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
}

impl ReferenceGrants {
    /// Whether `from` may refer to the object `name` of `to`: the same namespace, or a grant
    /// in `to`'s namespace naming `from`'s group, kind and namespace and `to`'s group, kind
    /// and (when it names one) name.
    pub fn permits(&self, from: Ref<'_>, to: Ref<'_>, name: &str) -> bool {
        from.namespace == to.namespace
            || self.0.iter().any(|g| {
                g.namespace == to.namespace
                    && g.from.iter().any(|(group, kind, ns)| {
                        group == from.group && kind == from.kind && ns == from.namespace
                    })
                    && g.to.iter().any(|(group, kind, n)| {
                        group == to.group
                            && kind == to.kind
                            && n.as_deref().is_none_or(|n| n == name)
                    })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: &str = "gateway.networking.k8s.io";

    fn grants() -> ReferenceGrants {
        ReferenceGrants(vec![
            // Routes of "apps" may use every Service of "backends".
            Grant {
                namespace: "backends".into(),
                from: vec![(GW.into(), "HTTPRoute".into(), "apps".into())],
                to: vec![(String::new(), "Service".into(), None)],
            },
            // Gateways of "infra" may use Secret "cert" of "certs" only.
            Grant {
                namespace: "certs".into(),
                from: vec![(GW.into(), "Gateway".into(), "infra".into())],
                to: vec![(String::new(), "Secret".into(), Some("cert".into()))],
            },
        ])
    }

    fn r<'a>(group: &'a str, kind: &'a str, namespace: &'a str) -> Ref<'a> {
        Ref {
            group,
            kind,
            namespace,
        }
    }

    #[test]
    fn a_grant_permits_exactly_what_it_names() {
        let g = grants();
        let route = r(GW, "HTTPRoute", "apps");
        assert!(g.permits(route, r("", "Service", "backends"), "echo"));
        assert!(
            g.permits(route, r("", "Service", "apps"), "x"),
            "same namespace"
        );
        // Another kind, another namespace, another target kind: no.
        assert!(!g.permits(
            r(GW, "GRPCRoute", "apps"),
            r("", "Service", "backends"),
            "echo"
        ));
        assert!(!g.permits(
            r(GW, "HTTPRoute", "web"),
            r("", "Service", "backends"),
            "echo"
        ));
        assert!(!g.permits(route, r("", "Secret", "backends"), "echo"));
        // A grant lives in the target's namespace: one elsewhere permits nothing there.
        assert!(!g.permits(route, r("", "Service", "certs"), "echo"));
        let gw = r(GW, "Gateway", "infra");
        assert!(g.permits(gw, r("", "Secret", "certs"), "cert"));
        assert!(
            !g.permits(gw, r("", "Secret", "certs"), "other"),
            "named: that one only"
        );
        assert!(!NONE.permits(route, r("", "Service", "backends"), "echo"));
    }
}
