//! Routes as an nginx `http`-context include file.
//!
//! The render is pure: the same routes give the same text, byte for byte, whatever their
//! order or generation, so the adapter can skip a reload (which restarts nginx's balancing)
//! when nothing nginx sees changed, and a reviewer can diff two renders. Every name
//! in the file is derived from route and backend names, which are DNS labels (lowercase
//! letters, digits, `-`, never `_`), so `_` is a safe separator:
//!
//! - `upstream ficus_<route>` is the weighted split; `upstream ficus_<route>_<backend>` is
//!   one backend, for rules, sticky cohorts and the mirror.
//! - Variables are `$ficus_<kind>_<route with - as _>`; the kind comes first and never
//!   contains `_`, so two routes can never produce the same variable.
//!
//! How the pieces map to nginx:
//!
//! - Weights: nginx's upstream round-robin is the smooth weighted round-robin ficus uses,
//!   so the weighted upstream lists every endpoint of every backend with a non-zero weight.
//!   A backend of `n` endpoints gives each `weight_bp * L / n`, `L` being the least common
//!   multiple of the endpoint counts, then every weight is divided by their greatest common
//!   divisor: backend shares stay exact over every full cycle (see [`proportional`]). An
//!   endpoint the adapter resolved to `a` addresses splits its weight among them the same
//!   way. Zero-weight backends are left out; they keep their own upstream for rules.
//! - Rules: one `map` per rule, chained: a rule's map yields its backend's upstream when
//!   the value matches and the next rule's variable otherwise, the last falling through to
//!   the sticky cohort or the weighted upstream. Values are compared with case-sensitive
//!   regexes (nginx compares plain `map` strings case-insensitively, ficus does not);
//!   cookies are read from `$http_cookie` with a regex, because `$cookie_<name>` matches
//!   names case-insensitively and cannot spell names with `.` or `-`.
//! - Sticky cohorts: `split_clients` (MurmurHash2) over the user key, with each backend's
//!   basis points as a percentage with two decimals, which is exactly one basis point, in
//!   declaration order, so a growing backend only takes users from its neighbours' edge. A
//!   request without the header follows the weights; a request without the cookie gets
//!   `$request_id` (128 random bits in hex, as ficus generates) as its key and in a
//!   `Set-Cookie`.
//! - Mirror: `mirror` to an internal location that proxies to the shadow backend; below
//!   100%, a `split_clients` on `$request_id` makes the copy return at once without
//!   contacting the shadow for the other requests.
//! - Matching: one `server` per set of host names on the configured `listen` addresses,
//!   plus the default server for requests naming no routed host. Each gets `location`s for
//!   the routes that can take its requests, resolved the way the ficus proxy resolves
//!   them: longest path prefix first, then routes naming the host, then by route name.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;

use crate::route::{Endpoint, Route, RuleMatch, StickyKey, TOTAL_WEIGHT, ValueMatch};

/// How long a generated sticky cookie lasts, as the ficus proxy sets it: a cohort should
/// outlive a migration, which may take weeks.
const STICKY_COOKIE_MAX_AGE_SECS: u64 = 400 * 24 * 3600;

/// Largest total of a weighted upstream: nginx keeps weights in `ngx_int_t`, 32 bits on
/// 32-bit builds, and sums them while it balances.
const MAX_TOTAL_WEIGHT: u128 = i32::MAX as u128;

/// Resolution of the rounded weights used when exact ones would exceed
/// [`MAX_TOTAL_WEIGHT`]: each endpoint gets its share in millionths.
const ROUNDED_SCALE: u128 = 100;

/// What the render needs besides the routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderOptions {
    /// `listen` parameters of the rendered servers, e.g. `80` or `127.0.0.1:8080`. Empty
    /// renders no server at all, only upstreams and variables: the operator then writes
    /// `proxy_pass http://<target>;` in their own locations, the target of each route
    /// being given in a comment above its section.
    pub listen: Vec<String>,
    /// Idle keepalive connections each nginx worker keeps per upstream, so a split does
    /// not pay a TCP handshake per request.
    pub keepalive: u32,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self { listen: vec!["80".to_owned()], keepalive: 32 }
    }
}

/// Renders `routes` with the default [`RenderOptions`] (servers on port 80).
pub fn render(routes: &[Route]) -> String {
    render_with(routes, &RenderOptions::default())
}

