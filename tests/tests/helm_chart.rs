//! The Helm chart, checked by the real helm: lint, schema refusals, and every rendered
//! object parsed strictly into its Kubernetes type and checked for what a platform team
//! relies on: hardened pods, probes, consistent labels, selectors that pick exactly their
//! pods, configuration the services accept.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ficus_tests::manifest::{self, Object, SERVICES, component_of};
use figment::providers::Format;
use k8s_openapi::api::core::v1::{Container, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

/// The default values, then each example values file.
fn value_sets() -> Vec<Vec<PathBuf>> {
    let mut sets = vec![vec![]];
    sets.extend(manifest::example_values().into_iter().map(|file| vec![file]));
    sets
}

fn render(values: &[PathBuf]) -> Vec<Object> {
    let files: Vec<&Path> = values.iter().map(PathBuf::as_path).collect();
    manifest::render(&files, &[]).unwrap_or_else(|error| panic!("rendering with {values:?}: {error}"))
}

fn refusal(set: &[&str]) -> String {
    match manifest::render(&[], set) {
        Err(manifest::RenderError::Refused(message)) => message,
        other => panic!("helm accepted {set:?}: {other:?}"),
    }
}

#[test]
fn lint_passes_with_default_and_example_values() {
    for values in value_sets() {
        let mut lint = manifest::helm();
        lint.args(["lint", "--strict"]).arg(manifest::chart_dir());
        for file in &values {
            lint.arg("--values").arg(file);
        }
        let output = lint.output().expect("run helm lint");
        assert!(
            output.status.success(),
            "helm lint {values:?}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn every_pod_is_hardened() {
    for values in value_sets() {
        let objects = render(&values);
        let pods = pod_specs(&objects);
        assert!(pods.len() >= SERVICES.len(), "{values:?}: only {} pod templates", pods.len());
        for (name, pod) in pods {
            let context = format!("{values:?} {name}");
            let pod_security = pod.security_context.as_ref().unwrap_or_else(|| panic!("{context}: no securityContext"));
            assert_eq!(pod_security.run_as_non_root, Some(true), "{context}: pod runAsNonRoot");
            assert!(pod_security.run_as_user.is_some_and(|uid| uid != 0), "{context}: pod runs as uid 0");
            assert_eq!(
                pod_security.seccomp_profile.as_ref().map(|profile| profile.type_.as_str()),
                Some("RuntimeDefault"),
                "{context}: pod seccomp"
            );
            let service = SERVICES.iter().any(|c| name.ends_with(&format!("-{c}")));
            let acts_on_the_cluster = kubernetes_enabled(&values)
                && ["planner", "analysis", "traffic"].iter().any(|c| name.ends_with(&format!("-{c}")));
            // TokenReview is an API call too.
            let calls_the_api = acts_on_the_cluster || (service && auth_enabled(&values));
            assert_eq!(pod.automount_service_account_token, Some(calls_the_api), "{context}: token mounted");
            for container in all_containers(&pod) {
                let context = format!("{context}/{}", container.name);
                let security =
                    container.security_context.as_ref().unwrap_or_else(|| panic!("{context}: no securityContext"));
                assert_eq!(security.run_as_non_root, Some(true), "{context}: runAsNonRoot");
                assert_eq!(security.read_only_root_filesystem, Some(true), "{context}: readOnlyRootFilesystem");
                assert_eq!(security.allow_privilege_escalation, Some(false), "{context}: allowPrivilegeEscalation");
                let dropped = security.capabilities.as_ref().and_then(|caps| caps.drop.clone()).unwrap_or_default();
                assert_eq!(dropped, vec!["ALL".to_owned()], "{context}: capabilities.drop");
                assert!(security.capabilities.as_ref().and_then(|caps| caps.add.as_ref()).is_none(), "{context}: adds");
                assert_eq!(
                    security.seccomp_profile.as_ref().map(|profile| profile.type_.as_str()),
                    Some("RuntimeDefault"),
                    "{context}: seccomp"
                );
                let resources = container.resources.as_ref().unwrap_or_else(|| panic!("{context}: no resources"));
                assert!(resources.requests.as_ref().is_some_and(|r| r.contains_key("memory")), "{context}: requests");
                assert!(resources.limits.as_ref().is_some_and(|l| l.contains_key("memory")), "{context}: limits");
            }
        }
    }
}

#[test]
fn long_running_containers_have_probes_on_declared_ports() {
    for values in value_sets() {
        for object in render(&values) {
            let Object::Deployment(deployment) = object else { continue };
            let name = deployment.metadata.name.clone().unwrap_or_default();
            let pod = deployment.spec.and_then(|spec| spec.template.spec).expect("pod template");
            for container in &pod.containers {
                let context = format!("{values:?} {name}/{}", container.name);
                let ports: BTreeSet<String> =
                    container.ports.iter().flatten().filter_map(|port| port.name.clone()).collect();
                for (kind, probe) in
                    [("liveness", &container.liveness_probe), ("readiness", &container.readiness_probe)]
                {
                    let probe = probe.as_ref().unwrap_or_else(|| panic!("{context}: no {kind} probe"));
                    let port = probe_port(probe).unwrap_or_else(|| panic!("{context}: {kind} probe has no port"));
                    assert!(ports.contains(&port), "{context}: {kind} probe on undeclared port {port}");
                }
                if SERVICES.contains(&container.name.as_str()) {
                    let path = |probe: &Option<Probe>| {
                        probe.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|g| g.path.clone())
                    };
                    assert_eq!(path(&container.liveness_probe).as_deref(), Some("/healthz"), "{context}");
                    assert_eq!(path(&container.readiness_probe).as_deref(), Some("/readyz"), "{context}");
                }
            }
        }
    }
}

#[test]
fn labels_are_consistent_and_selectors_pick_exactly_their_pods() {
    for values in value_sets() {
        let objects = render(&values);
        let mut workloads: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for object in &objects {
            let metadata = metadata(object);
            let context = format!("{values:?} {} {}", object.kind(), metadata.name.clone().unwrap_or_default());
            let labels = metadata.labels.clone().unwrap_or_default();
            for key in [
                "helm.sh/chart",
                "app.kubernetes.io/name",
                "app.kubernetes.io/instance",
                "app.kubernetes.io/version",
                "app.kubernetes.io/managed-by",
                "app.kubernetes.io/part-of",
            ] {
                assert!(labels.contains_key(key), "{context}: label {key} missing");
            }
            assert_eq!(labels.get("app.kubernetes.io/instance").map(String::as_str), Some("ficus"), "{context}");
            assert_eq!(labels.get("app.kubernetes.io/managed-by").map(String::as_str), Some("Helm"), "{context}");
            if let Object::Deployment(deployment) = object {
                let spec = deployment.spec.as_ref().expect("spec");
                let template_labels =
                    spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
                assert!(matches(&spec.selector, &template_labels), "{context}: selector misses its own pods");
                assert_eq!(
                    template_labels.get("app.kubernetes.io/component"),
                    labels.get("app.kubernetes.io/component")
                );
                workloads.insert(metadata.name.clone().unwrap_or_default(), template_labels);
            }
        }
        // Each selector picks the pods of exactly one workload, the one it is meant for.
        for object in &objects {
            let metadata = metadata(object);
            let context = format!("{values:?} {} {}", object.kind(), metadata.name.clone().unwrap_or_default());
            let component = component_of(metadata);
            let selected = |selector: &dyn Fn(&BTreeMap<String, String>) -> bool| -> Vec<String> {
                workloads.iter().filter(|(_, labels)| selector(labels)).map(|(name, _)| name.clone()).collect()
            };
            let picked = match object {
                Object::Service(service) => {
                    let selector = service.spec.as_ref().and_then(|spec| spec.selector.clone()).unwrap_or_default();
                    selected(&|labels| selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
                }
                Object::PodDisruptionBudget(pdb) => {
                    let selector = pdb.spec.as_ref().and_then(|spec| spec.selector.clone()).expect("pdb selector");
                    selected(&|labels| matches(&selector, labels))
                }
                Object::NetworkPolicy(policy) => {
                    let selector = policy.spec.as_ref().and_then(|spec| spec.pod_selector.clone()).unwrap_or_default();
                    if component.is_none() {
                        // The default deny covers every pod of the release.
                        assert_eq!(selected(&|labels| matches(&selector, labels)).len(), workloads.len(), "{context}");
                        continue;
                    }
                    if component.as_deref() == Some("test") {
                        continue;
                    }
                    selected(&|labels| matches(&selector, labels))
                }
                Object::HorizontalPodAutoscaler(hpa) => {
                    let target = hpa.spec.scale_target_ref.name.clone();
                    assert!(workloads.contains_key(&target), "{context}: scales missing {target}");
                    vec![target]
                }
                _ => continue,
            };
            assert_eq!(picked.len(), 1, "{context}: selects {picked:?}");
            let target = &workloads[&picked[0]];
            assert_eq!(target.get("app.kubernetes.io/component"), component.as_ref(), "{context}: selects {picked:?}");
        }
    }
}

#[test]
fn every_service_accepts_its_rendered_configuration() {
    for values in value_sets() {
        for object in render(&values) {
            let Object::ConfigMap(config_map) = object else { continue };
            let component = component_of(&config_map.metadata).expect("component label");
            let toml = config_map.data.as_ref().and_then(|data| data.get("ficus.toml")).expect("ficus.toml").clone();
            let layers = figment::Figment::from(figment::providers::Toml::string(&toml));
            let accepted = match component.as_str() {
                "planner" => ficus_kit::config::extract::<ficus_planner::Config>(&layers, None).map(drop),
                "analysis" => ficus_kit::config::extract::<ficus_analysis::Config>(&layers, None).map(drop),
                "traffic" => ficus_kit::config::extract::<ficus_traffic::Config>(&layers, None).map(drop),
                "sessions" => ficus_kit::config::extract::<ficus_sessions::Config>(&layers, None).map(drop),
                other => panic!("configuration of unknown component {other}"),
            };
            accepted.unwrap_or_else(|error| panic!("{values:?} {component} refuses its ficus.toml: {error}\n{toml}"));
            let telemetry = ficus_kit::telemetry_config(&layers);
            telemetry.unwrap_or_else(|error| panic!("{values:?} {component} telemetry: {error}"));
        }
    }
}

#[test]
fn config_checksum_rolls_exactly_the_changed_service() {
    let checksums = |set: &[&str]| -> BTreeMap<String, String> {
        manifest::render(&[], set)
            .expect("render")
            .into_iter()
            .filter_map(|object| match object {
                Object::Deployment(deployment) => {
                    let annotations = deployment.spec?.template.metadata?.annotations?;
                    Some((component_of(&deployment.metadata)?, annotations.get("checksum/config")?.clone()))
                }
                _ => None,
            })
            .collect()
    };
    let before = checksums(&[]);
    let after = checksums(&["analysis.config.prometheus.timeout=9s"]);
    assert_eq!(before.len(), SERVICES.len());
    for service in SERVICES {
        assert_eq!(before[service] != after[service], service == "analysis", "{service}: {before:?} vs {after:?}");
    }
}

#[test]
fn redis_password_comes_from_a_secret_never_from_the_config() {
    let set = ["store.backend=redis", "redis.host=redis.example", "redis.auth.password=s3cret-value"];
    let objects = manifest::render(&[], &set).expect("render");
    let redis_secret = |object: &Object| match object {
        Object::Secret(secret) if secret.metadata.name.as_deref().is_some_and(|name| name.ends_with("-redis")) => {
            Some(secret.clone())
        }
        _ => None,
    };
    let secret = objects.iter().find_map(redis_secret);
    let secret = secret.expect("a Secret for the password");
    let secret_name = secret.metadata.name.clone().expect("secret name");
    for object in &objects {
        if let Object::ConfigMap(config_map) = object {
            let data = serde_json::to_string(&config_map.data).expect("json");
            assert!(!data.contains("s3cret-value"), "password in ConfigMap {:?}", config_map.metadata.name);
        }
        if let Object::Deployment(deployment) = object {
            let env = serde_json::to_string(&deployment.spec).expect("json");
            assert!(!env.contains("s3cret-value"), "password in Deployment {:?}", deployment.metadata.name);
            assert!(
                env.contains(&secret_name),
                "Deployment {:?} does not reference {secret_name}",
                deployment.metadata.name
            );
            assert!(env.contains("redis://:$(FICUS_REDIS_PASSWORD)@redis.example:6379/"), "store URL: {env}");
        }
    }

    let existing = ["store.backend=redis", "redis.host=redis.example", "redis.auth.existingSecret=team-redis"];
    let objects = manifest::render(&[], &existing).expect("render");
    assert!(!objects.iter().any(|object| redis_secret(object).is_some()), "Secret rendered beside existingSecret");
    let deployments = objects.iter().filter(|object| matches!(object, Object::Deployment(_))).count();
    let referencing = objects
        .iter()
        .filter(|object| match object {
            Object::Deployment(deployment) => {
                let env =
                    deployment.spec.as_ref().and_then(|spec| spec.template.spec.as_ref()).map(|pod| &pod.containers[0]);
                env.and_then(|container| container.env.as_ref()).into_iter().flatten().any(|var| {
                    var.value_from
                        .as_ref()
                        .and_then(|from| from.secret_key_ref.as_ref())
                        .is_some_and(|key| key.name == "team-redis" && key.key == "password")
                })
            }
            _ => false,
        })
        .count();
    assert_eq!(referencing, deployments, "every service reads the password from team-redis");
}

#[test]
fn each_service_account_is_its_own_and_bindings_resolve() {
    let objects = render(&[]);
    let accounts: BTreeSet<String> = objects
        .iter()
        .filter_map(|object| match object {
            Object::ServiceAccount(account) => account.metadata.name.clone(),
            _ => None,
        })
        .collect();
    let mut used = BTreeSet::new();
    let services = objects.iter().filter_map(|object| match object {
        Object::Deployment(deployment)
            if component_of(&deployment.metadata).is_some_and(|c| SERVICES.contains(&c.as_str())) =>
        {
            Some((
                deployment.metadata.name.clone().unwrap_or_default(),
                deployment.spec.as_ref()?.template.spec.clone()?,
            ))
        }
        _ => None,
    });
    for pod in services {
        let account = pod.1.service_account_name.clone().unwrap_or_else(|| panic!("{}: default account", pod.0));
        assert!(accounts.contains(&account), "{}: account {account} not rendered", pod.0);
        assert!(used.insert(account.clone()), "{}: shares account {account}", pod.0);
    }
    let roles: BTreeSet<String> = objects
        .iter()
        .filter_map(|object| match object {
            Object::Role(role) => role.metadata.name.clone(),
            _ => None,
        })
        .collect();
    for object in &objects {
        if let Object::RoleBinding(binding) = object {
            assert!(roles.contains(&binding.role_ref.name), "binding to missing role {}", binding.role_ref.name);
            for subject in binding.subjects.iter().flatten() {
                assert!(accounts.contains(&subject.name), "binding to missing account {}", subject.name);
            }
        }
    }
}

#[test]
fn values_that_break_the_schema_are_refused_naming_the_value() {
    let cases: [(&[&str], &str); 11] = [
        (&["planner.replicas=-1"], "planner.replicas"),
        // An embedded store belongs to one pod.
        (&["traffic.replicas=2"], "traffic.replicas"),
        (&["sessions.replicas=3"], "sessions.replicas"),
        (&["traffic.autoscaling.enabled=true"], "traffic.autoscaling.enabled"),
        (&["traffic.replicas=many"], "traffic.replicas"),
        (&["store.backend=postgres"], "store.backend"),
        (&["tracing.enabled=true"], "tracing"),
        (&["telemetry.sampleRatio=2"], "telemetry.sampleRatio"),
        (&["planner.leaseTtl=ten seconds"], "planner.leaseTtl"),
        (&["image.pullPolicy=Sometimes"], "image.pullPolicy"),
        (&["redis.port=70000"], "redis.port"),
    ];
    for (set, field) in cases {
        let message = refusal(set);
        assert!(message.contains("schema"), "{set:?} refused, but not by the schema: {message}");
        let path = field.replace('.', "/");
        assert!(
            message.contains(field) || message.contains(&path),
            "{set:?}: message does not name {field}: {message}"
        );
    }
}

#[test]
fn combinations_the_schema_cannot_express_are_refused_naming_the_value() {
    let cases: [(&[&str], &str); 2] = [
        (&["store.backend=redis"], "redis.host"),
        (&["store.backend=redis", "redis.host=redis.example"], "redis.auth.password"),
    ];
    for (set, field) in cases {
        let message = refusal(set);
        assert!(message.contains(field), "{set:?}: message does not name {field}: {message}");
    }
}

#[test]
fn kubernetes_permissions_are_exactly_what_each_service_uses() {
    assert!(
        !render(&[]).iter().any(|object| matches!(object, Object::Role(_) | Object::ClusterRole(_))),
        "no permissions without kubernetes.enabled"
    );
    let values = manifest::chart_dir().join("ci/kubernetes-values.yaml");
    let objects = render(&[values]);
    let mut granted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let roles: BTreeMap<String, k8s_openapi::api::rbac::v1::Role> = objects
        .iter()
        .filter_map(|object| match object {
            Object::Role(role) => Some((role.metadata.name.clone().unwrap_or_default(), (**role).clone())),
            _ => None,
        })
        .collect();
    assert!(!objects.iter().any(|object| matches!(object, Object::ClusterRole(_))));
    // Cluster-wide, each service may only ask the API server whose a token is.
    for object in &objects {
        let Object::ClusterRoleBinding(binding) = object else { continue };
        assert_eq!(binding.role_ref.name, "system:auth-delegator", "{:?}", binding.metadata.name);
        let subjects: Vec<_> = binding.subjects.iter().flatten().map(|subject| subject.name.as_str()).collect();
        assert_eq!(subjects.len(), 1, "{:?}: one ServiceAccount each", binding.metadata.name);
    }
    for object in &objects {
        let Object::RoleBinding(binding) = object else { continue };
        let role = &roles[&binding.role_ref.name];
        for subject in binding.subjects.iter().flatten() {
            for rule in role.rules.iter().flatten() {
                for group in rule.api_groups.iter().flatten() {
                    for resource in rule.resources.iter().flatten() {
                        for verb in &rule.verbs {
                            granted
                                .entry(subject.name.clone())
                                .or_default()
                                .insert(format!("{verb} {resource}.{group}"));
                        }
                    }
                }
            }
        }
    }
    let expect = |grants: &[&str]| grants.iter().map(|grant| (*grant).to_owned()).collect::<BTreeSet<_>>();
    assert_eq!(granted["ficus-analysis"], expect(&["list pods."]));
    assert_eq!(
        granted["ficus-traffic"],
        expect(&[
            "create ingresses.networking.k8s.io",
            "delete ingresses.networking.k8s.io",
            "get httproutes.gateway.networking.k8s.io",
            "get ingresses.networking.k8s.io",
            "get services.",
            "get virtualservices.networking.istio.io",
            "patch httproutes.gateway.networking.k8s.io",
            "patch ingresses.networking.k8s.io",
            "patch services.",
            "patch virtualservices.networking.istio.io",
        ])
    );
    assert_eq!(
        granted["ficus-planner"],
        expect(&[
            "create leases.coordination.k8s.io",
            "get deployments.apps",
            "get leases.coordination.k8s.io",
            "get rollouts.ficus.dev",
            "list rollouts.ficus.dev",
            "patch deployments/scale.apps",
            "patch rollouts.ficus.dev",
            "patch rollouts/status.ficus.dev",
            "update leases.coordination.k8s.io",
            "watch rollouts.ficus.dev",
        ])
    );
    assert!(!granted.contains_key("ficus-sessions"), "sessions never calls the API");
}

fn auth_enabled(values: &[PathBuf]) -> bool {
    !values.iter().any(|file| std::fs::read_to_string(file).is_ok_and(|text| text.contains("auth:\n  enabled: false")))
}

fn kubernetes_enabled(values: &[PathBuf]) -> bool {
    values
        .iter()
        .any(|file| std::fs::read_to_string(file).is_ok_and(|text| text.contains("kubernetes:\n  enabled: true")))
}

/// Every pod template and pod in `objects`, by name.
fn pod_specs(objects: &[Object]) -> Vec<(String, PodSpec)> {
    objects
        .iter()
        .filter_map(|object| match object {
            Object::Deployment(deployment) => Some((
                deployment.metadata.name.clone().unwrap_or_default(),
                deployment.spec.as_ref()?.template.spec.clone()?,
            )),
            Object::Pod(pod) => Some((pod.metadata.name.clone().unwrap_or_default(), pod.spec.clone()?)),
            _ => None,
        })
        .collect()
}

fn all_containers(pod: &PodSpec) -> impl Iterator<Item = &Container> {
    pod.containers.iter().chain(pod.init_containers.iter().flatten())
}

fn probe_port(probe: &Probe) -> Option<String> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let port = probe
        .http_get
        .as_ref()
        .map(|get| get.port.clone())
        .or_else(|| probe.tcp_socket.as_ref().map(|socket| socket.port.clone()))
        .or_else(|| probe.grpc.as_ref().map(|grpc| IntOrString::Int(grpc.port)))?;
    match port {
        IntOrString::String(name) => Some(name),
        IntOrString::Int(number) => Some(number.to_string()),
    }
}

fn metadata(object: &Object) -> &ObjectMeta {
    match object {
        Object::Deployment(o) => &o.metadata,
        Object::Service(o) => &o.metadata,
        Object::ConfigMap(o) => &o.metadata,
        Object::Secret(o) => &o.metadata,
        Object::ServiceAccount(o) => &o.metadata,
        Object::PersistentVolumeClaim(o) => &o.metadata,
        Object::Pod(o) => &o.metadata,
        Object::NetworkPolicy(o) => &o.metadata,
        Object::PodDisruptionBudget(o) => &o.metadata,
        Object::HorizontalPodAutoscaler(o) => &o.metadata,
        Object::Role(o) => &o.metadata,
        Object::RoleBinding(o) => &o.metadata,
        Object::ClusterRole(o) => &o.metadata,
        Object::ClusterRoleBinding(o) => &o.metadata,
        Object::CustomResourceDefinition(o) => &o.metadata,
        Object::ServiceMonitor(o) | Object::Certificate(o) => &o.metadata,
    }
}

/// Whether `selector` (match labels and expressions) selects `labels`.
fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|expression| {
        let values = expression.values.clone().unwrap_or_default();
        let value = labels.get(&expression.key);
        match expression.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

#[test]
fn strict_parsing_refuses_unknown_fields_and_kinds() {
    let misspelt = r#"
apiVersion: v1
kind: Pod
metadata: { name: p }
spec:
  containers:
    - name: c
      image: i
      securityContext: { readOnlyRootFileSystem: true }
"#;
    match manifest::parse(misspelt) {
        Err(manifest::RenderError::UnknownFields { fields, .. }) => {
            assert!(fields.iter().any(|field| field.contains("readOnlyRootFileSystem")), "{fields:?}");
        }
        other => panic!("a misspelt field passed: {other:?}"),
    }
    let unexpected = "apiVersion: batch/v1\nkind: CronJob\nmetadata: { name: c }\n";
    assert!(matches!(manifest::parse(unexpected), Err(manifest::RenderError::UnknownKind { .. })));
}

#[test]
fn the_chart_readme_documents_every_value() {
    let dir = manifest::chart_dir();
    let values: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("values.yaml")).expect("values.yaml")).expect("yaml");
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("README.md");
    let mut missing = Vec::new();
    let mut pending = vec![(String::new(), &values)];
    while let Some((path, value)) = pending.pop() {
        match value {
            serde_json::Value::Object(map) if !map.is_empty() && !path.ends_with("resources") => {
                let prefix = if path.is_empty() { String::new() } else { format!("{path}.") };
                pending.extend(map.iter().map(|(key, value)| (format!("{prefix}{key}"), value)));
            }
            _ => {
                if !readme.contains(&format!("| `{path}` |")) {
                    missing.push(path);
                }
            }
        }
    }
    assert!(missing.is_empty(), "README.md lacks rows for {missing:?}");
}

#[test]
fn api_clients_reach_only_the_services_they_are_listed_for() {
    let app = r"networkPolicy.apiClients.sessions[0].namespaceSelector.matchLabels.kubernetes\.io/metadata\.name=shop";
    let objects = manifest::render(&[], &[app]).expect("rendered");
    let mut seen = 0;
    for object in &objects {
        let Object::NetworkPolicy(policy) = object else { continue };
        let Some(component) = component_of(&policy.metadata) else { continue };
        if component == "test" || component == "redis" {
            continue;
        }
        let ingress = policy.spec.as_ref().and_then(|spec| spec.ingress.clone()).unwrap_or_default();
        let grpc = ingress
            .iter()
            .find(|rule| {
                rule.ports.iter().flatten().any(|port| {
                    port.port == Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("grpc".into()))
                })
            })
            .unwrap_or_else(|| panic!("{component}: no gRPC ingress"));
        let shop = grpc.from.iter().flatten().any(|peer| {
            peer.namespace_selector
                .as_ref()
                .and_then(|selector| selector.match_labels.as_ref())
                .is_some_and(|labels| labels.get("kubernetes.io/metadata.name").map(String::as_str) == Some("shop"))
        });
        assert_eq!(shop, component == "sessions", "{component}: the app's namespace reaches it: {shop}");
        seen += 1;
    }
    assert_eq!(seen, SERVICES.len(), "one policy per service");
}

