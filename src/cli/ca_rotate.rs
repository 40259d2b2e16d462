//! `weft ca rotate` (issue 24 item 4): replaces the builtin mesh root under traffic. It writes
//! the new root into Secret `weft-ca-next` and the state into ConfigMap `weft-ca-rotation`;
//! the operator's leader then moves the mesh through the phases of `operator::rotation`.
//! `weft ca rotate status` shows where it is, `weft ca rotate --abort` goes back in (a) or (b).
//! `weft ca issuer set` starts the same rotation, with the issuer to switch to ([`begin`]).

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Args, Subcommand};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};

use super::error::CliError;
use super::inventory::{self, MeshArgs};
use crate::contract;
use crate::operator::rotation::{
    self, ACKS_CONFIGMAP, NEXT_CA_SECRET, Phase, ProxySeen, ROTATION_CONFIGMAP, RotationState,
};
use crate::operator::rotation_controller::{read_state, write_state};
use crate::pki::rotation::{CONNECTED_WITHIN, POLL_EVERY, fingerprints_of_pem};
use crate::pki::{self, ISSUER_CONFIGMAP, IssuerConfig, MeshCa};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RotateArgs {
    #[command(subcommand)]
    pub command: Option<RotateCommand>,
    /// Go ahead: without it, rotate only says what it would do.
    #[arg(long)]
    pub yes: bool,
    /// Go back to the old root (only while in phase (a) or (b)).
    #[arg(long, conflicts_with = "yes")]
    pub abort: bool,
    /// Proxies holding a certificate from the old root renew within this time, each at a
    /// random moment, so they do not all ask at once (Go duration: 30s, 5m).
    #[arg(long, default_value = "30s", value_parser = parse_spread)]
    pub renew_within: Duration,
    /// Trust domain of the new root (default: the revisions' spec.trustDomain, else
    /// cluster.local).
    #[arg(long)]
    pub trust_domain: Option<String>,
    /// Rotate to a new plug-in CA: a Secret in the weft namespace with Istio's `cacerts` keys
    /// (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem), e.g. `cacerts-next`. Its
    /// material is written into Secret `cacerts` when phase (b) ends.
    #[arg(long, value_name = "SECRET", conflicts_with_all = ["trust_domain", "abort"])]
    pub cacerts: Option<String>,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

#[derive(Debug, Subcommand)]
pub enum RotateCommand {
    /// Where the rotation is: its phase, what it waits for, and each phase's time.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub mesh: MeshArgs,
}

pub(crate) fn parse_spread(s: &str) -> Result<Duration, String> {
    let d = crate::duration::parse(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(24 * 3600) {
        return Err(format!(
            "{s} is out of range: give between 1s and 24h (the longer, the gentler on the \
             operator; proxies renew at a random moment within it)"
        ));
    }
    Ok(d)
}

pub async fn run(args: RotateArgs) -> Result<(), CliError> {
    match args.command {
        Some(RotateCommand::Status(status_args)) => status(&status_args.mesh).await,
        None if args.abort => abort(&args.mesh).await,
        None => start(args).await,
    }
}

fn bad(message: String) -> CliError {
    CliError::BadRequest { message }
}

async fn start(args: RotateArgs) -> Result<(), CliError> {
    let client = inventory::client().await?;
    let yes = args.yes;
    begin(
        &client,
        &args.mesh,
        None,
        args.cacerts.as_deref(),
        args.renew_within,
        args.trust_domain.clone(),
        yes,
    )
    .await
}

/// The Secrets `--cacerts` may not name: the one its material goes into, and weft's own.
const NOT_A_SOURCE: [&str; 3] = [pki::PLUGIN_CA_SECRET, pki::WEFT_CA_SECRET, NEXT_CA_SECRET];

/// The certificates of PEM bundles one by one (PEM each), without duplicates.
fn split_roots(pems: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for der in pems
        .iter()
        .flat_map(|p| pki::certificates_from_pem(p).unwrap_or_default())
    {
        let pem = pki::pem_of_certificate(&der);
        if !out.contains(&pem) {
            out.push(pem);
        }
    }
    out
}

/// The subject of the first certificate of `pem`, for what the CLI says.
fn subject_of(pem: &str) -> String {
    pki::certificates_from_pem(pem)
        .ok()
        .and_then(|ders| ders.into_iter().next())
        .and_then(|der| {
            x509_parser::parse_x509_certificate(&der)
                .ok()
                .map(|(_, c)| c.subject().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

/// Starts a rotation: to a new builtin root (`to` None: the issuer stays builtin), or to the
/// issuer `to` (a switch of issuer; the mesh root is replaced with it, see
/// `operator::rotation`). Without `yes` it says what it would do and changes nothing (Ok, or
/// [`CliError::ConfirmationNeeded`] for `weft ca issuer set`, which always said so).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn begin(
    client: &Client,
    mesh: &MeshArgs,
    to: Option<IssuerConfig>,
    cacerts: Option<&str>,
    renew_within: Duration,
    trust_domain: Option<String>,
    yes: bool,
) -> Result<(), CliError> {
    let ns = mesh.weft_namespace.as_str();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    // A plug-in CA in force (Secret cacerts, not retired by an earlier rotation).
    let plugin = secrets
        .get_opt(pki::PLUGIN_CA_SECRET)
        .await
        .map_err(CliError::kube(format!("reading Secret {ns}/cacerts")))?
        .filter(|s| !rotation::retired(s));
    if plugin.is_some() && to.is_some() {
        return Err(bad(format!(
            "Secret {ns}/cacerts (a plug-in CA) signs: first rotate to a self-signed root \
             (`weft ca rotate --yes`), then switch issuer"
        )));
    }
    // The plug-in CA to rotate to, checked before anything is said or written.
    let next_plugin = match cacerts {
        None => None,
        Some(name) if NOT_A_SOURCE.contains(&name) => {
            return Err(bad(format!(
                "--cacerts names the Secret holding the NEW plug-in CA, not {name}: create it \
                 under another name (e.g. `kubectl -n {ns} create secret generic cacerts-next \
                 --from-file=ca-cert.pem --from-file=ca-key.pem --from-file=root-cert.pem \
                 --from-file=cert-chain.pem`); weft writes it into {ns}/cacerts when phase (b) \
                 ends"
            )));
        }
        Some(name) => {
            let secret = secrets
                .get_opt(name)
                .await
                .map_err(CliError::kube(format!("reading Secret {ns}/{name}")))?
                .ok_or_else(|| {
                    bad(format!(
                        "Secret {ns}/{name} (--cacerts) does not exist: create it with Istio's \
                         cacerts keys (ca-cert.pem, ca-key.pem, root-cert.pem, and \
                         cert-chain.pem for a deeper chain)"
                    ))
                })?;
            let ca = MeshCa::from_cacerts_secret(
                &crate::operator::rotation_controller::secret_bytes(&secret),
            )
            .map_err(|e| {
                bad(format!(
                    "Secret {ns}/{name} (--cacerts) does not hold a usable plug-in CA, read as \
                     Istio's cacerts: {e}"
                ))
            })?;
            Some((name.to_string(), ca))
        }
    };
    let configured = match configmaps
        .get_opt(ISSUER_CONFIGMAP)
        .await
        .map_err(CliError::kube(format!(
            "reading ConfigMap {ns}/{ISSUER_CONFIGMAP}"
        )))? {
        None => IssuerConfig::Builtin,
        Some(cm) => IssuerConfig::from_data(&cm.data.unwrap_or_default())
            .map_err(|e| bad(format!("ConfigMap {ns}/{ISSUER_CONFIGMAP}: {e}")))?,
    };
    if to.is_none() && !matches!(configured, IssuerConfig::Builtin) {
        return Err(bad(format!(
            "the {} issuer signs workload certificates, so a new builtin root alone would not \
             re-issue them: to move to another root, switch issuer with `weft ca issuer set \
             ...` (a rotation too), e.g. `weft ca issuer set builtin --yes`",
            configured.kind().as_str()
        )));
    }
    let existing = read_state(&configmaps).await.map_err(bad)?;
    if let Some((state, _)) = &existing
        && state.phase.active()
    {
        return Err(bad(format!(
            "rotation {} is under way (phase {}): follow it with `weft ca rotate status`, or \
             go back with `weft ca rotate --abort`",
            state.id, state.phase
        )));
    }
    let old = match &plugin {
        Some(plugin) => MeshCa::from_cacerts_secret(
            &crate::operator::rotation_controller::secret_bytes(plugin),
        )
        .map_err(|e| {
            bad(format!(
                "Secret {ns}/cacerts, the plug-in CA in force, is not usable ({e}): fix it first"
            ))
        })?,
        None => {
            let current = secrets
                .get_opt(pki::WEFT_CA_SECRET)
                .await
                .map_err(CliError::kube(format!(
                    "reading Secret {ns}/{}",
                    pki::WEFT_CA_SECRET
                )))?
                .ok_or_else(|| {
                    bad(format!(
                        "Secret {ns}/{} is missing: there is no root to rotate from; if the CA \
                         is lost, `weft ca reset` starts a new one",
                        pki::WEFT_CA_SECRET
                    ))
                })?;
            MeshCa::from_weft_ca_secret(&crate::operator::rotation_controller::secret_bytes(
                &current,
            ))
            .map_err(|e| {
                bad(format!(
                    "Secret {ns}/{} is not usable ({e}); `weft ca reset` is the way out of a \
                     broken CA",
                    pki::WEFT_CA_SECRET
                ))
            })?
        }
    };
    if let Some((name, next)) = &next_plugin
        && next.chain_pem() == old.chain_pem()
        && next.own_roots_pem() == old.own_roots_pem()
    {
        return Err(bad(format!(
            "Secret {ns}/{name} holds the plug-in CA that signs already: nothing to rotate"
        )));
    }
    // In a switch of issuer every root trusted now leaves (the mesh root and the old issuer's,
    // as the operator publishes them); in a builtin rotation, the mesh root(s).
    let mut old_roots = split_roots(&[old.own_roots_pem()]);
    if to.is_some() {
        let published = configmaps
            .get_opt(contract::ROOT_CERT_CONFIGMAP)
            .await
            .map_err(CliError::kube(format!(
                "reading ConfigMap {ns}/{}",
                contract::ROOT_CERT_CONFIGMAP
            )))?
            .and_then(|cm| cm.data?.get(contract::ROOT_CERT_KEY).cloned())
            .unwrap_or_default();
        for der in pki::certificates_from_pem(&published).unwrap_or_default() {
            let pem = pki::pem_of_certificate(&der);
            if fingerprints_of_pem(&[&pem]).is_disjoint(&fingerprints_of_pem(&old_roots)) {
                old_roots.push(pem);
            }
        }
    }
    let trust_domain = match trust_domain {
        Some(td) => td,
        None => super::ca::revisions_trust_domain(client, ns).await?,
    };
    let from = match &plugin {
        Some(_) => format!(
            "the plug-in CA of Secret {ns}/cacerts (signer {}, root {})",
            subject_of(old.chain_pem().first().map_or("", String::as_str)),
            subject_of(&old.own_roots_pem())
        ),
        None => format!("the mesh root of Secret {ns}/{}", pki::WEFT_CA_SECRET),
    };
    match (&to, &next_plugin) {
        (None, Some((name, next))) => {
            let shared = !fingerprints_of_pem(&[next.own_roots_pem()])
                .is_disjoint(&fingerprints_of_pem(&[old.own_roots_pem()]));
            println!(
                "This rotates {from} to the plug-in CA of Secret {ns}/{name} (signer {}, root \
                 {}), under traffic, in three phases; when (b) ends weft writes it into Secret \
                 {ns}/cacerts, which it signs with from then on ({name} is left as it is):",
                subject_of(next.chain_pem().first().map_or("", String::as_str)),
                subject_of(&next.own_roots_pem()),
            );
            if shared {
                println!(
                    "  (the new CA shares a root with the old one: that root stays trusted, and \
                     certificates of the old signer move at their normal renewal)"
                );
            }
        }
        (None, None) if plugin.is_some() => println!(
            "This rotates {from} to a new self-signed root for trust domain {trust_domain} in \
             Secret {ns}/{}, under traffic, in three phases; when (b) ends Secret {ns}/cacerts \
             is retired (emptied and annotated {}; delete it once Done):",
            pki::WEFT_CA_SECRET,
            rotation::RETIRED_ANNOTATION,
        ),
        (None, None) => println!(
            "This rotates the mesh root of Secret {ns}/{} to a new self-signed root for trust \
             domain {trust_domain}, under traffic, in three phases:",
            pki::WEFT_CA_SECRET
        ),
        (Some(to), _) => {
            println!(
                "This switches the issuer from {} to {} as a root rotation, under traffic: the \
                 {} root(s) trusted now leave every trust bundle, and a new self-signed mesh \
                 root for trust domain {trust_domain} replaces Secret {ns}/{}'s (it signs the \
                 operator's serving certificates{}). Phases:",
                configured.describe(),
                to.describe(),
                old_roots.len(),
                pki::WEFT_CA_SECRET,
                if matches!(to, IssuerConfig::Builtin) {
                    " and the workloads'"
                } else {
                    "; the new issuer signs the workloads'"
                },
            );
            if !matches!(to, IssuerConfig::Builtin) {
                println!(
                    "  (a) waits first for every operator replica to reach the new issuer and \
                     pass a dry signing; its roots then join every trust bundle"
                );
            }
        }
    }
    for phase in [Phase::Trusting, Phase::Reissuing, Phase::Dropping] {
        println!("  {}", phase.describe());
    }
    if to.is_some() {
        println!(
            "  ConfigMap {ns}/{ISSUER_CONFIGMAP} names the new issuer from the end of (b) on."
        );
    }
    println!(
        "Each phase waits for every connected proxy (they poll every {}s); proxies renew within \
         {}s of phase (b). `weft ca rotate status` follows it; `weft ca rotate --abort` goes \
         back while in (a) or (b).",
        POLL_EVERY.as_secs(),
        renew_within.as_secs()
    );
    if !yes {
        println!("Nothing changed: run again with --yes to start.");
        return match to {
            None => Ok(()),
            Some(_) => Err(CliError::ConfirmationNeeded),
        };
    }
    // The new CA's material goes into weft-ca-next with its own Secret's keys (Istio's for a
    // plug-in CA), so the operator reads it as it will read it once promoted.
    let (to_plugin, new) = match next_plugin {
        Some((name, next)) => (Some(name), next),
        None => (
            None,
            MeshCa::generate_root(&trust_domain, pki::DEFAULT_ROOT_VALIDITY).map_err(|e| {
                CliError::NewRoot {
                    message: e.to_string(),
                }
            })?,
        ),
    };
    // A Secret left by a finished or aborted rotation is not in use any more.
    match secrets
        .delete(NEXT_CA_SECRET, &DeleteParams::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => {
            return Err(CliError::kube(format!(
                "deleting Secret {ns}/{NEXT_CA_SECRET}"
            ))(e));
        }
    }
    let mut secret = crate::operator::ca_bundle::weft_ca_secret(&new, ns, None);
    secret.metadata.name = Some(NEXT_CA_SECRET.into());
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .map_err(CliError::kube(format!(
            "creating Secret {ns}/{NEXT_CA_SECRET}"
        )))?;
    let now = k8s_openapi::jiff::Timestamp::now();
    let id = now.strftime("%Y%m%dT%H%M%SZ").to_string();
    let mut state = RotationState::new(
        id.clone(),
        old_roots,
        split_roots(&[new.own_roots_pem()]),
        renew_within.as_secs(),
        now.to_string(),
    );
    state.to_issuer = to.map(|c| c.to_data());
    state.to_plugin = to_plugin;
    let rv = existing.and_then(|(_, rv)| rv);
    write_state(&configmaps, &state, rv.as_deref())
        .await
        .map_err(bad)?;
    println!(
        "rotation {id} started: phase {}. Follow it with `weft ca rotate status`.",
        state.phase
    );
    Ok(())
}

async fn abort(mesh: &MeshArgs) -> Result<(), CliError> {
    let client = inventory::client().await?;
    let ns = mesh.weft_namespace.as_str();
    let configmaps: Api<ConfigMap> = Api::namespaced(client, ns);
    let Some((state, rv)) = read_state(&configmaps).await.map_err(bad)? else {
        return Err(bad(format!(
            "no rotation has been started (no ConfigMap {ns}/{ROTATION_CONFIGMAP}); nothing to abort"
        )));
    };
    let to = rotation::abort(&state).map_err(|e| bad(e.to_string()))?;
    if to == state.phase {
        println!("rotation {}: already {to}: {}", state.id, to.describe());
        return Ok(());
    }
    let next = state.entering(to, k8s_openapi::jiff::Timestamp::now().to_string());
    // Over the version read: if the leader moved on meanwhile, this fails and says so.
    write_state(&configmaps, &next, rv.as_deref())
        .await
        .map_err(|e| {
            bad(format!(
                "{e}: the rotation moved on while aborting; look at `weft ca rotate status` and \
                 run --abort again if it is still in (a) or (b)"
            ))
        })?;
    println!(
        "rotation {}: {} → {to}: {}",
        state.id,
        state.phase,
        to.describe()
    );
    // From (a) the rotation ends here, not through the leader (which empties weft-ca-next when
    // RollingBack ends): the abandoned root's key must not stay behind in the Secret. Should
    // this command stop before, the leader empties it (it checks every ended rotation's).
    if to == Phase::Aborted {
        let secrets: Api<Secret> = Api::namespaced(configmaps.into_client(), ns);
        match crate::operator::rotation_controller::empty_next(&secrets, &state).await {
            Ok(()) => println!("Secret {ns}/{NEXT_CA_SECRET} emptied: the new root's key is gone."),
            Err(e) => {
                return Err(bad(format!(
                    "the rotation is aborted, but emptying Secret {ns}/{NEXT_CA_SECRET} (the abandoned root's key) failed: {e}; the operator's leader empties it within seconds, or delete it with `kubectl -n {ns} delete secret {NEXT_CA_SECRET}`"
                )));
            }
        }
    }
    Ok(())
}

async fn status(mesh: &MeshArgs) -> Result<(), CliError> {
    let client = inventory::client().await?;
    let ns = mesh.weft_namespace.as_str();
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let Some((state, _)) = read_state(&configmaps).await.map_err(bad)? else {
        println!("No root rotation has been started. `weft ca rotate` starts one.");
        return Ok(());
    };
    let acks = read_acks(&client, ns).await?;
    print!("{}", render_status(&state, &acks, now_unix()));
    Ok(())
}

fn now_unix() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_second()
}

async fn read_acks(client: &Client, ns: &str) -> Result<BTreeMap<String, ProxySeen>, CliError> {
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm = configmaps
        .get_opt(ACKS_CONFIGMAP)
        .await
        .map_err(CliError::kube(format!(
            "reading ConfigMap {ns}/{ACKS_CONFIGMAP}"
        )))?;
    let replicas: Vec<BTreeMap<String, ProxySeen>> = cm
        .and_then(|c| c.data)
        .unwrap_or_default()
        .values()
        .filter_map(|t| serde_json::from_str(t).ok())
        .collect();
    Ok(rotation::merge_acks(&replicas))
}

/// The status text: phase, what it waits for, each phase's start and duration, and the
/// connected proxies counted by what they hold.
pub fn render_status(
    state: &RotationState,
    acks: &BTreeMap<String, ProxySeen>,
    now: i64,
) -> String {
    let mut out = format!(
        "Rotation {}: phase {} — {}\n",
        state.id,
        state.phase,
        state.phase.describe()
    );
    if let Some(to) = state.to_issuer_config() {
        out.push_str(&format!("  Switching issuer to: {}\n", to.describe()));
    }
    if let Some(source) = &state.to_plugin {
        out.push_str(&format!(
            "  Rotating to: the plug-in CA of Secret {source} (into Secret cacerts when (b) ends)\n"
        ));
    }
    if state.phase.active() && !state.waiting_for.is_empty() {
        out.push_str(&format!("  Waiting for: {}\n", state.waiting_for));
    }
    out.push_str(&format!(
        "  Proxies renew within: {}s of phase (b)\n",
        state.renew_within_seconds
    ));
    out.push_str("  Phases:\n");
    let at = |s: &str| {
        s.parse::<k8s_openapi::jiff::Timestamp>()
            .ok()
            .map(|t| t.as_second())
    };
    for (i, entry) in state.history.iter().enumerate() {
        let took = match (
            at(&entry.at),
            state.history.get(i + 1).and_then(|n| at(&n.at)),
        ) {
            (Some(a), Some(b)) => format!(" ({}s)", b - a),
            (Some(a), None) if entry.phase.active() => format!(" (for {}s so far)", now - a),
            _ => String::new(),
        };
        out.push_str(&format!(
            "    {:<12} {}{took}\n",
            entry.phase.to_string(),
            entry.at
        ));
    }
    let old = state.leaving();
    let new = fingerprints_of_pem(&state.new_roots);
    let reissued = fingerprints_of_pem(&state.reissued_roots());
    let connected: Vec<&ProxySeen> = acks
        .values()
        .filter(|p| now - p.seen <= CONNECTED_WITHIN.as_secs() as i64)
        .collect();
    let count = |f: &dyn Fn(&ProxySeen) -> bool| connected.iter().filter(|p| f(p)).count();
    out.push_str(&format!(
        "  Connected proxies (polled in the last {}s): {}; trusting the new root: {}; still \
         trusting the old root: {}; certificate from the new {}: {}\n",
        CONNECTED_WITHIN.as_secs(),
        connected.len(),
        count(&|p| p.bundle.is_superset(&new)),
        count(&|p| !p.bundle.is_disjoint(&old)),
        if state.to_external() {
            "issuer"
        } else {
            "root"
        },
        count(&|p| p.leaf_root.as_ref().is_some_and(|r| reissued.contains(r))),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::rotation::fingerprint;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        rotate: RotateArgs,
    }

    fn parse(args: &[&str]) -> Result<RotateArgs, clap::Error> {
        let mut argv = vec!["rotate"];
        argv.extend(args);
        Cli::try_parse_from(argv).map(|c| c.rotate)
    }

    #[test]
    fn flags_parse_and_bad_spreads_say_what_to_give() {
        let a = parse(&["--yes", "--renew-within", "10s"]).unwrap();
        assert!(a.yes && !a.abort);
        assert_eq!(a.renew_within, Duration::from_secs(10));
        assert!(parse(&["--abort"]).unwrap().abort);
        assert!(matches!(
            parse(&["status"]).unwrap().command,
            Some(RotateCommand::Status(_))
        ));
        let a = parse(&["--cacerts", "cacerts-next", "--yes"]).unwrap();
        assert_eq!(a.cacerts.as_deref(), Some("cacerts-next"));
        assert!(
            parse(&["--cacerts", "x", "--trust-domain", "td"]).is_err(),
            "a plug-in CA brings its own root: no trust domain to give"
        );
        assert!(parse(&["--cacerts", "x", "--abort"]).is_err());
        for own in NOT_A_SOURCE {
            assert!(["cacerts", "weft-ca", "weft-ca-next"].contains(&own));
        }
        let err = parse(&["--renew-within", "0s"]).unwrap_err().to_string();
        assert!(err.contains("between 1s and 24h"), "{err}");
        assert!(parse(&["--abort", "--yes"]).is_err());
    }

    #[test]
    fn roots_are_split_one_certificate_each_without_duplicates() {
        let ca = || {
            MeshCa::generate_root("cluster.local", Duration::from_secs(86_400))
                .unwrap()
                .own_roots_pem()
        };
        let (a, b) = (ca(), ca());
        let bundle = format!("{a}{b}");
        let split = split_roots(&[bundle.clone(), a.clone()]);
        assert_eq!(split.len(), 2, "{split:?}");
        assert_eq!(fingerprints_of_pem(&split), fingerprints_of_pem(&[bundle]));
        assert!(
            split
                .iter()
                .all(|p| p.matches("BEGIN CERTIFICATE").count() == 1)
        );
        assert_eq!(subject_of(&a), "O=weft, CN=weft root CA");
        assert_eq!(subject_of("not pem"), "?");
    }

    #[test]
    fn status_shows_the_phase_its_wait_each_phase_time_and_the_proxies() {
        let ca = |_| {
            MeshCa::generate_root("cluster.local", Duration::from_secs(86_400))
                .unwrap()
                .own_roots_pem()
        };
        let (old, new) = (ca(0), ca(1));
        let fp = |pem: &str| fingerprint(&pki::certificates_from_pem(pem).unwrap()[0]);
        let mut state = RotationState::new(
            "r1".into(),
            vec![old.clone()],
            vec![new.clone()],
            10,
            "2026-12-06T08:00:00Z".into(),
        )
        .entering(Phase::Reissuing, "2026-12-06T08:00:20Z".into());
        state.waiting_for =
            "1 of 2 connected proxies to hold a certificate from the new root: b".into();
        let now = "2026-12-06T08:00:50Z"
            .parse::<k8s_openapi::jiff::Timestamp>()
            .unwrap()
            .as_second();
        let seen = |bundle: &[&str], leaf: &str, at: i64| ProxySeen {
            identity: "spiffe://cluster.local/ns/a/sa/b".into(),
            bundle: bundle.iter().map(|p| fp(p)).collect(),
            leaf_root: Some(fp(leaf)),
            seen: at,
        };
        let acks = BTreeMap::from([
            ("a".to_string(), seen(&[&old, &new], &new, now - 5)),
            ("b".to_string(), seen(&[&old, &new], &old, now - 5)),
            ("gone".to_string(), seen(&[&old], &old, now - 500)),
        ]);
        let text = render_status(&state, &acks, now);
        let mut switching = state.clone();
        switching.to_issuer = Some(BTreeMap::from([(
            "issuer".to_string(),
            "builtin".to_string(),
        )]));
        let switch_text = render_status(&switching, &acks, now);
        let mut plugin = state.clone();
        plugin.to_plugin = Some("cacerts-next".into());
        let plugin_text = render_status(&plugin, &acks, now);
        assert!(
            plugin_text.contains(
                "Rotating to: the plug-in CA of Secret cacerts-next (into Secret cacerts when (b) ends)"
            ),
            "{plugin_text}"
        );
        assert!(
            switch_text.contains("Switching issuer to: builtin"),
            "{switch_text}"
        );
        assert!(
            switch_text.contains("certificate from the new root: 1"),
            "{switch_text}"
        );
        assert!(
            text.contains("phase Reissuing — (b) the new root signs"),
            "{text}"
        );
        assert!(
            text.contains("Waiting for: 1 of 2 connected proxies"),
            "{text}"
        );
        assert!(
            text.contains("Trusting     2026-12-06T08:00:00Z (20s)"),
            "{text}"
        );
        assert!(
            text.contains("Reissuing    2026-12-06T08:00:20Z (for 30s so far)"),
            "{text}"
        );
        assert!(
            text.contains(
                "Connected proxies (polled in the last 60s): 2; trusting the new root: 2; still \
                 trusting the old root: 2; certificate from the new root: 1"
            ),
            "{text}"
        );
    }
}
