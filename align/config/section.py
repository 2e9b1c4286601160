"""The base of every config section, and what sections share when they check the whole run.

A section that depends on another section checks it itself, in ``check(cfg)``: ``Config`` calls every
section's ``check`` once the whole tree is valid, so the checks live with the setting they are about,
and none branches on a method's name. A value that one section derives for another (COFS-DPO's
``trainer.max_steps`` from its domains) is never overwritten silently: ``derive`` sets it only when
the user did not, says so in ``Config.derived`` (``align train --dry-run`` prints it, the run logs
it), and a value the user set that contradicts the derivation is an error.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict

Config = Any  # the whole run's ``align.config.run.Config`` (not imported: it imports this module)


class Section(BaseModel):
    """Base of every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    def check(self, cfg: Config) -> None:
        """Checks against the rest of the run's config (called after everything validated)."""


def reward_name(cfg: Config, name: str, field: str, extra: tuple[str, ...] = ()) -> None:
    """``name`` must be one of the run's reward objective names (or of ``extra``); the error names
    ``field`` and the closest reward name."""
    names = [r.name for r in cfg.rewards]
    if name not in names and name not in extra:
        close = difflib.get_close_matches(name, names, n=1)
        raise ValueError(
            f"{field}: {name!r} is not a reward name ({', '.join(names)})"
            + (f"; did you mean {close[0]!r}?" if close else "")
        )


def derive(cfg: Config, section: BaseModel, key: str, dotted: str, value: Any, why: str) -> None:
    """Set ``section.key`` (``dotted`` in the config) to ``value``, derived from another setting
    (``why``); a value the user gave that differs is an error."""
    current = getattr(section, key)
    if key in section.model_fields_set and current != value:
        raise ValueError(
            f"{dotted} {current!r} contradicts {why} ({value!r}): remove {dotted} from the config, or set it to {value!r}"
        )
    if current != value or key not in section.model_fields_set:
        setattr(section, key, value)
        cfg.derived[dotted] = f"{value!r}: {why}"
