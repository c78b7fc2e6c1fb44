#!/usr/bin/env bash
# Install Graphviz (the `dot` program) from the distribution's packages when it is missing.
#
# `nas draw` and a campaign's best.png lay DAGs out with dot and fall back to a built-in layout without
# it; under CI the tests require it. Needs root or password-less sudo on Debian/Ubuntu; elsewhere it
# says so on stderr and exits 0 (the drawing tests then skip with that reason, or fail under CI=true).
set -euo pipefail

log() { echo "install_graphviz: $*" >&2; }

if command -v dot >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    log "not root and no password-less sudo: install the graphviz package yourself for Graphviz layouts"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    log "no apt-get: install the graphviz package yourself for Graphviz layouts"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get install -y -q graphviz >&2 || { "${SUDO[@]}" apt-get update -q >&2 && "${SUDO[@]}" apt-get install -y -q graphviz >&2; }
command -v dot >/dev/null 2>&1 || { log "error: graphviz did not install"; exit 1; }
log "installed $(dot -V 2>&1)"
