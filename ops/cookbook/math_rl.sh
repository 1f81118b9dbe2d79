#!/usr/bin/env bash
# Runs tinker-cookbook 0.6.1's `math_rl` recipe, unmodified, against a real `lathe serve`:
#   env=arithmetic loss_fn=importance_sampling on HuggingFaceTB/SmolLM2-135M-Instruct
#   (renderer role_colon: SmolLM2 is not in the cookbook's model table), a few steps, small batches.
# Offline the way shared/reference/cookbook-offline.md describes: the tokenizer comes from lathe's
# get_info tokenizer_id through a local Hugging Face cache entry, every hub/dataset variable is set
# offline and HTTP(S)_PROXY points at a dead loopback port (NO_PROXY=127.0.0.1,localhost).
# A recording proxy (coordinator/tests/sdk/recording_proxy.py, via ops/cookbook/record_proxy.py)
# sits between the recipe and lathe and writes requests.jsonl and summary.json (request types,
# fields, forward_backward datum fields, every error lathe answered) into the work dir.
#
# Exits 0 only when the recipe exits 0 and logged MATH_RL_STEPS steps in its metrics.jsonl.
#
# Environment (all optional):
#   LATHE_BIN             the lathe binary (default target/release/lathe, built if missing)
#   LATHE_COOKBOOK_VENV   the venv (default .venv-cookbook; made from ops/cookbook/requirements.txt)
#   LATHE_COOKBOOK_WORK   work dir (default a new temp dir; kept, its path is printed)
#   MATH_RL_STEPS (2) MATH_RL_GROUPS (4) MATH_RL_GROUP_SIZE (2) MATH_RL_MAX_TOKENS (5) MATH_RL_RANK (8)
#   MATH_RL_TIMEOUT_S (600)  bound on the recipe run
#   LATHE_COOKBOOK_STRIP_SPANS=1  diagnostic, not a pass: the proxy drops the datums' provenance
#                         spans before lathe sees them, to find what fails after that refusal
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
SMOL="HuggingFaceTB/SmolLM2-135M-Instruct"
STEPS="${MATH_RL_STEPS:-2}"
log() { echo "math_rl.sh: $*" >&2; }

# --- the venv -------------------------------------------------------------------------------------
VENV="${LATHE_COOKBOOK_VENV:-.venv-cookbook}"
REQS=ops/cookbook/requirements.txt
if [[ ! -x "$VENV/bin/python" ]] || { [[ -z "${LATHE_COOKBOOK_VENV:-}" ]] && ! cmp -s "$REQS" "$VENV/.requirements.txt"; }; then
    log "creating $VENV from $REQS (torch is large: this takes a while)"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps tinker-cookbook==0.6.1
    cp "$REQS" "$VENV/.requirements.txt"
fi
PY="$VENV/bin/python"
"$PY" -c "import tinker_cookbook, tinker; assert tinker_cookbook.__version__ == '0.6.1', tinker_cookbook.__version__" \
    || { log "the venv $VENV has no tinker-cookbook 0.6.1"; exit 2; }

# --- the binary -----------------------------------------------------------------------------------
if [[ -z "${LATHE_BIN:-}" ]]; then
    LATHE_BIN="$REPO/target/release/lathe"
    [[ -x "$LATHE_BIN" ]] || cargo build --release -p coordinator --bin lathe
fi
[[ -x "$LATHE_BIN" ]] || { log "no lathe binary at $LATHE_BIN"; exit 2; }

