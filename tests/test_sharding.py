"""The mesh builder and the partition rules: specs per parameter of every family we load, the
divisibility fallback, sharded initialization and loading (orbax and Hugging Face safetensors)."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from gkd_jax.config.checks import validate_config
from gkd_jax.config.defaults import base_config
from gkd_jax.models import DecoderConfig, build_decoder, functional_lm
from gkd_jax.models.hf import build_model, load_pretrained, save_pretrained
from gkd_jax.models.t5 import T5Config
from gkd_jax.parallel import sharding
from gkd_jax.training import checkpoint

# Every option that adds a parameter is on: a name no rule matches shows up here.
DECODER_ALL = DecoderConfig(
    32, 16, 2, 4, 2, 32, tie_embeddings=False, qkv_bias=True, o_bias=True, mlp_bias=True,
    qk_norm=True, post_norms=True,
)  # fmt: skip
T5_GATED = T5Config(32, 16, 4, 32, 2, 4, gated=True, tie_embeddings=False)
T5_PLAIN = T5Config(32, 16, 4, 32, 1, 4, gated=False, tie_embeddings=True)

COL, ROW = P("fsdp", "tensor"), P("tensor", "fsdp")
# The intended layout, written out per parameter name (independent of sharding.RULES' regexes).
DECODER_SPECS = {
    "embed_tokens/embedding": ROW,  # [V, D]: vocabulary over tensor
    "lm_head/kernel": COL,  # [D, V]
    "q_proj/kernel": COL, "k_proj/kernel": COL, "v_proj/kernel": COL,
    "q_proj/bias": P("tensor"), "k_proj/bias": P("tensor"), "v_proj/bias": P("tensor"),
    "o_proj/kernel": ROW, "o_proj/bias": P(),
    "gate_proj/kernel": COL, "up_proj/kernel": COL, "down_proj/kernel": ROW,
    "gate_proj/bias": P("tensor"), "up_proj/bias": P("tensor"), "down_proj/bias": P(),
    "norm/weight": P(), "input_layernorm/weight": P(), "post_attention_layernorm/weight": P(),
    "pre_feedforward_layernorm/weight": P(), "post_feedforward_layernorm/weight": P(),
    "q_norm/weight": P(), "k_norm/weight": P(),
}  # fmt: skip
T5_SPECS = {
    "shared/embedding": ROW,
    "lm_head/kernel": COL,
    "q/kernel": COL, "k/kernel": COL, "v/kernel": COL, "o/kernel": ROW,
    "relative_attention_bias/embedding": P(),
    "wi/kernel": COL, "wi_0/kernel": COL, "wi_1/kernel": COL, "wo/kernel": ROW,
    "layer_norm/weight": P(), "final_layer_norm/weight": P(),
}  # fmt: skip


def params_of(cfg):
    return functional_lm(build_model(cfg))[0]


def flat(tree):
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {sharding.path_string(p).removesuffix("/value"): x for p, x in leaves}


def expected_spec(path, table):
    hits = [spec for name, spec in table.items() if f"/{path}".endswith(f"/{name}")]
    assert len(hits) == 1, f"{path}: {len(hits)} entries of the expected table match"
    return hits[0]


# ---------------------------------------------------------------------------- the mesh
def test_make_mesh_axes_and_rest():
    mesh = sharding.make_mesh(data=-1, fsdp=2, tensor=2)
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dict(sharding.make_mesh(fsdp=-1, data=1).shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    assert dict(sharding.make_mesh(devices=jax.devices()[:1]).shape)["data"] == 1


@pytest.mark.parametrize(
    "axes,match",
    [
        (dict(data=3), r"config.mesh.data=3.*8"),
        (dict(data=-1, fsdp=3), r"config.mesh.fsdp=3.*divide the 8"),
        (dict(data=-1, fsdp=-1), r"at most one"),
        (dict(tensor=0), r"config.mesh.tensor=0"),
    ],
)
def test_bad_mesh_names_the_field(axes, match):
    with pytest.raises(ValueError, match=match):
        sharding.make_mesh(**axes)
    config = base_config()
    config.mesh.update(axes)
    with pytest.raises(ValueError, match=match):
        validate_config(config)


# ---------------------------------------------------------------------------- the rules
@pytest.mark.parametrize("cfg", [DECODER_ALL, T5_GATED, T5_PLAIN], ids=["decoder", "t5", "t5_v1"])
def test_every_parameter_has_a_rule(cfg):
    assert sharding.unmatched_paths(params_of(cfg)) == []
    unknown = {"value_head": {"kernel": np.zeros((4, 1))}, "step": np.zeros(())}
    assert sharding.unmatched_paths(unknown) == ["value_head/kernel"]  # scalars need no rule


@pytest.mark.parametrize(
    "cfg,table",
    [(DECODER_ALL, DECODER_SPECS), (T5_GATED, T5_SPECS), (T5_PLAIN, T5_SPECS)],
    ids=["decoder", "t5", "t5_v1"],
)
def test_specs_follow_the_table(cfg, table):
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    specs = flat(sharding.tree_specs(params_of(cfg), mesh))
    assert specs
    for path, spec in specs.items():
        assert spec == expected_spec(path, table), path


def test_indivisible_dim_stays_whole():
    mesh = sharding.make_mesh(data=1, fsdp=2, tensor=4)
    cfg = DecoderConfig(30, 16, 1, 2, 1, 32)  # vocab 30 does not divide over tensor=4
    specs = flat(sharding.tree_specs(params_of(cfg), mesh))
    assert specs["embed_tokens/embedding"] == P(None, "fsdp")
    assert specs["layers/0/mlp/up_proj/kernel"] == COL
    # k_proj's output is one head of 8: 8 divides over 4, the rule stands.
    assert specs["layers/0/self_attn/k_proj/kernel"] == COL


def test_optimizer_state_mirrors_its_parameter():
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    params = params_of(DECODER_ALL)
    opt = jax.eval_shape(optax.adamw(1e-3).init, params)
    specs = flat(sharding.tree_specs(opt, mesh))
    param_specs = flat(sharding.tree_specs(params, mesh))
    for name, spec in param_specs.items():
        assert specs[f"0/mu/{name}"] == spec and specs[f"0/nu/{name}"] == spec
    assert specs["0/count"] == P()


# ---------------------------------------------------------------------------- placement
def assert_placed(params, mesh):
    """Each array is laid out by its rule, and each device holds only its slice."""
    specs = sharding.tree_specs(params, mesh)
    specs = jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, P))
    for x, spec in zip(jax.tree.leaves(params), specs, strict=True):
        assert x.sharding.spec == spec
        split = [
            1 if axes is None else int(np.prod([mesh.shape[a] for a in np.atleast_1d(axes)]))
            for axes in tuple(spec) + (None,) * (x.ndim - len(spec))
        ]
        local = tuple(d // s for d, s in zip(x.shape, split, strict=True))
        assert all(s.data.shape == local for s in x.addressable_shards)


def test_shard_model_initializes_in_place_with_the_same_values():
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    cfg = DecoderConfig(32, 16, 1, 4, 2, 32)
    sharded = functional_lm(sharding.shard_model(lambda: build_decoder(cfg, seed=3), mesh))[0]
    assert_placed(sharded, mesh)
    assert flat(sharded)["embed_tokens/embedding"].addressable_shards[0].data.shape == (16, 8)
    reference = functional_lm(build_decoder(cfg, seed=3))[0]
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(reference), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("fmt", ["orbax", "hf"])
def test_loading_goes_straight_to_the_shardings(tmp_path, fmt):
    mesh = sharding.make_mesh(data=1, fsdp=4, tensor=2)
    model = build_decoder(DecoderConfig(32, 16, 1, 4, 2, 32, tie_embeddings=False), seed=5)
    if fmt == "orbax":
        checkpoint.save_model(str(tmp_path), model)
        loaded = checkpoint.load_model(str(tmp_path), mesh=mesh)
    else:
        save_pretrained(model, str(tmp_path))
        loaded = load_pretrained(str(tmp_path), mesh=mesh)
    params = nnx.state(loaded, nnx.Param)
    assert_placed(params, mesh)
    want = nnx.state(model, nnx.Param)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_adafactor_state_gets_valid_shardings():
    """Factored moments ([in], [out] of a kernel) have other shapes than their parameter: each
    still gets a spec that fits it."""
    from gkd_jax.training import optim

    config = base_config()
    config.optim.name = "adafactor"
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    params = sharding.put(params_of(DecoderConfig(32, 256, 1, 4, 2, 256)), mesh)
    state, _ = sharding.init_train_state(params, optim.make_optimizer(config), mesh)
    for x in jax.tree.leaves(state["opt_state"]):
        assert x.sharding.shard_shape(x.shape) == x.addressable_shards[0].data.shape


def test_train_checkpoint_restores_into_the_sharded_layout(tmp_path):
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    params = sharding.put(params_of(DecoderConfig(32, 16, 1, 4, 2, 32)), mesh)
    state, shardings = sharding.init_train_state(params, optax.adam(1e-3), mesh)
    with checkpoint.TrainCheckpoints(str(tmp_path), keep=1) as ckpts:
        ckpts.save(3, state, {})
    with checkpoint.TrainCheckpoints(str(tmp_path), keep=1) as ckpts:
        restored, _ = ckpts.restore_latest(state, max_step=10)
    leaves = jax.tree.leaves
    for a, b, s in zip(leaves(restored), leaves(state), leaves(shardings), strict=True):
        assert a.sharding == s
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
