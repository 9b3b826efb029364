"""config.compare_lmbdas: the same run at other lmbda values, trained first, printed beside it."""

import json

import pytest

from gkd_jax.config.defaults import base_config
from gkd_jax.evaluation import comparison


def fake_train(calls):
    def train(config, workdir):
        calls.append((config.gkd.lmbda, config.compare_lmbdas, workdir, config.steps))
        final = 0.5 + config.gkd.lmbda / 4  # any per-lmbda score, to see each lands in its row
        summary = {"metric": "accuracy", "steps": config.steps,
                   "scores": {"teacher": 0.9, "start": 0.5, "final": final}}  # fmt: skip
        with open(f"{workdir}/results.json", "w") as f:
            json.dump(summary, f)
        return summary

    return train


def test_the_run_then_its_comparisons(tmp_path, capsys):
    c = base_config()
    c.gkd.lmbda, c.compare_lmbdas, c.steps = 1.0, "0, 0.5", 7
    c.lock()
    calls = []
    for lmbda in (0.0, 0.5):
        (tmp_path / f"compare_lmbda{lmbda:g}").mkdir()
    summary = comparison.train_with_comparisons(c, str(tmp_path), fake_train(calls))
    assert calls == [
        (1.0, "0, 0.5", str(tmp_path), 7),
        (0.0, "", str(tmp_path / "compare_lmbda0"), 7),
        (0.5, "", str(tmp_path / "compare_lmbda0.5"), 7),
    ]
    assert summary["compared"] == {"0": 0.5, "0.5": 0.625}
    assert json.loads((tmp_path / "results.json").read_text())["compared"] == {
        "0": 0.5,
        "0.5": 0.625,
    }
    out = capsys.readouterr().out
    assert "| student after GKD λ=0 (supervised KD) | 0.5000 |" in out
    assert "| student after GKD λ=0.5 | 0.6250 |" in out
    assert "| student after GKD λ=1 (on-policy) | 0.7500 |" in out
    assert c.gkd.lmbda == 1.0 and c.compare_lmbdas == "0, 0.5"  # the run's own config


def test_no_comparisons_is_the_plain_run(tmp_path, capsys):
    c = base_config()
    calls = []
    summary = comparison.train_with_comparisons(c, str(tmp_path), fake_train(calls))
    assert len(calls) == 1 and "compared" not in summary
    assert "[compare]" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "objective,values,match",
    [("sft", "0", "objective"), ("gkd", "1.5", r"\[0, 1\]"), ("gkd", "zero", r"\[0, 1\]")],
)
def test_bad_comparisons_fail_before_training(tmp_path, objective, values, match):
    c = base_config()
    c.objective, c.compare_lmbdas = objective, values
    calls = []
    with pytest.raises(ValueError, match=match):
        comparison.train_with_comparisons(c, str(tmp_path), fake_train(calls))
    assert calls == []


def test_models_the_run_trained_are_the_comparisons_models(tmp_path):
    """A teacher / start made from its recipe in WORKDIR is reused, not trained again."""
    c = base_config()
    c.teacher.checkpoint, c.teacher.recipe = "", "configs/arith_sft.py:role=teacher"
    c.init.checkpoint = "builtin:arith/student_sft"
    c.init.recipe = "configs/arith_sft.py:role=student"
    variant = comparison.at_lmbda(c, 0.0, str(tmp_path))
    assert variant.teacher.checkpoint == str(tmp_path / "teacher" / "model")
    assert variant.init.checkpoint == "builtin:arith/student_sft"
    assert (variant.gkd.lmbda, variant.compare_lmbdas, c.teacher.checkpoint) == (0.0, "", "")


def test_real_runs_side_by_side(tmp_path, capsys):
    """configs/arith.py (the shipped models) cut to 2 steps, with its comparison, through the
    trainer: two real runs from the same start, one table."""
    from gkd_jax.config.loading import load_config_file
    from gkd_jax.training import trainer

    config = load_config_file("configs/arith.py")
    with config.unlocked():
        config.steps, config.batch_size, config.log_every = 2, 16, 1
        config.eval.num_examples, config.eval.batch_size = 32, 32
        config.export.hf = False
    assert config.compare_lmbdas == "0"  # the default command's comparison
    summary = comparison.train_with_comparisons(config, str(tmp_path), trainer.train_and_evaluate)
    kd = json.loads((tmp_path / "compare_lmbda0" / "results.json").read_text())
    assert summary["compared"] == {"0": kd["scores"]["final"]}
    assert kd["scores"]["start"] == summary["scores"]["start"]  # the same start model
    kd_rows = [json.loads(line) for line in open(tmp_path / "compare_lmbda0" / "metrics.jsonl")]
    assert [r["on_policy"] for r in kd_rows if "on_policy" in r] == [0.0, 0.0]
    rows = [line for line in capsys.readouterr().out.splitlines() if "| student after" in line]
    assert rows == [
        f"| student after GKD λ=0 (supervised KD) | {kd['scores']['final']:.4f} |",
        f"| student after GKD λ=1 (on-policy) | {summary['scores']['final']:.4f} |",
    ]
