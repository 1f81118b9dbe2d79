"""Small helpers shared by the SDK tests: datum builders and logprob extraction."""

from __future__ import annotations

import re

import numpy as np
from tinker import types

MODEL_ID = re.compile(r"^(?P<session>.+):train:(?P<n>\d+)$")


def sft_datum(tokens: list[int], prompt_len: int) -> types.Datum:
    """`tokens[:-1]` predicts `tokens[1:]`; weight 1 only on targets after the first `prompt_len` tokens."""
    assert 0 < prompt_len < len(tokens)
    targets = tokens[1:]
    weights = [0.0 if i + 1 < prompt_len else 1.0 for i in range(len(targets))]
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": targets, "weights": weights},
    )


def rl_datum(tokens: list[int], sampler_logprobs: list[float], advantages: list[float]) -> types.Datum:
    targets = tokens[1:]
    assert len(sampler_logprobs) == len(advantages) == len(targets)
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": targets,
            "logprobs": types.TensorData(data=sampler_logprobs, dtype="float32", shape=[len(targets)]),
            "advantages": types.TensorData(data=advantages, dtype="float32", shape=[len(targets)]),
        },
    )


def logprobs_of(output: types.ForwardBackwardOutput) -> list[np.ndarray]:
    return [o["logprobs"].to_numpy() for o in output.loss_fn_outputs]


def weighted_nll(output: types.ForwardBackwardOutput, data: list[types.Datum]) -> float:
    """Σ −logprob·weight over every datum, from the returned logprobs."""
    total = 0.0
    for lp, d in zip(logprobs_of(output), data, strict=True):
        total += float(-(lp.astype(np.float64) * d.loss_fn_inputs["weights"].to_numpy().astype(np.float64)).sum())
    return total


# Token sequences for the tiny models (vocab 512): two short "documents".
TINY_SEQS = [
    [1, 17, 42, 99, 123, 7, 256, 311, 5, 64],
    [1, 300, 12, 12, 77, 480, 2, 9],
]


def tiny_sft_batch() -> list[types.Datum]:
    return [sft_datum(TINY_SEQS[0], 4), sft_datum(TINY_SEQS[1], 3)]
