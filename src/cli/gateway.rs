//! `weft gateway install`: the objects of an Istio-style ingress gateway (ServiceAccount,
//! Deployment whose `istio-proxy` container the webhook fills, LoadBalancer Service), as
//! Istio's `gateway` Helm chart makes them. The render is pure (and pinned against
//! `config/components/gateway/`); the write is one server-side apply per object.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, Namespace, PodSpec, PodTemplateSpec, ResourceRequirements, Service, ServiceAccount,
    ServicePort, ServiceSpec,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::Value;

use super::error::{CliError, check_name};
use super::inventory::{self, Catalog, Enrolment, MeshArgs, Resolution};
use crate::contract;

/// The Service annotation that makes an AKS load balancer internal (seed 003's
/// `aks-istio-ingressgateway-internal`).
pub const ANNOTATION_AZURE_INTERNAL_LB: &str =
    "service.beta.kubernetes.io/azure-load-balancer-internal";
/// Istio's gateway chart labels the pods with this, which weft reads as "inject, through the
/// `default` tag unless `istio.io/rev` says otherwise" (SPEC §4 rule 5).
const LABEL_APP: &str = contract::LABEL_APP;
const LABEL_ISTIO: &str = "istio";

#[derive(Debug, Subcommand)]
pub enum GatewayCommand {
    /// Create or update an ingress gateway: ServiceAccount, Deployment and LoadBalancer Service
    /// named --name, selected by Istio Gateways with `istio: <name>` (docs: README.md,
    /// "Ingress gateways").
    Install(InstallArgs),
}

// `--force` has no environment variable: a standing WEFT_FORCE would silently defeat refusals.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Name of the ServiceAccount, Deployment and Service, and of the `app`/`istio` labels
    /// (Istio's chart drops a leading `istio-` from the `istio` label).
    #[arg(long, env = "WEFT_GATEWAY_NAME")]
    pub name: String,
    /// Namespace of the gateway (created when missing).
    #[arg(long, short = 'n', env = "WEFT_GATEWAY_NAMESPACE")]
    pub namespace: String,
    /// Tag or revision the gateway's proxy comes from (pod label `istio.io/rev`); the
    /// `default` tag when left out.
    #[arg(long, env = "WEFT_GATEWAY_REVISION")]
    pub revision: Option<String>,
    /// Name of the Deployment when it differs from --name: a second Deployment (say
    /// `<name>-canary` with --revision canary) behind the same Service, for a canary upgrade.
    #[arg(long)]
    pub deployment_name: Option<String>,
    /// Internal load balancer: annotate the Service with
    /// `service.beta.kubernetes.io/azure-load-balancer-internal: "true"`.
    #[arg(long)]
    pub internal: bool,
    /// Print the objects as YAML and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// `yaml`: print the objects as YAML and change nothing (same as --dry-run).
    #[arg(long, short = 'o', value_parser = ["yaml"])]
    pub output: Option<String>,
    /// Install even if the revision resolves to nothing yet.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

pub async fn run(command: GatewayCommand) -> Result<(), CliError> {
    match command {
        GatewayCommand::Install(args) => install(args).await,
    }
}

// === The render (pure) ===

/// What one gateway is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewaySpec {
    pub name: String,
    /// `None` renders namespace-less objects (the kustomize component).
    pub namespace: Option<String>,
    /// The `istio.io/rev` value: a tag or a revision.
    pub revision: String,
    pub deployment_name: String,
    pub internal: bool,
    /// The operator's namespace: its ServiceAccount may read this namespace's TLS Secrets.
    pub operator_namespace: String,
}

