"""Nelder-Mead with ask/tell control, for searching constraint thresholds within one run.

The authors' NM-PPO (rl4lms ``NelderMeadTrainer``) evaluates f(theta) by
continuing to train the same policy, so the optimiser must hand out one point at a time and wait:
``ask()`` returns the next point to evaluate (None when finished), ``tell(f)`` reports its value.
scipy's ``minimize(method="Nelder-Mead")`` only calls f itself, so it cannot drive a training loop;
this small version can. Reflect 1, expand 2, inside contraction 0.5 (toward the worst point),
shrink 0.5; with ``bounds`` every new point is projected into the box (so an out-of-range step is
evaluated, and memoised, as the clipped point it really is). It stops when std(f over the simplex) < tol, after ``max_evals`` evaluations, or once the simplex
is smaller than ``cache_tol`` (every further point would be a memo hit).

Memoisation as in the authors' code: a point within ``cache_tol`` of an evaluated one in every
coordinate reuses that value and is never handed out. The algorithm is a generator; its state is
the list of evaluations told so far, and ``load_state_dict`` replays them, so a resumed run takes
exactly the same path.
"""

from __future__ import annotations

from typing import Generator

import numpy as np


class _Budget(Exception):
    pass


class NelderMead:
    def __init__(
        self,
        simplex,
        tol: float = 0.01,
        max_evals: int = 50,
        cache_tol: float = 5e-3,
        alpha: float = 1.0,
        gamma: float = 2.0,
        rho: float = 0.5,
        sigma: float = 0.5,
        bounds=None,
    ):
        self.bounds = (
            None
            if bounds is None
            else (np.asarray(bounds[0], dtype=np.float64), np.asarray(bounds[1], dtype=np.float64))
        )
        self.initial = np.atleast_2d(np.asarray(simplex, dtype=np.float64))
        n = self.initial.shape[1]
        if self.initial.shape[0] != n + 1:
            raise ValueError(f"a simplex in {n} dimensions has {n + 1} points, got {self.initial.shape[0]}")
        self.tol, self.max_evals, self.cache_tol = tol, max_evals, cache_tol
        self.alpha, self.gamma, self.rho, self.sigma = alpha, gamma, rho, sigma
        self._reset()

    def _reset(self) -> None:
        self.history: list[tuple[list[float], float]] = []
        self.cache_hits = 0
        self.simplex: list[np.ndarray] = []
        self.values: list[float] = []
        self._gen = self._run()
        self._pending = self._advance(None)

    # -- public
    def ask(self) -> np.ndarray | None:
        return None if self._pending is None else self._pending.copy()

    def tell(self, value: float) -> None:
        if self._pending is None:
            raise RuntimeError("Nelder-Mead has finished; nothing was asked")
        self.history.append((self._pending.tolist(), float(value)))
        self._pending = self._advance(float(value))

    @property
    def done(self) -> bool:
        return self._pending is None

    def best(self) -> tuple[np.ndarray, float]:
        if not self.history:
            raise RuntimeError("no evaluation yet")
        x, f = min(self.history, key=lambda h: h[1])
        return np.asarray(x), f

    def state_dict(self) -> dict:
        return {"history": [[x, f] for x, f in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self._reset()
        for x, f in state["history"]:
            if self._pending is None or not np.allclose(self._pending, x, rtol=0, atol=1e-12):
                raise ValueError(
                    "the saved Nelder-Mead history does not replay on this simplex (config changed?)"
                )
            self.tell(f)

    # -- the algorithm
    def _advance(self, value):
        try:
            return self._gen.send(value) if value is not None else next(self._gen)
        except StopIteration:
            return None

    def _cached(self, x: np.ndarray) -> float | None:
        for hx, hf in self.history:
            if np.all(np.abs(np.asarray(hx) - x) < self.cache_tol):
                return hf
        return None

    def _project(self, x: np.ndarray) -> np.ndarray:
        return x if self.bounds is None else np.clip(x, *self.bounds)

    def _f(self, x: np.ndarray) -> Generator[np.ndarray, float, float]:
        hit = self._cached(x)
        if hit is not None:
            self.cache_hits += 1
            if self.cache_hits > 20 * self.max_evals:  # cycling between memoised points: stop
                raise _Budget
            return hit
        if len(self.history) >= self.max_evals:
            raise _Budget
        value = yield x
        return value

    def _run(self) -> Generator[np.ndarray, float, None]:
        try:
            pts = [self._project(x.copy()) for x in self.initial]
            vals = []
            for x in pts:
                vals.append((yield from self._f(x)))
            while True:
                order = np.argsort(vals, kind="stable")
                pts, vals = [pts[i] for i in order], [vals[i] for i in order]
                self.simplex, self.values = pts, vals
                if np.std(vals) < self.tol:
                    return
                # a simplex smaller than the memo's resolution can only hit the cache from here on
                if self.cache_tol > 0 and np.max(np.abs(np.array(pts) - pts[0])) < self.cache_tol:
                    return
                centroid = np.mean(pts[:-1], axis=0)
                xr = self._project(centroid + self.alpha * (centroid - pts[-1]))
                fr = yield from self._f(xr)
                if vals[0] <= fr < vals[-2]:
                    pts[-1], vals[-1] = xr, fr
                    continue
                if fr < vals[0]:
                    xe = self._project(centroid + self.gamma * (xr - centroid))
                    fe = yield from self._f(xe)
                    pts[-1], vals[-1] = (xe, fe) if fe < fr else (xr, fr)
                    continue
                xc = self._project(centroid + self.rho * (pts[-1] - centroid))
                fc = yield from self._f(xc)
                if fc < vals[-1]:
                    pts[-1], vals[-1] = xc, fc
                    continue
                for i in range(1, len(pts)):
                    pts[i] = pts[0] + self.sigma * (pts[i] - pts[0])
                    vals[i] = yield from self._f(pts[i])
        except _Budget:
            return
