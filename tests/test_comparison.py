"""config.compare_lmbdas: the same run at other lmbda values, trained first, printed beside it."""

import json

import pytest

from gkd_jax import comparison
from gkd_jax.config_defaults import base_config


def fake_train(calls):
    def train(config, workdir):
        calls.append((config.gkd.lmbda, tuple(config.compare_lmbdas), workdir, config.steps))
        final = 0.5 + config.gkd.lmbda / 4  # any per-lmbda score, to see each lands in its row
        summary = {"metric": "accuracy", "steps": config.steps,
                   "scores": {"teacher": 0.9, "start": 0.5, "final": final}}  # fmt: skip
        with open(f"{workdir}/results.json", "w") as f:
            json.dump(summary, f)
        return summary

    return train


def test_comparisons_train_first_then_the_run(tmp_path, capsys):
    c = base_config()
    c.gkd.lmbda, c.compare_lmbdas, c.steps = 1.0, (0.0, 0.5), 7
    c.lock()
    calls = []
    for lmbda in (0.0, 0.5):
        (tmp_path / f"compare_lmbda{lmbda:g}").mkdir()
    summary = comparison.train_with_comparisons(c, str(tmp_path), fake_train(calls))
    assert calls == [
        (0.0, (), str(tmp_path / "compare_lmbda0"), 7),
        (0.5, (), str(tmp_path / "compare_lmbda0.5"), 7),
        (1.0, (0.0, 0.5), str(tmp_path), 7),
    ]
    assert summary["compared"] == {"0": 0.5, "0.5": 0.625}
    assert json.loads((tmp_path / "results.json").read_text())["compared"] == {
        "0": 0.5,
        "0.5": 0.625,
    }
    out = capsys.readouterr().out
    assert "| student after supervised KD (λ=0) | 0.5000 |" in out
    assert "| student after mixed (λ=0.5) | 0.6250 |" in out
    assert "| student after on-policy GKD (λ=1) | 0.7500 |" in out
    assert c.gkd.lmbda == 1.0 and tuple(c.compare_lmbdas) == (0.0, 0.5)  # the run's own config


def test_no_comparisons_is_the_plain_run(tmp_path, capsys):
    c = base_config()
    calls = []
    summary = comparison.train_with_comparisons(c, str(tmp_path), fake_train(calls))
    assert len(calls) == 1 and "compared" not in summary
    assert "[compare]" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "objective,values,match",
    [("sft", (0.0,), "objective"), ("gkd", (1.5,), r"\[0, 1\]"), ("gkd", ("0",), r"\[0, 1\]")],
)
def test_bad_comparisons_fail_before_training(tmp_path, objective, values, match):
    c = base_config()
    c.objective, c.compare_lmbdas = objective, values
    calls = []
    with pytest.raises(ValueError, match=match):
        comparison.train_with_comparisons(c, str(tmp_path), fake_train(calls))
    assert calls == []
