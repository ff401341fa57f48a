"""Lists the shipped head sets (models/heads/TASK/heads.json) in models/manifest.json: one
`tasks` entry per task with the sha256 of its heads.json, and each head file in `models`
with its digest, size and signature. Run by models/train/train_all after training."""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(ROOT, "models")
sys.path.insert(0, os.path.join(MODELS, "export"))

from export import sha256, write_json  # noqa: E402


def main():
    path = os.path.join(MODELS, "manifest.json")
    manifest = json.load(open(path))
    heads_root = os.path.join(MODELS, "heads")
    tasks = []
    models = [m for m in manifest["models"] if not m["file"].startswith("heads/")]
    for task in sorted(os.listdir(heads_root)) if os.path.isdir(heads_root) else []:
        heads_json = os.path.join(heads_root, task, "heads.json")
        if not os.path.isfile(heads_json):
            continue
        heads = json.load(open(heads_json))
        tasks.append({"name": heads["task"], "dir": f"heads/{task}",
                      "heads_sha256": sha256(heads_json),
                      "structures": heads["structures"],
                      "train_domains": heads["train_domains"]})
        for f in heads["files"]:
            rel = f"heads/{task}/{f['file']}"
            models.append({
                "name": f"{heads['task']}/{f['name']}",
                "file": rel,
                "role": {"decoder": "CoSAM task decoder (prompt-free coarse + promptable refinement)",
                         "error": "CoSAM error decoder"}.get(f["name"], f["name"]),
                "sha256": f["sha256"],
                "size_bytes": f["size_bytes"],
                "inputs": f["inputs"],
                "outputs": f["outputs"],
                "opset": f["opset"],
                "provenance": heads["training"]["command"],
            })
    manifest["models"] = models
    manifest["tasks"] = tasks
    write_json(path, manifest)
    print(f"{path}: tasks {[t['name'] for t in tasks]}")


if __name__ == "__main__":
    main()
