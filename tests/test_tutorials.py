"""The tutorials (`tutorials/*.py`, jupytext percent scripts) run end to end on tiny settings
(`SALIENCE_TUTORIAL_TINY=1`), as scripts, in this process; `make docs` executes them at full size into the site."""

import os
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9]*.py"))


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """Tiny settings, a scratch working folder, and the process as it was afterwards (cwd, sys.path, modules)."""
    monkeypatch.setenv("SALIENCE_TUTORIAL_TINY", "1")
    monkeypatch.chdir(tmp_path)
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        if name == "mynets" or name.startswith("mynets."):  # tutorial 5's package in its temporary folder
            del sys.modules[name]


def test_five_tutorials_each_in_the_sites_navigation():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    pages = re.findall(r"tutorials/(\w+)\.md", str(nav))
    assert [p.stem for p in TUTORIALS] == pages and len(pages) == 5
    for script in TUTORIALS:
        text = script.read_text()
        assert text.startswith("# %% [markdown]\n# # "), (
            f"{script.name}: a jupytext percent script opening with its title"
        )
        assert "SALIENCE_TUTORIAL_TINY" in text, f"{script.name}: runs small under the tests"


@pytest.mark.usefixtures("tiny")
@pytest.mark.parametrize("script", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(script):
    import runpy

    import matplotlib

    matplotlib.use("Agg")
    names = runpy.run_path(str(script), run_name="__main__")
    assert os.environ["SALIENCE_TUTORIAL_TINY"] == "1" and names["TINY"]
    assert "show(" in script.read_text()  # each tutorial draws its maps with salience.show
