"""A cookbook-style SFT loop on the real SmolLM2-135M-Instruct: 16 chat examples rendered with the
model's chat template (through `TrainingClient.get_tokenizer()`, pointed by `get_info` at lathe's
local tokenizer directory), weight 1 on assistant tokens only, 20 steps of forward_backward +
optim_step. The summed loss must fall to at most half of the first step's.
"""

from __future__ import annotations

from pathlib import Path

from tinker import types

from conftest import SMOL

STEPS = 20
LEARNING_RATE = 1e-3
RANK = 16

# Short questions with answers in one fixed house style, which the base model does not predict.
EXAMPLES = [
    ("What is the capital of France?", "Answer: Paris. Done."),
    ("What is 2 + 3?", "Answer: 5. Done."),
    ("What colour is the sky on a clear day?", "Answer: blue. Done."),
    ("How many legs does a spider have?", "Answer: 8. Done."),
    ("What is the opposite of hot?", "Answer: cold. Done."),
    ("Which planet do we live on?", "Answer: Earth. Done."),
    ("What is frozen water called?", "Answer: ice. Done."),
    ("How many days are in a week?", "Answer: 7. Done."),
    ("What animal says moo?", "Answer: a cow. Done."),
    ("What is 10 minus 4?", "Answer: 6. Done."),
    ("What language is spoken in Spain?", "Answer: Spanish. Done."),
    ("What do bees make?", "Answer: honey. Done."),
    ("What is the largest ocean?", "Answer: the Pacific. Done."),
    ("How many hours are in a day?", "Answer: 24. Done."),
    ("What gas do plants take in?", "Answer: carbon dioxide. Done."),
    ("What is the first letter of the alphabet?", "Answer: A. Done."),
]


def _ids(rendered) -> list[int]:
    # transformers may return a BatchEncoding (dict-like) or a plain list from apply_chat_template.
    ids = rendered["input_ids"] if hasattr(rendered, "keys") else rendered
    return [int(t) for t in ids]


def render(tokenizer, question: str, answer: str) -> types.Datum:
    user = [{"role": "user", "content": question}]
    prompt = _ids(tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=True))
    full = _ids(tokenizer.apply_chat_template(user + [{"role": "assistant", "content": answer}], tokenize=True))
    assert full[: len(prompt)] == prompt, "the chat template must render the prompt as a prefix"
    assert len(full) > len(prompt)
    targets = full[1:]
    weights = [1.0 if i + 1 >= len(prompt) else 0.0 for i in range(len(targets))]
    return types.Datum(
        model_input=types.ModelInput.from_ints(full[:-1]),
        loss_fn_inputs={"target_tokens": targets, "weights": weights},
    )


def test_sft_on_smollm2_halves_the_loss_in_twenty_steps(sc):
    tc = sc.create_lora_training_client(base_model=SMOL, rank=RANK, seed=0).result()
    tokenizer_id = tc.get_info().model_data.tokenizer_id
    assert tokenizer_id and (Path(tokenizer_id) / "tokenizer.json").is_file(), tokenizer_id
    tokenizer = tc.get_tokenizer()
    assert tokenizer.decode(tokenizer.encode("Hello world"), skip_special_tokens=True).strip() == "Hello world"
    data = [render(tokenizer, q, a) for q, a in EXAMPLES]
    assert len(data) == 16

    losses = []
    for _ in range(STEPS):
        fb = tc.forward_backward(data, "cross_entropy")
        opt = tc.optim_step(types.AdamParams(learning_rate=LEARNING_RATE))
        losses.append(fb.result().metrics["loss:sum"])
        opt.result()
    print("SFT loss:sum per step:", [round(x, 3) for x in losses])
    assert losses[0] > 0
    assert losses[-1] <= 0.5 * losses[0], losses
