"""config.init.layers: a student made from some of its source's layers (models/prune.py).

The reference is transformers' own model with the other layers deleted from its ModuleList
(config.num_hidden_layers and layer_types cut to match): our pruned model must give its logits,
whether it was read from a Hugging Face directory (only the kept layers) or cut from our
checkpoint. Then the config checks, LoRA and remat on the pruned student, a short training run
whose export transformers loads and decodes as we do, and an exact resume.
"""

import copy
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gkd_jax.config.checks import validate_config  # noqa: E402
from gkd_jax.config.defaults import base_config  # noqa: E402
from gkd_jax.decoding.sampling import SamplingConfig, make_sampler  # noqa: E402
from gkd_jax.models import functional_lm, load_pretrained, lora, save_pretrained  # noqa: E402
from gkd_jax.models.hf_decoder import config_from_hf  # noqa: E402
from gkd_jax.models.prune import parse_layers  # noqa: E402
from gkd_jax.models.sources import obtain_model  # noqa: E402
from gkd_jax.parallel import sharding  # noqa: E402
from gkd_jax.planning import planner as plan  # noqa: E402
from gkd_jax.planning import target as plan_target  # noqa: E402
from gkd_jax.training import checkpoint, preemption, trainer  # noqa: E402

V = 99  # the arith character vocabulary, so the training run needs no tokenizer of its own
SHAPE = dict(
    vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    rms_norm_eps=1e-5,
)  # fmt: skip


def randomized(model, seed: int, gemma: bool = False):
    """Random weights everywhere, norms included (HF's 1 / 0 inits hide a swapped norm)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            z = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_((0.0 if gemma else 1.0) + 0.3 * z)
            elif "embed_tokens" in name:
                p.copy_((0.1 if gemma else 0.5) * z)
            else:
                p.copy_(z / np.sqrt(p.shape[1]))
    return model.eval()


def torch_without_layers(model, keep):
    """transformers' model of only `keep` (in that order): the independent reference."""
    m = copy.deepcopy(model)
    m.model.layers = torch.nn.ModuleList([m.model.layers[i] for i in keep])
    m.config.num_hidden_layers = len(keep)
    if getattr(m.config, "layer_types", None):
        m.config.layer_types = [m.config.layer_types[i] for i in keep]
    for j, layer in enumerate(m.model.layers):  # the KV cache is indexed by it (generate)
        layer.self_attn.layer_idx = j
    return m


def batch(seed=0, b=3, t=10):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, V, (b, t)).astype(np.int64)
    mask = np.ones((b, t), np.int64)
    mask[1, 6:] = 0  # right padding: HF numbers positions 0..t-1, as we do here
    return ids, mask


def assert_logits_match(ours_model, ref_model, tol=1e-4):
    ids, mask = batch()
    with torch.no_grad():
        ref = ref_model(
            torch.tensor(ids), attention_mask=torch.tensor(mask), use_cache=False
        ).logits.numpy()
    ours = np.asarray(ours_model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    valid = mask.astype(bool)
    np.testing.assert_allclose(ours[valid], ref[valid], atol=tol, rtol=0)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """(directory, torch model): a tiny random 4-layer Llama with an untied head, saved."""
    path = tmp_path_factory.mktemp("llama") / "hf"
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**SHAPE, tie_word_embeddings=False)
    model = randomized(transformers.LlamaForCausalLM(cfg), seed=1)
    model.config._attn_implementation = "eager"
    model.save_pretrained(str(path))
    return str(path), model


