//! A route's Kubernetes target, validated: which object, how backends map to the cluster,
//! and whether the route says only what that data plane can express.

use std::collections::BTreeMap;

use ficus_kit::status::{InvalidField, check_name};
use ficus_proto::traffic::v1 as proto;

use crate::route::{Route, RuleMatch, TOTAL_WEIGHT};

/// Which data plane the object belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// ingress-nginx, through a canary Ingress ficus derives from the stable one.
    IngressNginx,
    /// A Gateway API HTTPRoute's rules.
    GatewayApi,
    /// An Istio VirtualService's HTTP routes.
    Istio,
    /// A Service's selector, switched for blue-green.
    Service,
}

/// One backend as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterBackend {
    /// The Service reaching the backend's pods.
    pub service: String,
    /// The Service's port, when given.
    pub port: Option<u16>,
    /// Labels of the backend's pods.
    pub selector: BTreeMap<String, String>,
}

/// A validated target; backends are aligned with the route's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Which data plane.
    pub kind: Kind,
    /// Namespace of the object.
    pub namespace: String,
    /// Name of the object (the stable Ingress for ingress-nginx).
    pub name: String,
    /// Per backend of the route, in the route's order.
    pub backends: Vec<ClusterBackend>,
    /// Whether drift is undone.
    pub restore_drift: bool,
}

impl Target {
    /// Validates `target` against `route` (already validated but for its target); `field`
    /// is the target's path, e.g. `route.kubernetes`.
    pub fn from_proto(target: &proto::KubernetesTarget, route: &Route, field: &str) -> Result<Self, InvalidField> {
        let kind = match proto::kubernetes_target::Kind::try_from(target.kind) {
            Ok(proto::kubernetes_target::Kind::IngressNginx) => Kind::IngressNginx,
            Ok(proto::kubernetes_target::Kind::GatewayApi) => Kind::GatewayApi,
            Ok(proto::kubernetes_target::Kind::Istio) => Kind::Istio,
            Ok(proto::kubernetes_target::Kind::Service) => Kind::Service,
            _ => {
                return Err(InvalidField::new(
                    format!("{field}.kind"),
                    "set INGRESS_NGINX, GATEWAY_API, ISTIO or SERVICE",
                ));
            }
        };
        check_name(&format!("{field}.namespace"), &target.namespace)?;
        check_name(&format!("{field}.name"), &target.name)?;
        if let Some(unknown) = target.backends.keys().find(|name| route.backend_index(name).is_none()) {
            return Err(InvalidField::new(
                format!("{field}.backends[\"{unknown}\"]"),
                format!("`{unknown}` is not a backend of the route"),
            ));
        }
        let mut backends = Vec::with_capacity(route.backends.len());
        for backend in &route.backends {
            let path = format!("{field}.backends[\"{}\"]", backend.name);
            let given = target
                .backends
                .get(&backend.name)
                .ok_or_else(|| InvalidField::new(path.clone(), "every backend of the route needs its cluster form"))?;
            let port = match given.port {
                0 => None,
                port => {
                    Some(u16::try_from(port).map_err(|_| InvalidField::new(format!("{path}.port"), "at most 65535"))?)
                }
            };
            if kind == Kind::Service {
                if given.selector.is_empty() {
                    return Err(InvalidField::new(format!("{path}.selector"), "a switched Service needs pod labels"));
                }
            } else {
                check_name(&format!("{path}.service"), &given.service)?;
            }
            if kind == Kind::GatewayApi && port.is_none() {
                return Err(InvalidField::new(format!("{path}.port"), "Gateway API backend references need a port"));
            }
            backends.push(ClusterBackend {
                service: given.service.clone(),
                port,
                selector: given.selector.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            });
        }
        let target = Self {
            kind,
            namespace: target.namespace.clone(),
            name: target.name.clone(),
            backends,
            restore_drift: target.restore_drift,
        };
        target.check_expressible(route, field, "weights")?;
        Ok(target)
    }

