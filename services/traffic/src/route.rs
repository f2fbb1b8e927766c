//! The route model: what a route matches, its backends and weights, its rules, and the
//! checks that keep a bad route out of the table.
//!
//! A [`Route`] is built only through [`Route::from_proto`], which validates every field and
//! reports the first problem with its field path, so everything downstream (the balancer,
//! the proxy, the nginx renderer) can trust indices and sums without checking again.

use std::{collections::HashMap, fmt};

pub use ficus_kit::status::InvalidField;
use ficus_kit::status::check_name;
use ficus_proto::traffic::v1 as proto;
use http::HeaderName;
use regex::Regex;

/// Total of a route's weights: weights are basis points.
pub const TOTAL_WEIGHT: u32 = 10_000;

/// A validated route.
#[derive(Clone, Debug)]
pub struct Route {
    /// Unique name.
    pub name: String,
    /// Which requests the route takes.
    pub matcher: RouteMatch,
    /// Backends in declaration order; rules, weights and mirror refer to them by index.
    pub backends: Vec<Backend>,
    /// Weight of each backend in basis points, aligned with `backends`, summing to 10000.
    pub weights: Vec<u32>,
    /// Rules evaluated in order before weights.
    pub rules: Vec<Rule>,
    /// Where the sticky user key comes from, if the route splits by user.
    pub sticky: Option<StickyKey>,
    /// Shadow traffic, if any.
    pub mirror: Option<Mirror>,
    /// Version of the route in the store; bumped on every change.
    pub generation: u64,
    /// The Kubernetes object that carries the route too, if any.
    pub kubernetes: Option<crate::adapters::kubernetes::Target>,
    /// The newest planner lease token that set the weights: weights sent with an older
    /// one are refused. Kept by the server; requests cannot set it.
    pub fencing_token: u64,
}

/// Which requests a route takes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteMatch {
    /// Lowercase host names; empty matches any host.
    pub hosts: Vec<String>,
    /// Path prefix; empty matches every path.
    pub path_prefix: String,
}

impl RouteMatch {
    /// Whether a request for `host` (without port) and `path` belongs to the route.
    pub fn matches(&self, host: Option<&str>, path: &str) -> bool {
        let host_ok = self.hosts.is_empty()
            || host.is_some_and(|host| self.hosts.iter().any(|wanted| wanted.eq_ignore_ascii_case(host)));
        host_ok && path_matches_prefix(path, &self.path_prefix)
    }
}

/// Whether `path` is under `prefix` on a segment boundary (`/api` takes `/api/x`, not `/apix`).
fn path_matches_prefix(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
        None => false,
    }
}

/// One environment behind a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Name used by weights and rules.
    pub name: String,
    /// Upstream addresses.
    pub endpoints: Vec<Endpoint>,
}

/// An upstream address, `host:port`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Endpoint {
    /// Parses `host:port` or `[v6]:port`.
    pub fn parse(text: &str) -> Option<Self> {
        let (host, port) = text.rsplit_once(':')?;
        let port = port.parse::<u16>().ok().filter(|port| *port != 0)?;
        let host = match host.strip_prefix('[') {
            Some(v6) => v6.strip_suffix(']').filter(|v6| v6.parse::<std::net::Ipv6Addr>().is_ok())?,
            None => host,
        };
        let valid = !host.is_empty()
            && (host.contains(':') || host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
        valid.then(|| Self { host: host.to_owned(), port })
    }
}

/// A rule: requests matching it go to `backend` regardless of weights.
#[derive(Clone, Debug)]
pub struct Rule {
    /// What the request must carry.
    pub matcher: RuleMatch,
    /// Index of the backend in [`Route::backends`].
    pub backend: usize,
}

/// What a rule looks at.
#[derive(Clone, Debug)]
pub enum RuleMatch {
    /// A header with an exact value or a value matching a regex.
    Header {
        /// Header name.
        name: HeaderName,
        /// How its value is compared.
        value: ValueMatch,
    },
    /// A cookie with an exact value.
    Cookie {
        /// Cookie name.
        name: String,
        /// Required value.
        value: String,
    },
}

/// How a header value is compared.
#[derive(Clone, Debug)]
pub enum ValueMatch {
    /// Equal to this string.
    Exact(String),
    /// Matching this regular expression, anchored at both ends.
    Regex(Regex),
}

impl ValueMatch {
    /// Whether `value` satisfies the match.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(wanted) => value == wanted,
            Self::Regex(regex) => regex.is_match(value),
        }
    }
}

/// Where the sticky user key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StickyKey {
    /// A request header.
    Header(HeaderName),
    /// A cookie; requests without it get a random key set in it.
    Cookie(String),
}

/// Shadow traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    /// Index of the shadow backend.
    pub backend: usize,
    /// Share of requests copied, in basis points.
    pub basis_points: u32,
}

