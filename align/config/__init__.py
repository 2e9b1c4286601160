"""The run configuration, owned by the library: the typed sections, a file each (``run``: the loop,
data, rollout, learner and ``Config``; ``model``; ``algorithms`` and ``preference``: a section per
method; ``objectives``; the reward entries in ``rewards.config``), and loading, ``--set`` overrides,
validation messages and the resolved copy (``loading``).

The command line (``launch``) reads configs through this package; the library never imports ``launch``.
"""

from align.config.algorithms import ALGORITHM_NAMES, ALGORITHM_VARIANTS, AlgorithmSection, algorithm_section
from align.config.loading import ConfigError, load_config, save_resolved
from align.config.objectives import ObjectiveSection
from align.config.run import Config
from align.config.section import Section
from rewards.config import REWARD_TYPES, RewardEntry, reward_entry

__all__ = [
    "ALGORITHM_NAMES",
    "ALGORITHM_VARIANTS",
    "AlgorithmSection",
    "Config",
    "ConfigError",
    "ObjectiveSection",
    "REWARD_TYPES",
    "RewardEntry",
    "Section",
    "algorithm_section",
    "load_config",
    "reward_entry",
    "save_resolved",
]
