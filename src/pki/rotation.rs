//! The trust-poll protocol of root rotation (issue 24 item 4), shared by both binaries: what a
//! proxy reports (`POST /v1/trust` on :15012, with its workload certificate as the TLS client
//! certificate) and what the operator answers, plus the proxy's pure decision on the answer
//! (install a new trust bundle; renew early, with jitter, when its certificate is not from the
//! current signer). Roots are named by the SHA-256 of their DER, as `openssl x509 -fingerprint
//! -sha256` prints them without colons.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::encoding::certificates_from_pem;

/// Where proxies poll the trust bundle and report what they hold.
pub const PATH_TRUST: &str = "/v1/trust";
/// How often a proxy polls (±20 % jitter). Every phase of a rotation waits for one poll of
/// every connected proxy, so this is the time one phase takes at least; each poll is one TLS
/// handshake on the operator (1,000 proxies: about 70 a second).
pub const POLL_EVERY: Duration = Duration::from_secs(15);
/// A proxy not heard from for this long is not "connected": a rotation does not wait for it,
/// and it recovers on its next poll (it renews, its certificate being from an old signer).
pub const CONNECTED_WITHIN: Duration = Duration::from_secs(60);
/// Largest report or answer body (a few roots of a few hundred bytes each).
pub const MAX_TRUST_BYTES: usize = 64 * 1024;
/// Renewal spread when the operator names none.
pub const DEFAULT_RENEW_WITHIN: Duration = Duration::from_secs(30);

/// What a proxy sends: its pod, the roots it trusts now and the root its own certificate
/// chains to (fingerprints), so the operator can tell when every proxy has moved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustReport {
    pub pod: String,
    #[serde(default)]
    pub bundle: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaf_root: Option<String>,
}

/// What the operator answers: the trust bundle to hold, the roots the current signer chains
/// to (a certificate anchored elsewhere is renewed), and over how long to spread renewals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustAnswer {
    pub roots: Vec<String>,
    pub signer_roots: Vec<String>,
    #[serde(default)]
    pub renew_within_seconds: u64,
}

/// Lower-case hex SHA-256 of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The fingerprints of every certificate in PEM blocks; unreadable blocks are skipped (they
/// could anchor nothing).
pub fn fingerprints_of_pem<S: AsRef<str>>(pems: &[S]) -> BTreeSet<String> {
    pems.iter()
        .flat_map(|p| certificates_from_pem(p.as_ref()).unwrap_or_default())
        .map(|der| fingerprint(&der))
        .collect()
}

/// The root (of `roots_der`) that `chain_der` (leaf first) chains to at `at`, as a
/// fingerprint; None when it chains to none of them.
pub fn anchor_of<C: AsRef<[u8]>, R: AsRef<[u8]>>(
    chain_der: &[C],
    roots_der: &[R],
    at: SystemTime,
) -> Option<String> {
    let (leaf, intermediates) = chain_der.split_first()?;
    roots_der.iter().find_map(|root| {
        super::verify_chain(leaf.as_ref(), intermediates, &[root.as_ref()], at)
            .ok()
            .map(|()| fingerprint(root.as_ref()))
    })
}

/// What a proxy does with an answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyAction {
    /// A trust bundle to install (DER, in the answer's order), None when it holds this one.
    pub new_roots: Option<Vec<Vec<u8>>>,
    /// Renew within this time (a uniform draw in [0, it)): the certificate is not from the
    /// current signer. None: keep the normal schedule.
    pub renew_within: Option<Duration>,
}

/// The proxy's decision on `answer`, holding `chain_der` (leaf first) and trusting `roots_der`,
/// at `at`. An answer with no roots, or none readable, is ignored: a proxy never empties its
/// trust bundle.
pub fn proxy_action<C: AsRef<[u8]>, R: AsRef<[u8]>>(
    chain_der: &[C],
    roots_der: &[R],
    answer: &TrustAnswer,
    at: SystemTime,
) -> ProxyAction {
    let answered: Vec<Vec<u8>> = answer
        .roots
        .iter()
        .flat_map(|p| certificates_from_pem(p).unwrap_or_default())
        .collect();
    if answered.is_empty() {
        return ProxyAction::default();
    }
    let held: BTreeSet<&[u8]> = roots_der.iter().map(|r| r.as_ref()).collect();
    let wanted: BTreeSet<&[u8]> = answered.iter().map(|r| r.as_slice()).collect();
    let new_roots = (held != wanted).then(|| answered.clone());
    let signer: Vec<Vec<u8>> = answer
        .signer_roots
        .iter()
        .flat_map(|p| certificates_from_pem(p).unwrap_or_default())
        .collect();
    let renew_within =
        (!signer.is_empty() && anchor_of(chain_der, &signer, at).is_none()).then(|| {
            match answer.renew_within_seconds {
                0 => DEFAULT_RENEW_WITHIN,
                s => Duration::from_secs(s),
            }
        });
    ProxyAction {
        new_roots,
        renew_within,
    }
}