impl Route {
    /// Index of the backend called `name`.
    pub fn backend_index(&self, name: &str) -> Option<usize> {
        self.backends.iter().position(|backend| backend.name == name)
    }

    /// Validates a route as given to `PutRoute`; `field` is the path of the route in the
    /// request (e.g. `route`). The generation is taken from `generation`, not the message.
    pub fn from_proto(route: &proto::Route, field: &str, generation: u64) -> Result<Self, InvalidField> {
        check_name(&format!("{field}.name"), &route.name)?;
        let matcher = route_match(route.r#match.as_ref(), &format!("{field}.match"))?;
        if route.backends.is_empty() {
            return Err(InvalidField::new(format!("{field}.backends"), "a route needs at least one backend"));
        }
        let mut backends = Vec::with_capacity(route.backends.len());
        for (i, backend) in route.backends.iter().enumerate() {
            let path = format!("{field}.backends[{i}]");
            check_name(&format!("{path}.name"), &backend.name)?;
            if backends.iter().any(|seen: &Backend| seen.name == backend.name) {
                return Err(InvalidField::new(
                    format!("{path}.name"),
                    format!("duplicate backend name `{}`", backend.name),
                ));
            }
            if backend.endpoints.is_empty() {
                return Err(InvalidField::new(format!("{path}.endpoints"), "a backend needs at least one endpoint"));
            }
            let endpoints = backend
                .endpoints
                .iter()
                .enumerate()
                .map(|(j, text)| {
                    Endpoint::parse(text).ok_or_else(|| {
                        InvalidField::new(format!("{path}.endpoints[{j}]"), format!("`{text}` is not host:port"))
                    })
                })
                .collect::<Result<_, _>>()?;
            backends.push(Backend { name: backend.name.clone(), endpoints });
        }
        let mut built = Self {
            name: route.name.clone(),
            matcher,
            weights: Vec::new(),
            backends,
            rules: Vec::new(),
            sticky: None,
            mirror: None,
            generation,
            fencing_token: 0,
            kubernetes: None,
        };
        built.weights = built.weights_from(&route.weights, &format!("{field}.weights"))?;
        built.rules = route
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| built.rule(rule, &format!("{field}.rules[{i}]")))
            .collect::<Result<_, _>>()?;
        built.sticky = sticky(route.sticky.as_ref(), &format!("{field}.sticky"))?;
        built.mirror =
            route.mirror.as_ref().map(|mirror| built.mirror(mirror, &format!("{field}.mirror"))).transpose()?;
        built.kubernetes = route
            .kubernetes
            .as_ref()
            .map(|target| {
                crate::adapters::kubernetes::Target::from_proto(target, &built, &format!("{field}.kubernetes"))
            })
            .transpose()?;
        Ok(built)
    }

    /// Validates a weight map against this route's backends: known names, summing to
    /// 10000; backends left out get 0.
    pub fn weights_from(&self, weights: &HashMap<String, u32>, field: &str) -> Result<Vec<u32>, InvalidField> {
        let mut aligned = vec![0; self.backends.len()];
        let mut names: Vec<&String> = weights.keys().collect();
        names.sort();
        for name in names {
            let index = self.backend_index(name).ok_or_else(|| {
                InvalidField::new(format!("{field}[\"{name}\"]"), format!("`{name}` is not a backend of the route"))
            })?;
            aligned[index] = weights[name];
        }
        let total: u64 = aligned.iter().map(|weight| u64::from(*weight)).sum();
        if total != u64::from(TOTAL_WEIGHT) {
            return Err(InvalidField::new(
                field,
                format!("weights sum to {total}; they must sum to {TOTAL_WEIGHT} basis points"),
            ));
        }
        Ok(aligned)
    }

