"""Every config field is checked at start-up: a bad value fails naming the field, the value and
the allowed range. The completeness test fails when a field is added without a check here."""

import json

import pytest

from gkd_jax.config.checks import validate_config
from gkd_jax.config.defaults import base_config

BAD = {
    "task": "nope",
    "objective": "distill",
    "dtype": "float16",
    "param_dtype": "float16",
    "teacher_param_dtype": "int8",
    "remat": "sometimes",
    "sampler_hbm_percent": 101,
    "seed": -1,
    "steps": 0,
    "batch_size": 12,  # not divisible by 8 devices
    "grad_accum": 0,
    "log_every": 0,
    "max_new_tokens": 0,
    "sft_reduction": "mean",
    "max_nonfinite_steps": 0,
    "stop_after_steps": -1,
    "compare_lmbdas": "0,1.5",
    "checkpoint.every_steps": -5,
    "checkpoint.keep": 0,
    "log.wandb_project": "team/project",
    "data.train_examples": 0,
    "data.eval_seed": 1.5,
    "data.train_seed": -2,
    "data.max_prompt_len": 0,
    "data.strict": "yes",
    "data.prompt_overflow": "truncate_right",
    "data.source": "s3",
    "eval.num_examples": 0,
    "eval.batch_size": 12,
    "eval.every_steps": -1,
    "eval.decoding": "nucleus",
    "eval.beam_size": 0,
    "eval.length_penalty": float("inf"),
    "eval.length_penalty_form": "gnmt",
    "eval.early_stopping": "always",
    "eval.temperature": 0.0,
    "eval.divergence_to_teacher": "sampled_rkl",
    "eval.teacher_forced": "sometimes",
    "export.hf": 1,
    "export.dtype": "int8",
    "gkd.lmbda": 1.5,
    "gkd.lmbda_mode": "row",
    "gkd.lmbda_schedule": "cosine",
    "gkd.beta": -0.1,
    "gkd.divergence": "kl",
    "gkd.seq_kd": "no",
    "gkd.reduction": "mean",
    "gkd.teacher_temperature": 0.0,
    "gkd.loss_temperature": -1.0,
    "gkd.loss_impl": "sharded",
    "gkd.loss_chunk": -1,
    "gkd.teacher_top_k": -1,
    "gkd.teacher_cache": "/no/such/teacher/cache",
    "mesh.data": 3,  # 3 x 1 x 1 is not the 8 devices
    "mesh.fsdp": 0,
    "mesh.tensor": 1.5,
    "sampling.temperature": 0.0,
    "sampling.top_k": 2.5,
    "sampling.top_p": 0.0,
    "optim.learning_rate": 0.0,
    "optim.warmup_steps": -1,
    "optim.final_lr_fraction": 2.0,
    "optim.weight_decay": -0.1,
    "optim.b1": 1.0,
    "optim.b2": -0.5,
    "optim.grad_clip": -1.0,
    "optim.name": "sgd",
    "optim.schedule": "rsqrt",
    "optim.cooldown_steps": 10_000,  # more than the 200 steps
    "dropout_rate": 1.0,
    "model.vocab_size": 0,
    "model.hidden_size": 0,
    "model.num_layers": 0,
    "model.num_heads": 0,
    "model.num_kv_heads": 3,  # does not divide 4 heads
    "model.intermediate_size": -1,
    "model.head_dim": 0,
    "model.rope_theta": 0.0,
    "model.rms_norm_eps": 0.0,
    "model.tie_embeddings": "true",
    "model.qkv_bias": 0,
    "teacher.model.vocab_size": 128,  # differs from the student's
    "teacher.model.hidden_size": 0,
    "teacher.model.num_layers": -1,
    "teacher.model.num_heads": 0,
    "teacher.model.num_kv_heads": 0,
    "teacher.model.intermediate_size": 0,
    "teacher.model.head_dim": -2,
    "teacher.model.rope_theta": -1.0,
    "teacher.model.rms_norm_eps": -1.0,
    "teacher.model.tie_embeddings": None,
    "teacher.model.qkv_bias": "no",
    "rl.alpha": 1.5,
    "rl.reward": "no_such_reward",
    "rl.num_samples": 0,
    "rl.baseline": "mean",
    "rl.normalize_advantages": "yes",
    "rl.clip_ratio": 1.0,
    "rl.gamma": 1.5,
    "rl.kl_to_start": "always",
    "lora.rank": -1,
    "lora.alpha": 0.0,
    "lora.targets": "(q_proj",  # not a regex
    "init.layers": "0,x",  # not a layer index
    "teacher.layers": "0-1",  # a layer list makes the student (init.layers)
    # Cross-tokenizer fields (tests/test_cross_tokenizer_config.py checks the combinations)
    "teacher.tokenizer": "some/tokenizer",  # without gkd.cross_tokenizer
    "init.tokenizer": "some/tokenizer",  # the student's is config.tokenizer
    "gkd.cross_tokenizer": "uld",
    "gkd.uld_weight": -1.0,
    "gkd.teacher_max_new_tokens": -1,
    "data.teacher_max_prompt_len": -1,
}
# Free-form strings, checked where they are used (a missing file or model names itself there).
FREE = {
    "tokenizer", "init.checkpoint", "init.recipe", "teacher.checkpoint", "teacher.recipe",
    "data.train_file", "data.eval_file", "data.train_split", "data.eval_split",
    "data.dataset", "data.data_dir",
}  # fmt: skip


