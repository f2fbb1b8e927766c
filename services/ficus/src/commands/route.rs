//! `ficus route`: create and read routes, and move their weights by hand, through the
//! traffic service.

use std::{collections::HashMap, io::Write, path::PathBuf};

use ficus_proto::traffic::v1::{
    self as proto, rule::Match, sticky_key::Source, traffic_control_client::TrafficControlClient,
};

use super::{CliError, Globals, Remote, Service};
use crate::{
    output::{self, Fields, Format, Table},
    spec_file,
};

/// A weight of 100%, in basis points.
const FULL_WEIGHT: u32 = 10_000;

/// `ficus route ...`.
#[derive(Debug, clap::Subcommand)]
pub enum RouteCommand {
    /// List every route with its weights.
    #[command(after_help = "Examples:\n  ficus route list\n  ficus route list -o json")]
    List,
    /// Create or replace a route from a file.
    ///
    /// The file is a `Route` in YAML or JSON (the proto3 JSON mapping): name, match,
    /// backends with their endpoints, weights in basis points, rules, sticky key, mirror.
    /// With `--expected-generation`, the write is refused if the route changed since.
    #[command(
        after_help = "Examples:\n  ficus route apply -f examples/route.yaml\n  ficus route apply -f route.json --expected-generation 4"
    )]
    Apply {
        /// The route; `-` for stdin.
        #[arg(short, long, value_name = "FILE")]
        file: PathBuf,
        /// Only replace the route if its generation is still this one.
        #[arg(long, value_name = "N")]
        expected_generation: Option<u64>,
    },
    /// Show one route: match, backends, weights, rules, stickiness, mirror.
    #[command(after_help = "Examples:\n  ficus route get checkout\n  ficus route get checkout -o yaml")]
    Get {
        /// Route name.
        name: String,
    },
    /// Set a route's weights by hand, e.g. to move traffic outside a rollout.
    ///
    /// Weights are basis points (`canary=500` is 5%) or percentages (`canary=5%`) and must
    /// add up to 100%. With `--expected-generation`, the change is refused if the route
    /// changed since that generation was read. A route with an active rollout has its
    /// weights moved by the planner: pause the rollout first, or the next step overrides
    /// this.
    #[command(
        after_help = "Examples:\n  ficus route set-weights checkout legacy=9500 k8s=500\n  ficus route set-weights checkout legacy=50% k8s=50% --expected-generation 7"
    )]
    SetWeights {
        /// Route name.
        name: String,
        /// `backend=weight` pairs, in basis points or with `%`.
        #[arg(value_name = "BACKEND=WEIGHT", required = true, value_parser = parse_weight)]
        weights: Vec<(String, u32)>,
        /// Only change the route if its generation is still this one.
        #[arg(long, value_name = "N")]
        expected_generation: Option<u64>,
    },
}

/// Parses `name=9500` (basis points) or `name=95%` / `name=2.5%`.
pub fn parse_weight(pair: &str) -> Result<(String, u32), String> {
    let (name, value) = pair.split_once('=').ok_or_else(|| format!("`{pair}` is not BACKEND=WEIGHT"))?;
    if name.is_empty() {
        return Err(format!("`{pair}` has no backend name"));
    }
    let bp = match value.strip_suffix('%') {
        Some(percent) => {
            let percent: f64 = percent.trim().parse().map_err(|_| format!("`{value}` is not a percentage"))?;
            let bp = (percent * 100.0).round();
            if !(0.0..=f64::from(FULL_WEIGHT)).contains(&bp) || (bp - percent * 100.0).abs() > 1e-6 {
                return Err(format!("`{value}` must be between 0% and 100% with at most two decimals"));
            }
            // In range and whole, checked just above.
            bp as u32
        }
        None => value.trim().parse().map_err(|_| format!("`{value}` is not a whole number of basis points"))?,
    };
    Ok((name.to_owned(), bp))
}

/// Runs a `route` command.
pub async fn run(globals: &Globals, command: RouteCommand, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    // A route file is read before any call, so a bad file is reported as such.
    let file_route = match &command {
        RouteCommand::Apply { file, .. } => Some(spec_file::read_as::<proto::Route>(file)?),
        _ => None,
    };
    let traffic = Remote::connect(Service::Traffic, globals.traffic(), &globals.credentials()?)?;
    let mut api = TrafficControlClient::new(traffic.channel.clone());
    let route = match command {
        RouteCommand::List => {
            let list = api
                .list_routes(proto::ListRoutesRequest {})
                .await
                .map_err(|status| traffic.error(status))?
                .into_inner();
            match globals.output {
                Format::Table => write!(out, "{}", list_table(&list.routes))?,
                format => output::machine(out, format, &list)?,
            }
            return Ok(());
        }
        RouteCommand::Apply { expected_generation, .. } => {
            let request =
                proto::PutRouteRequest { route: file_route, expected_generation: expected_generation.unwrap_or(0) };
            api.put_route(request).await.map_err(|status| traffic.error(status))?.into_inner()
        }
        RouteCommand::Get { name } => {
            api.get_route(proto::GetRouteRequest { name }).await.map_err(|status| traffic.error(status))?.into_inner()
        }
        RouteCommand::SetWeights { name, weights, expected_generation } => {
            let mut map = HashMap::with_capacity(weights.len());
            for (backend, bp) in weights {
                if map.insert(backend.clone(), bp).is_some() {
                    return Err(CliError::Usage(format!("backend `{backend}` is given twice")));
                }
            }
            let request = proto::SetWeightsRequest {
                route: name,
                weights: map,
                expected_generation: expected_generation.unwrap_or(0),
                fencing_token: 0,
            };
            api.set_weights(request).await.map_err(|status| traffic.error(status))?.into_inner()
        }
    };
    match globals.output {
        Format::Table => write!(out, "{}", details(&route))?,
        format => output::machine(out, format, &route)?,
    }
    Ok(())
}

