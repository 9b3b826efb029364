"""The one `:arg` parser (gkd_jax/config/arg.py) and the configs that use it: configs/arith_sft.py
(the teacher and SFT-student recipes, one file with `role=`) builds exactly the configs the two
files it replaced built, so the shipped models' commands still make the same models."""

import os

import pytest

from gkd_jax.config.arg import (
    Option,
    choice,
    directory,
    flag,
    number,
    parse_arg,
    parse_known_arg,
    plus_list,
    positive_int_or_unlimited,
)
from gkd_jax.config.defaults import (
    ARITH_STUDENT,
    ARITH_TEACHER,
    base_config,
    model_config,
    shrink_for_smoke,
)
from gkd_jax.config.loading import load_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS = {
    "n": Option(positive_int_or_unlimited, 7, values="N|unlimited"),
    "seeds": plus_list(int, default=(0,)),
    "parts": plus_list(default=("a", "b"), allowed=("a", "b", "c")),
    "stage": choice("gkd", "sft_student", default="gkd", aliases={"sft": "sft_student"}),
    "lmbda": number(1.0),
    "data": directory(),
    "smoke": flag(),
}


def test_defaults_values_and_flags():
    assert parse_arg("", OPTIONS, what="t") == {
        "n": 7, "seeds": (0,), "parts": ("a", "b"), "stage": "gkd", "lmbda": 1.0, "data": "",
        "smoke": False,
    }  # fmt: skip
    opts = parse_arg(" n=unlimited, seeds=2+0,parts=c,stage=sft,lmbda=0.5,data=~/d,smoke", OPTIONS,
                     what="t")  # fmt: skip
    assert opts == {
        "n": None, "seeds": (2, 0), "parts": ("c",), "stage": "sft_student", "lmbda": 0.5,
        "data": os.path.expanduser("~/d"), "smoke": True,
    }  # fmt: skip
    assert parse_arg("n=12", OPTIONS, what="t")["n"] == 12


@pytest.mark.parametrize(
    "arg, match",
    [
        ("n=0", r"t arg n='0': use N \(an integer > 0\) or unlimited"),
        ("n=", "t arg n=''"),
        ("seeds=1+x", "t arg seeds='1\\+x'"),
        ("parts=a+d", r"t arg parts='a\+d': \['d'\] not in \['a', 'b', 'c'\]"),
        ("stage=rl", r"t arg stage='rl': must be one of \['gkd', 'sft_student', 'sft'\]"),
        ("lmbda=high", "t arg lmbda='high'"),
        ("lr=1", r"t arg part 'lr=1': unknown key 'lr'; it takes n=N\|unlimited, seeds=A\+B"),
        ("tiny", r"t arg part 'tiny': unknown; .*, smoke \(a comma list\)"),
        ("smoke=1", "unknown key 'smoke'"),
    ],
)
def test_bad_parts_name_themselves(arg, match):
    with pytest.raises(ValueError, match=match):
        parse_arg(arg, OPTIONS, what="t")


def test_positional_known_and_required():
    options = {"student": choice("small", "base"), "smoke": flag()}
    assert parse_arg("base,smoke", options, what="t", positional="student")["student"] == "base"
    with pytest.raises(ValueError, match=r"t arg part 'tiny': must be one of"):
        parse_arg("tiny", options, what="t", positional="student")
    opts, rest = parse_known_arg("student=base,models=/m,x", options, what="t")
    assert opts["student"] == "base" and rest == ["models=/m", "x"]
    with pytest.raises(ValueError, match="role= is required"):
        parse_arg("", {"role": choice("a", "b", required=True)}, what="t")


def old_arith_sft(role: str, n: int | None, smoke: bool):
    """configs/arith_teacher.py and configs/arith_student.py as they were (d1dd5ea): the shipped
    builtin:arith/{teacher,student_sft} and n2000/ models were made by these."""
    c = base_config()
    if n is not None:
        c.data.train_examples, c.data.train_seed = n, 0
    c.objective = "sft"
    c.model = model_config(**(ARITH_TEACHER if role == "teacher" else ARITH_STUDENT))
    c.steps = 1500
    c.batch_size = 64
    c.log_every = 50
    c.optim.learning_rate = 2e-3 if role == "teacher" else 3e-3
    c.optim.warmup_steps = 100 if role == "teacher" else 50
    c.optim.weight_decay = 0.01
    if smoke:
        shrink_for_smoke(c)
    return c


@pytest.mark.parametrize("role", ["teacher", "student"])
@pytest.mark.parametrize("n", [None, 2000, 250])
@pytest.mark.parametrize("smoke", [False, True])
def test_arith_sft_is_the_old_recipes_field_by_field(role, n, smoke):
    arg = f"role={role}" + (f",n={n}" if n else "") + (",smoke" if smoke else "")
    new = load_config_file(os.path.join(REPO, "configs", f"arith_sft.py:{arg}")).to_dict()
    assert new == old_arith_sft(role, n, smoke).to_dict()


def test_shipped_models_commands():
    """The commands of gkd_jax/assets/arith/README.md, and configs/arith.py's recipes for them."""
    for n, name in [(None, ""), (2000, "n2000/")]:
        for role, model in [("teacher", "teacher"), ("student", "student_sft")]:
            tail = f",n={n}" if n else ""
            c = load_config_file(os.path.join(REPO, "configs", f"arith_sft.py:role={role}{tail}"))
            assert c.model.hidden_size == (128 if role == "teacher" else 48)
            assert (c.data.train_examples, c.data.train_seed) == ((n, 0) if n else (20_000, -1))
            arith = load_config_file(
                os.path.join(REPO, "configs", f"arith.py:n={n or 'unlimited'}")
            )
            source = arith.teacher if role == "teacher" else arith.init
            assert source.checkpoint == f"builtin:arith/{name}{model}"
            assert source.recipe.endswith(f"configs/arith_sft.py:role={role}{tail}")
    with pytest.raises(ValueError, match="role= is required"):
        load_config_file(os.path.join(REPO, "configs", "arith_sft.py:n=2000"))
