//! Routes for tests: most of them need a route that splits between two backends.

use std::collections::HashMap;

use ficus_proto::traffic::v1::{Backend, Route};

/// Route `name` splitting between `stable` and `canary`, each `(backend name, endpoint)`,
/// with `canary_weight` basis points on the canary and the rest on stable.
pub fn two_backends(name: &str, stable: (&str, &str), canary: (&str, &str), canary_weight: u32) -> Route {
    let backend =
        |(name, endpoint): (&str, &str)| Backend { name: name.to_owned(), endpoints: vec![endpoint.to_owned()] };
    Route {
        name: name.to_owned(),
        backends: vec![backend(stable), backend(canary)],
        weights: HashMap::from([
            (stable.0.to_owned(), 10_000u32.saturating_sub(canary_weight)),
            (canary.0.to_owned(), canary_weight),
        ]),
        ..Default::default()
    }
}
