"""A study reuses a finished training run only when the run's saved config equals the study file's."""

import pytest
import yaml

from salience.io.config import ConfigError, load_config
from salience.study.pipeline import check_same_config

TREE = {"model": {"name": "smallcnn"}, "data": {"format": "builtin"}, "guidance": {"loss": "energy", "lambda": 1.0}}


def test_a_run_trained_with_another_config_is_not_reused(tmp_path):
    saved = load_config(TREE).dump()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    check_same_config(tmp_path, saved | {"epochs": 9, "out": "elsewhere"})  # free keys: reused
    changed = dict(saved, guidance=dict(saved["guidance"], **{"lambda": 2.0}))
    with pytest.raises(ConfigError, match="guidance.lambda"):
        check_same_config(tmp_path, changed)
    check_same_config(tmp_path / "fresh", changed)  # nothing saved yet: trains