impl GatewaySpec {
    pub fn new(name: &str, namespace: Option<&str>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.map(Into::into),
            revision: contract::DEFAULT_TAG.into(),
            deployment_name: name.into(),
            internal: false,
            operator_namespace: contract::DEFAULT_OPERATOR_NAMESPACE.into(),
        }
    }

    /// Istio's chart: `istio: <name without a leading "istio-">`, so `istio-ingressgateway`
    /// is selected by `istio: ingressgateway`, as Istio's samples expect, and
    /// `aks-istio-ingressgateway-internal` by itself.
    pub fn istio_label(&self) -> &str {
        self.name.strip_prefix("istio-").unwrap_or(&self.name)
    }

    fn selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_APP.into(), self.name.clone()),
            (LABEL_ISTIO.into(), self.istio_label().into()),
        ])
    }

    fn meta(&self, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: self.namespace.clone(),
            labels: Some(labels),
            ..Default::default()
        }
    }
}

/// The ServiceAccount, Deployment and Service of a gateway, in apply order.
pub fn render(spec: &GatewaySpec) -> (ServiceAccount, Deployment, Service) {
    let selector = spec.selector();
    let mut labels = selector.clone();
    labels.insert(contract::LABEL_ISTIO_REV.into(), spec.revision.clone());

    let account = ServiceAccount {
        metadata: spec.meta(&spec.name, selector.clone()),
        ..Default::default()
    };

    // The pods enrol themselves (rule 4: istio.io/rev, rule 5: sidecar.istio.io/inject), so
    // the gateway's namespace need not be enrolled; the template annotation makes the webhook
    // fill istio-proxy as a gateway instead of adding a sidecar.
    let mut pod_labels = labels.clone();
    pod_labels.insert(contract::LABEL_SIDECAR_INJECT.into(), "true".into());
    let quantities = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ])
    };
    let deployment = Deployment {
        metadata: spec.meta(&spec.deployment_name, labels),
        spec: DeploymentSpec {
            // No replicas: Istio's chart leaves them to its HorizontalPodAutoscaler (1 to 5);
            // weft makes no autoscaler, so the Deployment starts with 1 and neither `kubectl
            // scale` nor an HPA the user adds fights weft over the field.
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        contract::ANNOTATION_INJECT_TEMPLATES.into(),
                        contract::TEMPLATE_GATEWAY.into(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(spec.name.clone()),
                    containers: vec![Container {
                        name: contract::CONTAINER_GATEWAY_PROXY.into(),
                        image: Some(contract::GATEWAY_IMAGE_AUTO.into()),
                        // Istio's chart's defaults; they win over the revision's (the webhook
                        // keeps what the pod declares).
                        resources: Some(ResourceRequirements {
                            requests: Some(quantities("100m", "128Mi")),
                            limits: Some(quantities("2000m", "1024Mi")),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        ..Default::default()
    };

    let port = |name: &str, number: u16| ServicePort {
        name: Some(name.into()),
        port: i32::from(number),
        target_port: Some(IntOrString::Int(i32::from(number))),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let mut service_meta = spec.meta(&spec.name, selector.clone());
    if spec.internal {
        service_meta.annotations = Some(BTreeMap::from([(
            ANNOTATION_AZURE_INTERNAL_LB.into(),
            "true".into(),
        )]));
    }
    let service = Service {
        metadata: service_meta,
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            selector: Some(selector),
            // Istio's gateway Service: the proxy's readiness port, then HTTP and HTTPS, each
            // bound by the gateway proxy itself when a Gateway server names it.
            ports: Some(vec![
                port("status-port", contract::PORT_HEALTH),
                port("http2", 80),
                port("https", 443),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    };
    (account, deployment, service)
}

/// The Role and RoleBinding that let the operator read this namespace's TLS Secrets, the
/// certificates of the gateway's HTTPS servers (`credentialName`); the operator has no
/// cluster-wide Secret grant. Istio's gateway chart grants its gateway the same reads.
pub fn secret_reader(spec: &GatewaySpec) -> (Role, RoleBinding) {
    let meta = |kind_labels: BTreeMap<String, String>| {
        spec.meta(contract::GATEWAY_SECRETS_ROLE, kind_labels)
    };
    let role = Role {
        metadata: meta(BTreeMap::new()),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["secrets".into()]),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..Default::default()
        }]),
    };
    let binding = RoleBinding {
        metadata: meta(BTreeMap::new()),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: contract::GATEWAY_SECRETS_ROLE.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: contract::OPERATOR_SERVICE_ACCOUNT.into(),
            namespace: Some(spec.operator_namespace.clone()),
            ..Default::default()
        }]),
    };
    (role, binding)
}

/// The objects as one YAML stream, each with its `apiVersion` and `kind`. A canary Deployment
/// (`--deployment-name` other than the name) comes alone.
pub fn render_yaml(spec: &GatewaySpec) -> Result<String, CliError> {
    let (account, deployment, service) = render(spec);
    let docs = if spec.deployment_name == spec.name {
        let (role, binding) = secret_reader(spec);
        vec![
            typed(&account, "v1", "ServiceAccount")?,
            typed(&deployment, "apps/v1", "Deployment")?,
            typed(&service, "v1", "Service")?,
            typed(&role, "rbac.authorization.k8s.io/v1", "Role")?,
            typed(&binding, "rbac.authorization.k8s.io/v1", "RoleBinding")?,
        ]
    } else {
        vec![typed(&deployment, "apps/v1", "Deployment")?]
    };
    let mut out = String::new();
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&doc).map_err(|e| CliError::Output {
            format: "yaml",
            message: e.to_string(),
        })?);
    }
    Ok(out)
}