def leaves(config, prefix=""):
    for key, value in config.items():
        if hasattr(value, "items"):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield prefix + key


def test_every_field_has_a_bad_value_case():
    assert set(leaves(base_config())) - FREE - set(BAD) == set()


def test_the_defaults_pass():
    validate_config(base_config())


@pytest.mark.parametrize("field", sorted(BAD))
def test_bad_value_names_the_field(field):
    config = base_config()
    *parents, leaf = field.split(".")
    node = config
    for part in parents:
        node = node[part]
    try:
        node[leaf] = BAD[field]
    except TypeError as e:  # a type-safe ConfigDict field refuses the value itself, flags too
        assert f"'{leaf}'" in str(e)
        return
    with pytest.raises(ValueError, match=f"config.{field}="):
        validate_config(config)


def fake_cache(directory, k=8):
    (directory / "manifest.json").write_text(json.dumps({"format": 1, "k": k}))
    return str(directory)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        (dict(gkd=dict(teacher_top_k=100)), r"teacher_top_k=100.*exceeds.*vocab_size=99"),
        (dict(objective="sft", gkd=dict(teacher_top_k=8)), r"teacher_top_k=8.*objective='gkd'"),
        (dict(gkd=dict(teacher_top_k=8, loss_impl="fused")), r"loss_impl='fused'.*'full'"),
        (
            dict(gkd=dict(teacher_top_k=8, divergence="sampled_rkl")),
            r"divergence='sampled_rkl'.*use divergence 'rkl'",
        ),
        (dict(gkd=dict(teacher_cache=None)), r"teacher_cache=None.*directory"),
        (dict(gkd=dict(lmbda=0.0, teacher_cache="CACHE")), r"teacher_top_k=0.*cache's K"),
        (
            dict(gkd=dict(lmbda=0.0, teacher_top_k=4, teacher_cache="CACHE")),
            r"teacher_top_k=4.*cache's K=8.*teacher_top_k=8",
        ),
        (dict(gkd=dict(teacher_top_k=8, teacher_cache="CACHE")), r"gkd.lmbda=1.0.*must be 0"),
        (
            dict(
                gkd=dict(lmbda=0.0, lmbda_schedule="imitkd", teacher_top_k=8, teacher_cache="CACHE")
            ),
            r"gkd.lmbda=0.0.*lmbda_schedule='constant'",
        ),
        (
            dict(gkd=dict(lmbda=0.0, teacher_top_k=8, teacher_cache="CACHE"), compare_lmbdas="1"),
            r"compare_lmbdas='1'.*must be ''",
        ),
    ],
)
def test_sparse_teacher_checks_name_the_fix(tmp_path, fields, match):
    config = base_config()
    gkd = fields.pop("gkd", {})
    if gkd.get("teacher_cache") == "CACHE":
        gkd["teacher_cache"] = fake_cache(tmp_path)
    config.update(fields)
    config.gkd.update(gkd)
    with pytest.raises(ValueError, match=match):
        validate_config(config)


def test_sparse_teacher_with_a_cache_passes(tmp_path):
    config = base_config()
    config.compare_lmbdas = ""
    config.gkd.update(lmbda=0.0, teacher_top_k=8, teacher_cache=fake_cache(tmp_path))
    validate_config(config)
    config.gkd.teacher_cache = ""
    config.gkd.lmbda = 1.0  # a live top-K teacher: any lmbda
    validate_config(config)


def test_divergence_to_teacher_needs_the_live_teacher(tmp_path):
    config = base_config()
    config.eval.divergence_to_teacher = "rkl"
    validate_config(config)
    config.objective = "sft"
    with pytest.raises(ValueError, match=r"eval.divergence_to_teacher='rkl'.*live teacher"):
        validate_config(config)
    config.objective = "gkd"
    config.compare_lmbdas = ""
    config.gkd.update(lmbda=0.0, teacher_top_k=8, teacher_cache=fake_cache(tmp_path))
    with pytest.raises(ValueError, match=r"eval.divergence_to_teacher='rkl'.*live teacher"):
        validate_config(config)