/// Renders `routes` as an include file for nginx's `http` block, endpoints as written:
/// nginx resolves host names when it loads the file, and turns a name with several
/// addresses into several servers, each with the endpoint's weight. The adapter resolves
/// names itself to keep such an endpoint to its share.
pub fn render_with(routes: &[Route], options: &RenderOptions) -> String {
    render_resolved(routes, options, &|endpoint| vec![endpoint.to_string()])
}

/// The nginx servers an endpoint stands for: itself, or the addresses its name resolved to.
pub(crate) type Addresses<'a> = &'a dyn Fn(&Endpoint) -> Vec<String>;

/// Renders `routes` with each endpoint as the servers `addresses` gives for it; an endpoint
/// of several addresses splits its share evenly among them.
pub(crate) fn render_resolved(routes: &[Route], options: &RenderOptions, addresses: Addresses<'_>) -> String {
    let mut ordered: Vec<&Route> = routes.iter().collect();
    ordered.sort_by(|a, b| a.name.cmp(&b.name));
    let mut conf = Conf::default();
    conf.line(0, "# Written by ficus from its route table; ficus rewrites this file on every route change,");
    conf.line(0, "# so edits here are lost. Include it in nginx's http block.");
    let plans: Vec<Plan<'_>> =
        ordered.iter().map(|route| route_section(&mut conf, route, options.keepalive, addresses)).collect();
    if !options.listen.is_empty() {
        servers(&mut conf, &plans, &options.listen);
    }
    if conf.needs_dollar {
        conf.line(0, "");
        conf.line(0, "# A literal `$`, which nginx cannot escape inside a value with variables.");
        conf.line(0, "geo $ficus_dollar { default \"$\"; }");
    }
    conf.text
}

/// What the servers need to know about a rendered route.
struct Plan<'a> {
    route: &'a Route,
    /// Host part of `proxy_pass`: an upstream name or a variable holding one.
    target: String,
    /// Variable holding a `Set-Cookie` value for requests without a sticky cookie.
    set_cookie: Option<String>,
    mirror: Option<MirrorPlan>,
}

struct MirrorPlan {
    location: String,
    upstream: String,
    /// Variable that is empty for requests not to copy; `None` copies every request.
    share: Option<String>,
}

/// Renders the upstreams and variables of `route`.
fn route_section<'a>(conf: &mut Conf, route: &'a Route, keepalive: u32, addresses: Addresses<'_>) -> Plan<'a> {
    let id = route.name.replace('-', "_");
    let weighted = format!("ficus_{}", route.name);
    conf.line(0, "");
    let split: Vec<String> = route
        .backends
        .iter()
        .zip(&route.weights)
        .map(|(backend, weight)| format!("{} {}", backend.name, percent(*weight)))
        .collect();
    // No generation here: a change nginx cannot see must leave the text, and so nginx's
    // balancing state, alone.
    conf.line(0, format!("# route {}: {}", route.name, split.join(", ")));

    let servers: Servers = route
        .backends
        .iter()
        .map(|backend| {
            backend
                .endpoints
                .iter()
                .map(|endpoint| {
                    let resolved = addresses(endpoint);
                    if resolved.is_empty() { vec![endpoint.to_string()] } else { resolved }
                })
                .collect()
        })
        .collect();
    let split_weights = split_weights(&route.weights, &servers);
    conf.line(0, format!("upstream {weighted} {{"));
    for (b, backend) in route.backends.iter().enumerate() {
        if route.weights[b] == 0 {
            conf.line(1, format!("# {} left out: weight 0", backend.name));
            continue;
        }
        for (e, endpoint) in backend.endpoints.iter().enumerate() {
            for (address, weight) in servers[b][e].iter().zip(&split_weights[b][e]) {
                let origin = resolved_from(address, endpoint);
                conf.line(1, format!("server {address} weight={weight};  # {}{origin}", backend.name));
            }
        }
    }
    conf.line(1, format!("keepalive {keepalive};"));
    conf.line(0, "}");
    for (b, backend) in route.backends.iter().enumerate() {
        conf.line(0, format!("upstream {} {{", backend_upstream(route, backend.name.as_str())));
        let weights = backend_weights(&servers[b]);
        for (e, endpoint) in backend.endpoints.iter().enumerate() {
            for (address, weight) in servers[b][e].iter().zip(&weights[e]) {
                let weight = if *weight == 1 { String::new() } else { format!(" weight={weight}") };
                let origin = resolved_from(address, endpoint);
                let comment = if origin.is_empty() { String::new() } else { format!("  #{origin}") };
                conf.line(1, format!("server {address}{weight};{comment}"));
            }
        }
        conf.line(1, format!("keepalive {keepalive};"));
        conf.line(0, "}");
    }

    let cookies = CookieVars::new(route, &id);
    cookies.render(conf);
    let (after_rules, set_cookie) = sticky_stage(conf, route, &id, &weighted, &cookies);
    let target = rule_chain(conf, route, &id, after_rules, &cookies);
    let mirror = mirror_stage(conf, route, &id);
    conf.line(0, format!("# route {}: proxy_pass http://{target};", route.name));
    Plan { route, target, set_cookie, mirror }
}