fn typed<T: serde::Serialize>(
    object: &T,
    api_version: &str,
    kind: &str,
) -> Result<Value, CliError> {
    let mut value = serde_json::to_value(object).map_err(|e| CliError::Output {
        format: "json",
        message: e.to_string(),
    })?;
    if let Value::Object(map) = &mut value {
        // apiVersion and kind first, as kubectl prints them.
        let mut ordered = serde_json::Map::new();
        ordered.insert("apiVersion".into(), api_version.into());
        ordered.insert("kind".into(), kind.into());
        ordered.extend(std::mem::take(map));
        *map = ordered;
    }
    Ok(value)
}

/// What the namespace's own labels do to the gateway's pods, given the value the pods ask
/// for. Namespace rules come before pod labels (SPEC §4), so an opt-out is refused and a
/// namespace label asking for another revision is a warning: the gateway would follow it.
pub fn namespace_warning(
    namespace: &str,
    enrolment: &Enrolment,
    revision: &str,
) -> Result<Option<String>, CliError> {
    match enrolment {
        Enrolment::OptedOut { by } => Err(CliError::BadRequest {
            message: format!(
                "namespace {namespace} opts out of injection ({by}), so the gateway's \
                 istio-proxy container (image auto) would never be filled and its pods could \
                 not start. Remove the opt-out, or install the gateway in another namespace"
            ),
        }),
        Enrolment::Enrolled { label, value } if value != revision => Ok(Some(format!(
            "namespace {namespace} is enrolled with {label}, which comes before the gateway \
             pods' {rev}={revision} (SPEC §4): the gateway runs {value:?}. Pass --revision \
             {value}, or install the gateway in a namespace without an enrolment label",
            rev = contract::LABEL_ISTIO_REV,
        ))),
        Enrolment::OtherMesh { mesh } => Ok(Some(format!(
            "namespace {namespace} is monitored by another mesh ({}={mesh}); its injector may \
             also act on the gateway's pods",
            contract::LABEL_OSM_MONITORED_BY
        ))),
        Enrolment::Enrolled { .. } | Enrolment::NotEnrolled => Ok(None),
    }
}

