//! The token file: parsing kube-apiserver's `--token-auth-file` format, and keeping the
//! table current as the file changes.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::{Credential, Identity, Role, fingerprint};
use crate::reload::{self, Watched};

/// Why a token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("cannot read the token file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `token,user,uid[,"groups"]`.
    #[error("token file {path}, line {line}: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: u64,
        /// What is wrong with it.
        reason: String,
    },
}

/// Token digest to caller.
type Table = HashMap<[u8; 32], Identity>;

/// The callers of a token file, kept current while the service runs; cheap to clone.
#[derive(Clone, Debug)]
pub struct TokenFile {
    path: PathBuf,
    table: Arc<ArcSwap<Table>>,
    /// The file as it was when loaded, so a change made before [`TokenFile::follow`]
    /// starts is still seen.
    loaded: Watched,
}

impl TokenFile {
    /// Reads the token file at `path`; a service with an unreadable or malformed one does
    /// not start.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let loaded = Watched::now(vec![path.to_owned()]);
        let table = parse(path, &read(path)?)?;
        Ok(Self { path: path.to_owned(), table: Arc::new(ArcSwap::from_pointee(table)), loaded })
    }

    /// The caller `token` belongs to, if any.
    pub fn identify(&self, token: &str) -> Option<Identity> {
        self.table.load().get(&fingerprint(token)).cloned()
    }

    /// Re-reads the file whenever it changes until `stop`; a change that does not parse is
    /// logged and the last good table stays in force.
    pub async fn follow(self, stop: CancellationToken) {
        let path = self.path;
        let build = || read(&path).and_then(|text| parse(&path, &text));
        reload::follow("token file", self.loaded, Arc::downgrade(&self.table), build, stop).await;
    }
}

/// The text of the file at `path`.
pub(crate) fn read(path: &Path) -> Result<String, TokenFileError> {
    std::fs::read_to_string(path).map_err(|source| TokenFileError::Read { path: path.to_owned(), source })
}

/// Parses a token file's `text`: CSV records of token, user, uid and optionally a quoted,
/// comma-separated list of groups; empty lines and lines starting with `#` are skipped.
pub(crate) fn parse(path: &Path, text: &str) -> Result<Table, TokenFileError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut table = Table::new();
    for record in reader.records() {
        let line_error = |line: u64, reason: String| TokenFileError::Line { path: path.to_owned(), line, reason };
        let record = record.map_err(|error| {
            let line = error.position().map_or(0, csv::Position::line);
            line_error(line, error.to_string())
        })?;
        let line = record.position().map_or(0, csv::Position::line);
        let (Some(token), Some(user)) = (record.get(0), record.get(1)) else {
            return Err(line_error(line, "expected `token,user,uid,\"groups\"`".to_owned()));
        };
        if token.is_empty() || user.is_empty() {
            return Err(line_error(line, "the token and the user may not be empty".to_owned()));
        }
        let mut roles: Vec<Role> =
            record.get(3).unwrap_or_default().split(',').filter_map(|group| Role::from_group(group.trim())).collect();
        roles.sort_unstable();
        roles.dedup();
        if table
            .insert(fingerprint(token), Identity { user: user.to_owned(), roles, credential: Credential::Token })
            .is_some()
        {
            return Err(line_error(line, format!("the token of `{user}` is also another line's")));
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Result<Table, TokenFileError> {
        parse(Path::new("tokens.csv"), text)
    }

    #[test]
    fn reads_kube_apiserver_token_files() {
        let table = parsed(
            "# who may call\n\
             t-ops,alice,1001,\"operator,viewer\"\n\
             \n\
             t-app, shop ,2002,app\n\
             t-nobody,bob,3003\n\
             t-odd,carol,4004,\"auditors, admin ,unknown\"\n",
        )
        .expect("parses");
        let identity = |token: &str| table.get(&fingerprint(token)).cloned().expect(token);
        assert_eq!(
            identity("t-ops"),
            Identity { user: "alice".into(), roles: vec![Role::Viewer, Role::Operator], credential: Credential::Token }
        );
        assert_eq!(identity("t-app").user, "shop");
        assert_eq!(identity("t-app").roles, [Role::App]);
        assert!(identity("t-nobody").roles.is_empty(), "a caller without groups has no role");
        assert_eq!(identity("t-odd").roles, [Role::Admin], "unknown groups are not roles");
        assert!(!table.contains_key(&fingerprint("t-op")), "a prefix is not the token");
    }

    #[test]
    fn malformed_files_name_the_line() {
        for (text, line) in
            [("ok,alice,1\n,bob,2\n", 2), ("ok,alice,1\nlonely\n", 2), ("same,alice,1\nsame,bob,2\n", 2)]
        {
            match parsed(text) {
                Err(TokenFileError::Line { line: found, .. }) => assert_eq!(found, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    proptest::proptest! {
        /// Whatever a token file holds, parsing answers with a table or an error naming a
        /// line; it never panics.
        #[test]
        fn any_file_parses_or_is_refused_without_panicking(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)
        ) {
            let text = String::from_utf8_lossy(&bytes);
            if let Err(TokenFileError::Line { line, .. }) = parsed(&text) {
                proptest::prop_assert!(line >= 1, "the line of a refusal is counted from 1");
            }
        }

        /// Lines built from the format's own characters, the likeliest to confuse a parser.
        #[test]
        fn lines_of_commas_and_quotes_do_not_panic(text in "[a-z,\"# \n]{0,200}") {
            let _ = parsed(&text);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_file_is_followed_and_a_broken_change_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tokens.csv");
        std::fs::write(&path, "first,alice,1,viewer\n").expect("write");
        let authenticator = TokenFile::load(&path).expect("loads");
        let stop = CancellationToken::new();
        let following = tokio::spawn(authenticator.clone().follow(stop.clone()));
        assert!(authenticator.identify("first").is_some());

        std::fs::write(&path, "second,alice,1,viewer,and-more-text\n").expect("write");
        tokio::time::sleep(reload::RELOAD_INTERVAL * 2).await;
        assert!(authenticator.identify("first").is_none(), "a removed token stops working");
        assert!(authenticator.identify("second").is_some(), "a new token works without a restart");

        std::fs::write(&path, ",nobody,3\n").expect("write");
        tokio::time::sleep(reload::RELOAD_INTERVAL * 2).await;
        assert!(authenticator.identify("second").is_some(), "a broken file keeps the last good table");
        stop.cancel();
        following.await.expect("stops");
    }
}