    /// Refuses what this data plane cannot express, rather than approximating it;
    /// `weights_field` is where the weights came from (`route.weights` or `weights`).
    pub fn check_expressible(&self, route: &Route, field: &str, weights_field: &str) -> Result<(), InvalidField> {
        let refuse = |path: String, reason: &str| Err(InvalidField::new(path, reason.to_owned()));
        let route_field = field.strip_suffix(".kubernetes").unwrap_or("route");
        if route.sticky.is_some() {
            return refuse(
                format!("{route_field}.sticky"),
                "sticky cohorts are kept by ficus' own data planes; a Kubernetes data plane splits per request",
            );
        }
        match self.kind {
            Kind::IngressNginx => {
                if route.backends.len() != 2 {
                    return refuse(
                        format!("{route_field}.backends"),
                        "an ingress-nginx canary has exactly two backends, stable then canary",
                    );
                }
                if route.mirror.is_some() {
                    return refuse(format!("{route_field}.mirror"), "an ingress-nginx canary cannot mirror");
                }
                let (mut headers, mut cookies) = (0, 0);
                for (i, rule) in route.rules.iter().enumerate() {
                    let path = format!("{route_field}.rules[{i}]");
                    if rule.backend != 1 {
                        return refuse(format!("{path}.backend"), "ingress-nginx rules can only send to the canary");
                    }
                    match &rule.matcher {
                        RuleMatch::Header { .. } => headers += 1,
                        RuleMatch::Cookie { value, .. } if value == "always" => cookies += 1,
                        RuleMatch::Cookie { .. } => {
                            return refuse(
                                format!("{path}.cookie.value"),
                                "ingress-nginx sends a cookie to the canary when its value is `always`",
                            );
                        }
                    }
                    if headers > 1 || cookies > 1 {
                        return refuse(path, "ingress-nginx takes at most one header rule and one cookie rule");
                    }
                }
            }
            Kind::GatewayApi => {
                if route.mirror.is_some() {
                    return refuse(
                        format!("{route_field}.mirror"),
                        "the Gateway API standard channel cannot mirror a share of requests",
                    );
                }
            }
            Kind::Istio => {
                if let Some((i, _)) = route.weights.iter().enumerate().find(|(_, weight)| *weight % 100 != 0) {
                    return refuse(
                        format!("{weights_field}[\"{}\"]", route.backends[i].name),
                        "Istio weights are whole percents: use multiples of 100 basis points",
                    );
                }
            }
            Kind::Service => {
                if let Some((i, _)) = route.weights.iter().enumerate().find(|(_, w)| **w != 0 && **w != TOTAL_WEIGHT) {
                    return refuse(
                        format!("{weights_field}[\"{}\"]", route.backends[i].name),
                        "a switched Service sends everything to one backend: weights are 0 or 10000",
                    );
                }
                if !route.rules.is_empty() {
                    return refuse(
                        format!("{route_field}.rules"),
                        "a switched Service cannot route by header or cookie",
                    );
                }
                if route.mirror.is_some() {
                    return refuse(format!("{route_field}.mirror"), "a switched Service cannot mirror");
                }
            }
        }
        Ok(())
    }

    /// The target as the API returns it.
    pub fn to_proto(&self, route: &Route) -> proto::KubernetesTarget {
        let kind = match self.kind {
            Kind::IngressNginx => proto::kubernetes_target::Kind::IngressNginx,
            Kind::GatewayApi => proto::kubernetes_target::Kind::GatewayApi,
            Kind::Istio => proto::kubernetes_target::Kind::Istio,
            Kind::Service => proto::kubernetes_target::Kind::Service,
        };
        proto::KubernetesTarget {
            kind: kind.into(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            backends: route
                .backends
                .iter()
                .zip(&self.backends)
                .map(|(backend, cluster)| {
                    let given = proto::KubernetesBackend {
                        service: cluster.service.clone(),
                        port: cluster.port.map_or(0, u32::from),
                        selector: cluster.selector.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    };
                    (backend.name.clone(), given)
                })
                .collect(),
            restore_drift: self.restore_drift,
        }
    }
}