#[test]
fn tls_from_a_secret_reaches_every_service_and_the_test_hook() {
    let values = manifest::chart_dir().join("ci/tls-values.yaml");
    let objects = render(std::slice::from_ref(&values));
    let mounts_the_secret = |pod: &PodSpec| {
        pod.volumes.iter().flatten().any(|volume| {
            volume.secret.as_ref().and_then(|secret| secret.secret_name.as_deref()) == Some("ficus-serving-tls")
        })
    };
    for (name, pod) in pod_specs(&objects) {
        assert!(mounts_the_secret(&pod), "{name} mounts the TLS Secret");
    }
    for object in &objects {
        match object {
            Object::ConfigMap(map) => {
                let toml = &map.data.as_ref().expect("data")["ficus.toml"];
                let config: toml::Value = toml::from_str(toml).expect("toml");
                let tls = config.get("server").and_then(|server| server.get("tls")).expect("server.tls");
                assert_eq!(tls.get("cert").and_then(toml::Value::as_str), Some("/etc/ficus/tls/tls.crt"));
                let calls_peers = config.get("traffic").is_some();
                let peer_ca =
                    config.get("server").and_then(|server| server.get("peer_tls")).and_then(|tls| tls.get("ca_cert"));
                assert_eq!(peer_ca.is_some(), calls_peers, "{:?}: peers are verified", map.metadata.name);
            }
            Object::Pod(pod) => {
                for container in &pod.spec.as_ref().expect("spec").containers {
                    let command = container.command.clone().unwrap_or_default();
                    assert!(command.iter().any(|arg| arg == "--ca-cert"), "{}: verifies the services", container.name);
                }
            }
            _ => {}
        }
    }

    let set = ["tls.enabled=true", "tls.certManager.enabled=true", "tls.certManager.issuerRef.name=ficus-ca"];
    let objects = manifest::render(&[], &set).expect("render");
    let certificate = objects
        .iter()
        .find_map(|object| match object {
            Object::Certificate(certificate) => Some(certificate.spec.clone()),
            _ => None,
        })
        .expect("a Certificate");
    assert_eq!(certificate["secretName"], "ficus-tls");
    assert_eq!(certificate["issuerRef"]["name"], "ficus-ca");
    for service in SERVICES {
        let name = format!("ficus-{service}.ficus.svc");
        let names = certificate["dnsNames"].as_array().expect("dnsNames");
        assert!(names.iter().any(|dns| dns == name.as_str()), "the certificate names {name}");
    }
    assert!(refusal(&["tls.enabled=true", "tls.certManager.enabled=true"]).contains("tls.certManager.issuerRef.name"));
}