# ---------------------------------------------------------------------------- parity
def test_pruned_llama_logits_equal_transformers_without_those_layers(llama, tmp_path):
    path, ref = llama
    keep = (3, 0, 2)  # reordered too: layers are kept in the order given
    from_hf = load_pretrained(path, layers=keep)
    assert from_hf.cfg.num_layers == 3
    assert_logits_match(from_hf, torch_without_layers(ref, keep))
    # Our checkpoint of the same model, cut after loading (sources.obtain_model).
    checkpoint.save_model(str(tmp_path / "ours"), load_pretrained(path))
    spec = ml_collections.ConfigDict(dict(checkpoint=str(tmp_path / "ours"), recipe=""))
    from_ours = obtain_model(spec, str(tmp_path), "init", jnp.float32, layers=keep)
    assert from_ours.cfg == from_hf.cfg
    for a, b in zip(jax.tree.leaves(from_ours), jax.tree.leaves(from_hf), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    ("keep", "sliding_layers", "window"),
    [
        ((1, 2, 3), (False, True, False), 3),  # mixed: each kept layer's own flag
        ((2, 0), None, 3),  # every kept layer slides: None, as config_from_hf writes it
        ((3, 1), None, None),  # none slides: no window at all
    ],
)
def test_pruned_gemma2_keeps_each_layers_sliding_window(tmp_path, keep, sliding_layers, window):
    """Gemma 2 alternates sliding (even) and full (odd) layers; the window (3) is shorter than
    the sequence, so a wrong per-layer flag changes the logits."""
    torch.manual_seed(0)
    cfg = transformers.Gemma2Config(
        **SHAPE, head_dim=8, sliding_window=3, query_pre_attn_scalar=8,
        attn_logit_softcapping=5.0, final_logit_softcapping=10.0,
    )  # fmt: skip
    ref = randomized(transformers.Gemma2ForCausalLM(cfg), seed=2, gemma=True)
    ref.config._attn_implementation = "eager"
    ref.save_pretrained(str(tmp_path / "hf"))
    ours = load_pretrained(str(tmp_path / "hf"), layers=keep)
    assert (ours.cfg.sliding_layers, ours.cfg.sliding_window) == (sliding_layers, window)
    assert_logits_match(ours, torch_without_layers(ref, keep))
    # The export says the same per layer, and reads back to the very same config.
    save_pretrained(ours, str(tmp_path / "out"))
    with open(tmp_path / "out" / "config.json") as f:
        exported = json.load(f)
    assert exported["num_hidden_layers"] == len(keep)
    assert exported["layer_types"] == [ref.config.layer_types[i] for i in keep]
    assert config_from_hf(exported) == ours.cfg


# ---------------------------------------------------------------------------- config checks
def test_parse_layers_forms():
    assert parse_layers("0-2,5,3") == (0, 1, 2, 5, 3)
    assert parse_layers(" 4 - 5 , 1 ") == (4, 5, 1)
    assert parse_layers("") == parse_layers("  ") == parse_layers(()) == ()
    assert parse_layers([2, 0]) == (2, 0)
    with pytest.raises(ValueError, match="1.5 is not a layer index"):
        parse_layers([0, 1.5])


def t5_source(path) -> str:
    """A T5 directory's config.json (its weights are never read by the check)."""
    os.makedirs(path)
    transformers.T5Config(vocab_size=V, d_model=16, d_ff=32, num_layers=2).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize(
    ("layers", "source", "match"),
    [
        ("0,x", "llama", r"init.layers='0,x'.*'x' is not a layer index"),
        ("0,-1", "llama", r"'-1' is not a layer index \(an integer >= 0\)"),
        ("0,,2", "llama", r"init.layers='0,,2'.*empty entry"),
        (",", "llama", r"init.layers=','.*empty entry"),
        ("3-1", "llama", r"range '3-1' runs backwards"),
        ("0-2,1", "llama", r"init.layers='0-2,1'.*layer\(s\) \[1\] more than once"),
        ("0,4,7", "llama", r"layer\(s\) \[4, 7\] are out of range: the source has 4 layers"),
        ("0", "", r"init.layers='0'.*needs config.init.checkpoint"),
        ("0", "t5", r"init.layers='0'.*decoder-only source.*T5Config"),
        ("0", "missing", r"init.layers='0'.*cannot read config.init.checkpoint's config"),
    ],
)
def test_bad_layers_are_refused_naming_the_field(llama, tmp_path, layers, source, match):
    config = base_config()
    config.init.checkpoint = {
        "llama": llama[0],
        "": "",
        "t5": t5_source(tmp_path / "t5") if source == "t5" else "",
        "missing": str(tmp_path / "nothing_here"),
    }[source]
    config.init.layers = layers
    with pytest.raises(ValueError, match=match):
        validate_config(config)


def test_good_layers_pass_and_a_teacher_layer_list_is_refused(llama):
    config = base_config()
    config.init.checkpoint, config.init.layers = llama[0], "3,0-1"
    config.model.vocab_size = 7  # not the student's shape any more: the source's is
    config.gkd.teacher_top_k = 50  # <= the source's vocabulary (config.model's is 7)
    validate_config(config)
    config.teacher.layers = "0"
    with pytest.raises(ValueError, match=r"config.teacher.layers='0'.*config.init.layers"):
        validate_config(config)


