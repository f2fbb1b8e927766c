//! What ficus applies for a route, per data plane: the apply patch holding only the
//! fields ficus owns, and the comparison that tells when someone changed them.

use k8s_openapi::api::networking::v1::Ingress;
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

use super::target::{Kind, Target};
use crate::route::{Route, RuleMatch, ValueMatch};

/// Annotations of ingress-nginx's canary feature.
const NGINX: &str = "nginx.ingress.kubernetes.io";

/// One object as ficus wants it: the server-side apply patch.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// Its API resource.
    pub resource: ApiResource,
    /// Its name.
    pub name: String,
    /// The apply patch: type, name, and only the fields ficus owns.
    pub patch: Value,
}

/// Why a route's object cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// ingress-nginx: the stable Ingress the canary derives from does not exist.
    #[error("the stable Ingress {namespace}/{name} does not exist")]
    NoStableIngress {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

/// The API resource of each kind's object.
pub fn resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::IngressNginx => ApiResource::erase::<Ingress>(&()),
        Kind::GatewayApi => ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
            "httproutes",
        ),
        Kind::Istio => ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService"),
            "virtualservices",
        ),
        Kind::Service => ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&()),
    }
}

/// The name of the canary Ingress ficus derives from stable Ingress `stable`.
pub fn canary_ingress_name(stable: &str) -> String {
    format!("{stable}-canary")
}

/// What ficus applies for `route` to `target`; ingress-nginx needs the stable Ingress.
pub fn desired(route: &Route, target: &Target, stable: Option<&Ingress>) -> Result<Desired, RenderError> {
    let resource = resource(target.kind);
    let name = match target.kind {
        Kind::IngressNginx => canary_ingress_name(&target.name),
        _ => target.name.clone(),
    };
    let fields = match target.kind {
        Kind::IngressNginx => {
            let stable = stable.ok_or_else(|| RenderError::NoStableIngress {
                namespace: target.namespace.clone(),
                name: target.name.clone(),
            })?;
            canary_ingress(route, target, stable, &name)
        }
        Kind::GatewayApi => json!({"spec": {"rules": http_route_rules(route, target)}}),
        Kind::Istio => json!({"spec": {"http": virtual_service_http(route, target)}}),
        Kind::Service => {
            let chosen = route.weights.iter().position(|weight| *weight > 0).unwrap_or(0);
            json!({"spec": {"selector": target.backends[chosen].selector}})
        }
    };
    let mut patch = json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": {"name": name, "namespace": target.namespace},
    });
    merge(&mut patch, fields);
    Ok(Desired { resource, name, patch })
}

/// The canary Ingress: the stable one's rules sent to the canary Service, with the
/// canary annotations.
fn canary_ingress(route: &Route, target: &Target, stable: &Ingress, name: &str) -> Value {
    let canary = &target.backends[1];
    let mut annotations = serde_json::Map::new();
    let mut annotate = |key: &str, value: String| {
        annotations.insert(format!("{NGINX}/{key}"), Value::String(value));
    };
    annotate("canary", "true".into());
    annotate("canary-weight", route.weights[1].to_string());
    annotate("canary-weight-total", crate::route::TOTAL_WEIGHT.to_string());
    for rule in &route.rules {
        match &rule.matcher {
            RuleMatch::Header { name, value: ValueMatch::Exact(value) } => {
                annotate("canary-by-header", name.to_string());
                annotate("canary-by-header-value", value.clone());
            }
            RuleMatch::Header { name, value: ValueMatch::Regex(regex) } => {
                annotate("canary-by-header", name.to_string());
                annotate("canary-by-header-pattern", regex.as_str().to_owned());
            }
            RuleMatch::Cookie { name, .. } => annotate("canary-by-cookie", name.clone()),
        }
    }
    let mut rules = serde_json::to_value(stable.spec.as_ref().and_then(|spec| spec.rules.clone()).unwrap_or_default())
        .unwrap_or(Value::Array(Vec::new()));
    for rule in rules.as_array_mut().into_iter().flatten() {
        for path in rule.pointer_mut("/http/paths").and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(service) = path.pointer_mut("/backend/service") {
                service["name"] = json!(canary.service);
                if let Some(port) = canary.port {
                    service["port"] = json!({"number": port});
                }
            }
        }
    }
    let class = stable.spec.as_ref().and_then(|spec| spec.ingress_class_name.clone());
    let mut spec = json!({"rules": rules});
    if let Some(class) = class {
        spec["ingressClassName"] = json!(class);
    }
    json!({
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": "ficus", "ficus.dev/route": route.name},
            "annotations": annotations,
        },
        "spec": spec,
    })
}

/// HTTPRoute rules: one per header or cookie rule, then the weighted split.
fn http_route_rules(route: &Route, target: &Target) -> Vec<Value> {
    let reference = |index: usize, weight: Option<u32>| {
        let backend = &target.backends[index];
        let mut reference = json!({"name": backend.service, "port": backend.port});
        if let Some(weight) = weight {
            reference["weight"] = json!(weight);
        }
        reference
    };
    let path = (!route.matcher.path_prefix.is_empty())
        .then(|| json!({"type": "PathPrefix", "value": route.matcher.path_prefix}));
    let mut rules: Vec<Value> = route
        .rules
        .iter()
        .map(|rule| {
            let (name, kind, value) = match &rule.matcher {
                RuleMatch::Header { name, value: ValueMatch::Exact(value) } => {
                    (name.to_string(), "Exact", value.clone())
                }
                RuleMatch::Header { name, value: ValueMatch::Regex(regex) } => {
                    (name.to_string(), "RegularExpression", regex.as_str().to_owned())
                }
                RuleMatch::Cookie { name, value } => {
                    ("cookie".to_owned(), "RegularExpression", cookie_pattern(name, value))
                }
            };
            let mut matched = json!({"headers": [{"type": kind, "name": name, "value": value}]});
            if let Some(path) = &path {
                matched["path"] = path.clone();
            }
            json!({"matches": [matched], "backendRefs": [reference(rule.backend, None)]})
        })
        .collect();
    let weighted: Vec<Value> =
        route.weights.iter().enumerate().map(|(i, weight)| reference(i, Some(*weight))).collect();
    let mut split = json!({"backendRefs": weighted});
    if let Some(path) = path {
        split["matches"] = json!([{"path": path}]);
    }
    rules.push(split);
    rules
}

