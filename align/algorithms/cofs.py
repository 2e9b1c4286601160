"""COFS-DPO (Qi et al., 2024, arXiv 2406.05534): a schedule over preference domains
(``algorithm.preference.domains``) wrapping a pair method (``align.algorithms.dpo.PairMethod``, with
either module strategy). Training runs over the domains in order; after each domain its fast module is
stored and, with ``cofs.combine``, the adapter served from then on is the best (on held-out rows of
every domain seen so far) linear combination ``lambda * previous + (1 - lambda) * this domain's
module``, taken on the low-rank product ``delta W = B A`` (never on A and B separately, which is not
linear in delta W; ``align.models.lora.combine_lora``). The combination is exact and stays a LoRA
adapter: the factors are concatenated along the rank, so the rank adds up. Without ``cofs.combine``
it is plain sequential training.

``DomainSchedule`` is an ``Algorithm`` that delegates to the method it wraps: the method trains, the
schedule switches the data, chooses and serves the combination, and evaluates every domain."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import ray

from align.algorithms.base import Algorithm, RunContext
from align.data.sampling import PromptSampler
from align.models.lora import combine_lora, truncate_lora
from align.store.checkpoint import atomic_dir, write_adapter_dir

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


class DomainSchedule(Algorithm):
    """A pair method trained over domains in order: data per domain, the current domain, the
    adapter served instead of the learner's (a combination), and the per-domain results."""

    def __init__(self, method):
        super().__init__(method.cfg)
        self.method, self.pref = method, method.pref
        method.generates = True  # every domain is evaluated on generations
        self.panels, self.adapter_modules = method.panels, method.adapter_modules
        self.domain = 0
        self.served: tuple[dict, dict] | None = None
        self.results: list[dict] = []

    uses_rewards = True

    def shares_learners(self) -> bool:  # keeps per-domain modules besides the trained one
        return False

    # ---------------------------------------------------------------- set-up
    def load_data(self, ctx: RunContext) -> None:
        """Every domain's data, checked before any actor starts."""
        pref, m = self.pref, self.method
        self.train = [m.train_data(ctx, d.train) for d in pref.domains]
        evals = [m.eval_data(ctx, d.eval) for d in pref.domains]
        for d, rows in zip(pref.domains, evals):
            if len(rows) <= pref.cofs.heldout:
                raise ValueError(
                    f"algorithm.preference.domains {d.name}: eval {d.eval!r} has {len(rows)} rows, "
                    f"not more than cofs.heldout={pref.cofs.heldout}"
                )
        self.heldout = [rows[: pref.cofs.heldout] for rows in evals]
        self.eval = [rows[pref.cofs.heldout : pref.cofs.heldout + self.cfg.data.eval_size] for rows in evals]
        ctx.train_rows, ctx.eval_rows = self.train[0], self.eval[0]
        m.warn_skipped()

    def learner_spec(self, ctx: RunContext, spec):
        return self.method.learner_spec(ctx, spec)

    def rollout_spec(self, ctx: RunContext, spec):
        spec = self.method.rollout_spec(ctx, spec)
        spec.lora_rank = self.cfg.model.lora.r * len(self.pref.domains)  # combinations add ranks up
        if not self.pref.online:
            longest = self.method.longest_pair(ctx, [r for rows in self.train for r in rows])
            spec.max_model_len = max(spec.max_model_len, longest + 8)
        return spec

    def rollout_kwargs(self, num_prompts: int) -> dict:
        return self.method.rollout_kwargs(num_prompts)

    def setup(self, ctx: RunContext) -> None:
        self.method.setup(ctx, precompute=False)  # each domain precomputes its reference on entering

    def progress(self, m: dict) -> str:
        return self.method.progress(m)

    # ---------------------------------------------------------------- a step
    def step(self, ctx: RunContext, step: int) -> dict[str, float]:
        self.enter(ctx, step)
        metrics = self.method.step(ctx, step)
        if step + 1 == self.end(self.domain):
            metrics.update(self.finish_domain(ctx, step + 1))
        return metrics

    # ---------------------------------------------------------------- adapters and state
    def train_adapter(self) -> str:
        return self.method.train_adapter()

    def served_adapter(self, ctx: RunContext) -> tuple[dict, dict]:
        return self.served if self.served is not None else self.method.served_adapter(ctx)

    def extra_adapters(self, ctx: RunContext) -> dict:
        # the learner's module(s) whenever step_N/adapter alone does not hold them
        if self.served is not None:
            return {name: ctx.learners.adapter(name) for name in self.adapter_modules}
        return self.method.extra_adapters(ctx)

    def finish(self, ctx: RunContext, summary: dict) -> dict:
        if self.results:
            from align.reporting.metrics import plot_domains

            plot_domains(ctx.run_dir / "domains.json", ctx.run_dir / "plots" / "domains.png")
        return self.method.finish(ctx, summary)

    def end(self, d: int) -> int:
        return sum(x.steps for x in self.pref.domains[: d + 1])

    def dir(self, ctx: RunContext, d: int) -> Path:
        return ctx.run_dir / "domains" / f"{d}_{self.pref.domains[d].name}"

    def _switch(self, ctx: RunContext, d: int) -> None:
        self.domain = d
        ctx.train_rows, ctx.eval_rows = self.train[d], self.eval[d]
        ctx.sampler = PromptSampler(len(ctx.train_rows), self.cfg.trainer.seed + d)
        self.method.ref_cache = {}  # the reference log-probs of another domain's pairs

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

    def score(self, ctx: RunContext, rows: list[dict]) -> float:
        """Mean greedy ``cofs.score`` reward of the served adapter on ``rows``."""
        from align.eval.loop import evaluate

        return evaluate(ctx.rollouts, ctx.rewards, rows, ctx.tokenizer, self.cfg)[self.pref.cofs.score]

    def evaluate(self, ctx: RunContext) -> dict[str, float]:
        from align.eval.loop import evaluate

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
        else:  # with two modules the fast one is served (and both start the next domain from it)
            self.served = fast if len(self.adapter_modules) > 1 else None
            lam = None
        served = self.served_adapter(ctx)
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
            **self.method.state_dict(),
            "domain": self.domain,
            "domain_results": self.results,
            "served_is_combination": self.served is not None,
        }

    def restore(self, ctx: RunContext, ckpt: dict) -> None:
        """The method's modules first, then the domain (its data, reference log-probs, served adapter)."""
        self.method.restore(ctx, ckpt)
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
