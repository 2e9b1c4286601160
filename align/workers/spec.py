"""Base of the workers' typed specs (``LearnerSpec``, ``RolloutSpec``): plain values sent to a Ray actor."""

from __future__ import annotations

from typing import TypeVar

S = TypeVar("S", bound="Spec")


class Spec:
    @classmethod
    def of(cls: type[S], spec: S | dict) -> S:
        """A spec from a spec or a plain dict (defaults for missing keys; an unknown key is a TypeError)."""
        return spec if isinstance(spec, cls) else cls(**spec)