/// VirtualService HTTP routes: one per header or cookie rule, then the weighted split with
/// the mirror.
fn virtual_service_http(route: &Route, target: &Target) -> Vec<Value> {
    let destination = |index: usize| {
        let backend = &target.backends[index];
        let mut destination = json!({"host": backend.service});
        if let Some(port) = backend.port {
            destination["port"] = json!({"number": port});
        }
        destination
    };
    let uri = (!route.matcher.path_prefix.is_empty()).then(|| json!({"prefix": route.matcher.path_prefix}));
    let mut http: Vec<Value> = route
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let (name, value) = match &rule.matcher {
                RuleMatch::Header { name, value: ValueMatch::Exact(value) } => (name.to_string(), json!({"exact": value})),
                RuleMatch::Header { name, value: ValueMatch::Regex(regex) } => {
                    (name.to_string(), json!({"regex": regex.as_str()}))
                }
                RuleMatch::Cookie { name, value } => ("cookie".to_owned(), json!({"regex": cookie_pattern(name, value)})),
            };
            let mut matched = json!({"headers": {name: value}});
            if let Some(uri) = &uri {
                matched["uri"] = uri.clone();
            }
            json!({"name": format!("ficus-rule-{i}"), "match": [matched], "route": [{"destination": destination(rule.backend)}]})
        })
        .collect();
    let weighted: Vec<Value> = route
        .weights
        .iter()
        .enumerate()
        .map(|(i, weight)| json!({"destination": destination(i), "weight": weight / 100}))
        .collect();
    let mut split = json!({"name": "ficus-split", "route": weighted});
    if let Some(uri) = uri {
        split["match"] = json!([{"uri": uri}]);
    }
    if let Some(mirror) = &route.mirror {
        split["mirror"] = destination(mirror.backend);
        split["mirrorPercentage"] = json!({"value": f64::from(mirror.basis_points) / 100.0});
    }
    http.push(split);
    http
}

/// A regular expression matching a `Cookie` header that carries `name=value`.
fn cookie_pattern(name: &str, value: &str) -> String {
    format!("(^|.*;\\s*){}={}(;.*|$)", regex::escape(name), regex::escape(value))
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (key, value) in from {
                merge(into.entry(key).or_insert(Value::Null), value);
            }
        }
        (into, from) => *into = from,
    }
}

/// The first field of `desired` that `actual` does not carry as desired, as a dotted path;
/// `None` when the object holds everything ficus applied. Fields the server or other
/// owners added beside ficus' are not differences.
pub fn difference(desired: &Value, actual: &Value) -> Option<String> {
    fn walk(desired: &Value, actual: &Value, path: &str) -> Option<String> {
        match (desired, actual) {
            (Value::Object(desired), Value::Object(actual)) => desired.iter().find_map(|(key, value)| {
                let path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                match actual.get(key) {
                    Some(actual) => walk(value, actual, &path),
                    None if value.is_null() => None,
                    None => Some(path),
                }
            }),
            (Value::Array(desired), Value::Array(actual)) if desired.len() == actual.len() => {
                desired.iter().zip(actual).enumerate().find_map(|(i, (d, a))| walk(d, a, &format!("{path}[{i}]")))
            }
            (Value::Number(desired), Value::Number(actual)) => {
                (desired.as_f64() != actual.as_f64()).then(|| path.to_owned())
            }
            (desired, actual) => (desired != actual).then(|| path.to_owned()),
        }
    }
    let mut desired = desired.clone();
    if let Value::Object(fields) = &mut desired {
        fields.remove("apiVersion");
        fields.remove("kind");
    }
    walk(&desired, actual, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_ignore_fields_others_added_and_name_the_changed_one() {
        let desired =
            json!({"kind": "X", "metadata": {"annotations": {"w": "500"}}, "spec": {"rules": [{"weight": 5}]}});
        let same = json!({"metadata": {"annotations": {"w": "500", "other": "x"}, "uid": "1"}, "spec": {"rules": [{"weight": 5, "group": ""}], "more": 1}});
        assert_eq!(difference(&desired, &same), None);
        let edited = json!({"metadata": {"annotations": {"w": "900"}}, "spec": {"rules": [{"weight": 5}]}});
        assert_eq!(difference(&desired, &edited).as_deref(), Some("metadata.annotations.w"));
        let shorter = json!({"metadata": {"annotations": {"w": "500"}}, "spec": {"rules": []}});
        assert_eq!(difference(&desired, &shorter).as_deref(), Some("spec.rules"));
    }

    #[test]
    fn cookie_patterns_match_the_cookie_among_others_only() {
        let pattern = regex::Regex::new(&format!("^(?:{})$", cookie_pattern("canary", "always"))).expect("regex");
        assert!(pattern.is_match("canary=always"));
        assert!(pattern.is_match("a=1; canary=always; b=2"));
        assert!(!pattern.is_match("canary=never"));
        assert!(!pattern.is_match("xcanary=always"));
    }
}
