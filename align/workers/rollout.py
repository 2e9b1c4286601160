"""RolloutWorker: one vLLM engine, started once, serving adapter versions.

The learners send only LoRA tensors. Two ways to serve them (``rollout.lora_mode``):

- ``adapter``: the engine runs with LoRA enabled; the worker writes each version as a peft adapter
  folder in its own temporary directory (so workers need no shared filesystem) and serves it under
  a new ``LoRARequest`` id (vLLM caches adapters by id). The right choice on GPU.
- ``merged`` (CPU): the engine runs without LoRA and each version is merged into its weights
  (``align.workers.merged``): vLLM-CPU's LoRA kernels ran 4x slower than the engine without them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from align.store.checkpoint import write_adapter_dir
from align.workers.spec import Spec

log = logging.getLogger(__name__)
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # ranks vLLM accepts for max_lora_rank


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_lora_mode(mode: str, device: str) -> str:
    """``auto``: ``merged`` on CPU (vLLM-CPU's LoRA kernels are slow), ``adapter`` on GPU."""
    if mode != "auto":
        return mode
    return "merged" if resolve_device(device) == "cpu" else "adapter"


def cpu_preload_env() -> dict[str, str]:
    """``LD_PRELOAD`` of PyTorch's own libgomp for a process that will run a vLLM-CPU engine in-process.

    vLLM-CPU binds its OpenMP threads to cores and, for that, preloads this libgomp, but only into
    the engine processes it spawns itself (vllm/platforms/cpu.py, vllm issue 27369); an engine in
    the worker's own process (ours) missed it. Measured on SmolLM2-135M, 16 prompts x 4 samples,
    48 tokens, 2 cores: 176 tokens/s without, 264 with. Empty when already preloaded or not found."""
    import glob
    import importlib.util

    current = os.environ.get("LD_PRELOAD", "")
    if any(lib in current for lib in ("libgomp", "libiomp", "libomp")):
        return {}
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return {}
    pkg = os.path.dirname(spec.origin)
    found = sorted(
        glob.glob(os.path.join(pkg, "lib", "libgomp*.so*"))
        + glob.glob(os.path.join(os.path.dirname(pkg), "torch.libs", "libgomp*.so*"))
    )
    if not found:
        return {}
    return {"LD_PRELOAD": ":".join(x for x in (current, found[0]) if x)}


@dataclass
class RolloutSpec(Spec):
    """What a rollout worker needs, as plain values (sent to the Ray actor); ``from_config`` builds
    it from a run config."""

    model_path: str
    max_model_len: int
    device: str = "cpu"
    dtype: str = "float32"
    gpu_memory_utilization: float = 0.15
    lora_rank: int = 8
    lora_mode: str = "auto"
    seed: int = 0
    trust_remote_code: bool = False
    threads: int = 0
    prefix_caching: bool = False
    max_loras: int = 1  # lora_mode adapter: adapters held at once (trials sharing the engine: one each)

    @classmethod
    def from_config(cls, c, model_path: str) -> "RolloutSpec":
        return cls(
            model_path=model_path,
            device=c.model.device,
            dtype=c.model.dtype,
            max_model_len=c.data.max_prompt_tokens + c.rollout.max_new_tokens + 8,
            gpu_memory_utilization=c.rollout.gpu_memory_utilization,
            lora_rank=c.model.lora.r,
            lora_mode=c.rollout.lora_mode,
            seed=c.trainer.seed,
            trust_remote_code=c.model.trust_remote_code,
            threads=c.rollout.threads,
        )


class StaleAdapter(RuntimeError):
    """The engine does not serve the adapter version the trainer expects (it was restarted)."""


class RolloutEngine:
    """In-process vLLM engine; ``RolloutWorker`` is its Ray actor form."""

    def __init__(self, spec: RolloutSpec | dict):
        spec = dataclasses.replace(RolloutSpec.of(spec))
        spec.device = resolve_device(spec.device)
        self.lora_mode = resolve_lora_mode(spec.lora_mode, spec.device)
        merged = self.lora_mode == "merged"
        if spec.device == "cpu":
            # the engine in this process (merged mode reaches into its model: it must)
            if merged:
                os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            # Ray sets OMP_NUM_THREADS=1 in actors; in lockstep mode rollout and learning phases do not
            # overlap, so the engine may use every core while it generates (rollout.threads: fewer, for
            # asynchronous training, where both run at once).
            threads = int(spec.threads or os.cpu_count() or 1)
            os.environ["OMP_NUM_THREADS"] = str(threads)
            import torch

            torch.set_num_threads(threads)
        from vllm import LLM

        t0 = time.time()
        self.spec = spec
        self.llm = LLM(
            model=spec.model_path,
            dtype=spec.dtype,
            max_model_len=spec.max_model_len,
            gpu_memory_utilization=spec.gpu_memory_utilization,
            **(
                {}
                if merged
                else {
                    "enable_lora": True,
                    "max_lora_rank": next(r for r in LORA_RANKS if r >= spec.lora_rank),
                    "max_loras": spec.max_loras,
                    "max_cpu_loras": spec.max_loras,
                }
            ),
            enforce_eager=spec.device == "cpu",
            seed=spec.seed,
            trust_remote_code=spec.trust_remote_code,
            logprobs_mode="processed_logprobs",  # log-probs after temperature, as the learner computes them
            # Reused KV blocks make results depend on what the engine ran before, so a resumed run
            # would not repeat an uninterrupted one; prompts are short, the saving is small.
            enable_prefix_caching=spec.prefix_caching,
            # Seeded requests (every rollout: a resumed run repeats its samples) crashed vLLM 0.32 on
            # CPU where the scheduler discards the token of a partial prefill ("CPU Generator does not
            # use offset", gpu_model_runner._bookkeeping_sync): bench/rollout.py --model
            # builtin:small-init --prompts 64 --group 4 --new-tokens 192 (256 sequences, a small KV
            # cache) hit it; with whole prefills it runs. A 128-prompt test did not reproduce the crash.
            enable_chunked_prefill=False,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.workdir = tempfile.mkdtemp(prefix="align-rollout-")
        self.lora_request = None
        self.merger = None
        if merged:
            from align.workers.merged import MergedLoRA

            # in-process engine (VLLM_ENABLE_V1_MULTIPROCESSING=0): the call returns the model itself
            self.merger = MergedLoRA(
                self.llm.collective_rpc(lambda worker: worker.model_runner.model)[0], spec.model_path
            )
        self.version = 0
        self.serving = False  # an adapter version is served
        self.start_seconds = time.time() - t0
        self._warm_up()

    def _warm_up(self) -> None:
        from vllm import SamplingParams

        self.llm.generate(["0"], SamplingParams(max_tokens=2), use_tqdm=False)

    def load_adapter(self, version: int, tensors: dict[str, np.ndarray], adapter_config: dict) -> float:
        """Serve a new adapter version; returns the seconds it took."""
        from vllm.lora.request import LoRARequest

        t0 = time.time()
        if self.merger is not None:
            self.merger.load(tensors, adapter_config)
        else:
            directory = write_adapter_dir(os.path.join(self.workdir, f"v{version}"), tensors, adapter_config)
            old = self.lora_request
            self.lora_request = LoRARequest(f"adapter-v{version}", version + 1, str(directory))
            if old is not None:
                shutil.rmtree(old.lora_path, ignore_errors=True)
        self.version = version
        self.serving = True
        return time.time() - t0

    def call_timed(
        self, method: str, *args, serve: tuple | None = None, serve_tensors: dict | None = None, **kwargs
    ) -> dict:
        """``method(*args, **kwargs)`` with its start and end times (the trainer measures how long the
        engine waited between calls). ``serve`` = (version, adapter config) with ``serve_tensors``:
        serve that adapter version first if the engine serves another one (asynchronous training:
        each call names the version its batch is sampled from; a restarted engine loads it itself)."""
        start = time.time()
        if serve is not None and serve[0] != (self.version if self.serving else None):
            self.load_adapter(serve[0], serve_tensors, serve[1])
        out = getattr(self, method)(*args, **kwargs)
        return {"result": out, "start": start, "end": time.time()}

    def _lora(self, use_adapter: bool, adapter_version: int | None):
        """The LoRA request to generate with (merged mode: None, after switching the engine's weights
        to the merged or the base ones); ``StaleAdapter`` when ``adapter_version`` is not served (a
        restarted engine comes back serving nothing: generating would silently use the base model)."""
        if (
            use_adapter
            and adapter_version is not None
            and (not self.serving or self.version != adapter_version)
        ):
            served = self.version if self.serving else None
            raise StaleAdapter(
                f"rollout engine (pid {os.getpid()}) serves adapter version {served}, expected {adapter_version}"
            )
        if self.merger is not None:
            self.merger.use(use_adapter)
            return None
        return self.lora_request if use_adapter else None

    def generate(
        self,
        prompts: list[str],
        n: int,
        max_tokens: int,
        temperature: float,
        top_p: float,
        seeds: list[int] | None,
        use_adapter: bool = True,
        logprobs_for: int | None = None,
        adapter_version: int | None = None,
    ) -> list[list[dict]]:
        """For each prompt, ``n`` samples: prompt_ids, completion_ids, logprobs, text, truncated.

        Sampling log-probs are returned for the first ``logprobs_for`` prompts only (all if None):
        the learner recomputes log-probs anyway, and asking vLLM for them costs up to half its
        throughput on CPU, so the trainer asks for a few, for the rollout/learner parity metric.
        """
        from vllm import SamplingParams

        seeds = seeds or [None] * len(prompts)
        k = len(prompts) if logprobs_for is None else logprobs_for
        params = [
            SamplingParams(
                n=n,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_tokens,
                logprobs=0 if i < k else None,
                seed=s,
                skip_special_tokens=False,
            )
            for i, s in enumerate(seeds)
        ]
        lora = self._lora(use_adapter, adapter_version)
        outs = self.llm.generate(prompts, params, lora_request=lora, use_tqdm=False)
        result = []
        for out in outs:
            group = []
            for c in out.outputs:
                ids = list(c.token_ids)
                group.append(
                    {
                        "prompt_ids": list(out.prompt_token_ids),
                        "completion_ids": ids,
                        "logprobs": [lp[t].logprob for lp, t in zip(c.logprobs, ids)]
                        if c.logprobs is not None
                        else None,
                        "text": self.tokenizer.decode([t for t in ids if t != self.tokenizer.eos_token_id]),
                        "truncated": c.finish_reason == "length",
                    }
                )
            result.append(group)
        return result

    def generate_forced(
        self,
        prompts: list[str],
        n: int,
        n_nothink: int,
        max_tokens: int,
        nothink_max_tokens: int,
        temperature: float,
        top_p: float,
        seeds: list[int],
        end_think_id: int,
        think_id: int | None = None,
        use_adapter: bool = True,
        logprobs_for: int | None = None,
        adapter_version: int | None = None,
        nothink_ratio: float | None = None,
    ) -> list[list[dict]]:
        """AdaptThink's importance-sampled rollouts: per prompt, ``n_nothink`` samples forced to start
        with ``end_think_id`` (NoThinking, at most ``nothink_max_tokens`` tokens) and ``n - n_nothink``
        forced into Thinking. The forced token is appended to the prompt ids and then prepended to the
        completion, so it is completion position 0, and each sample carries ``forced`` ("nothink" or
        "think") and ``first_logp``: log pi_IS(y_0), the proposal's log-probability of that token.

        The proposal pi_IS picks NoThinking with probability ``nothink_ratio`` (default
        ``n_nothink / n``), as the authors' code does: ``first_logp = log(ratio)`` for the forced
        end-of-thinking token. Thinking starts with ``think_id`` when given (the authors force
        "Alright"; ``first_logp = log(1 - ratio)``). With ``think_id=None`` the first token is sampled
        from the current policy with ``end_think_id`` banned (a -100 logit bias: vLLM's processed
        log-prob is then the renormalised pi(w) / (1 - pi(</think>))), so pi_IS(w) = (1 - ratio) *
        that, exactly; this is for tokenizers without a fixed thinking opener (the built-in task
        starts thinking with a digit).
        Samples are laid out NoThinking first, then Thinking, ``n`` per prompt.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        ratio = n_nothink / n if nothink_ratio is None else nothink_ratio
        lp_nothink = math.log(ratio) if ratio > 0 else -math.inf  # (no NoThinking sample then)
        lp_think = math.log(1 - ratio) if ratio < 1 else -math.inf  # (no Thinking sample then)
        k = len(prompts) if logprobs_for is None else logprobs_for
        lora = self._lora(use_adapter, adapter_version)
        ids = [list(self.tokenizer(p)["input_ids"]) for p in prompts]
        n_think = n - n_nothink

        def params(count: int, budget: int, seed: int, i: int, **extra) -> SamplingParams:
            return SamplingParams(
                n=count,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max(1, budget),
                logprobs=0 if i < k else None,
                seed=seed,
                skip_special_tokens=False,
                **extra,
            )

        # stage 1 (think_id=None only): the Thinking groups' first tokens, </think> banned
        first: list[list[tuple[int, float]]] = [[(think_id, lp_think)] * n_think for _ in prompts]
        if think_id is None and n_think:
            outs = self.llm.generate(
                [TokensPrompt(prompt_token_ids=p) for p in ids],
                [
                    SamplingParams(
                        n=n_think,
                        temperature=temperature,
                        top_p=top_p,
                        max_tokens=1,
                        logprobs=0,
                        seed=s,
                        logit_bias={end_think_id: -100.0},
                    )
                    for s in seeds
                ],
                lora_request=lora,
                use_tqdm=False,
            )
            first = [
                [(c.token_ids[0], lp_think + c.logprobs[0][c.token_ids[0]].logprob) for c in o.outputs]
                for o in outs
            ]
        # stage 2: continue every forced prefix
        requests, sps, owners = [], [], []
        for i, (p, s) in enumerate(zip(ids, seeds)):
            if n_nothink:
                requests.append(p + [end_think_id])
                sps.append(params(n_nothink, nothink_max_tokens - 1, (s + 1) & 0x7FFFFFFF, i))
                owners.append((i, "nothink", end_think_id, lp_nothink))
            if think_id is not None and n_think:
                requests.append(p + [think_id])
                sps.append(params(n_think, max_tokens - 1, (s + 2) & 0x7FFFFFFF, i))
                owners.append((i, "think", think_id, lp_think))
            elif n_think:
                for j, (tok, lp) in enumerate(first[i]):
                    requests.append(p + [tok])
                    sps.append(params(1, max_tokens - 1, (s + 3 + j) & 0x7FFFFFFF, i))
                    owners.append((i, "think", tok, lp))
        outs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=r) for r in requests], sps, lora_request=lora, use_tqdm=False
        )
        groups: list[list[dict]] = [[] for _ in prompts]
        for (i, mode, tok, lp), out in zip(owners, outs):
            budget_one = mode == "think" and max_tokens == 1 or mode == "nothink" and nothink_max_tokens == 1
            for c in out.outputs:
                gen = [] if budget_one else list(c.token_ids)  # a 1-token budget is the forced token alone
                done = tok == self.tokenizer.eos_token_id
                comp = [tok] + ([] if done else gen)
                groups[i].append(
                    {
                        "prompt_ids": ids[i],
                        "completion_ids": comp,
                        # the forced token has no rollout log-prob of the policy: None marks it
                        "logprobs": ([None] + [lpp[t].logprob for lpp, t in zip(c.logprobs, gen)])
                        if c.logprobs is not None and not done
                        else None,
                        "text": self.tokenizer.decode([t for t in comp if t != self.tokenizer.eos_token_id]),
                        "truncated": (not done) and (budget_one or c.finish_reason == "length"),
                        "forced": mode,
                        "first_logp": lp,
                    }
                )
        return groups

    def info(self) -> dict:
        return {
            "start_seconds": self.start_seconds,
            "version": self.version,
            "pid": os.getpid(),
            "lora_mode": self.lora_mode,
        }

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
