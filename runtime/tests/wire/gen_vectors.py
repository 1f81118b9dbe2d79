#!/usr/bin/env python3
"""Test vectors for lathe's Tinker protobuf wire (runtime/src/wire), made and checked by the
official SDK (tinker==0.38.0).

Two directions:

1. SDK -> lathe. Requests are built from the SDK's public types (`types.Datum`, `TensorData`, ...)
   and turned into bytes by the SDK's own `AsyncTrainingResource.forward_backward` (the exact
   code path a TrainingClient uses, including its zstd compression), captured by a stub HTTP
   client. A few messages the SDK never emits (int32 / bfloat16 tensors, every proto field set)
   are built with `tinker.proto.tinker_public_pb2`. Written: `*.bin` / `*.zst` plus
   `sdk_vectors.json`, the values runtime/tests/wire_sdk_requests.rs must decode them to.

2. lathe -> SDK. runtime/tests/wire_sdk_outputs.rs encodes fixed results into
   `rust_fb_output.bin` / `rust_sample_response.bin` and writes what the SDK should see into
   `rust_outputs.json` (regenerate with LATHE_BLESS_WIRE=1). This script decodes them with the
   SDK's `deserialize_forward_backward_output` / `deserialize_sample_response` (what
   `retrieve_future` uses) and asserts every value.

The SDK serializes protobuf maps in hash order, so re-running may reorder map entries inside the
request fixtures (same content, different bytes); the Rust tests decode, so either order passes.

Usage:
    python3 -m venv /work/sdk-venv && /work/sdk-venv/bin/pip install tinker==0.38.0
    /work/sdk-venv/bin/python runtime/tests/wire/gen_vectors.py          # write + check
    /work/sdk-venv/bin/python runtime/tests/wire/gen_vectors.py --check  # check only
"""

from __future__ import annotations

import asyncio
import json
import math
import pathlib
import re
import sys
from types import SimpleNamespace

import numpy as np

import tinker
from tinker import types
from tinker.proto import tinker_public_pb2 as pb
from tinker.proto.response_conv import (
    deserialize_forward_backward_output,
    deserialize_sample_response,
)
from tinker.resources.training import AsyncTrainingResource

HERE = pathlib.Path(__file__).resolve().parent
assert tinker.__version__ == "0.38.0", f"vectors are pinned to tinker 0.38.0, found {tinker.__version__}"


# ---------------------------------------------------------------------------------------------
# Capturing the SDK's request bytes.


class _CapturingClient:
    """Stands in for AsyncTinker: records what AsyncTrainingResource would POST."""

    def __init__(self, compress: bool) -> None:
        self._client_config = SimpleNamespace(proto_compress_fwdbwd=compress)
        self.posts: list[tuple[str, bytes, dict]] = []
        self.get = self.patch = self.put = self.delete = self.get_api_list = None

    async def post(self, path, *, body, options, cast_to):
        self.posts.append((path, body, dict(options.get("headers") or {})))
        return None


def sdk_forward_backward_body(
    model_id: str,
    seq_id: int,
    data: list[types.Datum],
    loss_fn: str,
    loss_fn_config=None,
    forward_only: bool = False,
    compress: bool = False,
) -> bytes:
    client = _CapturingClient(compress)
    request = types.ForwardBackwardRequest(
        forward_backward_input=types.ForwardBackwardInput(
            data=data, loss_fn=loss_fn, loss_fn_config=loss_fn_config
        ),
        model_id=model_id,
        seq_id=seq_id,
    )
    asyncio.run(AsyncTrainingResource(client).forward_backward(request=request, forward_only=forward_only))
    [(path, body, headers)] = client.posts
    assert path == "/api/v1/forward_backward"
    assert headers["Content-Type"] == "application/x-protobuf"
    assert (headers.get("Content-Encoding") == "zstd") == compress
    return body


# ---------------------------------------------------------------------------------------------
# Expected values, in the JSON form the Rust tests read.


def f32(x) -> float:
    """The exact float32 value, as a JSON double."""
    return float(np.float32(x))


def expect_tensor(dtype: str, shape: list[int], values) -> dict:
    values = np.asarray(values).reshape(-1)
    if dtype == "float32":
        data = [f32(v) for v in values]
    else:
        data = [int(v) for v in values]
    assert len(data) == int(np.prod(shape)), (shape, len(data))
    return {"dtype": dtype, "shape": shape, "values": data}