# --- lathe serve + recording proxy ----------------------------------------------------------------
WORK="${LATHE_COOKBOOK_WORK:-$(mktemp -d -t lathe-math-rl.XXXXXX)}"
mkdir -p "$WORK/home" "$WORK/hf"
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
LATHE_URL="http://127.0.0.1:$PORT"
SERVE_PID="" PROXY_PID=""
cleanup() {
    local rc=$?
    if [[ -n "$PROXY_PID" ]]; then kill -TERM "$PROXY_PID" 2>/dev/null || true; wait "$PROXY_PID" 2>/dev/null || true; fi
    if [[ -n "$SERVE_PID" ]]; then
        kill -TERM "$SERVE_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$SERVE_PID" 2>/dev/null || true
    fi
    if [[ -f "$WORK/summary.json" ]]; then
        "$PY" - "$WORK/summary.json" <<'PY' >&2 || true
import json, sys
s = json.load(open(sys.argv[1]))
print(f"math_rl.sh: {s['requests']} requests recorded")
for k, t in sorted(s["by_type"].items()):
    print(f"  {k}: {t['count']} {t['statuses']}")
e = s["first_error"]
print("math_rl.sh: first error lathe answered:", json.dumps(e, default=str)[:2000] if e else "none")
PY
    fi
    log "work dir (serve.log, recipe.log, requests.jsonl, summary.json): $WORK"
    exit $rc
}
trap cleanup EXIT

log "starting lathe serve on $LATHE_URL (data dir $WORK/data)"
"$LATHE_BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" --model "$SMOL" >"$WORK/serve.log" 2>&1 &
SERVE_PID=$!
for i in $(seq 1 600); do
    curl -fsS "$LATHE_URL/api/v1/healthz" >/dev/null 2>&1 && break
    kill -0 "$SERVE_PID" 2>/dev/null || { log "lathe serve exited:"; tail -20 "$WORK/serve.log" >&2; exit 1; }
    [[ $i == 600 ]] && { log "lathe serve gave no healthz in 300 s"; exit 1; }
    sleep 0.5
done

"$PY" ops/cookbook/record_proxy.py "$PORT" "$WORK/proxy.port" "$WORK/requests.jsonl" "$WORK/summary.json" \
    >"$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
for _ in $(seq 1 100); do [[ -s "$WORK/proxy.port" ]] && break; sleep 0.1; done
[[ -s "$WORK/proxy.port" ]] || { log "the recording proxy did not start:"; cat "$WORK/proxy.log" >&2; exit 1; }
PROXY_URL="http://127.0.0.1:$(cat "$WORK/proxy.port")"

# --- the recipe's environment ---------------------------------------------------------------------
export HOME="$WORK/home" HF_HOME="$WORK/hf"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export HTTP_PROXY="http://127.0.0.1:9" HTTPS_PROXY="http://127.0.0.1:9" http_proxy="http://127.0.0.1:9" https_proxy="http://127.0.0.1:9"
export NO_PROXY="127.0.0.1,localhost" no_proxy="127.0.0.1,localhost"
export TINKER_API_KEY="tml-cookbook" TINKER_TELEMETRY=0 TINKER_BASE_URL="$PROXY_URL"
export WANDB_MODE=disabled

log "tokenizer cache entry: $("$PY" ops/cookbook/hf_cache.py "$LATHE_URL" "$SMOL" "$HF_HOME")"

log "running math_rl for $STEPS steps through $PROXY_URL (log: $WORK/recipe.log)"
set +e
timeout "${MATH_RL_TIMEOUT_S:-600}" "$PY" -m tinker_cookbook.recipes.math_rl.train \
    model_name="$SMOL" renderer_name=role_colon env=arithmetic loss_fn=importance_sampling \
    lora_rank="${MATH_RL_RANK:-8}" group_size="${MATH_RL_GROUP_SIZE:-2}" groups_per_batch="${MATH_RL_GROUPS:-4}" \
    max_tokens="${MATH_RL_MAX_TOKENS:-5}" max_steps="$STEPS" eval_every=0 \
    log_path="$WORK/run" behavior_if_log_dir_exists=delete base_url="$PROXY_URL" \
    >"$WORK/recipe.log" 2>&1
RC=$?
set -e
tail -40 "$WORK/recipe.log" >&2
if [[ $RC -ne 0 ]]; then
    log "the recipe failed (exit $RC)"
    exit 1
fi
LOGGED=$( [[ -f "$WORK/run/metrics.jsonl" ]] && wc -l <"$WORK/run/metrics.jsonl" || echo 0)
if [[ "$LOGGED" -lt "$STEPS" ]]; then
    log "the recipe exited 0 but logged $LOGGED of $STEPS steps in $WORK/run/metrics.jsonl"
    exit 1
fi
log "ok: $STEPS math_rl steps against lathe"
