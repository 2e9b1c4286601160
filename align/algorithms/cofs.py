"""COFS-DPO's schedule over preference domains (``algorithm.preference.domains``), wrapping any pair
method (``align.algorithms.dpo.PairMethod``): training runs over the domains in order; after each
domain its fast module is stored and, with ``cofs.combine``, the adapter served from then on is the
best (on held-out rows of every domain seen so far) linear combination ``lambda * previous +
(1 - lambda) * this domain's module`` (``align.algorithms.ofs.combine_lora``, exact on delta W)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import ray

from align.algorithms.base import RunContext
from align.algorithms.ofs import combine_lora, truncate_lora
from align.checkpoint import atomic_dir, write_adapter_dir
from align.sampling import PromptSampler

log = logging.getLogger("align.train")


def write_adapter_atomic(directory: Path, tensors: dict, config: dict) -> Path:
    with atomic_dir(directory) as tmp:
        write_adapter_dir(tmp, tensors, config)
    return directory


def read_adapter(directory: Path) -> tuple[dict, dict]:
    from safetensors.numpy import load_file

    return load_file(str(directory / "adapter_model.safetensors")), json.loads(
        (directory / "adapter_config.json").read_text()
    )


class Domains:
    """The domain schedule of one pair method: data per domain, the current domain, the adapter
    served instead of the learner's (a combination), and the per-domain results."""

    def __init__(self, method):
        self.method, self.cfg, self.pref = method, method.cfg, method.pref
        self.domain = 0
        self.served: tuple[dict, dict] | None = None
        self.results: list[dict] = []

    def load(self, ctx: RunContext) -> None:
        pref = self.pref
        self.train = [self.method.train_data(ctx, d.train) for d in pref.domains]
        evals = [self.method.eval_data(ctx, d.eval) for d in pref.domains]
        for d, rows in zip(pref.domains, evals):
            if len(rows) <= pref.cofs.heldout:
                raise ValueError(
                    f"algorithm.preference.domains {d.name}: eval {d.eval!r} has {len(rows)} rows, "
                    f"not more than cofs.heldout={pref.cofs.heldout}"
                )
        self.heldout = [rows[: pref.cofs.heldout] for rows in evals]
        self.eval = [rows[pref.cofs.heldout : pref.cofs.heldout + self.cfg.data.eval_size] for rows in evals]
        ctx.train_rows, ctx.eval_rows = self.train[0], self.eval[0]

    def end(self, d: int) -> int:
        return sum(x.steps for x in self.pref.domains[: d + 1])

    def dir(self, ctx: RunContext, d: int) -> Path:
        return ctx.run_dir / "domains" / f"{d}_{self.pref.domains[d].name}"

    def _switch(self, ctx: RunContext, d: int) -> None:
        self.domain = d
        ctx.train_rows, ctx.eval_rows = self.train[d], self.eval[d]
        ctx.sampler = PromptSampler(len(ctx.train_rows), self.cfg.trainer.seed + d)
        self.method.ref_cache = {}

    def enter(self, ctx: RunContext, step: int) -> None:
        """At a domain's first step: switch the data; the learner starts from the served adapter."""
        starts = [self.end(i - 1) if i else 0 for i in range(len(self.pref.domains))]
        if step not in starts:
            return
        d = starts.index(step)
        self._switch(ctx, d)
        if self.method.precomputes_reference():
            self.method.precompute_reference(ctx, ctx.train_rows, ctx.sampler, self.pref.domains[d].steps)
        if self.served is not None and d > 0:
            tensors, config = self.served
            if int(config["r"]) != self.cfg.model.lora.r:  # a combination: the learner's rank is fixed
                lora = self.cfg.model.lora
                tensors, config, err = truncate_lora(tensors, config, lora.r, lora.alpha)
                log.info(
                    "domain %s starts from the combination truncated to rank %d (relative error %.3g)",
                    self.pref.domains[d].name,
                    lora.r,
                    err,
                )
            for name in self.method.adapter_modules:
                ctx.learners.load_state(tensors, None, name)
            self.served = None
        log.info(
            "domain %d/%d: %s (%d steps)",
            d + 1,
            len(self.pref.domains),
            self.pref.domains[d].name,
            self.pref.domains[d].steps,
        )

    def after_step(self, ctx: RunContext, step: int) -> dict[str, float]:
        return self.finish_domain(ctx, step + 1) if step + 1 == self.end(self.domain) else {}

    def score(self, ctx: RunContext, rows: list[dict]) -> float:
        """Mean greedy ``cofs.score`` reward of the served adapter on ``rows``."""
        from align.evaluation_loop import evaluate

        return evaluate(ctx.rollouts, ctx.rewards, rows, ctx.tokenizer, self.cfg)[self.pref.cofs.score]

    def evaluate(self, ctx: RunContext) -> dict[str, float]:
        from align.evaluation_loop import evaluate

        return {
            f"{d.name}/{k}": v
            for d, rows in zip(self.pref.domains, self.eval)
            for k, v in evaluate(ctx.rollouts, ctx.rewards, rows, ctx.tokenizer, self.cfg).items()
            if "/level_" not in k
        }

    def finish_domain(self, ctx: RunContext, step: int) -> dict[str, float]:
        """Store this domain's fast module; with cofs.combine choose lambda for the combination with
        the previous served adapter on held-out rows of every domain so far; evaluate on every domain."""
        pref, d = self.pref, self.domain
        fast = ctx.learners.adapter(self.method.fast_adapter())
        write_adapter_atomic(self.dir(ctx, d) / "fast_adapter", *fast)
        metrics: dict[str, float] = {}
        grid_scores: dict[float, float] = {}
        if pref.cofs.combine and d > 0:
            previous = read_adapter(self.dir(ctx, d - 1) / "served_adapter")
            best = None
            for v, lam in enumerate(pref.cofs.grid):
                candidate = fast if lam == 0 else combine_lora([previous, fast], [lam, 1 - lam])
                ctx.rollouts.load_adapter(10_000 * (d + 1) + v, ray.put(candidate[0]), candidate[1])
                per_domain = [self.score(ctx, rows) for rows in self.heldout[: d + 1]]
                grid_scores[lam] = float(np.mean(per_domain))
                log.info(
                    "COFS domain %s: lambda %.2f -> held-out %s %.3f (%s)",
                    pref.domains[d].name,
                    lam,
                    pref.cofs.score,
                    grid_scores[lam],
                    ", ".join(f"{s:.3f}" for s in per_domain),
                )
                if best is None or grid_scores[lam] > grid_scores[best[0]]:
                    best = (lam, candidate)
            lam, self.served = best[0], best[1]
            metrics["cofs/lambda"] = lam
        else:
            self.served = fast if self.method.chase else None
            lam = None
        served = self.method.served_adapter(ctx)
        write_adapter_atomic(self.dir(ctx, d) / "served_adapter", *served)
        ctx.rollouts.load_adapter(10_000 * (d + 1) + 9_999, ray.put(served[0]), served[1])
        scores = {x.name: self.score(ctx, rows) for x, rows in zip(pref.domains, self.eval)}
        for name, value in scores.items():
            metrics[f"domain/{name}"] = value
        self.results.append(
            {
                "after": pref.domains[d].name,
                "step": step,
                "lambda": lam,
                "grid": {str(k): v for k, v in grid_scores.items()},
                "scores": scores,
            }
        )
        (ctx.run_dir / "domains.json").write_text(
            json.dumps(
                {
                    "score": pref.cofs.score,
                    "combine": pref.cofs.combine,
                    "ofs": pref.ofs.enabled,
                    "results": self.results,
                },
                indent=2,
            )
        )
        log.info(
            "after domain %s: %s", pref.domains[d].name, ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
        )
        return metrics

    def state_dict(self) -> dict:
        return {
            "domain": self.domain,
            "domain_results": self.results,
            "served_is_combination": self.served is not None,
        }

    def restore(self, ctx: RunContext, ckpt: dict) -> None:
        st = ckpt["state"]
        self._switch(ctx, st["domain"])
        self.results = st["domain_results"]
        step = st["step"]
        # at a domain's end the next step enters the next domain, which precomputes its own
        if self.method.precomputes_reference() and step != self.end(self.domain):
            self.method.precompute_reference(
                ctx, ctx.train_rows, ctx.sampler, self.pref.domains[self.domain].steps
            )
        self.served = (ckpt["adapter"], ckpt["adapter_config"]) if st.get("served_is_combination") else None
