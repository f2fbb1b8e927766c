//! What an audit event names besides the caller and the method: the resource a call acts
//! on, which only the handler knows once the request is decoded. A handler notes it with
//! [`note`]; the authorization layer writes it into the event after the call.

use std::sync::{Arc, OnceLock};

use ficus_proto::{analysis::v1 as analysis, planner::v1 as planner, sessions::v1 as sessions, traffic::v1 as traffic};

/// How many characters of a session id an audit event keeps: enough to tell sessions
/// apart in an investigation, too few to use one.
const SESSION_ID_PREFIX: usize = 6;

/// A request that acts on a named resource.
pub trait Audited {
    /// The resource, as `kind/name`, e.g. `route/checkout`; session ids cut to a prefix.
    fn resource(&self) -> String;
}

/// The resource a call noted, carried in the request's extensions from the
/// authorization layer to the handler and back.
#[derive(Clone, Debug, Default)]
pub(crate) struct ResourceNote(Arc<OnceLock<String>>);

impl ResourceNote {
    /// What the handler noted, `-` when nothing.
    pub(crate) fn resource(&self) -> &str {
        self.0.get().map_or("-", String::as_str)
    }
}

/// Notes the resource `request` acts on for the call's audit event; a no-op when the
/// service authenticates nobody. The first note of a call stands.
pub fn note<T: Audited>(request: &tonic::Request<T>) {
    if let Some(note) = request.extensions().get::<ResourceNote>() {
        let _ = note.0.set(request.get_ref().resource());
    }
}

fn session(id: &str) -> String {
    let prefix: String = id.chars().take(SESSION_ID_PREFIX).collect();
    format!("session/{prefix}…")
}

macro_rules! audited {
    ($($request:ty => |$it:ident| $resource:expr;)*) => {
        $(impl Audited for $request {
            fn resource(&self) -> String {
                let $it = self;
                $resource
            }
        })*
    };
}

audited! {
    planner::CreateRolloutRequest => |it| if it.id.is_empty() { "rollout/new".to_owned() } else { format!("rollout/{}", it.id) };
    planner::PromoteRequest => |it| format!("rollout/{}", it.id);
    planner::PauseRequest => |it| format!("rollout/{}", it.id);
    planner::ResumeRequest => |it| format!("rollout/{}", it.id);
    planner::AbortRequest => |it| format!("rollout/{}", it.id);
    traffic::PutRouteRequest => |it| format!("route/{}", it.route.as_ref().map_or("", |route| route.name.as_str()));
    traffic::DeleteRouteRequest => |it| format!("route/{}", it.name);
    traffic::SetWeightsRequest => |it| format!("route/{}", it.route);
    analysis::AnalyzeRequest => |it| format!("route/{}", it.target.as_ref().map_or("", |target| target.route.as_str()));
    analysis::StartRunRequest => |it| format!("run/{}", it.run_id);
    analysis::StopRunRequest => |it| format!("run/{}", it.id);
    sessions::CreateSessionRequest => |_it| "session/new".to_owned();
    sessions::UpdateSessionRequest => |it| session(&it.id);
    sessions::TouchSessionRequest => |it| session(&it.id);
    sessions::DeleteSessionRequest => |it| session(&it.id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_cut_to_a_prefix() {
        let request = sessions::DeleteSessionRequest { id: "0123456789abcdef".into() };
        assert_eq!(request.resource(), "session/012345…");
        let short = sessions::TouchSessionRequest { id: "ab".into(), ..Default::default() };
        assert_eq!(short.resource(), "session/ab…");
    }

    #[test]
    fn a_note_reaches_the_layer_and_the_first_one_stands() {
        let shared = ResourceNote::default();
        let mut request =
            tonic::Request::new(traffic::DeleteRouteRequest { name: "checkout".into(), ..Default::default() });
        request.extensions_mut().insert(shared.clone());
        note(&request);
        let other = tonic::Request::new(traffic::DeleteRouteRequest { name: "other".into(), ..Default::default() });
        note(&other);
        assert_eq!(shared.resource(), "route/checkout");
    }
}
