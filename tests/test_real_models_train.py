"""GKD through `python -m gkd_jax.train` on the real pretrained models (marked `real`, run by
`.ci/run`): the teacher is the real model, the student its own layer-pruned copy
(`config.init.layers`), the data a few chat / prompt-completion records written here. A few
on-policy steps must stay finite in float32 and bfloat16, and the float32 run's Hugging Face
export, reloaded by transformers, must generate our greedy tokens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from real_models import ROOT, real_model_dir

from gkd_jax.decoding.sampling import SamplingConfig, make_sampler
from gkd_jax.models import functional_lm
from gkd_jax.training import checkpoint

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.real
# SmolLM2 (30 layers): six contiguous layers out, as the healing try. Gemma 3 (18
# layers, every 6th global): three sliding layers out, the global layers kept.
LAYERS = {"smollm2": "0-19,26-29", "gemma3": "0-6,10-17"}


def write_records(path: str, chat: bool) -> None:
    """Addition questions: ChatML conversations (SmolLM2 is an instruct model) or plain
    prompt-completion text (Gemma 3 270M is a base model, no chat template)."""
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for _ in range(24):
            a, b = (int(x) for x in rng.integers(10, 99, 2))
            q, r = f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
            record = (
                {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": r}]}
                if chat
                else {"prompt": f"Question: {q}\nAnswer:", "completion": f" {r}"}
            )
            f.write(json.dumps(record) + "\n")


def run(name: str, dtype: str, workdir: str) -> list[dict]:
    """`python -m gkd_jax.train --config=configs/chat.py` as a user types it, on one CPU device:
    in this process the 8 fake test devices share one host's memory, and Gemma 3's 262k x 640
    embedding, gathered and its gradient scattered whole on each, took the 24 GB machine down."""
    path = real_model_dir(name)
    records = os.path.join(workdir, "records.jsonl")
    write_records(records, chat=name == "smollm2")
    flags = {
        "dtype": dtype, "steps": 3, "batch_size": 8, "log_every": 1, "max_new_tokens": 8,
        "tokenizer": path, "init.checkpoint": path, "teacher.checkpoint": path,
        "init.layers": LAYERS[name], "data.train_file": records, "data.max_prompt_len": 40,
        "gkd.lmbda": 1.0,  # on-policy: the student samples every batch
        "eval.num_examples": 8, "eval.batch_size": 8,
        "optim.learning_rate": 1e-5, "optim.warmup_steps": 0,
        "checkpoint.every_steps": 0, "export.hf": dtype == "float32",
    }  # fmt: skip
    cmd = [sys.executable, "-m", "gkd_jax.train", "--config=configs/chat.py"]
    cmd += [f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in flags.items()]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-4000:]
    print(done.stdout[-3000:])
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_gkd_steps_finite_and_export_generates_like_ours(name, dtype, tmp_path):
    rows = run(name, dtype, str(tmp_path))
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert np.isfinite(r["loss"]) and r["loss"] > 0, r
        assert np.isfinite(r["grad_norm"]) and r["grad_norm"] > 0, r
    assert rows[-1]["skipped_steps"] == 0
    if dtype != "float32":
        return
    trained = checkpoint.load_model(str(tmp_path / "model"))
    hf_dir = str(tmp_path / "hf_model")
    with open(os.path.join(hf_dir, "config.json")) as f:
        exported_cfg = json.load(f)
    assert exported_cfg["num_hidden_layers"] == trained.cfg.num_layers < 30
    exported = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    prompt = np.asarray([tok("The river rises in the hills above")["input_ids"]])
    n = 16
    with torch.no_grad():
        ref = exported.eval().generate(
            input_ids=torch.from_numpy(prompt),
            attention_mask=torch.ones(prompt.shape, dtype=torch.int64),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
        )[:, prompt.shape[1] :]
    params, fns = functional_lm(trained)
    sampler = make_sampler(fns.decoding, SamplingConfig(n, temperature=0.0))
    out = sampler(
        params, jnp.asarray(prompt, jnp.int32), jnp.ones(prompt.shape, bool), jax.random.key(0)
    )
    np.testing.assert_array_equal(np.asarray(out.tokens), ref.numpy())