/// The cookies a route reads, each extracted once into its own variable.
struct CookieVars {
    names: Vec<String>,
    id: String,
}

impl CookieVars {
    fn new(route: &Route, id: &str) -> Self {
        let mut names: Vec<String> = Vec::new();
        let ruled = route.rules.iter().filter_map(|rule| match &rule.matcher {
            RuleMatch::Cookie { name, .. } => Some(name),
            RuleMatch::Header { .. } => None,
        });
        let sticky = route.sticky.iter().filter_map(|sticky| match sticky {
            StickyKey::Cookie(name) => Some(name),
            StickyKey::Header(_) => None,
        });
        for name in ruled.chain(sticky) {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        Self { names, id: id.to_owned() }
    }

    /// The variable holding the value of cookie `name`, empty when the request has none.
    fn var(&self, name: &str) -> String {
        let index = self.names.iter().position(|known| known == name).unwrap_or_default();
        format!("$ficus_cookie{index}_{}", self.id)
    }

    fn render(&self, conf: &mut Conf) {
        for name in &self.names {
            // As the ficus proxy reads cookies: the first pair whose name is exactly
            // `name`, surrounding spaces and double quotes trimmed from the value.
            let pattern = format!(r#"~(?:^|;)\s*{}="*([^;]*?)"*\s*(?:;|$)"#, regex_literal(name));
            conf.line(0, format!("map $http_cookie {} {{", self.var(name)));
            conf.line(1, format!("{} $1;", quote(&pattern)));
            conf.line(1, "default \"\";");
            conf.line(0, "}");
        }
    }
}

/// Renders the sticky cohort, if any; returns where unruled requests go and the variable
/// with the cookie to set, if the key is a cookie.
fn sticky_stage(
    conf: &mut Conf,
    route: &Route,
    id: &str,
    weighted: &str,
    cookies: &CookieVars,
) -> (String, Option<String>) {
    match &route.sticky {
        None => (weighted.to_owned(), None),
        Some(StickyKey::Header(name)) => {
            let Some(header) = header_var(name.as_str()) else {
                conf.line(0, format!("# sticky header `{name}` left out: nginx drops headers named like that"));
                return (weighted.to_owned(), None);
            };
            cohort_split(conf, route, id, &header);
            let sticky = format!("$ficus_sticky_{id}");
            // Without a key there is no cohort: such requests follow the weights.
            conf.line(0, format!("map {header} {sticky} {{"));
            conf.line(1, format!("\"\" {weighted};"));
            conf.line(1, format!("default $ficus_cohort_{id};"));
            conf.line(0, "}");
            (sticky, None)
        }
        Some(StickyKey::Cookie(name)) => {
            let cookie = cookies.var(name);
            let key = format!("$ficus_stickykey_{id}");
            conf.line(0, format!("map {cookie} {key} {{"));
            conf.line(1, "\"\" $request_id;");
            conf.line(1, format!("default {cookie};"));
            conf.line(0, "}");
            cohort_split(conf, route, id, &key);
            let set_cookie = format!("$ficus_setcookie_{id}");
            let value = format!(
                "{}=$request_id; Path=/; Max-Age={STICKY_COOKIE_MAX_AGE_SECS}; HttpOnly; SameSite=Lax",
                conf.variable_safe(name)
            );
            conf.line(0, format!("map {cookie} {set_cookie} {{"));
            conf.line(1, format!("\"\" {};", quote(&value)));
            conf.line(1, "default \"\";");
            conf.line(0, "}");
            (format!("$ficus_cohort_{id}"), Some(set_cookie))
        }
    }
}

/// `split_clients` laying the backends' basis points over the hash of `key`.
fn cohort_split(conf: &mut Conf, route: &Route, id: &str, key: &str) {
    conf.line(0, format!("split_clients {} $ficus_cohort_{id} {{", quote(key)));
    let last = route.weights.iter().rposition(|weight| *weight > 0).unwrap_or_default();
    for (index, (backend, weight)) in route.backends.iter().zip(&route.weights).enumerate() {
        let upstream = backend_upstream(route, &backend.name);
        if index == last {
            // `*` takes what is left, so rounding can never leave a key without a cohort.
            conf.line(1, format!("* {upstream};"));
        } else if *weight > 0 {
            conf.line(1, format!("{} {upstream};", percent(*weight)));
        }
    }
    conf.line(0, "}");
}

/// Renders one `map` per rule, chained in order; returns the variable of the first rule,
/// or `fallback` when there is none.
fn rule_chain(conf: &mut Conf, route: &Route, id: &str, fallback: String, cookies: &CookieVars) -> String {
    // (rule index, source variable, anchored pattern, upstream) of the rules nginx can see.
    let mut links = Vec::new();
    let mut skipped = Vec::new();
    for (index, rule) in route.rules.iter().enumerate() {
        let (source, pattern) = match &rule.matcher {
            RuleMatch::Header { name, value } => {
                let Some(source) = header_var(name.as_str()) else {
                    skipped.push(format!("# rule {index} left out: nginx drops headers named like `{name}`"));
                    continue;
                };
                let pattern = match value {
                    ValueMatch::Exact(exact) => format!("^{}$", regex_literal(exact)),
                    // Already anchored at both ends by the route model.
                    ValueMatch::Regex(regex) => regex.as_str().to_owned(),
                };
                (source, pattern)
            }
            RuleMatch::Cookie { name, value } => (cookies.var(name), format!("^{}$", regex_literal(value))),
        };
        links.push((index, source, pattern, backend_upstream(route, &route.backends[rule.backend].name)));
    }
    for comment in skipped {
        conf.line(0, comment);
    }
    let vars: Vec<String> = links.iter().map(|(index, ..)| format!("$ficus_rule{index}_{id}")).collect();
    for (link, (_, source, pattern, upstream)) in links.iter().enumerate() {
        let next = vars.get(link + 1).unwrap_or(&fallback);
        conf.line(0, format!("map {source} {} {{", vars[link]));
        conf.line(1, format!("{} {upstream};", quote(&format!("~{pattern}"))));
        conf.line(1, format!("default {next};"));
        conf.line(0, "}");
    }
    vars.into_iter().next().unwrap_or(fallback)
}

/// Renders the mirror's share, if it copies only some requests.
fn mirror_stage(conf: &mut Conf, route: &Route, id: &str) -> Option<MirrorPlan> {
    let mirror = route.mirror.as_ref().filter(|mirror| mirror.basis_points > 0)?;
    let share = (mirror.basis_points < TOTAL_WEIGHT).then(|| {
        let var = format!("$ficus_mirror_{id}");
        // nginx's `mirror` has no share; a random split of the request id is the closest,
        // exact in expectation but not per request window as the ficus proxy is.
        conf.line(0, format!("split_clients \"$request_id\" {var} {{"));
        conf.line(1, format!("{} 1;", percent(mirror.basis_points)));
        conf.line(1, "* \"\";");
        conf.line(0, "}");
        var
    });
    Some(MirrorPlan {
        location: format!("/.ficus/mirror/{}", route.name),
        upstream: backend_upstream(route, &route.backends[mirror.backend].name),
        share,
    })
}

/// Renders the servers: one per set of host names that route the same way, and the
/// default server.
fn servers(conf: &mut Conf, plans: &[Plan<'_>], listen: &[String]) {
    let mut by_specificity: Vec<&Plan<'_>> = plans.iter().collect();
    // The ficus proxy's order (see `table::Table`); `plans` are already sorted by name
    // and the sort is stable.
    by_specificity.sort_by_key(|plan| {
        let matcher = &plan.route.matcher;
        (std::cmp::Reverse(trimmed_prefix(&plan.route.matcher.path_prefix).len()), matcher.hosts.is_empty())
    });
    // Hosts that the same routes name share a server.
    let mut groups: BTreeMap<Vec<&str>, BTreeSet<&str>> = BTreeMap::new();
    for plan in plans {
        for host in &plan.route.matcher.hosts {
            let naming: Vec<&str> = plans
                .iter()
                .filter(|other| other.route.matcher.hosts.contains(host))
                .map(|other| other.route.name.as_str())
                .collect();
            groups.entry(naming).or_default().insert(host);
        }
    }
    for (naming, hosts) in &groups {
        let routes: Vec<&Plan<'_>> = by_specificity
            .iter()
            .filter(|plan| plan.route.matcher.hosts.is_empty() || naming.contains(&plan.route.name.as_str()))
            .copied()
            .collect();
        let names: Vec<&str> = hosts.iter().copied().collect();
        server(conf, listen, false, &names.join(" "), &routes);
    }
    let any_host: Vec<&Plan<'_>> =
        by_specificity.iter().filter(|plan| plan.route.matcher.hosts.is_empty()).copied().collect();
    server(conf, listen, true, "", &any_host);
}

fn server(conf: &mut Conf, listen: &[String], default: bool, names: &str, plans: &[&Plan<'_>]) {
    conf.line(0, "");
    conf.line(0, "server {");
    for address in listen {
        conf.line(1, format!("listen {address}{};", if default { " default_server" } else { "" }));
    }
    if names.is_empty() {
        conf.line(1, "server_name \"\";");
    } else {
        conf.line(1, format!("server_name {names};"));
    }
    // What the ficus proxy forwards: the client's Host, the forwarding chain, and an
    // empty Connection so upstream keepalive works.
    conf.line(1, "proxy_http_version 1.1;");
    conf.line(1, "proxy_set_header Connection \"\";");
    conf.line(1, "proxy_set_header Host $http_host;");
    conf.line(1, "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;");
    conf.line(1, "proxy_set_header X-Forwarded-Proto $scheme;");
    conf.line(1, "proxy_set_header X-Forwarded-Host $host;");
    let mut taken = BTreeSet::new();
    for plan in plans {
        let prefix = trimmed_prefix(&plan.route.matcher.path_prefix);
        if !taken.insert(prefix) {
            conf.line(
                1,
                format!("# route {} is shadowed here by a more specific route with the same prefix", plan.route.name),
            );
            continue;
        }
        if prefix.is_empty() {
            location(conf, "/", plan);
        } else {
            // `/api` takes `/api` and `/api/...` but not `/apix`, as in the ficus proxy.
            location(conf, &format!("= {}", quote(prefix)), plan);
            location(conf, &quote(&format!("{prefix}/")), plan);
        }
    }
    if !taken.contains("") {
        conf.line(1, "location / {");
        conf.line(2, "default_type text/plain;");
        conf.line(2, "return 404 \"no route matches this request\\n\";");
        conf.line(1, "}");
    }
    for plan in plans {
        let Some(mirror) = &plan.mirror else { continue };
        conf.line(1, format!("location = {} {{", quote(&mirror.location)));
        conf.line(2, "internal;");
        if let Some(share) = &mirror.share {
            conf.line(2, format!("if ({share} = \"\") {{ return 204; }}"));
        }
        conf.line(2, format!("proxy_pass http://{}$request_uri;", mirror.upstream));
        conf.line(1, "}");
    }
    conf.line(0, "}");
}

fn location(conf: &mut Conf, selector: &str, plan: &Plan<'_>) {
    conf.line(1, format!("location {selector} {{"));
    conf.line(2, format!("proxy_pass http://{};", plan.target));
    if let Some(mirror) = &plan.mirror {
        conf.line(2, format!("mirror {};", quote(&mirror.location)));
    }
    if let Some(set_cookie) = &plan.set_cookie {
        // Empty for requests that brought their cookie; nginx adds no header then.
        conf.line(2, format!("add_header Set-Cookie {set_cookie} always;"));
    }
    conf.line(1, "}");
}

/// Per backend, per endpoint, the addresses nginx gets for it.
pub(crate) type Servers = Vec<Vec<Vec<String>>>;

/// ` (name:port)` when `address` was resolved from `endpoint`, for comments.
fn resolved_from(address: &str, endpoint: &Endpoint) -> String {
    let written = endpoint.to_string();
    if address == written { String::new() } else { format!(" ({written})") }
}

/// The nginx `weight=` of each address of each endpoint of each backend in the weighted
/// upstream, aligned with `servers`; 0 for backends with weight 0.
///
/// Backend `b` has `n_b` endpoints and endpoint `e` has `a_e` addresses, so each address
/// stands for `w_b / (n_b * a_e)` of the traffic: see [`proportional`].
pub(crate) fn split_weights(weights: &[u32], servers: &Servers) -> Vec<Vec<Vec<u64>>> {
    let shares: Vec<(u128, u128)> = servers
        .iter()
        .zip(weights)
        .flat_map(|(endpoints, weight)| {
            let count = endpoints.len() as u128;
            endpoints.iter().flat_map(move |addresses| {
                let slots = count * addresses.len() as u128;
                addresses.iter().map(move |_| (u128::from(*weight), slots))
            })
        })
        .collect();
    reshape(proportional(&shares), servers)
}

/// Weights within one backend's own upstream: every endpoint gets the same share, however
/// many addresses it has, as the ficus proxy rotates through endpoints.
fn backend_weights(endpoints: &[Vec<String>]) -> Vec<Vec<u64>> {
    let shares: Vec<(u128, u128)> =
        endpoints.iter().flat_map(|addresses| addresses.iter().map(|_| (1, addresses.len() as u128))).collect();
    let mut flat = proportional(&shares).into_iter();
    endpoints.iter().map(|addresses| addresses.iter().map(|_| flat.next().unwrap_or(1)).collect()).collect()
}

fn reshape(flat: Vec<u64>, servers: &Servers) -> Vec<Vec<Vec<u64>>> {
    let mut flat = flat.into_iter();
    servers
        .iter()
        .map(|endpoints| {
            endpoints.iter().map(|addresses| addresses.iter().map(|_| flat.next().unwrap_or(0)).collect()).collect()
        })
        .collect()
}

/// Integer weights proportional to `numerator / slots` for each `(numerator, slots)`, 0
/// where the numerator is 0.
///
/// Exact: with `L` the least common multiple of the slots, `numerator * L / slots` is an
/// integer, and everything is then divided by the greatest common divisor, so shares are
/// exact over every full cycle of nginx's round-robin. Only when that total would not fit
/// nginx (many backends with many different endpoint counts) are the shares rounded
/// instead, to a millionth of the traffic.
fn proportional(shares: &[(u128, u128)]) -> Vec<u64> {
    let active = || shares.iter().filter(|(numerator, slots)| *numerator > 0 && *slots > 0);
    let lcm = active().try_fold(1_u128, |lcm, (_, slots)| (lcm / gcd(lcm, *slots)).checked_mul(*slots));
    let exact = lcm.and_then(|lcm| {
        shares
            .iter()
            .map(|(numerator, slots)| if *numerator == 0 { Some(0) } else { numerator.checked_mul(lcm / slots) })
            .collect::<Option<Vec<u128>>>()
    });
    let weights =
        match exact.filter(|exact| reduced_total(exact) <= MAX_TOTAL_WEIGHT) {
            Some(exact) => exact,
            None => shares
                .iter()
                .map(|(numerator, slots)| {
                    if *numerator == 0 { 0 } else { ((numerator * ROUNDED_SCALE + slots / 2) / (*slots).max(1)).max(1) }
                })
                .collect(),
        };
    let divisor = weights.iter().fold(0, |divisor, weight| gcd(divisor, *weight)).max(1);
    weights.into_iter().map(|weight| u64::try_from(weight / divisor).unwrap_or(u64::MAX)).collect()
}

fn reduced_total(weights: &[u128]) -> u128 {
    let divisor = weights.iter().fold(0, |divisor, weight| gcd(divisor, *weight)).max(1);
    weights.iter().map(|weight| weight / divisor).fold(0_u128, u128::saturating_add)
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn backend_upstream(route: &Route, backend: &str) -> String {
    format!("ficus_{}_{backend}", route.name)
}

/// Basis points as an nginx percentage: two decimals, which is exactly one basis point.
fn percent(basis_points: u32) -> String {
    format!("{}.{:02}%", basis_points / 100, basis_points % 100)
}

fn trimmed_prefix(prefix: &str) -> &str {
    prefix.trim_end_matches('/')
}

/// The `$http_...` variable of a header, or `None` for names nginx drops by default
/// (`ignore_invalid_headers`: anything but letters, digits and `-`).
fn header_var(name: &str) -> Option<String> {
    let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    valid.then(|| format!("$http_{}", name.replace('-', "_")))
}

/// `text` as a PCRE matching exactly it: every ASCII punctuation character escaped, which
/// PCRE reads as that character.
fn regex_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_punctuation() || c == ' ' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `text` as an nginx quoted string.
fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The config text being built.
#[derive(Default)]
struct Conf {
    text: String,
    needs_dollar: bool,
}

impl Conf {
    fn line(&mut self, depth: usize, text: impl Display) {
        for _ in 0..depth {
            self.text.push_str("    ");
        }
        self.text.push_str(&text.to_string());
        self.text.push('\n');
    }

    /// `text` for a value nginx expands variables in, with `$` kept literal.
    fn variable_safe(&mut self, text: &str) -> String {
        if !text.contains('$') {
            return text.to_owned();
        }
        self.needs_dollar = true;
        text.replace('$', "${ficus_dollar}")
    }
}

#[cfg(test)]
mod tests {
    use ficus_proto::traffic::v1 as proto;

    use super::*;

    fn backend(name: &str, endpoints: &[&str]) -> proto::Backend {
        proto::Backend { name: name.into(), endpoints: endpoints.iter().map(|e| (*e).to_owned()).collect() }
    }

    fn route(backends: Vec<proto::Backend>, weights: &[(&str, u32)]) -> proto::Route {
        proto::Route {
            name: "checkout".into(),
            backends,
            weights: weights.iter().map(|(name, weight)| ((*name).to_owned(), *weight)).collect(),
            ..Default::default()
        }
    }

    fn built(route: &proto::Route) -> Route {
        Route::from_proto(route, "route", 1).expect("valid route")
    }

    /// The weighted upstream's weight per endpoint, endpoints written as IP addresses.
    fn endpoint_weights(route: &Route) -> Vec<Vec<u64>> {
        let servers: Servers = route
            .backends
            .iter()
            .map(|backend| backend.endpoints.iter().map(|endpoint| vec![endpoint.to_string()]).collect())
            .collect();
        split_weights(&route.weights, &servers)
            .into_iter()
            .map(|endpoints| endpoints.into_iter().map(|addresses| addresses[0]).collect())
            .collect()
    }

    #[test]
    fn weights_are_reduced_basis_points() {
        let route = built(&route(
            vec![backend("stable", &["10.0.0.1:80"]), backend("canary", &["10.0.0.2:80"])],
            &[("stable", 8_000), ("canary", 2_000)],
        ));
        assert_eq!(endpoint_weights(&route), vec![vec![4], vec![1]]);
    }

    #[test]
    fn endpoints_split_their_backend_weight_exactly() {
        let route = built(&route(
            vec![
                backend("stable", &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]),
                backend("canary", &["10.0.0.4:80", "10.0.0.5:80"]),
            ],
            &[("stable", 9_500), ("canary", 500)],
        ));
        let weights = endpoint_weights(&route);
        // L = 6: stable 9500 * 6 / 3 = 19000 each, canary 500 * 6 / 2 = 1500 each; gcd 500.
        assert_eq!(weights, vec![vec![38, 38, 38], vec![3, 3]]);
        let stable: u64 = weights[0].iter().sum();
        let canary: u64 = weights[1].iter().sum();
        assert_eq!(stable * 500, canary * 9_500, "the backend ratio is the weight ratio");
    }

    #[test]
    fn a_name_with_several_addresses_keeps_its_endpoint_share() {
        let route = built(&route(
            vec![backend("stable", &["10.0.0.1:80"]), backend("canary", &["10.0.0.2:80", "lb.example:80"])],
            &[("stable", 9_000), ("canary", 1_000)],
        ));
        let addresses = |endpoint: &Endpoint| match endpoint.host.as_str() {
            "lb.example" => (1..=3).map(|i| format!("10.0.1.{i}:80")).collect(),
            _ => vec![endpoint.to_string()],
        };
        let text = render_resolved(&[route], &RenderOptions::default(), &addresses);
        // L = lcm(1, 2, 6) = 6: stable 54000, 10.0.0.2 3000, each lb address 1000; gcd 1000.
        assert!(text.contains(
            "upstream ficus_checkout {\n    server 10.0.0.1:80 weight=54;  # stable\n    \
             server 10.0.0.2:80 weight=3;  # canary\n    server 10.0.1.1:80 weight=1;  # canary (lb.example:80)\n"
        ));
        // Within the backend, each endpoint takes half, however many addresses it has.
        assert!(text.contains(
            "upstream ficus_checkout_canary {\n    server 10.0.0.2:80 weight=3;\n    \
             server 10.0.1.1:80;  # (lb.example:80)\n"
        ));
    }

    #[test]
    fn zero_weight_backends_are_left_out_of_the_split_but_keep_an_upstream() {
        let route = built(&route(
            vec![backend("stable", &["10.0.0.1:80"]), backend("canary", &["10.0.0.2:80", "10.0.0.3:80"])],
            &[("stable", 10_000)],
        ));
        assert_eq!(endpoint_weights(&route), vec![vec![1], vec![0, 0]]);
        let text = render(&[route]);
        assert!(
            text.contains(
                "upstream ficus_checkout {\n    server 10.0.0.1:80 weight=1;  # stable\n    # canary left out"
            )
        );
        assert!(text.contains("upstream ficus_checkout_canary {\n    server 10.0.0.2:80;\n    server 10.0.0.3:80;\n"));
    }

    #[test]
    fn huge_exact_weights_fall_back_to_rounding() {
        // Endpoint counts 1..=23 make an lcm far beyond what nginx can sum.
        let backends: Vec<proto::Backend> = (1..=23_usize)
            .map(|count| {
                let endpoints: Vec<String> = (0..count).map(|i| format!("10.0.{count}.{i}:80")).collect();
                proto::Backend { name: format!("b{count}"), endpoints }
            })
            .collect();
        let mut weights: Vec<(String, u32)> = (1..=23).map(|count| (format!("b{count}"), 400)).collect();
        weights[0].1 = 10_000 - 22 * 400;
        let input = proto::Route {
            name: "wide".into(),
            backends,
            weights: weights.into_iter().collect(),
            ..Default::default()
        };
        let weights = endpoint_weights(&built(&input));
        let total: u64 = weights.iter().flatten().sum();
        assert!(u128::from(total) <= MAX_TOTAL_WEIGHT, "{total}");
        assert!(weights.iter().flatten().all(|weight| *weight > 0));
    }

    #[test]
    fn percentages_keep_every_basis_point() {
        assert_eq!(percent(1), "0.01%");
        assert_eq!(percent(2_000), "20.00%");
        assert_eq!(percent(9_999), "99.99%");
    }

    #[test]
    fn literals_are_escaped_for_pcre_and_nginx() {
        assert_eq!(regex_literal("a.b$c"), r"a\.b\$c");
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(header_var("x-canary").as_deref(), Some("$http_x_canary"));
        assert_eq!(header_var("x_canary"), None);
    }

    #[test]
    fn a_render_is_deterministic_and_ordered_by_route_name() {
        let mut first = route(vec![backend("a", &["10.0.0.1:80"])], &[("a", 10_000)]);
        first.name = "zeta".into();
        let mut second = first.clone();
        second.name = "alpha".into();
        let routes = [built(&first), built(&second)];
        let text = render(&routes);
        assert_eq!(text, render(&[routes[1].clone(), routes[0].clone()]));
        assert!(text.find("upstream ficus_alpha ").expect("alpha") < text.find("upstream ficus_zeta ").expect("zeta"));
    }

    #[test]
    fn servers_are_left_out_without_listen_addresses() {
        let route = built(&route(vec![backend("a", &["10.0.0.1:80"])], &[("a", 10_000)]));
        let text = render_with(&[route], &RenderOptions { listen: Vec::new(), keepalive: 8 });
        assert!(!text.contains("server {"));
        assert!(text.contains("keepalive 8;"));
        assert!(text.contains("# route checkout: proxy_pass http://ficus_checkout;"));
    }
}