/// The report of a proxy holding `chain_der` and trusting `roots_der`.
pub fn report<C: AsRef<[u8]>, R: AsRef<[u8]>>(
    pod: &str,
    chain_der: &[C],
    roots_der: &[R],
    at: SystemTime,
) -> TrustReport {
    TrustReport {
        pod: pod.to_string(),
        bundle: roots_der.iter().map(|r| fingerprint(r.as_ref())).collect(),
        leaf_root: anchor_of(chain_der, roots_der, at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{MeshCa, WorkloadKey};

    const ID: &str = "spiffe://cluster.local/ns/pets/sa/web";

    fn root() -> MeshCa {
        MeshCa::generate_root("cluster.local", Duration::from_secs(86_400)).unwrap()
    }

    fn leaf(ca: &MeshCa) -> Vec<Vec<u8>> {
        let key = WorkloadKey::generate().unwrap();
        let issued = ca
            .sign_workload_csr(
                &key.csr_pem(ID).unwrap(),
                ID,
                Duration::from_secs(3600),
                SystemTime::now(),
            )
            .unwrap();
        certificates_from_pem(&issued.cert_chain_pem.concat()).unwrap()
    }

    fn ders(ca: &MeshCa) -> Vec<Vec<u8>> {
        certificates_from_pem(&ca.own_roots_pem()).unwrap()
    }

    fn answer(roots: &[&MeshCa], signer: &MeshCa) -> TrustAnswer {
        TrustAnswer {
            roots: roots.iter().map(|c| c.own_roots_pem()).collect(),
            signer_roots: vec![signer.own_roots_pem()],
            renew_within_seconds: 7,
        }
    }

    #[test]
    fn a_proxy_installs_both_roots_then_renews_from_the_new_signer_then_drops_the_old() {
        let (old, new) = (root(), root());
        let now = SystemTime::now();
        let chain = leaf(&old);
        let held = ders(&old);
        // (a) both roots, the old one signs: install, no renewal.
        let a = proxy_action(&chain, &held, &answer(&[&old, &new], &old), now);
        let both: Vec<Vec<u8>> = ders(&old).into_iter().chain(ders(&new)).collect();
        assert_eq!(a.new_roots.as_ref(), Some(&both));
        assert_eq!(a.renew_within, None);
        // Asked again with the same bundle: nothing to do.
        let again = proxy_action(&chain, &both, &answer(&[&old, &new], &old), now);
        assert_eq!(again, ProxyAction::default());
        // (b) the new root signs: renew within the spread the operator names.
        let b = proxy_action(&chain, &both, &answer(&[&new, &old], &new), now);
        assert_eq!(
            b.new_roots, None,
            "the same set in another order is the same bundle"
        );
        assert_eq!(b.renew_within, Some(Duration::from_secs(7)));
        // Renewed: its leaf chains to the new root, nothing to do until (c).
        let renewed = leaf(&new);
        assert_eq!(
            proxy_action(&renewed, &both, &answer(&[&new, &old], &new), now),
            ProxyAction::default()
        );
        assert_eq!(
            report("web-1", &renewed, &both, now).leaf_root,
            Some(fingerprint(&ders(&new)[0]))
        );
        // (c) the old root goes.
        let c = proxy_action(&renewed, &both, &answer(&[&new], &new), now);
        assert_eq!(c.new_roots, Some(ders(&new)));
        assert_eq!(c.renew_within, None);
    }

    #[test]
    fn a_proxy_away_during_the_drop_renews_on_its_next_answer() {
        let (old, new) = (root(), root());
        let chain = leaf(&old);
        let mut unset = answer(&[&new], &new);
        unset.renew_within_seconds = 0;
        let act = proxy_action(&chain, &ders(&old), &unset, SystemTime::now());
        assert_eq!(act.new_roots, Some(ders(&new)));
        assert_eq!(act.renew_within, Some(DEFAULT_RENEW_WITHIN));
        // Its report says it still chains to the old root, which the operator no longer lists.
        let r = report("away", &chain, &ders(&old), SystemTime::now());
        assert_eq!(r.leaf_root, Some(fingerprint(&ders(&old)[0])));
        assert!(!fingerprints_of_pem(&[new.own_roots_pem()]).contains(&r.bundle[0]));
    }

    #[test]
    fn an_empty_or_unreadable_answer_never_empties_the_bundle() {
        let ca = root();
        let chain = leaf(&ca);
        for roots in [vec![], vec!["not a certificate".to_string()]] {
            let bad = TrustAnswer {
                roots,
                signer_roots: vec![],
                renew_within_seconds: 0,
            };
            assert_eq!(
                proxy_action(&chain, &ders(&ca), &bad, SystemTime::now()),
                ProxyAction::default()
            );
        }
    }

    #[test]
    fn the_wire_format_is_camel_case() {
        let r = TrustReport {
            pod: "p".into(),
            bundle: vec!["ab".into()],
            leaf_root: Some("ab".into()),
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["leafRoot"], "ab");
        let a: TrustAnswer =
            serde_json::from_str(r#"{"roots":[],"signerRoots":[],"renewWithinSeconds":3}"#)
                .unwrap();
        assert_eq!(a.renew_within_seconds, 3);
    }
}
