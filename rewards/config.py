"""A reward entry of a run's config (``rewards: [...]``): a union tagged by ``type`` (inferred from
the key given: ``fn``, ``model`` or ``url``), each type with only its own keys, and the failure
policy every type shares. The reward package owns these models and imports nothing from ``align``:
the run config (``align.config``) uses them as they are.

Each type also says how it becomes a ``Reward`` (``build``), what can be checked before any actor
starts (``precheck``), whether it scores one sample per call (``per_sample``) and what its actor's
environment needs (``actor_env``). A new reward type is a class here (and its scorer's module).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, model_validator


class _Entry(BaseModel):
    """Unknown keys are errors (as in every section of the run config)."""

    model_config = ConfigDict(extra="forbid")

    def check(self, cfg) -> None:
        """Nothing to check against the rest of a run."""


class _RewardBase(_Entry):
    """What every reward type has: its name and weight, and the failure policy."""

    per_sample: ClassVar[bool] = False  # called once per sample (a function), not once per batch
    reports_info: ClassVar[bool] = False  # its scorer's info() is checked when the actor starts

    def build(
        self, base_dir: str | Path | None = None, resolve_model: Callable[[str], str] | None = None
    ) -> Any:
        """The ``rewards.scoring.Reward`` this entry scores with (``base_dir``: the config's folder,
        where relative paths are also looked up; ``resolve_model``: a ``builtin:NAME`` model to a
        folder)."""
        raise NotImplementedError

    def precheck(self, base_dir: str | Path | None = None, resolve_model=None) -> None:
        """What can be checked before any actor starts (a plug-in imports, a folder exists)."""

    def actor_env(self) -> dict[str, str]:
        """Environment variables the reward's actor needs from the driver."""
        return {}

    name: Optional[str] = Field(
        None,
        description="Objective name in metrics; default: the function's name, the model "
        "folder's name, or 'http'.",
    )
    weight: float = Field(1.0, description="Static weight in the total reward.")
    kwargs: dict = Field(default_factory=dict, description="Extra keyword arguments for the function.")
    timeout: Optional[float] = Field(
        None,
        gt=0,
        description="Seconds one batch may take (http: each request; default 30). "
        "function/model: default none; past it the reward's actor is restarted.",
    )
    retries: int = Field(
        2,
        ge=0,
        description="http: tries again after a connection error/timeout/502-504; "
        "on_failure: retry: times a failed sample is scored again.",
    )
    backoff: float = Field(0.5, ge=0, description="Seconds before the first retry, doubling after each.")
    on_failure: Optional[Literal["error", "skip", "retry"]] = Field(
        None,
        description="A reward that raises, times out or returns NaN/inf: stop the run naming the reward and sample "
        "(error, default), drop the sample and count it (skip), or score it again up to `retries` times, then stop (retry).",
    )
    nan_policy: Optional[Literal["error", "skip"]] = Field(
        None, description="Deprecated name of on_failure (error|skip)."
    )

    @model_validator(mode="after")
    def _policy(self):
        if self.on_failure is None:
            self.on_failure = self.nan_policy or "error"
        elif self.nan_policy is not None and self.nan_policy != self.on_failure:
            raise ValueError(
                f"nan_policy: {self.nan_policy} contradicts on_failure: {self.on_failure}; keep on_failure"
            )
        self.nan_policy = None
        return self


class FunctionReward(_RewardBase):
    """type: function: a Python function (TRL's reward-function convention)."""

    type: Literal["function"] = Field(
        "function",
        description="function (fn), model (a local HF sequence-classification "
        "model) or http (a reward server); default: from the key given.",
    )
    fn: str = Field(
        description="function: a built-in name, 'package.module:function' or 'path/to/file.py:function'."
    )

    per_sample: ClassVar[bool] = True

    @model_validator(mode="after")
    def _name(self):
        self.name = self.name or self.fn.rpartition(":")[2] or self.fn
        return self

    def build(self, base_dir=None, resolve_model=None):
        from rewards.loading import load
        from rewards.scoring import Reward

        return Reward(self.name, load(self.fn, base_dir), self.kwargs)

    def precheck(self, base_dir=None, resolve_model=None) -> None:
        from rewards.loading import load

        load(self.fn, base_dir)  # the user's plug-in, imported here as the reward actor will