/// The backends in the route's order, for weights listings.
fn backend_order(route: &proto::Route) -> Vec<&str> {
    route.backends.iter().map(|backend| backend.name.as_str()).collect()
}

fn match_text(route: &proto::Route) -> String {
    let Some(matching) = &route.r#match else { return "every request".to_owned() };
    let hosts = if matching.hosts.is_empty() { "any host".to_owned() } else { matching.hosts.join(",") };
    let prefix = if matching.path_prefix.is_empty() { "/" } else { &matching.path_prefix };
    format!("{hosts} {prefix}")
}

fn sticky_text(route: &proto::Route) -> String {
    match route.sticky.as_ref().and_then(|sticky| sticky.source.as_ref()) {
        Some(Source::Header(name)) => format!("header {name}"),
        Some(Source::Cookie(name)) => format!("cookie {name}"),
        None => "-".to_owned(),
    }
}

fn rule_text(rule: &proto::Rule) -> String {
    let condition = match &rule.r#match {
        Some(Match::Header(header)) => match &header.value {
            Some(proto::header_match::Value::Exact(value)) => format!("header {} = {value}", header.name),
            Some(proto::header_match::Value::Regex(regex)) => format!("header {} ~ /{regex}/", header.name),
            None => format!("header {}", header.name),
        },
        Some(Match::Cookie(cookie)) => format!("cookie {} = {}", cookie.name, cookie.value),
        None => "always".to_owned(),
    };
    format!("{condition} -> {}", rule.backend)
}

/// One route in full, for `route get` and `route set-weights`.
pub fn details(route: &proto::Route) -> String {
    let mut fields = Fields::new();
    fields
        .field("name", &route.name)
        .field("match", match_text(route))
        .field("weights", output::weights(&route.weights, &backend_order(route)))
        .field("sticky", sticky_text(route));
    if let Some(mirror) = &route.mirror {
        fields.field(
            "mirror",
            format!("{} of requests to {}", output::basis_points(mirror.basis_points), mirror.backend),
        );
    }
    fields
        .field("generation", route.generation.to_string())
        .field("updated", output::timestamp(route.updated_at.as_ref()));
    let mut text = fields.to_string();
    let mut backends = Table::new(["BACKEND", "WEIGHT", "ENDPOINTS"]);
    for backend in &route.backends {
        let bp = route.weights.get(&backend.name).copied().unwrap_or(0);
        backends.row([
            backend.name.clone(),
            format!("{bp} ({})", output::basis_points(bp)),
            backend.endpoints.join(", "),
        ]);
    }
    text.push('\n');
    text.push_str(&backends.to_string());
    if !route.rules.is_empty() {
        text.push_str("\nRules, first match wins:\n");
        for (index, rule) in route.rules.iter().enumerate() {
            text.push_str(&format!("  {}. {}\n", index + 1, rule_text(rule)));
        }
    }
    text
}

/// Routes as a table, for `route list`.
pub fn list_table(routes: &[proto::Route]) -> String {
    if routes.is_empty() {
        return "No routes.\n".to_owned();
    }
    let mut table = Table::new(["NAME", "MATCH", "WEIGHTS", "STICKY", "RULES", "GENERATION"]);
    for route in routes {
        table.row([
            route.name.clone(),
            match_text(route),
            output::weights(&route.weights, &backend_order(route)),
            sticky_text(route),
            route.rules.len().to_string(),
            route.generation.to_string(),
        ]);
    }
    table.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_basis_points_or_percentages() {
        assert_eq!(parse_weight("legacy=9500"), Ok(("legacy".to_owned(), 9_500)));
        assert_eq!(parse_weight("k8s=5%"), Ok(("k8s".to_owned(), 500)));
        assert_eq!(parse_weight("k8s=2.25%"), Ok(("k8s".to_owned(), 225)));
        for bad in ["k8s", "=5", "k8s=five", "k8s=101%", "k8s=0.001%", "k8s=-1"] {
            assert!(parse_weight(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_route_shows_its_backends_with_weights() {
        let route = proto::Route {
            name: "checkout".into(),
            backends: vec![
                proto::Backend { name: "legacy".into(), endpoints: vec!["10.0.0.1:80".into()] },
                proto::Backend { name: "k8s".into(), endpoints: vec!["10.0.1.1:80".into(), "10.0.1.2:80".into()] },
            ],
            weights: HashMap::from([("legacy".to_owned(), 9_500), ("k8s".to_owned(), 500)]),
            generation: 3,
            ..Default::default()
        };
        let text = details(&route);
        assert!(text.contains("weights:    legacy=95% k8s=5%"), "{text}");
        assert!(text.contains("k8s      500 (5%)    10.0.1.1:80, 10.0.1.2:80"), "{text}");
    }
}
