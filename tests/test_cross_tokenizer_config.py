"""Start-up checks of a cross-tokenizer run (teacher.tokenizer, gkd.cross_tokenizer and the
fields beside them, config/checks.py): what passes, and that each refusal names the field and
the fix. The single bad values are in tests/test_config_checks.py's BAD table."""

from __future__ import annotations

import json

import pytest

from gkd_jax.config.checks import validate_config
from gkd_jax.config.defaults import base_config, model_source
from gkd_jax.models.hf_t5 import config_to_hf
from gkd_jax.models.t5 import T5Config


def cross(objective: str = "matched_jsd", **gkd):
    """The arith base config as a cross-tokenizer run (the tokenizer dir is not read here)."""
    c = base_config()
    c.teacher.tokenizer = "/some/teacher/tokenizer"
    c.teacher.model.vocab_size = 262  # a teacher's own vocabulary
    c.gkd.cross_tokenizer = objective
    if objective == "chunk_rkl":
        c.gkd.divergence = "sampled_rkl"
        c.compare_lmbdas = ""  # a policy-gradient run compares no lmbdas
    c.gkd.update(gkd)
    return c


@pytest.mark.parametrize("objective", ["matched_jsd", "hybrid_uld", "chunk_rkl"])
def test_cross_tokenizer_runs_pass(objective):
    validate_config(cross(objective))
    validate_config(cross(objective, teacher_max_new_tokens=300, uld_weight=0.0))


@pytest.mark.parametrize("divergence", ["jsd", "fkl", "rkl"])
def test_matched_objectives_take_the_jsd_family(divergence):
    validate_config(cross("matched_jsd", divergence=divergence))
    validate_config(cross("hybrid_uld", divergence=divergence, uld_weight=0.5))


def test_a_replaced_teacher_section_keeps_the_field():
    """configs/chat.py replaces c.teacher: the field must still be there to be set."""
    c = base_config()
    c.teacher = model_source("Qwen/Qwen2-1.5B-Instruct")
    assert c.teacher.tokenizer == "" and c.init.tokenizer == ""


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (lambda c: c.gkd.update(divergence="jsd"), r"gkd.divergence='jsd'.*'sampled_rkl'.*lmbda=1"),
        (lambda c: c.gkd.update(lmbda=0.5), r"gkd.lmbda=0.5.*must be 1"),
        (lambda c: c.sampling.update(temperature=0.7), r"sampling.temperature=0.7"),
        (lambda c: c.gkd.update(loss_impl="chunked"), r"gkd.loss_impl='chunked'"),
    ],
)
def test_chunk_rkl_is_a_policy_gradient_run(config, match):
    c = cross("chunk_rkl")
    config(c)
    with pytest.raises(ValueError, match=match):
        validate_config(c)


@pytest.mark.parametrize(
    ("objective", "fields", "match"),
    [
        ("matched_jsd", dict(divergence="sampled_rkl"), r"divergence='sampled_rkl'.*'chunk_rkl'"),
        ("hybrid_uld", dict(divergence="tv"), r"gkd.divergence='tv'.*\['jsd', 'fkl', 'rkl'\]"),
        ("matched_jsd", dict(teacher_top_k=8), r"gkd.teacher_top_k=8.*must be 0"),
        ("matched_jsd", dict(seq_kd=True), r"gkd.seq_kd=True.*must be False"),
        ("hybrid_uld", dict(loss_impl="fused"), r"gkd.loss_impl='fused'.*'full' or 'auto'"),
        ("hybrid_uld", dict(uld_weight=float("nan")), r"gkd.uld_weight=nan.*finite"),
        ("chunk_rkl", dict(teacher_max_new_tokens=-2), r"teacher_max_new_tokens=-2.*integer"),
    ],
)
def test_refusals_name_the_field_and_the_fix(objective, fields, match):
    with pytest.raises(ValueError, match=match):
        validate_config(cross(objective, **fields))


def test_cross_tokenizer_needs_a_teacher_tokenizer_and_gkd():
    c = cross()
    c.teacher.tokenizer = ""
    c.teacher.model.vocab_size = 99  # else the shared-vocabulary check speaks first
    with pytest.raises(ValueError, match=r"cross_tokenizer='matched_jsd'.*teacher.tokenizer"):
        validate_config(c)
    c = cross()
    c.objective = "sft"
    with pytest.raises(ValueError, match=r"cross_tokenizer='matched_jsd'.*objective='gkd'"):
        validate_config(c)


def test_teacher_tokenizer_alone_is_refused_and_the_vocab_check_stays():
    c = base_config()
    c.teacher.tokenizer = "/some/teacher/tokenizer"
    with pytest.raises(ValueError, match=r"teacher.tokenizer=.*set gkd.cross_tokenizer"):
        validate_config(c)
    c = base_config()
    c.teacher.model.vocab_size = 262  # one shared vocabulary without a teacher tokenizer
    with pytest.raises(ValueError, match=r"teacher.model.vocab_size=262.*share one vocabulary"):
        validate_config(c)


def test_cache_and_teacher_divergence_are_refused(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 1, "k": 8}))
    c = cross(lmbda=0.0, teacher_top_k=0, teacher_cache=str(tmp_path))
    with pytest.raises(ValueError, match=r"gkd.teacher_cache=.*must be ''.*across tokenizers"):
        validate_config(c)
    c = cross()
    c.eval.divergence_to_teacher = "rkl"
    with pytest.raises(ValueError, match=r"eval.divergence_to_teacher='rkl'.*must be ''"):
        validate_config(c)


@pytest.mark.parametrize("field", ["teacher", "init"])
def test_encoder_decoder_models_are_refused(tmp_path, field):
    t5 = T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)
    (tmp_path / "config.json").write_text(json.dumps(config_to_hf(t5)))
    c = cross()
    c[field].checkpoint = str(tmp_path)
    with pytest.raises(ValueError, match=rf"config.{field}.checkpoint=.*encoder-decoder.*not impl"):
        validate_config(c)


def test_the_trainer_refuses_a_cross_tokenizer_run_until_the_step_uses_it(tmp_path):
    """A config that passes the checks must not train as if gkd.cross_tokenizer were off."""
    from gkd_jax.training import trainer

    config = base_config()
    with config.unlocked():
        config.task = "arith"
        config.teacher.tokenizer = str(tmp_path)
        config.gkd.cross_tokenizer = "matched_jsd"
    with pytest.raises(ValueError, match="does not use them yet"):
        trainer.train_and_evaluate(config, str(tmp_path / "run"))