/// Checks the names and the revision; returns what the pods' `istio.io/rev` will be and any
/// warning (`--force` turns an unresolved revision into one).
pub fn plan(
    args: &InstallArgs,
    catalog: Option<&Catalog>,
) -> Result<(GatewaySpec, Vec<String>), CliError> {
    check_name("gateway name", &args.name)?;
    check_name("namespace", &args.namespace)?;
    if args.namespace == args.mesh.weft_namespace
        || contract::NEVER_INJECTED_NAMESPACES.contains(&args.namespace.as_str())
    {
        return Err(CliError::NeverInjectedNamespace {
            namespace: args.namespace.clone(),
        });
    }
    let mut spec = GatewaySpec::new(&args.name, Some(&args.namespace));
    spec.internal = args.internal;
    spec.operator_namespace = args.mesh.weft_namespace.clone();
    if let Some(deployment) = &args.deployment_name {
        check_name("deployment name", deployment)?;
        spec.deployment_name = deployment.clone();
    }
    if let Some(revision) = &args.revision {
        check_name("revision or tag", revision)?;
        spec.revision = revision.clone();
    }
    let mut warnings = Vec::new();
    if let Some(catalog) = catalog {
        let refusal = match catalog.resolve(&spec.revision) {
            Resolution::Revision { .. } => None,
            Resolution::Unknown => Some(CliError::UnresolvedValue {
                value: spec.revision.clone(),
                weft_namespace: args.mesh.weft_namespace.clone(),
                known: catalog.describe(),
            }),
            Resolution::TagToMissingRevision { tag, revision } => {
                Some(CliError::TagWithoutRevision {
                    tag,
                    revision,
                    weft_namespace: args.mesh.weft_namespace.clone(),
                    known: catalog.describe(),
                })
            }
        };
        if let Some(refusal) = refusal {
            if !args.force {
                return Err(refusal);
            }
            warnings.push(format!(
                "{:?} resolves to no revision yet; the gateway's pods are refused until it \
                 does (--force)",
                spec.revision
            ));
        }
    }
    Ok((spec, warnings))
}

// === The cluster layer ===

