"""pytest wrapper of ops/cookbook/math_rl.sh: tinker-cookbook 0.6.1 `math_rl` (arithmetic,
importance_sampling, SmolLM2) unmodified against `lathe serve`. Opt-in, since its venv holds torch:
LATHE_COOKBOOK_TESTS=1 (LATHE_BIN, LATHE_COOKBOOK_VENV, MATH_RL_* are passed through to the script).

    LATHE_COOKBOOK_TESTS=1 python -m pytest ops/cookbook -v -s
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("math_rl.sh")

pytestmark = pytest.mark.skipif(os.environ.get("LATHE_COOKBOOK_TESTS") != "1", reason="set LATHE_COOKBOOK_TESTS=1")


def test_math_rl_arithmetic_importance_sampling_runs_against_lathe(tmp_path):
    env = dict(os.environ, LATHE_COOKBOOK_WORK=str(tmp_path / "work"))
    env.pop("LATHE_COOKBOOK_STRIP_SPANS", None)  # the test is of the recipe as it is
    done = subprocess.run(["bash", str(SCRIPT)], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=int(os.environ.get("MATH_RL_TIMEOUT_S", "600")) + 900)
    print(done.stderr[-6000:])
    summary_path = tmp_path / "work" / "summary.json"
    first_error = None
    if summary_path.is_file():
        first_error = json.loads(summary_path.read_text())["first_error"]
    assert done.returncode == 0, f"math_rl.sh exited {done.returncode}; first error lathe answered: {first_error}"
    assert first_error is None, first_error