def expect_request(model_id, seq_id, loss_fn, forward_only, loss_config, loss_config_text, data) -> dict:
    return {
        "model_id": model_id,
        "seq_id": seq_id,
        "loss_fn": loss_fn,
        "forward_only": forward_only,
        "loss_config": loss_config,
        "loss_config_text": loss_config_text,
        "data": data,
    }


def dense_to_csr(matrix: np.ndarray) -> tuple[np.ndarray, list[int], list[int]]:
    """What torch's to_sparse_csr gives for a 2-D matrix with pad 0 (torch is not needed)."""
    values, crow, cols = [], [0], []
    for row in matrix:
        for j, v in enumerate(row):
            if v != 0:
                values.append(v)
                cols.append(j)
        crow.append(len(values))
    return np.asarray(values, dtype=matrix.dtype), crow, cols


# ---------------------------------------------------------------------------------------------
# SDK -> lathe vectors.


def vector_cross_entropy(out: dict, vectors: dict) -> None:
    # Datum 0: two text chunks and plain lists (the SDK picks int64 / float32 by key).
    d0 = types.Datum(
        model_input=types.ModelInput(
            chunks=[types.EncodedTextChunk(tokens=[1, 2, 3]), types.EncodedTextChunk(tokens=[49151, 0])]
        ),
        loss_fn_inputs={"target_tokens": [2, 3, 49151, 0, 17], "weights": [0.0, 0.0, 1.0, 1.0, 1.0]},
    )
    # Datum 1: numpy arrays, fractional weights that float32 cannot hold exactly.
    d1 = types.Datum(
        model_input=types.ModelInput.from_ints([10, 20, 30, 40]),
        loss_fn_inputs={
            "target_tokens": np.array([20, 30, 40, 50], dtype=np.int64),
            "weights": np.array([0.1, 1.0, -0.7, 0.25], dtype=np.float32),
        },
    )
    out["fb_cross_entropy.bin"] = sdk_forward_backward_body("sess-1:train:0", 1, [d0, d1], "cross_entropy")
    vectors["fb_cross_entropy.bin"] = expect_request(
        "sess-1:train:0", 1, "cross_entropy", False, {}, {},
        [
            {
                "tokens": [1, 2, 3, 49151, 0],
                "loss_fn_inputs": {
                    "target_tokens": expect_tensor("int64", [5], [2, 3, 49151, 0, 17]),
                    "weights": expect_tensor("float32", [5], [0, 0, 1, 1, 1]),
                },
            },
            {
                "tokens": [10, 20, 30, 40],
                "loss_fn_inputs": {
                    "target_tokens": expect_tensor("int64", [4], [20, 30, 40, 50]),
                    "weights": expect_tensor("float32", [4], [0.1, 1.0, -0.7, 0.25]),
                },
            },
        ],
    )


def vector_ppo(out: dict, vectors: dict) -> None:
    inputs = {
        "target_tokens": [7, 8, 9],
        "logprobs": [-1.25, -0.5, -2.0000001],
        "advantages": [1.0, -0.5, 0.3],
        "clip_low_threshold": [0.7, 0.8, 0.9],
        "clip_high_threshold": [1.1, 1.2, 1.3],
    }
    d0 = types.Datum(model_input=types.ModelInput.from_ints([6, 7, 8]), loss_fn_inputs=dict(inputs))
    config = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
    out["fb_ppo.bin"] = sdk_forward_backward_body("sess-1:train:0", 2, [d0], "ppo", config)
    vectors["fb_ppo.bin"] = expect_request(
        "sess-1:train:0", 2, "ppo", False, config, {},
        [
            {
                "tokens": [6, 7, 8],
                "loss_fn_inputs": {
                    k: expect_tensor("int64" if k == "target_tokens" else "float32", [3], v)
                    for k, v in inputs.items()
                },
            }
        ],
    )


