#!/usr/bin/env bash
# Build the offline bundle (docs/offline-install.md): every wheel the gateway needs at run time, a lock that pins
# each by its sha256, an SBOM of the bundle, and SHA256SUMS to check it by after carrying it in.
#
#   scripts/wheelhouse.sh [PYTHON] [OUT]      (make wheelhouse runs it with the project's venv)
#
# Runs on a connected machine of the target platform (linux x86_64, CPython 3.11): pip picks the wheels for
# the interpreter that runs it. The versions come from requirements.lock (make lock), checked against its hashes
# as they are downloaded; a dependency published only as an sdist is built into a wheel here. The bundle is then
# installed into a throwaway venv with every index switched off, which both proves it is complete and gives the
# environment the SBOM describes.
set -euo pipefail

PYTHON=${1:-python3}
OUT=${2:-dist/wheelhouse}
EXTRAS=${WHEELHOUSE_EXTRAS:-postgres}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "the bundle targets CPython 3.11"'
rm -rf "$OUT" build
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# The gateway's own wheel, then its dependencies exactly as locked (--no-deps: nothing the lock does not name).
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$OUT" .
rm -rf build mcp_gateway.egg-info  # setuptools' leftovers in the checkout would shadow the installed metadata
"$PYTHON" -m pip wheel --quiet --no-deps --require-hashes --requirement requirements.lock --wheel-dir "$OUT"
strays=$(find "$OUT" -maxdepth 1 -type f ! -name '*.whl')
if [ -n "$strays" ]; then
    echo "not a wheel: $strays" >&2
    exit 1
fi

# From here on nothing may come from outside the bundle: no config file, no find-links, no index.
offline() {
    env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 \
        PIP_INDEX_URL=http://127.0.0.1:9/simple "$@"
}

# The install lock: resolved against the wheelhouse alone, so each line pins the one file that is in it.
echo "mcp-gateway[$EXTRAS]" >"$OUT/requirements.in"
(cd "$OUT" && offline "$PYTHON" -m piptools compile --quiet --no-index --find-links . --generate-hashes \
    --allow-unsafe --strip-extras --no-emit-find-links --output-file requirements.lock requirements.in)

VENV=$(mktemp -d)
trap 'rm -rf "$VENV"' EXIT
"$PYTHON" -m venv "$VENV"
offline "$VENV/bin/python" -m pip install --quiet --no-index --require-hashes \
    --requirement "$OUT/requirements.lock" --find-links "$OUT"
offline "$VENV/bin/python" -m pip check
offline "$VENV/bin/mcp-gateway" sbom --wheelhouse "$OUT" --output "$OUT/sbom.cdx.json"

(cd "$OUT" && sha256sum -- *.whl requirements.in requirements.lock sbom.cdx.json >SHA256SUMS)
echo "$OUT: $(find "$OUT" -name '*.whl' | wc -l) wheels, $(du -sh "$OUT" | cut -f1)"
