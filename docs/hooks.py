"""MkDocs hook (`hooks:` in mkdocs.yml) for the salience site.

- The tutorials, `tutorials/*.py` (jupytext percent format), are executed in a Jupyter kernel (nbclient) at
  build time and become the pages `tutorials/<name>.md`: their Markdown cells as they are, code cells as
  Python blocks, text outputs as text blocks and pictures (PNG outputs, e.g. `salience.show` figures) as
  image files next to the page. A failing cell fails the build, naming the tutorial and the cell.
  `SALIENCE_DOCS_EXECUTE=0` renders them without running them (quick previews of the prose).
- `<!-- registry:methods -->` and `<!-- registry:measures -->` in a page become tables of
  `salience.attribution.METHODS` and `salience.measures.MEASURES`, read at build time: a new registry entry
  appears without editing a page.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import tempfile
import time
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.salience")
ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
RUFF = re.compile(r"^# ruff: .*\n?", re.M)
TIMEOUT = 900  # seconds per cell


# ---------------------------------------------------------------- tutorials


def on_files(files, config):
    execute = os.environ.get("SALIENCE_DOCS_EXECUTE", "1") != "0"
    for script in sorted(TUTORIALS.glob("[0-9]*.py")):
        start = time.perf_counter()
        nb = _notebook(script, execute)
        pages = _markdown(nb, script.stem)
        for uri, content in pages.items():
            files.append(File.generated(config, f"tutorials/{uri}", content=content))
        log.info(
            "tutorial %s: %s in %.1f s", script.name, "executed" if execute else "rendered", time.perf_counter() - start
        )
    return files


def _notebook(script: Path, execute: bool):
    import jupytext

    nb = jupytext.read(script)
    if not execute:
        return nb
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    with tempfile.TemporaryDirectory(prefix=f"salience-{script.stem}-") as cwd:
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        client = NotebookClient(
            nb,
            timeout=TIMEOUT,
            kernel_name="python3",
            resources={"metadata": {"path": cwd}},
            extra_arguments=["--IPKernelApp.log_level=ERROR"],  # not the notice about local TCP sockets
        )
        try:
            client.execute()
        except CellExecutionError as e:
            raise PluginError(f"tutorial {script.relative_to(ROOT)} failed:\n{ANSI.sub('', str(e))}") from None
    return nb


def _markdown(nb, stem: str) -> dict[str, str | bytes]:
    """`{file name under tutorials/: content}`: the page `<stem>.md` and its pictures `<stem>/out_<k>.png`."""
    parts: list[str] = []
    pictures: dict[str, str | bytes] = {}
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            parts.append(cell.source)
        elif cell.cell_type == "code" and cell.source.strip():
            code = RUFF.sub("", cell.source).strip("\n")  # lint pragmas are for the repository, not the reader
            parts.append(f"```python\n{code}\n```")
            for out in cell.get("outputs", []):
                parts.extend(_output(out, stem, pictures))
    source = f"\n\n*The source of this page: `tutorials/{stem}.py` (executed when the site is built; run it as a script or open it in Jupyter with jupytext).*\n"
    return {f"{stem}.md": "\n\n".join(parts) + source, **pictures}


def _output(out, stem: str, pictures: dict[str, str | bytes]) -> list[str]:
    if out.output_type == "stream":
        text = ANSI.sub("", out.text).rstrip()
        return [f"```text\n{text}\n```"] if text else []
    data = out.get("data", {})
    if "image/png" in data:
        name = f"{stem}/out_{len(pictures)}.png"
        pictures[name] = base64.b64decode(data["image/png"])
        return [f"![output {len(pictures)}]({name})"]
    if "text/markdown" in data:
        return [data["text/markdown"]]
    if "text/plain" in data:
        return [f"```text\n{ANSI.sub('', data['text/plain']).rstrip()}\n```"]
    return []


# ---------------------------------------------------------------- registry tables


def on_page_markdown(markdown, page, config, files):
    if "<!-- registry:methods -->" in markdown:
        markdown = markdown.replace("<!-- registry:methods -->", methods_table())
    if "<!-- registry:measures -->" in markdown:
        markdown = markdown.replace("<!-- registry:measures -->", measures_table())
    return markdown


def _cell(value) -> str:
    if value is True:
        return "yes"
    if value is False:
        return ""
    if value is None:
        return "input"
    return str(value).replace("|", "\\|").replace("\n", " ")


def methods_table() -> str:
    """Every entry of `salience.attribution.METHODS` with what it can do."""
    from salience.attribution import METHODS

    head = [
        "| method | default layer | other layers | shared pass | differentiable | signed | random | extra forwards | what it is |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [
        f"| `{name}` | {_cell(m.layer)} | {_cell(m.takes_layer)} | {_cell(m.shared)} | {_cell(m.differentiable)} "
        f"| {_cell(m.signed)} | {_cell(m.random)} | {_cell(m.extra_forwards)} | {_cell(m.summary)} |"
        for name, m in METHODS.items()
    ]
    return "\n".join([*head, *rows]) + f"\n\n{len(rows)} methods in this build.\n"


def _range(r: tuple[float | None, float | None]) -> str:
    lo, hi = r
    return f"[{'−∞' if lo is None else f'{lo:g}'}, {'∞' if hi is None else f'{hi:g}'}]"


def measures_table() -> str:
    """Every entry of `salience.measures.MEASURES` with its family, range and direction."""
    from salience.measures import MEASURES
    from salience.measures.registry import passes

    head = [
        "| measure | family | kind | range | better | passes per image | needs masks | what it is |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [
        f"| `{name}` | {m.family} | {m.kind} | {_range(m.range)} | {m.better or 'neither'} | {passes(name):g} "
        f"| {_cell(m.needs_masks)} | {_cell(m.label)} |"
        for name, m in MEASURES.items()
    ]
    return "\n".join([*head, *rows]) + f"\n\n{len(rows)} measures in this build.\n"