class ModelReward(_RewardBase):
    """type: model: a local HF AutoModelForSequenceClassification (a reward_model run's output)."""

    type: Literal["model"] = Field("model", description="model.")
    model: str = Field(
        description="model: a local HF AutoModelForSequenceClassification directory "
        "(e.g. a reward_model run's runs/<name>/reward_model)."
    )
    heads: Optional[list[str]] = Field(
        None, description="model: names of the model's outputs (num_labels > 1), one objective each."
    )
    template: Literal["auto", "chat", "plain"] = Field(
        "auto", description="model: how prompt and response are put together (rewards/model.py)."
    )
    batch_size: int = Field(32, ge=1, description="model: sequences per forward pass.")
    max_length: Optional[int] = Field(
        None, ge=1, description="model: keep the last N tokens (default: the model's context)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="model: where the reward model runs.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="model: weights dtype.")
    threads: int = Field(0, ge=0, description="model on CPU: torch threads (0: every core).")
    num_gpus: float = Field(
        0.0, ge=0, description="model: Ray GPUs reserved for this reward's actor (e.g. 0.25 to share one)."
    )

    @model_validator(mode="after")
    def _name(self):
        self.name = self.name or self.model.rstrip("/").rpartition("/")[2] or "reward_model"
        return self

    def build(self, base_dir=None, resolve_model=None):
        from rewards.loading import model_dir
        from rewards.model import ModelReward
        from rewards.scoring import Reward

        fn = ModelReward(
            str(model_dir(self.model_dump(), base_dir, resolve_model)),
            heads=self.heads,
            batch_size=self.batch_size,
            max_length=self.max_length,
            template=self.template,
            device=self.device,
            dtype=self.dtype,
            threads=self.threads,
        )
        return Reward(self.name, fn, self.kwargs)

    def precheck(self, base_dir=None, resolve_model=None) -> None:
        from rewards.loading import model_dir

        model_dir(self.model_dump(), base_dir, resolve_model)


class HttpReward(_RewardBase):
    """type: http: a reward server (POST <url>/score; rewards/http.py)."""

    type: Literal["http"] = Field("http", description="http.")
    url: str = Field(description="http: the server's base URL (POST <url>/score; see rewards/http.py).")
    token_env: str = Field(
        "ALIGN_REWARD_TOKEN", description="http: environment variable holding the server's bearer token."
    )
    batch_size: int = Field(
        256, ge=1, description="http: completions per request (fewer when the server's max_batch says so)."
    )

    @model_validator(mode="after")
    def _url(self):
        from urllib.parse import urlparse

        if urlparse(self.url).scheme not in ("http", "https") or not urlparse(self.url).netloc:
            raise ValueError(f"url {self.url!r} is not an http(s) URL")
        self.timeout = self.timeout or 30.0
        self.name = self.name or "http"
        return self

    reports_info: ClassVar[bool] = True  # the server's /info: the URL and the token work

    def build(self, base_dir=None, resolve_model=None):
        from rewards.http import HttpReward as Client
        from rewards.scoring import Reward

        client = Client(
            self.url, self.name, self.token_env, self.timeout, self.retries, self.backoff, self.batch_size
        )
        return Reward(self.name, client, self.kwargs)

    def actor_env(self) -> dict[str, str]:
        # the driver's token goes with the actor (it may run on another node, or in a cluster started
        # before the variable was set)
        token = os.environ.get(self.token_env) if self.token_env else None
        return {self.token_env: token} if token else {}


REWARD_TYPES = {"function": FunctionReward, "model": ModelReward, "http": HttpReward}
_REWARD_KEYS = {"fn": "function", "model": "model", "url": "http"}


def _reward_type(entry):
    """Before validation: a reward's ``type`` follows from the key given (``fn``, ``model`` or ``url``)."""
    if not isinstance(entry, dict):
        return entry
    given = [k for k in _REWARD_KEYS if entry.get(k) is not None]
    kind = entry.get("type")
    if kind is None:
        if len(given) != 1:
            raise ValueError(
                "a reward needs exactly one of 'fn' (a function), 'model' (a reward model directory) or "
                f"'url' (a reward server){'; got ' + ', '.join(given) if given else ''}"
            )
        return {**entry, "type": _REWARD_KEYS[given[0]]}
    if kind in REWARD_TYPES:
        key = {v: k for k, v in _REWARD_KEYS.items()}[kind]
        if entry.get(key) is None:
            raise ValueError(f"type: {kind} needs '{key}'")
        extra = [k for k in given if k != key]
        if extra:
            raise ValueError(f"type: {kind} takes '{key}', not {', '.join(repr(k) for k in extra)}")
    return entry


# A reward entry: a union tagged by ``type`` (inferred from the key given), each type with only its own keys.
RewardEntry = Annotated[
    Annotated[Union[FunctionReward, ModelReward, HttpReward], Field(discriminator="type")],
    BeforeValidator(_reward_type),
]


def reward_entry(**values) -> FunctionReward | ModelReward | HttpReward:
    """A validated reward entry (``type`` from the key given)."""
    return TypeAdapter(RewardEntry).validate_python(values)


def entry_of(entry) -> FunctionReward | ModelReward | HttpReward:
    """A validated entry from an entry or the dict of one."""
    return entry if isinstance(entry, tuple(REWARD_TYPES.values())) else reward_entry(**entry)


def build(entry, base_dir: str | Path | None = None, resolve_model=None):
    """A ``Reward`` from a config entry (``rewards.config.RewardEntry``, or the dict of one: it is
    validated, so every default comes from the schema) of any type: ``function`` (``fn``), ``model``
    (a local HF sequence-classification model, ``rewards.model``; ``resolve_model`` turns a
    ``builtin:NAME`` into a folder) or ``http`` (a reward server, ``rewards.http``)."""
    return entry_of(entry).build(base_dir, resolve_model)
