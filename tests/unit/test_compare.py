"""``align compare`` and the per-level plot, from hand-written metrics files."""

import json

import pytest

from align.reporting.metrics import compare_runs, plot_levels


def _run(path, values):
    path.mkdir()
    rows = [{"step": i + 1, "policy/entropy": v, "reward/correctness": 1 - v} for i, v in enumerate(values)]
    rows.append({"step": len(values), "eval/correctness": 0.5, "eval/correctness/level_1": 1.0})
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_compare_table_uses_last_quarter_and_final_eval(tmp_path):
    a = _run(tmp_path / "a", [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])  # last quarter: 0.3, 0.2
    b = _run(tmp_path / "b", [0.1, 0.1, 0.1, 0.1])
    text = compare_runs(
        [a, b], tmp_path / "c.png", labels=["A", "B"], metrics=["policy/entropy", "not/logged"]
    )
    table = json.loads((tmp_path / "c.json").read_text())
    assert table["A"]["policy/entropy"] == {"last": 0.2, "last_quarter_mean": pytest.approx(0.25)}
    assert table["B"]["final_eval"] == {"correctness": 0.5, "correctness/level_1": 1.0}
    assert "not/logged" not in text and (tmp_path / "c.png").stat().st_size > 0
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        compare_runs([tmp_path / "missing"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="--label given 1 times for 2 runs"):
        compare_runs([a, b], tmp_path / "x.png", labels=["A"])


def test_plot_levels_skips_metrics_without_levels(tmp_path):
    res = {"m1": {"correctness": 0.5, "correctness/level_1": 1.0, "correctness/level_2": 0.0}}
    assert plot_levels(res, tmp_path / "l.png").stat().st_size > 0
    assert plot_levels({"m": {"length": 3.0}}, tmp_path / "none.png") is None


def test_eval_table_tolerates_a_model_without_a_metric():
    from align.eval.checkpoints import table

    text = table(
        {
            "base": {"correctness": 0.5, "length_wrong": 3.0, "correctness/level_1": 0.5},
            "trained": {"correctness": 1.0, "correctness/level_1": 1.0},
        }
    )  # no wrong answers: no length_wrong
    row = next(line for line in text.splitlines() if line.startswith("trained") and "length_wrong" in line)
    assert row.split()[-2:] == ["nan", "nan"]