def vector_forward_only_text_config(out: dict, vectors: dict) -> None:
    d0 = types.Datum(
        model_input=types.ModelInput.from_ints([3, 1, 4, 1, 5]),
        loss_fn_inputs={"target_tokens": [1, 4, 1, 5, 9]},
    )
    config = {"loss_id": "loss-7f3a", "scale": 2.5}
    out["fb_forward_text_config.bin"] = sdk_forward_backward_body(
        "sess-2:train:3", 9, [d0], "custom", config, forward_only=True
    )
    vectors["fb_forward_text_config.bin"] = expect_request(
        "sess-2:train:3", 9, "custom", True, {"scale": 2.5}, {"loss_id": "loss-7f3a"},
        [{"tokens": [3, 1, 4, 1, 5], "loss_fn_inputs": {"target_tokens": expect_tensor("int64", [5], [1, 4, 1, 5, 9])}}],
    )


def vector_sparse(out: dict, vectors: dict) -> None:
    # (N=3, K=4) top-K distillation targets: sparse CSR as TensorData.from_torch_sparse makes them.
    targets = np.array([[5, 0, 0, 7], [0, 0, 0, 0], [0, 3, 0, 0]], dtype=np.int64)
    weights = np.array([[0.5, 0, 0, 0.25], [0, 0, 0, 0], [0, 1.0, 0, 0]], dtype=np.float32)
    t_values, t_crow, t_col = dense_to_csr(targets)
    w_values, w_crow, w_col = dense_to_csr(weights)
    d0 = types.Datum(
        model_input=types.ModelInput.from_ints([11, 12, 13]),
        loss_fn_inputs={
            "target_tokens": types.TensorData(
                data=t_values, dtype="int64", shape=[3, 4], sparse_crow_indices=t_crow, sparse_col_indices=t_col
            ),
            "weights": types.TensorData(
                data=w_values, dtype="float32", shape=[3, 4], sparse_crow_indices=w_crow, sparse_col_indices=w_col
            ),
        },
    )
    # Datum 1: the same kind of inputs as dense 2-D numpy arrays.
    t1 = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64)
    w1 = np.array([[0.6, 0.3, 0.1], [1.0, 0.0, 0.0]], dtype=np.float32)
    d1 = types.Datum(model_input=types.ModelInput.from_ints([21, 22]), loss_fn_inputs={"target_tokens": t1, "weights": w1})
    out["fb_sparse.bin"] = sdk_forward_backward_body("sess-1:train:1", 4, [d0, d1], "cross_entropy")
    vectors["fb_sparse.bin"] = expect_request(
        "sess-1:train:1", 4, "cross_entropy", False, {}, {},
        [
            {
                "tokens": [11, 12, 13],
                "loss_fn_inputs": {
                    "target_tokens": expect_tensor("int64", [3, 4], targets),
                    "weights": expect_tensor("float32", [3, 4], weights),
                },
            },
            {
                "tokens": [21, 22],
                "loss_fn_inputs": {
                    "target_tokens": expect_tensor("int64", [2, 3], t1),
                    "weights": expect_tensor("float32", [2, 3], w1),
                },
            },
        ],
    )


