"""Evaluation through the rollout workers (vLLM; greedy, or sampled with data.eval_temperature):
every reward objective, mean length and NoThinking rate, overall and per ``level`` when the eval data
has that column."""

from __future__ import annotations

import numpy as np

from align.models.tokenizer import END_THINK


def columns(rows: list[dict]) -> dict[str, list]:
    """The data columns of ``rows`` other than the prompt (what reward functions receive)."""
    keys = [k for k in rows[0] if k != "prompt" and not k.startswith("_")]
    return {k: [r.get(k) for r in rows] for k in keys}


def correct_from_raw(raw: np.ndarray) -> np.ndarray:
    """Correctness ``(N,)`` bool from a raw accuracy reward (APO's authors' ``trunc(reward)``); NaN is wrong."""
    raw = np.asarray(raw, dtype=np.float64)
    return np.nan_to_num(np.trunc(raw), nan=0.0) >= 1.0


def evaluate(
    rollouts, rewards, rows: list[dict], tokenizer, cfg, use_adapter: bool = True
) -> dict[str, float]:
    """Generation of every row, greedy unless ``data.eval_temperature`` > 0 (then
    ``data.eval_samples`` sampled completions per row, seeded by the row's index so every checkpoint
    sees the same random draws); per objective its mean, ``length``, ``length_wrong`` (mean length of
    the responses the accuracy reward ``algorithm.apo.accuracy`` calls wrong, when there are any) and
    ``nothink_rate``; overall and with a ``/level_N`` suffix per level."""
    temperature = cfg.data.eval_temperature
    n = cfg.data.eval_samples if temperature > 0 else 1
    prompts = [r["prompt"] for r in rows]
    groups = rollouts.generate(
        prompts,
        list(range(len(prompts))) if temperature > 0 else [0] * len(prompts),
        n=n,
        max_tokens=cfg.rollout.max_new_tokens,
        temperature=temperature,
        top_p=1.0,
        use_adapter=use_adapter,
    )
    samples = [s for g in groups for s in g[:n]]
    rows = [r for r in rows for _ in range(n)]
    prompts = [r["prompt"] for r in rows]
    scores = rewards.score(
        prompts,
        [s["text"] for s in samples],
        {**columns(rows), "completion_ids": [s["completion_ids"] for s in samples]},
    )
    end_id = tokenizer.convert_tokens_to_ids(END_THINK) if END_THINK in tokenizer.get_vocab() else None
    lengths = np.array([len(s["completion_ids"]) for s in samples], dtype=np.float64)
    nothink = np.array(
        [bool(s["completion_ids"]) and s["completion_ids"][0] == end_id for s in samples], dtype=np.float64
    )
    levels = np.array([r.get("level") for r in rows], dtype=object)
    out: dict[str, float] = {}
    apo = getattr(cfg.algorithm, "apo", None)  # the GRPO family's; other methods: the default name
    accuracy = apo.accuracy if apo is not None else "correctness"

    def add(suffix: str, sel: np.ndarray) -> None:
        for k, name in enumerate(scores.names):
            col = scores.scores[sel, k]
            if np.isfinite(col).any():
                out[f"{name}{suffix}"] = float(np.nanmean(col))
        out[f"length{suffix}"] = float(lengths[sel].mean())
        if accuracy in scores.names:
            wrong = sel & ~correct_from_raw(scores.scores[:, scores.names.index(accuracy)])
            if wrong.any():
                out[f"length_wrong{suffix}"] = float(lengths[wrong].mean())
        if end_id is not None:
            out[f"nothink_rate{suffix}"] = float(nothink[sel].mean())

    add("", np.ones(len(rows), dtype=bool))
    if all(lv is not None for lv in levels):
        for lv in sorted(set(levels)):
            add(f"/level_{lv}", levels == lv)
    return out


def format_eval(before: dict | None, after: dict) -> str:
    """A small before/after table of the overall (not per-level) eval metrics."""
    keys = [k for k in after if "/level_" not in k]
    lines = [f"{'eval':<24}{'before':>10}{'after':>10}"]
    for k in keys:
        b = f"{before[k]:>10.3f}" if before and k in before else f"{'-':>10}"
        lines.append(f"{k:<24}{b}{after[k]:>10.3f}")
    return "\n".join(lines)
