"""Training (plain or guided): typed config, the loop, validation metrics, checkpoints, Pareto front.

`train(load_config("configs/builtin_energy.yaml"))` returns the run directory;
`evaluate_checkpoint(path, split)` scores a saved model on a split.
"""

from salience.io.checkpoint import load_checkpoint, save_checkpoint
from salience.io.config import ConfigError, TrainConfig, load_config
from salience.training.evaluate import evaluate, metrics
from salience.training.loop import TrainingError, train
from salience.training.run import evaluate_checkpoint

__all__ = [
    "ConfigError",
    "TrainConfig",
    "TrainingError",
    "evaluate",
    "evaluate_checkpoint",
    "load_checkpoint",
    "load_config",
    "metrics",
    "save_checkpoint",
    "train",
]
