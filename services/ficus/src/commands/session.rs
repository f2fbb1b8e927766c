//! `ficus session`: look at a user's session in the shared session store, e.g. to check
//! that it survived a move between environments.

use std::io::Write;

use ficus_proto::sessions::v1::{self as proto, session_store_client::SessionStoreClient};

use super::{CliError, Globals, Remote, Service};
use crate::output::{self, Fields, Format, Table};

/// `ficus session ...`.
#[derive(Debug, clap::Subcommand)]
pub enum SessionCommand {
    /// Show a session: version, expiry and attributes. Reading does not extend its expiry.
    #[command(
        after_help = "Examples:\n  ficus session get \"$SESSION_ID\"\n  ficus session get \"$SESSION_ID\" -o json"
    )]
    Get {
        /// Session id (the cookie value).
        id: String,
    },
}

/// Runs a `session` command.
pub async fn run(globals: &Globals, command: SessionCommand, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    let sessions = Remote::connect(Service::Sessions, globals.sessions(), &globals.credentials()?)?;
    match command {
        SessionCommand::Get { id } => {
            // Without `touch`: looking at a session must not keep it alive.
            let session = SessionStoreClient::new(sessions.channel.clone())
                .get_session(proto::GetSessionRequest { id, touch: false })
                .await
                .map_err(|status| sessions.error(status))?
                .into_inner();
            match globals.output {
                Format::Table => write!(out, "{}", details(&session))?,
                format => output::machine(out, format, &session)?,
            }
        }
    }
    Ok(())
}

/// A session for people: attributes as text when they are UTF-8, else their size (the
/// JSON output has the bytes, base64-encoded).
pub fn details(session: &proto::Session) -> String {
    let mut fields = Fields::new();
    fields
        .field("id", &session.id)
        .field("version", session.version.to_string())
        .field("created", output::timestamp(session.created_at.as_ref()))
        .field("expires", output::timestamp(session.expires_at.as_ref()))
        .field("max expires", output::timestamp(session.max_expires_at.as_ref()));
    let mut text = fields.to_string();
    if session.attributes.is_empty() {
        text.push_str("\nNo attributes.\n");
        return text;
    }
    let mut names: Vec<&String> = session.attributes.keys().collect();
    names.sort();
    let mut table = Table::new(["ATTRIBUTE", "VALUE"]);
    for name in names {
        let value = &session.attributes[name];
        let shown = match std::str::from_utf8(value) {
            Ok(text) if !text.chars().any(char::is_control) => format!("{text:?}"),
            _ => format!("<{} bytes>", value.len()),
        };
        table.row([name.clone(), shown]);
    }
    text.push('\n');
    text.push_str(&table.to_string());
    text
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn attributes_show_as_text_or_as_their_size() {
        let session = proto::Session {
            id: "abc".into(),
            version: 2,
            attributes: HashMap::from([("cart".to_owned(), b"3 items".to_vec()), ("blob".to_owned(), vec![0, 159])]),
            ..Default::default()
        };
        let text = details(&session);
        assert!(text.contains("cart       \"3 items\""), "{text}");
        assert!(text.contains("blob       <2 bytes>"), "{text}");
    }
}
