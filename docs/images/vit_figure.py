"""Draw docs/images/vit_maps.png, the picture of docs/transformers.md, from the output folder of
`salience study configs/studies/builtin_vit.yaml`: `python docs/images/vit_figure.py [runs/builtin_vit]`.
The first four test images of the built-in benchmark with each method's map (true class) of the study's ViT,
drawn by `salience.show` (one colour scale per method)."""

import sys
from pathlib import Path

import yaml

import salience
from salience.data import BuiltinBenchmark, builtin_dataset, collate
from salience.store import MapStore

sys.path.insert(0, str(Path(__file__).parent))
from readme_figure import save_png

N = 4
STUDY = Path(__file__).parents[2] / "configs" / "studies" / "builtin_vit.yaml"


def main(study: Path, out: Path) -> None:
    cfg = yaml.safe_load(STUDY.read_text())
    test = builtin_dataset("test", BuiltinBenchmark(**cfg["data"]["options"]))
    batch = collate([test[i] for i in range(N)])
    maps = {}
    for spec in cfg["explain"]["methods"]:
        store = MapStore(study / "stores" / spec / "ViT_s0")
        assert list(store.meta.image_ids)[:N] == batch["id"], "the stores hold other images than the benchmark's"
        maps[spec] = store.read(0, N)[0]
    titles = [test.classes[int(c)] for c in batch["labels"].argmax(1)]
    save_png(salience.show(batch["image"], maps, titles=titles, size=1.3), out)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/builtin_vit"), Path(__file__).with_name("vit_maps.png"))
