//! Finding the test tools that `scripts/install-test-tools.sh` builds at pinned versions.

use std::path::PathBuf;

/// The path of `name`: first the pinned build in the tools cache (`$FICUS_TOOLS_DIR/bin`,
/// default `~/.cache/ficus/tools/bin`), then the `PATH`.
///
/// # Panics
///
/// Panics with the command that installs it when `name` is in neither place, so a missing
/// tool fails the test with a clear message instead of skipping it.
pub fn tool(name: &str) -> PathBuf {
    let cached = tools_dir().join("bin").join(name);
    if cached.is_file() {
        return cached;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed; run scripts/install-test-tools.sh"))
}

/// The cache the tool scripts build into.
fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FICUS_TOOLS_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/ficus/tools")
}
