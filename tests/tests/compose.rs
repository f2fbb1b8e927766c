//! The Compose file, validated by the real docker-compose and checked against the
//! services it runs: their configuration keys, health checks, start order, metrics
//! scraping, and the same service graph as the Helm chart's.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use ficus_tests::manifest::{self, SERVICES};
use serde_json::Value;

/// gRPC and admin ports of each service.
const PORTS: [(&str, u16, u16); 4] =
    [("planner", 7001, 9001), ("analysis", 7002, 9002), ("traffic", 7003, 9003), ("sessions", 7004, 9004)];

/// `docker-compose config`: the file validated and normalized, `.env` interpolated.
fn normalized() -> Value {
    let output = Command::new(ficus_testkit::tool("docker-compose"))
        .current_dir(manifest::repository())
        .args(["--file", "compose.yaml", "config"])
        .output()
        .expect("run docker-compose");
    assert!(
        output.status.success(),
        "docker-compose refuses compose.yaml:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_yaml_ng::from_slice(&output.stdout).expect("docker-compose prints YAML")
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose.pointer(&format!("/services/{name}")).unwrap_or_else(|| panic!("service {name} missing"))
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    service
        .get("environment")
        .and_then(Value::as_object)
        .map(|env| env.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
        .unwrap_or_default()
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value.and_then(Value::as_array).into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
}

#[test]
fn every_service_is_health_checked_in_exec_form_on_its_own_port() {
    let compose = normalized();
    for (name, grpc, _) in PORTS {
        let test = strings(service(&compose, name).pointer("/healthcheck/test"));
        let expected = ["CMD", "/usr/local/bin/ficus", "health", "--addr", &format!("127.0.0.1:{grpc}")];
        assert_eq!(test, expected, "{name}'s health check");
        let command = strings(service(&compose, name).get("command"));
        assert_eq!(command, [format!("/usr/local/bin/ficus-{name}")], "{name} runs its own binary");
    }
    assert_eq!(strings(service(&compose, "redis").pointer("/healthcheck/test"))[0], "CMD");
}

#[test]
fn services_start_after_what_they_need_is_healthy() {
    let compose = normalized();
    let condition = |name: &str, on: &str| {
        service(&compose, name)
            .pointer(&format!("/depends_on/{on}/condition"))
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{name} does not wait for {on}"))
            .to_owned()
    };
    for name in SERVICES {
        assert_eq!(condition(name, "redis"), "service_healthy", "{name}");
    }
    assert_eq!(condition("analysis", "traffic"), "service_healthy");
    assert_eq!(condition("planner", "traffic"), "service_healthy");
    assert_eq!(condition("planner", "analysis"), "service_healthy");
    assert_eq!(condition("legacy", "sessions"), "service_healthy");
    assert_eq!(condition("new", "sessions"), "service_healthy");
    assert_eq!(condition("demo", "planner"), "service_healthy");
    assert_eq!(condition("watch", "planner"), "service_healthy");
    let watch = strings(service(&compose, "watch").get("command"));
    let prefix = strings(service(&compose, "demo").get("command"));
    let prefix = prefix.iter().skip_while(|arg| *arg != "--prefix").nth(1).expect("demo --prefix");
    assert_eq!(watch[..3], ["rollout", "watch", &format!("{prefix}-migration")], "watch follows the demo's rollout");
}

#[test]
fn no_password_is_written_in_the_compose_file() {
    let raw = std::fs::read_to_string(manifest::repository().join("compose.yaml")).expect("compose.yaml");
    let env = std::fs::read_to_string(manifest::repository().join(".env")).expect(".env");
    let password =
        env.lines().find_map(|line| line.strip_prefix("REDIS_PASSWORD=")).expect(".env sets REDIS_PASSWORD").trim();
    assert!(!password.is_empty());
    assert!(!raw.contains(password), "compose.yaml holds the password itself");
    let compose = normalized();
    for name in SERVICES {
        let store = &environment(service(&compose, name))["FICUS_STORE"];
        assert!(store.starts_with(&format!("redis://:{password}@redis:6379/")), "{name}: {store}");
    }
}

#[test]
fn every_environment_variable_is_a_real_configuration_key_the_service_accepts() {
    let compose = normalized();
    for (name, _, _) in PORTS {
        let env = environment(service(&compose, name));
        let mut layer = serde_json::Map::new();
        for (key, value) in &env {
            let Some(path) = key.strip_prefix("FICUS_") else {
                assert!(key.starts_with("OTEL_"), "{name}: {key} is neither ficus nor OpenTelemetry configuration");
                continue;
            };
            let path: Vec<String> = path.split("__").map(str::to_lowercase).collect();
            insert(&mut layer, &path, value);
        }
        let layers = figment::Figment::from(figment::providers::Serialized::defaults(Value::Object(layer.clone())));
        let defaults = match name {
            "planner" => check::<ficus_planner::Config>(&layers),
            "analysis" => check::<ficus_analysis::Config>(&layers),
            "traffic" => check::<ficus_traffic::Config>(&layers),
            "sessions" => check::<ficus_sessions::Config>(&layers),
            other => panic!("unknown service {other}"),
        };
        let mut known = defaults;
        if let Value::Object(known) = &mut known {
            let telemetry = serde_json::to_value(ficus_kit::telemetry::TelemetryConfig::default()).expect("json");
            known.insert("telemetry".into(), telemetry);
        }
        for key in env.keys().filter(|key| key.starts_with("FICUS_")) {
            let path: Vec<String> = key["FICUS_".len()..].split("__").map(str::to_lowercase).collect();
            let pointer = format!("/{}", path.join("/"));
            assert!(known.pointer(&pointer).is_some(), "{name}: {key} is no configuration key of the service");
        }
        ficus_kit::telemetry_config(&layers).unwrap_or_else(|error| panic!("{name} telemetry: {error}"));
    }
}

/// Extracts and validates `C` from `layers`; returns its full form, every key present.
fn check<C: ficus_kit::config::ServiceConfig>(layers: &figment::Figment) -> Value {
    let config: C = ficus_kit::config::extract(layers, None).unwrap_or_else(|error| panic!("refused: {error}"));
    serde_json::to_value(&config).expect("json")
}

fn insert(map: &mut serde_json::Map<String, Value>, path: &[String], value: &str) {
    match path {
        [] => {}
        [last] => {
            map.insert(last.clone(), Value::String(value.to_owned()));
        }
        [first, rest @ ..] => {
            let entry = map.entry(first.clone()).or_insert_with(|| Value::Object(serde_json::Map::new()));
            if let Value::Object(inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

#[test]
fn prometheus_scrapes_every_service() {
    let raw = std::fs::read_to_string(manifest::repository().join("compose/prometheus.yml")).expect("prometheus.yml");
    let config: Value = serde_yaml_ng::from_str(&raw).expect("yaml");
    let targets: BTreeSet<String> = config["scrape_configs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|job| job["static_configs"].as_array().cloned().unwrap_or_default())
        .flat_map(|group| strings(group.get("targets")))
        .collect();
    for (name, _, admin) in PORTS {
        assert!(targets.contains(&format!("{name}:{admin}")), "{name}'s /metrics is not scraped: {targets:?}");
    }
}

#[test]
fn compose_and_the_chart_wire_the_same_services_together() {
    let compose = normalized();
    let mut from_compose = BTreeMap::new();
    for name in SERVICES {
        let env = environment(service(&compose, name));
        let mut peers: BTreeSet<String> = SERVICES
            .iter()
            .filter(|peer| env.contains_key(&format!("FICUS_{}", peer.to_uppercase())))
            .map(|peer| (*peer).to_owned())
            .collect();
        if env.get("FICUS_STORE").is_some_and(|store| store.starts_with("redis")) {
            peers.insert("redis".to_owned());
        }
        from_compose.insert(name.to_owned(), peers);
    }
    let redis_values = manifest::chart_dir().join("ci/bundled-redis-values.yaml");
    let objects = manifest::render(&[redis_values.as_path()], &[]).expect("render the chart");
    let from_chart = manifest::service_graph(&objects);
    assert_eq!(from_compose, from_chart);
    assert_eq!(from_chart["planner"], BTreeSet::from(["analysis".into(), "redis".into(), "traffic".into()]));
}

#[test]
fn the_image_holds_every_binary_the_chart_and_compose_run() {
    let dockerfile = std::fs::read_to_string(manifest::repository().join("Dockerfile")).expect("Dockerfile");
    let copied: BTreeSet<String> = dockerfile
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("target/release/"))
        .map(str::to_owned)
        .collect();
    let built: BTreeSet<String> = dockerfile
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|pair| pair[0] == "-p" && pair[1].starts_with("ficus"))
        .map(|pair| pair[1].to_owned())
        .collect();
    assert_eq!(copied, built, "the image copies what it builds");
    let mut run = BTreeSet::from(["ficus".to_owned()]);
    for object in manifest::render(&[], &[]).expect("render") {
        if let manifest::Object::Deployment(deployment) = object {
            let pod = deployment.spec.and_then(|spec| spec.template.spec).expect("pod");
            for container in pod.containers {
                let command = container.command.unwrap_or_default();
                run.extend(
                    command.first().and_then(|binary| binary.strip_prefix("/usr/local/bin/")).map(str::to_owned),
                );
            }
        }
    }
    let compose = normalized();
    for name in SERVICES {
        let command = strings(service(&compose, name).get("command"));
        run.extend(command.first().and_then(|binary| binary.strip_prefix("/usr/local/bin/")).map(str::to_owned));
    }
    assert_eq!(run.len(), 5, "{run:?}");
    assert!(run.is_subset(&copied), "the image lacks {:?}", run.difference(&copied).collect::<Vec<_>>());
    for binary in &copied {
        let package = manifest::repository().join("services").join(binary.strip_prefix("ficus-").unwrap_or("ficus"));
        assert!(package.join("src/main.rs").is_file(), "{binary} is no binary of this workspace");
    }
}

/// The path inside the container that `service` mounts `file` (relative to the
/// repository) at.
fn mounted_at(compose: &Value, name: &str, file: &str) -> Option<String> {
    let source = manifest::repository().join(file);
    strings(service(compose, name).get("volumes")).into_iter().find_map(|volume| {
        let mut parts = volume.split(':');
        let (from, to) = (parts.next()?, parts.next()?);
        (std::path::Path::new(from) == source).then(|| to.to_owned())
    })
}

#[test]
fn every_api_needs_a_token_and_every_client_holds_one_with_its_role() {
    use ficus_kit::auth::{Role, TokenFile};
    let compose = normalized();
    let tokens = TokenFile::load(&manifest::repository().join("compose/tokens.csv")).expect("compose/tokens.csv");
    let role_of = |token: &str| tokens.identify(token).map(|identity| identity.roles).unwrap_or_default();
    for name in SERVICES {
        let env = environment(service(&compose, name));
        let file = env.get("FICUS_SERVER__AUTH__TOKEN_FILE").unwrap_or_else(|| panic!("{name} has no token file"));
        assert_eq!(mounted_at(&compose, name, "compose/tokens.csv").as_ref(), Some(file), "{name} mounts the tokens");
    }
    let peer = std::fs::read_to_string(manifest::repository().join("compose/peer-token")).expect("peer-token");
    assert_eq!(role_of(peer.trim()), [Role::Operator], "the planner sets weights and starts analysis runs");
    for name in ["planner", "analysis"] {
        let file = &environment(service(&compose, name))["FICUS_SERVER__AUTH__PEER_TOKEN_FILE"];
        assert_eq!(mounted_at(&compose, name, "compose/peer-token").as_ref(), Some(file), "{name} mounts its token");
    }
    for (name, role) in [("legacy", Role::App), ("new", Role::App), ("demo", Role::Operator), ("watch", Role::Operator)]
    {
        let token = environment(service(&compose, name)).remove("FICUS_TOKEN").unwrap_or_default();
        assert_eq!(role_of(&token), [role], "{name}'s FICUS_TOKEN");
    }
}
