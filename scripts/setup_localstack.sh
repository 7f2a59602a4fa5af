#!/usr/bin/env bash
# Prepare LocalStack for the strict S3 test lane: an S3 API that enforces
# Object Lock (retention, version deletes, versioning suspension, checksums),
# which moto does not. No Docker: LocalStack runs on the host from a venv of
# its own (it needs Python >= 3.13; ours is 3.11).
#
#   scripts/setup_localstack.sh [DIR]     (default: .localstack)
#
# Leaves DIR/venv/bin/python and DIR/server.pem (LocalStack's own certificate
# does not load with pyOpenSSL 26, so it gets a self-made one). The tests
# (tests/conftest.py, fixture `localstack`) start and stop the server.
# Exit 0 when ready; otherwise one line on stderr saying why, exit 1.
set -uo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.localstack}
PINS=("localstack-core[runtime]==2026.3.0" "cbor2<6")

fail() { echo "setup_localstack: $*" >&2; exit 1; }

find_python() {
    local candidate
    for candidate in "${LOCALSTACK_PYTHON:-}" python3.14 python3.13; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 13))' 2>/dev/null; then
            command -v "$candidate"; return 0
        fi
    done
    if command -v pyenv >/dev/null 2>&1; then
        for candidate in "$(pyenv root)"/versions/3.1[3-9]*/bin/python; do
            [ -x "$candidate" ] && { echo "$candidate"; return 0; }
        done
    fi
    return 1
}

if [ -x "$DIR/venv/bin/python" ] && "$DIR/venv/bin/python" -c 'import localstack' 2>/dev/null \
    && [ -s "$DIR/server.pem" ]; then
    echo "LocalStack ready in $DIR"
    exit 0
fi
PY=$(find_python) || fail "no Python >= 3.13 (tried \$LOCALSTACK_PYTHON, python3.13, pyenv)"
mkdir -p "$DIR"
"$PY" -m venv "$DIR/venv" || fail "cannot create a venv with $PY"
"$DIR/venv/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}" \
    >"$DIR/install.log" 2>&1 || fail "pip install ${PINS[*]} failed (see $DIR/install.log)"
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=localhost" \
    -keyout "$DIR/key.pem" -out "$DIR/cert.pem" >/dev/null 2>&1 \
    || fail "openssl could not make a certificate"
cat "$DIR/key.pem" "$DIR/cert.pem" >"$DIR/server.pem"
rm -f "$DIR/key.pem" "$DIR/cert.pem"
echo "LocalStack ready in $DIR ($("$DIR/venv/bin/python" -c 'import importlib.metadata as m; print(m.version("localstack-core"))'))"