# ---------------------------------------------------------------------------- training
def test_lora_and_remat_apply_to_the_pruned_student(llama, tmp_path):
    config = base_config()
    config.objective = "sft"
    config.init.checkpoint, config.init.layers = llama[0], "3,1"
    config.lora.rank, config.remat = 2, "full"
    mesh = sharding.make_mesh(-1, 1, 1)
    student, _ = trainer.load_models(config, str(tmp_path), mesh)
    assert student.cfg.num_layers == 2 and student.remat == "full"
    q = student.layers[0].self_attn.q_proj
    assert isinstance(q, lora.LoRALinear)
    source = load_pretrained(llama[0])
    np.testing.assert_array_equal(  # the base kernel is source layer 3's
        np.asarray(q.kernel[...]), np.asarray(source.layers[3].self_attn.q_proj.kernel[...])
    )


def tiny_run_config(path: str, **top) -> ml_collections.ConfigDict:
    """Supervised KD on arith from the tiny Llama teacher, the student its layers 3 and 0."""
    c = base_config()
    c.teacher.checkpoint = c.init.checkpoint = path
    c.init.layers = "3,0"
    c.gkd.lmbda = 0.0  # dataset completions: no sampler to compile
    c.steps, c.log_every, c.batch_size = 4, 1, 8
    c.data.train_examples, c.eval.num_examples, c.eval.batch_size = 64, 8, 8
    c.optim.warmup_steps = 0
    c.update(top)
    return c


@pytest.fixture(scope="module")
def straight(llama, tmp_path_factory):
    """One uninterrupted run (4 steps), with its Hugging Face export."""
    workdir = tmp_path_factory.mktemp("straight")
    trainer.train_and_evaluate(tiny_run_config(llama[0]), str(workdir))
    return workdir


def test_pruned_student_trains_and_its_export_generates_like_ours(straight):
    trained = checkpoint.load_model(str(straight / "model"))
    assert trained.cfg.num_layers == 2
    hf_dir = str(straight / "hf_model")
    with open(os.path.join(hf_dir, "config.json")) as f:
        assert json.load(f)["num_hidden_layers"] == 2
    exported = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    rng = np.random.default_rng(5)
    prompt = rng.integers(3, V, (3, 5)).astype(np.int32)
    n, eos = 8, 2  # both stop at eos and pad after it with 0
    gen = transformers.GenerationConfig(
        do_sample=False, max_new_tokens=n, eos_token_id=eos, pad_token_id=0
    )
    with torch.no_grad():
        ref = exported.eval().generate(
            input_ids=torch.from_numpy(prompt.astype(np.int64)),
            attention_mask=torch.ones(prompt.shape, dtype=torch.int64),
            generation_config=gen,
        )[:, 5:]
    params, fns = functional_lm(trained)
    sampler = make_sampler(
        fns.decoding, SamplingConfig(max_new_tokens=n, temperature=0, stop_ids=(eos,), pad_id=0)
    )
    out = sampler(params, jnp.asarray(prompt), jnp.ones(prompt.shape, bool), jax.random.key(0))
    assert ref.shape[1] == n and len(np.unique(ref.numpy())) > 3  # not one repeated token
    ours = np.asarray(out.tokens)
    np.testing.assert_array_equal(ours, ref.numpy())


def test_stop_then_resume_equals_the_uninterrupted_run(llama, straight, tmp_path):
    config = tiny_run_config(llama[0], stop_after_steps=2)
    config.export.hf = False
    with pytest.raises(preemption.Preempted):
        trainer.train_and_evaluate(config, str(tmp_path))
    config.stop_after_steps = 0
    # Resumed at step 2: the start is cut from the source again, then the checkpoint's trained
    # (pruned) parameters replace it.
    trainer.train_and_evaluate(config, str(tmp_path))
    a = checkpoint.load_model(str(straight / "model"))
    b = checkpoint.load_model(str(tmp_path / "model"))
    assert a.cfg == b.cfg
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bit for bit

    def losses(workdir):
        rows = (workdir / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"]) for r in map(json.loads, rows)]

    assert losses(tmp_path) == losses(straight) and len(losses(straight)) == 4


def test_the_planner_plans_the_pruned_student(llama):
    config = base_config()
    config.teacher.checkpoint = config.init.checkpoint = llama[0]
    config.init.layers = "3,0"
    planner = plan.Planner(config, plan_target.topology("cpu:8"), log=lambda s: None)
    assert planner.student.cfg.num_layers == 2 and planner.teacher.cfg.num_layers == 4
