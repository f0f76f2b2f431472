"""Draw docs/images/demo_maps.png, the README's picture, from a `make demo` output folder:
`python docs/images/readme_figure.py [demo-out]`. The first four test images of the built-in benchmark with
the GradCAM map (final block, true class) of each group's first model, drawn by `salience.show`."""

import io
import sys
from pathlib import Path

import yaml
from PIL import Image

import salience
from salience.data import BuiltinBenchmark, builtin_dataset, collate
from salience.store import MapStore
from salience.study import demo_study

N = 4


def main(demo: Path, out: Path) -> None:
    options = yaml.safe_load(demo_study().read_text())["data"]["options"]
    test = builtin_dataset("test", BuiltinBenchmark(**options))
    batch = collate([test[i] for i in range(N)])
    maps = {}
    for group in ("CE", "Energy", "CYBORG"):
        store = MapStore(demo / "stores" / f"{group}_s0")
        assert list(store.meta.image_ids)[:N] == batch["id"], "the stores hold other images than the benchmark's"
        maps[group] = store.read(0, N)[0]
    titles = [test.classes[int(c)] for c in batch["labels"].argmax(1)]
    save_png(salience.show(batch["image"], maps, titles=titles, size=1.4), out)


def save_png(fig, out: Path) -> None:
    """Write the figure as a palette PNG (a third of the bytes of an RGB one) at 80 dpi."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    Image.open(buf).convert("RGB").quantize(256).save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out"), Path(__file__).with_name("demo_maps.png"))