def vector_widened_dtypes(out: dict, vectors: dict) -> None:
    # Not something the SDK sends (its request path writes only float32 / int64), but the proto
    # allows it: int32 and bfloat16 payloads with the shape left empty (1-D from the byte length).
    msg = pb.ForwardBackwardRequest(model_id="m", seq_id=5, loss_fn="cross_entropy")
    datum = msg.data.add()
    datum.model_input.add().encoded_text.tokens = np.array([1, 2, 3], dtype=np.int32).tobytes()
    datum.loss_fn_inputs["target_tokens"].dtype = pb.DTYPE_INT32
    datum.loss_fn_inputs["target_tokens"].dense = np.array([2, 3, 2147483647], dtype=np.int32).tobytes()
    bf16_weights = np.array([1.0, -2.5, 0.0078125], dtype=np.float32)  # exact in bfloat16
    datum.loss_fn_inputs["weights"].dtype = pb.DTYPE_BFLOAT16
    datum.loss_fn_inputs["weights"].dense = (bf16_weights.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    out["fb_widened_dtypes.bin"] = msg.SerializeToString()
    vectors["fb_widened_dtypes.bin"] = expect_request(
        "m", 5, "cross_entropy", False, {}, {},
        [
            {
                "tokens": [1, 2, 3],
                "loss_fn_inputs": {
                    "target_tokens": expect_tensor("int64", [3], [2, 3, 2147483647]),
                    "weights": expect_tensor("float32", [3], bf16_weights),
                },
            }
        ],
    )


def vector_zstd(out: dict, vectors: dict) -> None:
    # Large enough (and repetitive enough) that zstd emits real compressed blocks.
    data, expected = [], []
    for d in range(4):
        tokens = [(t * 7 + d * 13) % 500 for t in range(300)]
        targets = tokens[1:] + [2]
        weights = [float((t % 4) / 4) for t in range(300)]
        data.append(
            types.Datum(model_input=types.ModelInput.from_ints(tokens), loss_fn_inputs={"target_tokens": targets, "weights": weights})
        )
        expected.append(
            {
                "tokens": tokens,
                "loss_fn_inputs": {
                    "target_tokens": expect_tensor("int64", [300], targets),
                    "weights": expect_tensor("float32", [300], weights),
                },
            }
        )
    plain = sdk_forward_backward_body("sess-3:train:0", 12, data, "cross_entropy")
    compressed = sdk_forward_backward_body("sess-3:train:0", 12, data, "cross_entropy", compress=True)
    assert len(compressed) * 5 < len(plain), (len(compressed), len(plain))
    out["fb_zstd.zst"] = compressed
    vectors["fb_zstd.zst"] = expect_request("sess-3:train:0", 12, "cross_entropy", False, {}, {}, expected)
    vectors["fb_zstd.zst"]["decompressed_len"] = len(plain)


def expect_spans(spans) -> list[dict]:
    return [
        {
            "source": "prompt" if isinstance(s, types.PromptProvenanceSpan) else "sampled",
            "sequence_id": s.sequence_id,
            "offset": s.offset,
            "length": s.length,
        }
        for s in spans
    ]


def vector_provenance(out: dict, vectors: dict) -> None:
    # Datum 0 is what tinker-cookbook's rl_loop sends (recipes/rl_loop.py, with_sampled_provenance):
    # sequence "seq-7" sampled 3 tokens after a 3-token prompt; the input is the prompt and the
    # first 2 sampled tokens, the targets the prompt from its second token and all 3 sampled.
    prompt, sampled = [5, 6, 7], [8, 9, 10]
    full = prompt + sampled
    rl_inputs = {"target_tokens": full[1:], "logprobs": [0.0, 0.0, -0.5, -0.25, -1.5], "advantages": [0.0, 0.0, 1.0, 1.0, 1.0]}
    d0_inputs = (
        [types.PromptProvenanceSpan(sequence_id="seq-7", length=3), types.SampledProvenanceSpan(sequence_id="seq-7", length=2)],
        [
            types.PromptProvenanceSpan(sequence_id="seq-7", offset=1, length=2),
            types.SampledProvenanceSpan(sequence_id="seq-7", length=3),
        ],
    )
    d0 = types.Datum(model_input=types.ModelInput.from_ints(full[:-1]), loss_fn_inputs=dict(rl_inputs)).with_provenance(
        model_input=d0_inputs[0], loss_fn_inputs=d0_inputs[1]
    )
    # Datum 1: no provenance, next to datums that have it.
    d1 = types.Datum(model_input=types.ModelInput.from_ints(full[:-1]), loss_fn_inputs=dict(rl_inputs))
    # Datum 2: two turns as rl/data_processing.py builds them (observation 2 tokens, action 2, then
    # a 1-token observation delta at offset 4 of the second request's prompt and its 2-token
    # action), plus a zero-length sampled run, which the SDK allows.
    d2_spans = (
        [
            types.PromptProvenanceSpan(sequence_id="a", length=2),
            types.SampledProvenanceSpan(sequence_id="a", length=2),
            types.PromptProvenanceSpan(sequence_id="b", offset=4, length=1),
            types.SampledProvenanceSpan(sequence_id="c", offset=0, length=0),
            types.SampledProvenanceSpan(sequence_id="b", length=1),
        ],
        [
            types.PromptProvenanceSpan(sequence_id="a", offset=1, length=1),
            types.SampledProvenanceSpan(sequence_id="a", length=2),
            types.PromptProvenanceSpan(sequence_id="b", offset=4, length=1),
            types.SampledProvenanceSpan(sequence_id="b", length=2),
        ],
    )
    two_turns = [1, 2, 3, 4, 5, 6, 7]
    d2_inputs = {"target_tokens": two_turns[1:], "logprobs": [0.0, -1.0, -2.0, 0.0, -0.5, -0.75], "advantages": [0.0, 0.5, 0.5, 0.0, 0.5, 0.5]}
    d2 = types.Datum(model_input=types.ModelInput.from_ints(two_turns[:-1]), loss_fn_inputs=dict(d2_inputs)).with_provenance(
        model_input=d2_spans[0], loss_fn_inputs=d2_spans[1]
    )
    out["fb_provenance.bin"] = sdk_forward_backward_body("sess-4:train:0", 3, [d0, d1, d2], "importance_sampling")

    def expect_rl(tokens, inputs, spans):
        datum = {
            "tokens": tokens,
            "loss_fn_inputs": {
                k: expect_tensor("int64" if k == "target_tokens" else "float32", [len(v)], v) for k, v in inputs.items()
            },
        }
        if spans is not None:
            datum["provenance"] = {"model_input": expect_spans(spans[0]), "loss_fn_inputs": expect_spans(spans[1])}
        return datum

    vectors["fb_provenance.bin"] = expect_request(
        "sess-4:train:0", 3, "importance_sampling", False, {}, {},
        [
            expect_rl(full[:-1], rl_inputs, d0_inputs),
            expect_rl(full[:-1], rl_inputs, None),
            expect_rl(two_turns[:-1], d2_inputs, d2_spans),
        ],
    )


def error_vectors(out: dict, errors: dict) -> None:
    image = types.Datum(
        model_input=types.ModelInput(
            chunks=[types.EncodedTextChunk(tokens=[1, 2]), types.ImageChunk(data=b"\x89PNG\r\n", format="png", expected_tokens=4)]
        ),
        loss_fn_inputs={"target_tokens": list(range(6)), "weights": [1.0] * 6},
    )
    out["fb_image.bin"] = sdk_forward_backward_body("sess-1:train:0", 3, [image], "cross_entropy")
    errors["fb_image.bin"] = {
        "seq": ["sess-1:train:0", 3],
        "contains": ["data[0].model_input[1]", "image inputs are not supported"],
    }
    nan = types.Datum(
        model_input=types.ModelInput.from_ints([1, 2]),
        loss_fn_inputs={"target_tokens": [2, 3], "weights": [1.0, float("nan")]},
    )
    ok = types.Datum(model_input=types.ModelInput.from_ints([1]), loss_fn_inputs={"target_tokens": [2], "weights": [1.0]})
    out["fb_nan_weight.bin"] = sdk_forward_backward_body("sess-1:train:0", 6, [ok, nan], "cross_entropy")
    errors["fb_nan_weight.bin"] = {
        "seq": ["sess-1:train:0", 6],
        "contains": ['data[1].loss_fn_inputs["weights"]', "NaN at index 1"],
    }
    negative = types.Datum(model_input=types.ModelInput.from_ints([4, -1, 5]), loss_fn_inputs={"target_tokens": [1, 2, 3]})
    out["fb_negative_token.bin"] = sdk_forward_backward_body("sess-1:train:0", 7, [negative], "cross_entropy")
    errors["fb_negative_token.bin"] = {
        "seq": ["sess-1:train:0", 7],
        "contains": ["data[0].model_input[0]", "negative token id -1 at index 1"],
    }
    # Spans set through the constructor skip with_provenance's tiling check; the SDK sends them.
    miscounted = types.Datum(
        model_input=types.ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={"target_tokens": [2, 3, 4], "logprobs": [0.0] * 3, "advantages": [1.0] * 3},
        model_input_spans=[types.SampledProvenanceSpan(sequence_id="s", length=2)],
        loss_fn_input_spans=[types.SampledProvenanceSpan(sequence_id="s", length=3)],
    )
    out["fb_provenance_miscounted.bin"] = sdk_forward_backward_body("sess-1:train:0", 8, [ok, miscounted], "importance_sampling")
    errors["fb_provenance_miscounted.bin"] = {
        "seq": ["sess-1:train:0", 8],
        "contains": ["data[1].model_input_spans", "cover 2 positions but model_input has 3 tokens"],
    }


def round_trip_vectors(out: dict) -> None:
    """Every field of every top-level message set (maps with one entry, so that byte order is
    fixed): lathe must decode and re-encode these to the same bytes, which fails if any field
    number, type, optional or oneof disagrees with the SDK's descriptor."""
    req = pb.ForwardBackwardRequest(model_id="s:train:0", seq_id=-3, loss_fn="ppo", forward_only=True)
    req.loss_fn_config["beta"] = 0.125
    req.loss_fn_config_v2["loss_id"].text = "abc"
    d0 = req.data.add()
    d0.model_input.add().encoded_text.tokens = np.array([1, -2], dtype=np.int32).tobytes()
    image = d0.model_input.add().image
    image.data = b"\x00img"
    image.format = "jpeg"
    image.expected_tokens = 0  # proto3 optional set to its default: still on the wire
    image.override_dimensions.width = 640
    image.override_dimensions.height = 480
    d0.model_input.add().dmel.dmel = b"dmel"
    d0.loss_fn_inputs["t"].dense = np.array([1.5], dtype=np.float32).tobytes()
    d0.loss_fn_inputs["t"].dtype = pb.DTYPE_FLOAT32
    d0.loss_fn_inputs["t"].shape.extend([1, 1])
    span = d0.model_input_spans.add().prompt_tokens
    span.sequence_id, span.offset, span.length = "p", 0, 2
    span = d0.loss_fn_input_spans.add().sampled_tokens
    span.sequence_id, span.offset, span.length = "s-1", 5, 1
    d1 = req.data.add()
    csr = d1.loss_fn_inputs["w"].sparse_csr
    csr.values = np.array([7], dtype=np.int64).tobytes()
    csr.crow_indices = np.array([0, 1], dtype=np.int64).tobytes()
    csr.col_indices = np.array([2], dtype=np.int64).tobytes()
    d1.loss_fn_inputs["w"].dtype = pb.DTYPE_INT64
    d1.loss_fn_inputs["w"].shape.extend([1, 3])
    d1.model_input.add().encoded_text.tokens = b""  # oneof set to an empty message
    out["rt_fb_request.bin"] = req.SerializeToString()

    resp = pb.SampleResponse(prompt_cache_hit_tokens=3)
    seq = resp.sequences.add(stop_reason=pb.STOP_REASON_LENGTH, tokens=b"\x01\x00\x00\x00", logprobs=b"")
    seq.topk_sampled_logprobs.k = 1
    seq.topk_sampled_logprobs.length = 1
    seq.topk_sampled_logprobs.token_ids = b"\x01\x00\x00\x00"
    seq.topk_sampled_logprobs.logprobs = np.array([-0.5], dtype=np.float32).tobytes()
    resp.sequences.add()  # all defaults: an empty message
    resp.prompt_logprobs = b""
    resp.topk_prompt_logprobs.k = 0
    resp.target_prompt_logprobs.dense = b""
    resp.target_prompt_logprobs.dtype = pb.DTYPE_BFLOAT16
    resp.prompt_alt_tokens.tokens.dtype = pb.DTYPE_INT32
    resp.prompt_alt_tokens.logprobs.shape.append(-1)
    out["rt_sample_response.bin"] = resp.SerializeToString()

    fbo = pb.ForwardBackwardOutput(loss_fn_output_type="tinker:ArrayRecord")
    fbo.metrics["loss:sum"] = -1.5
    rec = fbo.loss_fn_outputs.add(type_tag="ArrayRecord", num_datums=2)
    rec.fields["logprobs"].data = b"\x00\x00\x80\xbf"
    rec.fields["logprobs"].offsets = np.array([0, 4, 4], dtype=np.int64).tobytes()
    rec.fields["logprobs"].dtype = pb.DTYPE_FLOAT32
    rec.fields["logprobs"].trailing_shape.extend([1])
    fbo.loss_fn_outputs.add()
    out["rt_fb_output.bin"] = fbo.SerializeToString()

    params = pb.SamplingParams(max_tokens=0, seed=2**64 - 1, temperature=0.0, top_k=-1, top_p=0.5)
    params.stop_strs.values.extend(["\n\n", "</s>"])
    out["rt_sampling_params_strs.bin"] = params.SerializeToString()
    params = pb.SamplingParams()
    params.stop_tokens.values.extend([2, -7])
    out["rt_sampling_params_tokens.bin"] = params.SerializeToString()


def compact_json(value) -> str:
    """Indented JSON with lists of numbers kept on one line."""
    text = json.dumps(value, indent=1, sort_keys=True)
    return re.sub(r"\[\s+([-0-9.e,\s]+?)\s+\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)


def write_sdk_vectors() -> None:
    out: dict[str, bytes] = {}
    vectors: dict[str, dict] = {}
    errors: dict[str, dict] = {}
    vector_cross_entropy(out, vectors)
    vector_ppo(out, vectors)
    vector_forward_only_text_config(out, vectors)
    vector_sparse(out, vectors)
    vector_widened_dtypes(out, vectors)
    vector_zstd(out, vectors)
    vector_provenance(out, vectors)
    error_vectors(out, errors)
    round_trip_vectors(out)
    for name, body in out.items():
        (HERE / name).write_bytes(body)
    summary = {
        "generator": "runtime/tests/wire/gen_vectors.py",
        "tinker_version": tinker.__version__,
        "requests": vectors,
        "errors": errors,
        "round_trips": sorted(n for n in out if n.startswith("rt_")),
    }
    (HERE / "sdk_vectors.json").write_text(compact_json(summary) + "\n")
    print(f"wrote {len(out)} SDK vectors to {HERE}")


# ---------------------------------------------------------------------------------------------
# lathe -> SDK checks.


def same_float(got: float | None, want: float | None) -> bool:
    if want is None or got is None:
        return got is None and want is None
    return got == want or (math.isnan(got) and math.isnan(want))


def check_fb_output(expected: dict) -> int:
    body = (HERE / expected["file"]).read_bytes()
    got = deserialize_forward_backward_output(body)
    assert got.loss_fn_output_type == expected["loss_fn_output_type"], got.loss_fn_output_type
    assert got.metrics == expected["metrics"], (got.metrics, expected["metrics"])
    assert len(got.loss_fn_outputs) == len(expected["outputs"])
    checks = 0
    for i, (g, w) in enumerate(zip(got.loss_fn_outputs, expected["outputs"])):
        assert sorted(g) == sorted(w), (i, sorted(g), sorted(w))
        for field, want in w.items():
            td = g[field]
            assert td.dtype == want["dtype"], (i, field, td.dtype)
            assert td.shape == want["shape"], (i, field, td.shape, want["shape"])
            assert td.to_numpy().shape == tuple(want["shape"]), (i, field)
            assert td.data == want["values"], (i, field, td.data, want["values"])
            checks += 1
    return checks


def check_sample_response(expected: dict) -> int:
    body = (HERE / expected["file"]).read_bytes()
    got = deserialize_sample_response(body)
    assert len(got.sequences) == len(expected["sequences"])
    checks = 0
    for i, (g, w) in enumerate(zip(got.sequences, expected["sequences"])):
        assert g.stop_reason == w["stop_reason"], (i, g.stop_reason)
        assert g.tokens == w["tokens"], (i, g.tokens, w["tokens"])
        assert g.logprobs == w["logprobs"], (i, g.logprobs, w["logprobs"])
        assert g.topk_logprobs == to_topk(w["topk_logprobs"]), (i, g.topk_logprobs, w["topk_logprobs"])
        checks += 4
    want_prompt = expected["prompt_logprobs"]
    if want_prompt is None:
        assert got.prompt_logprobs is None, got.prompt_logprobs
    else:
        assert len(got.prompt_logprobs) == len(want_prompt)
        assert all(same_float(g, w) for g, w in zip(got.prompt_logprobs, want_prompt)), got.prompt_logprobs
    assert got.topk_prompt_logprobs == to_topk(expected["topk_prompt_logprobs"]), got.topk_prompt_logprobs
    return checks + 2


def to_topk(rows):
    if rows is None:
        return None
    return [None if row is None else [(int(t), float(lp)) for t, lp in row] for row in rows]


def check_rust_outputs() -> None:
    path = HERE / "rust_outputs.json"
    expected = json.loads(path.read_text())
    checks = 0
    for case in expected["forward_backward_outputs"]:
        checks += check_fb_output(case)
    for case in expected["sample_responses"]:
        checks += check_sample_response(case)
    print(
        f"SDK decoded {len(expected['forward_backward_outputs'])} ForwardBackwardOutput and "
        f"{len(expected['sample_responses'])} SampleResponse bodies from lathe: {checks} value checks passed"
    )


def main() -> None:
    if "--check" not in sys.argv[1:]:
        write_sdk_vectors()
    check_rust_outputs()


if __name__ == "__main__":
    main()