    fn rule(&self, rule: &proto::Rule, field: &str) -> Result<Rule, InvalidField> {
        let backend = self.backend_index(&rule.backend).ok_or_else(|| {
            InvalidField::new(format!("{field}.backend"), format!("`{}` is not a backend of the route", rule.backend))
        })?;
        let matcher = match &rule.r#match {
            Some(proto::rule::Match::Header(header)) => {
                let name = HeaderName::try_from(header.name.as_str())
                    .map_err(|_| InvalidField::new(format!("{field}.header.name"), "not a valid header name"))?;
                let value = match &header.value {
                    Some(proto::header_match::Value::Exact(exact)) => ValueMatch::Exact(exact.clone()),
                    Some(proto::header_match::Value::Regex(pattern)) => ValueMatch::Regex(
                        Regex::new(&format!("^(?:{pattern})$"))
                            .map_err(|error| InvalidField::new(format!("{field}.header.regex"), error.to_string()))?,
                    ),
                    None => return Err(InvalidField::new(format!("{field}.header"), "set `exact` or `regex`")),
                };
                RuleMatch::Header { name, value }
            }
            Some(proto::rule::Match::Cookie(cookie)) => {
                check_cookie_name(&format!("{field}.cookie.name"), &cookie.name)?;
                RuleMatch::Cookie { name: cookie.name.clone(), value: cookie.value.clone() }
            }
            None => return Err(InvalidField::new(field, "a rule needs a `header` or `cookie` match")),
        };
        Ok(Rule { matcher, backend })
    }

    fn mirror(&self, mirror: &proto::Mirror, field: &str) -> Result<Mirror, InvalidField> {
        let backend = self.backend_index(&mirror.backend).ok_or_else(|| {
            InvalidField::new(format!("{field}.backend"), format!("`{}` is not a backend of the route", mirror.backend))
        })?;
        if mirror.basis_points > TOTAL_WEIGHT {
            return Err(InvalidField::new(format!("{field}.basis_points"), "at most 10000"));
        }
        Ok(Mirror { backend, basis_points: mirror.basis_points })
    }

    /// The route as the API returns it.
    pub fn to_proto(&self, updated_at: Option<pbjson_types::Timestamp>) -> proto::Route {
        proto::Route {
            name: self.name.clone(),
            r#match: Some(proto::RouteMatch {
                hosts: self.matcher.hosts.clone(),
                path_prefix: self.matcher.path_prefix.clone(),
            }),
            backends: self
                .backends
                .iter()
                .map(|backend| proto::Backend {
                    name: backend.name.clone(),
                    endpoints: backend.endpoints.iter().map(ToString::to_string).collect(),
                })
                .collect(),
            weights: self
                .backends
                .iter()
                .zip(&self.weights)
                .map(|(backend, weight)| (backend.name.clone(), *weight))
                .collect(),
            rules: self.rules.iter().map(|rule| self.rule_to_proto(rule)).collect(),
            sticky: self.sticky.as_ref().map(|sticky| proto::StickyKey {
                source: Some(match sticky {
                    StickyKey::Header(name) => proto::sticky_key::Source::Header(name.to_string()),
                    StickyKey::Cookie(name) => proto::sticky_key::Source::Cookie(name.clone()),
                }),
            }),
            mirror: self.mirror.as_ref().map(|mirror| proto::Mirror {
                backend: self.backends[mirror.backend].name.clone(),
                basis_points: mirror.basis_points,
            }),
            generation: self.generation,
            fencing_token: self.fencing_token,
            updated_at,
            kubernetes: self.kubernetes.as_ref().map(|target| target.to_proto(self)),
            kubernetes_status: None,
        }
    }

    fn rule_to_proto(&self, rule: &Rule) -> proto::Rule {
        let r#match = match &rule.matcher {
            RuleMatch::Header { name, value } => proto::rule::Match::Header(proto::HeaderMatch {
                name: name.to_string(),
                value: Some(match value {
                    ValueMatch::Exact(exact) => proto::header_match::Value::Exact(exact.clone()),
                    ValueMatch::Regex(regex) => proto::header_match::Value::Regex(unanchor(regex.as_str()).to_owned()),
                }),
            }),
            RuleMatch::Cookie { name, value } => {
                proto::rule::Match::Cookie(proto::CookieMatch { name: name.clone(), value: value.clone() })
            }
        };
        proto::Rule { r#match: Some(r#match), backend: self.backends[rule.backend].name.clone() }
    }
}

/// The pattern a user wrote, from the anchored form kept internally.
fn unanchor(pattern: &str) -> &str {
    pattern.strip_prefix("^(?:").and_then(|rest| rest.strip_suffix(")$")).unwrap_or(pattern)
}

fn check_cookie_name(field: &str, name: &str) -> Result<(), InvalidField> {
    let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
    if valid { Ok(()) } else { Err(InvalidField::new(field, format!("`{name}` is not a valid cookie name"))) }
}

fn route_match(matcher: Option<&proto::RouteMatch>, field: &str) -> Result<RouteMatch, InvalidField> {
    let Some(matcher) = matcher else { return Ok(RouteMatch::default()) };
    if !matcher.path_prefix.is_empty() && !matcher.path_prefix.starts_with('/') {
        return Err(InvalidField::new(format!("{field}.path_prefix"), "must start with '/'"));
    }
    let mut hosts = Vec::with_capacity(matcher.hosts.len());
    for (i, host) in matcher.hosts.iter().enumerate() {
        let valid = !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !valid {
            return Err(InvalidField::new(format!("{field}.hosts[{i}]"), format!("`{host}` is not a host name")));
        }
        hosts.push(host.to_ascii_lowercase());
    }
    Ok(RouteMatch { hosts, path_prefix: matcher.path_prefix.clone() })
}