async fn install(args: InstallArgs) -> Result<(), CliError> {
    if args.dry_run || args.output.is_some() {
        let (spec, _) = plan(&args, None)?;
        print!("{}", render_yaml(&spec)?);
        return Ok(());
    }
    let client = inventory::client().await?;
    let (tags, revisions) = inventory::load_catalog_objects(&client, &args.mesh).await?;
    let catalog = Catalog::from_objects(&tags, &revisions);
    let (spec, warnings) = plan(&args, Some(&catalog))?;
    for warning in &warnings {
        eprintln!("Warning: {warning}");
    }

    let namespace = &args.namespace;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match namespaces
        .get_opt(namespace)
        .await
        .map_err(CliError::kube(format!("reading namespace {namespace}")))?
    {
        Some(current) => {
            let enrolment = inventory::namespace_enrolment(&current.metadata, &args.mesh.mesh_name);
            if let Some(warning) = namespace_warning(namespace, &enrolment, &spec.revision)? {
                eprintln!("Warning: {warning}");
            }
        }
        None => {
            let new = Namespace {
                metadata: ObjectMeta {
                    name: Some(namespace.clone()),
                    ..Default::default()
                },
                ..Default::default()
            };
            namespaces
                .create(&PostParams::default(), &new)
                .await
                .map_err(CliError::kube(format!("creating namespace {namespace}")))?;
            println!("namespace/{namespace} created");
        }
    }

    let (account, deployment, service) = render(&spec);
    let params = PatchParams::apply(contract::FIELD_MANAGER).force();
    let apply_error = |what: String| CliError::kube(format!("applying {what} in {namespace}"));
    // A second Deployment (a canary) joins the first install's ServiceAccount and Service, as
    // Istio's chart does with `service.type: None`; re-applying them could undo --internal.
    let canary = spec.deployment_name != spec.name;
    if !canary {
        Api::<ServiceAccount>::namespaced(client.clone(), namespace)
            .patch(
                &spec.name,
                &params,
                &Patch::Apply(typed(&account, "v1", "ServiceAccount")?),
            )
            .await
            .map_err(apply_error(format!("serviceaccount/{}", spec.name)))?;
        println!("serviceaccount/{} applied", spec.name);
        // Before the Deployment: the operator watches a gateway namespace's Secrets as soon
        // as its pods appear, and must never be refused (tests/lifecycle step 5).
        let (role, binding) = secret_reader(&spec);
        let name = contract::GATEWAY_SECRETS_ROLE;
        Api::<Role>::namespaced(client.clone(), namespace)
            .patch(
                name,
                &params,
                &Patch::Apply(typed(&role, "rbac.authorization.k8s.io/v1", "Role")?),
            )
            .await
            .map_err(apply_error(format!("role/{name}")))?;
        Api::<RoleBinding>::namespaced(client.clone(), namespace)
            .patch(
                name,
                &params,
                &Patch::Apply(typed(
                    &binding,
                    "rbac.authorization.k8s.io/v1",
                    "RoleBinding",
                )?),
            )
            .await
            .map_err(apply_error(format!("rolebinding/{name}")))?;
        println!(
            "role and rolebinding {name} applied: the operator may read this namespace's Secrets (it watches only those of type kubernetes.io/tls, for HTTPS credentialName; keep other Secrets out of a gateway's namespace)"
        );
    }
    Api::<Deployment>::namespaced(client.clone(), namespace)
        .patch(
            &spec.deployment_name,
            &params,
            &Patch::Apply(typed(&deployment, "apps/v1", "Deployment")?),
        )
        .await
        .map_err(apply_error(format!("deployment/{}", spec.deployment_name)))?;
    println!(
        "deployment.apps/{} applied (revision {})",
        spec.deployment_name, spec.revision
    );
    if canary {
        println!(
            "serviceaccount/{name} and service/{name} left as they are: the pods of \
             deployment.apps/{deployment} use them beside those of deployment.apps/{name}",
            name = spec.name,
            deployment = spec.deployment_name,
        );
    } else {
        Api::<Service>::namespaced(client.clone(), namespace)
            .patch(
                &spec.name,
                &params,
                &Patch::Apply(typed(&service, "v1", "Service")?),
            )
            .await
            .map_err(apply_error(format!("service/{}", spec.name)))?;
        println!("service/{} applied", spec.name);
    }
    println!(
        "Istio Gateways select it with `selector: {{istio: {label}}}`; its address: kubectl get \
         service {name} -n {namespace} -o jsonpath='{{.status.loadBalancer.ingress[0].ip}}'",
        label = spec.istio_label(),
        name = spec.name,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::inventory::fixtures::catalog;
    use std::path::Path;

    fn args(name: &str, namespace: &str) -> InstallArgs {
        InstallArgs {
            name: name.into(),
            namespace: namespace.into(),
            revision: None,
            deployment_name: None,
            internal: false,
            dry_run: true,
            output: None,
            force: false,
            mesh: MeshArgs::default(),
        }
    }

    #[test]
    fn seed_003s_internal_gateway_renders_as_istio_selects_it() {
        let mut a = args("aks-istio-ingressgateway-internal", "aks-istio-ingress");
        a.internal = true;
        let (spec, warnings) = plan(&a, Some(&catalog())).unwrap();
        assert!(warnings.is_empty());
        let (account, deployment, service) = render(&spec);
        let name = "aks-istio-ingressgateway-internal";
        assert_eq!(account.metadata.name.as_deref(), Some(name));

        let labels = deployment.metadata.labels.clone().unwrap();
        assert_eq!(labels["istio"], name);
        assert_eq!(labels["app"], name);
        assert_eq!(labels[contract::LABEL_ISTIO_REV], "default");
        let template = deployment.spec.template.clone();
        let meta = template.metadata.unwrap();
        let pod_labels = meta.labels.unwrap();
        assert_eq!(pod_labels[contract::LABEL_SIDECAR_INJECT], "true");
        assert_eq!(pod_labels[contract::LABEL_ISTIO_REV], "default");
        assert_eq!(
            meta.annotations.unwrap()[contract::ANNOTATION_INJECT_TEMPLATES],
            "gateway"
        );
        let pod = template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some(name));
        assert_eq!(pod.containers[0].name, "istio-proxy");
        assert_eq!(pod.containers[0].image.as_deref(), Some("auto"));

        let svc = service.spec.clone().unwrap();
        assert_eq!(svc.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(svc.selector.unwrap()["istio"], name);
        let ports: Vec<(String, i32)> = svc
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port))
            .collect();
        assert_eq!(
            ports,
            [
                ("status-port".to_string(), 15021),
                ("http2".into(), 80),
                ("https".into(), 443)
            ]
        );
        assert_eq!(
            service.metadata.annotations.unwrap()[ANNOTATION_AZURE_INTERNAL_LB],
            "true"
        );
    }

    #[test]
    fn the_istio_label_drops_a_leading_istio_prefix_as_istios_chart_does() {
        let spec = GatewaySpec::new("istio-ingressgateway", Some("istio-ingress"));
        assert_eq!(spec.istio_label(), "ingressgateway");
        let (_, deployment, service) = render(&spec);
        assert_eq!(
            service.spec.unwrap().selector,
            deployment.spec.selector.match_labels
        );
        assert!(service.metadata.annotations.is_none());
    }

    #[test]
    fn a_canary_deployment_sits_behind_the_same_service() {
        let mut a = args("gw", "ingress");
        a.revision = Some("canary".into());
        a.deployment_name = Some("gw-canary".into());
        let (spec, _) = plan(&a, Some(&catalog())).unwrap();
        let (_, deployment, service) = render(&spec);
        assert_eq!(deployment.metadata.name.as_deref(), Some("gw-canary"));
        assert_eq!(
            deployment.spec.template.metadata.unwrap().labels.unwrap()[contract::LABEL_ISTIO_REV],
            "canary"
        );
        assert_eq!(service.metadata.name.as_deref(), Some("gw"));
    }

    #[test]
    fn bad_names_unknown_revisions_and_system_namespaces_are_refused() {
        assert_eq!(
            plan(&args("Gw", "ingress"), None)
                .unwrap_err()
                .metric_label(),
            "invalid_name"
        );
        assert_eq!(
            plan(&args("gw", "kube-system"), None)
                .unwrap_err()
                .metric_label(),
            "never_injected_namespace"
        );
        let mut a = args("gw", "ingress");
        a.revision = Some("nope".into());
        let err = plan(&a, Some(&catalog())).unwrap_err();
        assert_eq!(err.metric_label(), "unresolved_value");
        a.force = true;
        let (_, warnings) = plan(&a, Some(&catalog())).unwrap();
        assert!(warnings[0].contains("--force"), "{warnings:?}");
    }

    #[test]
    fn the_namespace_may_not_opt_out_and_a_label_for_another_revision_is_a_warning() {
        let opted_out = Enrolment::OptedOut {
            by: "istio-injection=disabled".into(),
        };
        let err = namespace_warning("ingress", &opted_out, "default").unwrap_err();
        assert!(err.to_string().contains("Remove the opt-out"), "{err}");
        let enrolled = |value: &str| Enrolment::Enrolled {
            label: format!("istio.io/rev={value}"),
            value: value.into(),
        };
        let warning = namespace_warning("ingress", &enrolled("stable"), "canary")
            .unwrap()
            .unwrap();
        assert!(warning.contains("--revision stable"), "{warning}");
        assert_eq!(
            namespace_warning("ingress", &enrolled("canary"), "canary").unwrap(),
            None
        );
        assert_eq!(
            namespace_warning("ingress", &Enrolment::NotEnrolled, "default").unwrap(),
            None
        );
    }

    /// `config/components/gateway/` is this render for Istio's default name; regenerate it
    /// with `WEFT_UPDATE_GOLDEN=1 cargo test --lib the_kustomize_component`.
    #[test]
    fn the_kustomize_component_is_the_same_render() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/components/gateway");
        let rendered = render_yaml(&GatewaySpec::new("istio-ingressgateway", None)).unwrap();
        let path = dir.join("gateway.yaml");
        let header = "# Generated from src/cli/gateway.rs (`weft gateway install --name \
                      istio-ingressgateway --dry-run`, without a namespace); the test\n# \
                      the_kustomize_component_is_the_same_render keeps it current.\n";
        let expected = format!("{header}{rendered}");
        if std::env::var_os("WEFT_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &expected).unwrap();
        }
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            current, expected,
            "config/components/gateway/gateway.yaml is stale; run WEFT_UPDATE_GOLDEN=1 cargo test --lib the_kustomize_component"
        );
    }
}
