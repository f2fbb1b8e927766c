# Sourced by the tool scripts: where pinned tools are built and cached.
#
# FICUS_TOOLS_DIR (default ~/.cache/ficus/tools) holds one directory per tool and version
# and a bin/ of links to the current ones; the test support looks there first.
FICUS_TOOLS_DIR="${FICUS_TOOLS_DIR:-$HOME/.cache/ficus/tools}"
mkdir -p "$FICUS_TOOLS_DIR/bin"

# require_go: fails with a clear message when Go is missing, since these tools are built from source.
require_go() {
  if ! command -v go >/dev/null 2>&1; then
    echo "Go is needed to build $1 for the tests; install Go 1.25 or newer" >&2
    exit 1
  fi
}

# quietly <log> <command...>: runs a build without its download chatter; on failure,
# prints what it said and fails.
quietly() {
  local log="$1"
  shift
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    echo "failed: $*" >&2
    exit 1
  fi
}
