"""What every command reads: typed configs (`config`), checkpoints and the models saved in them
(`checkpoint`), and the data splits a data config names (`datasets`). Below `training`, `measures`,
`store`, `study` and `report`, so none of those needs the training loop.
"""

from salience.io.checkpoint import CheckpointError, load_checkpoint, load_run, save_checkpoint
from salience.io.config import ConfigError, DataConfig, TrainConfig, load_config, validate
from salience.io.datasets import open_split

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataConfig",
    "TrainConfig",
    "load_checkpoint",
    "load_config",
    "load_run",
    "open_split",
    "save_checkpoint",
    "validate",
]
