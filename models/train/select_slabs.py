"""Lists only the synth.py slabs of one kind in a new `cosam export-training` folder, for
`train.py --extra-data` (History 20 trained on the `real` kind alone).

  .venv-export/bin/python models/train/select_slabs.py --kind real \
      --manifest models/train/synth/abdomen/manifest.json \
      --export models/train/data-synth/abdomen -o models/train/data-synth/abdomen-real

Kinds (synth.py): `labels`, a slab synthesised from the label map alone with random
intensities; `real`, the scan's own intensities under bias field, gamma, noise, blur,
resampling and warps. The slabs' folders are linked, not copied.
"""

import argparse
import json
import os


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=["labels", "real"], required=True)
    p.add_argument("--manifest", required=True, help="synth.py's manifest.json")
    p.add_argument("--export", required=True, help="export-training folder of all slabs")
    p.add_argument("-o", "--output", required=True)
    a = p.parse_args()
    kind = {c["domain"]: c["shift"] for c in json.load(open(a.manifest))["cases"]}
    index = json.load(open(os.path.join(a.export, "index.json")))
    index["cases"] = [c for c in index["cases"] if kind.get(c["domain"]) == f"synth-{a.kind}"]
    if not index["cases"]:
        raise SystemExit(f"{a.export}: no slab of kind {a.kind}")
    os.makedirs(a.output, exist_ok=True)
    for case in index["cases"]:
        link = os.path.join(a.output, case["domain"])
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(os.path.join(a.export, case["domain"])), link)
    tmp = os.path.join(a.output, "index.json.partial")
    with open(tmp, "w") as f:
        json.dump(index, f, indent=1)
    os.replace(tmp, os.path.join(a.output, "index.json"))
    print(f"{a.output}: {len(index['cases'])} slabs of kind {a.kind}")


if __name__ == "__main__":
    main()