fn sticky(sticky: Option<&proto::StickyKey>, field: &str) -> Result<Option<StickyKey>, InvalidField> {
    let Some(sticky) = sticky else { return Ok(None) };
    match &sticky.source {
        Some(proto::sticky_key::Source::Header(name)) => HeaderName::try_from(name.as_str())
            .map(|name| Some(StickyKey::Header(name)))
            .map_err(|_| InvalidField::new(format!("{field}.header"), "not a valid header name")),
        Some(proto::sticky_key::Source::Cookie(name)) => {
            check_cookie_name(&format!("{field}.cookie"), name)?;
            Ok(Some(StickyKey::Cookie(name.clone())))
        }
        None => Err(InvalidField::new(field, "set `header` or `cookie`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> proto::Route {
        proto::Route {
            name: "checkout".into(),
            backends: vec![
                proto::Backend { name: "legacy".into(), endpoints: vec!["10.0.0.1:8080".into()] },
                proto::Backend { name: "k8s".into(), endpoints: vec!["k8s.internal:80".into(), "[::1]:81".into()] },
            ],
            weights: [("legacy".to_owned(), 9_500), ("k8s".to_owned(), 500)].into(),
            ..Default::default()
        }
    }

    fn refused(route: &proto::Route) -> InvalidField {
        Route::from_proto(route, "route", 1).expect_err("invalid route accepted")
    }

    #[test]
    fn a_valid_route_round_trips() {
        let mut input = route();
        input.rules.push(proto::Rule {
            r#match: Some(proto::rule::Match::Header(proto::HeaderMatch {
                name: "x-canary".into(),
                value: Some(proto::header_match::Value::Regex("always|yes".into())),
            })),
            backend: "k8s".into(),
        });
        let built = Route::from_proto(&input, "route", 7).expect("valid");
        assert_eq!(built.weights, vec![9_500, 500]);
        let output = built.to_proto(None);
        assert_eq!(output.generation, 7);
        assert_eq!(output.rules, input.rules);
        assert_eq!(output.backends, input.backends);
        assert_eq!(output.weights, input.weights);
    }

    #[test]
    fn weights_must_sum_to_ten_thousand() {
        let mut input = route();
        input.weights.insert("k8s".into(), 600);
        let error = refused(&input);
        assert_eq!(error.field, "route.weights");
        assert!(error.reason.contains("10100"), "{error}");
    }

    #[test]
    fn unknown_backends_are_named_by_path() {
        let mut input = route();
        input.weights.insert("nope".into(), 0);
        assert_eq!(refused(&input).field, "route.weights[\"nope\"]");
        let mut input = route();
        input.rules.push(proto::Rule {
            r#match: Some(proto::rule::Match::Cookie(proto::CookieMatch {
                name: "canary".into(),
                value: "always".into(),
            })),
            backend: "nope".into(),
        });
        assert_eq!(refused(&input).field, "route.rules[0].backend");
    }

    #[test]
    fn bad_endpoints_regexes_and_duplicates_are_refused() {
        let mut input = route();
        input.backends[1].endpoints[1] = "no-port".into();
        assert_eq!(refused(&input).field, "route.backends[1].endpoints[1]");
        let mut input = route();
        input.backends[1].name = "legacy".into();
        assert_eq!(refused(&input).field, "route.backends[1].name");
        let mut input = route();
        input.rules.push(proto::Rule {
            r#match: Some(proto::rule::Match::Header(proto::HeaderMatch {
                name: "x-canary".into(),
                value: Some(proto::header_match::Value::Regex("(unclosed".into())),
            })),
            backend: "k8s".into(),
        });
        assert_eq!(refused(&input).field, "route.rules[0].header.regex");
        let mut input = route();
        input.name = "Checkout!".into();
        assert_eq!(refused(&input).field, "route.name");
    }

    #[test]
    fn endpoints_parse_hosts_ipv4_and_ipv6() {
        assert_eq!(Endpoint::parse("a.b:80"), Some(Endpoint { host: "a.b".into(), port: 80 }));
        assert_eq!(Endpoint::parse("[::1]:81").map(|e| e.to_string()), Some("[::1]:81".into()));
        assert_eq!(Endpoint::parse("a.b:0"), None);
        assert_eq!(Endpoint::parse("a b:80"), None);
        assert_eq!(Endpoint::parse(":80"), None);
    }

    #[test]
    fn path_prefixes_match_on_segment_boundaries() {
        let matcher = RouteMatch { hosts: vec!["shop.example".into()], path_prefix: "/api".into() };
        assert!(matcher.matches(Some("SHOP.example"), "/api/cart"));
        assert!(matcher.matches(Some("shop.example"), "/api"));
        assert!(!matcher.matches(Some("shop.example"), "/apix"));
        assert!(!matcher.matches(Some("other.example"), "/api"));
        assert!(!matcher.matches(None, "/api"));
    }
}
