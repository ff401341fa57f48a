"""Trains, checks and registers CoSAM heads for one task of your own dataset manifest.

  .venv-export/bin/python models/train/train_heads.py --dataset my/manifest.json \
      --task prostate -o runs/prostate [--synth 16] [--lodo] [--steps 400]
  cosam segment --heads runs/prostate/heads scan.nii.gz -o out/

The manifest is cosam's dataset format (`cosam-dataset/1`, the one `cosam eval` reads: one
entry per image with its label map, task, domain and label values). One command:

1. `cosam export-training`: the cases' embeddings and reference masks in the model frame
   (`OUT/data`); cosam's own readers and encoder, so training sees what inference sees.
2. With `--synth N`: `synth.py` writes N domain-randomised slabs per real case
   (`OUT/synth`) and exports them (`OUT/data-synth`); training then mixes real slices
   (`--real-share`) with synthetic ones.
3. `train.py` trains the heads on every domain (`OUT/heads`), checkpointing every 50 steps:
   run the same command again after a stop and it resumes; finished head sets are kept.
4. With `--lodo`: one head set per real source domain, trained without it and its
   synthetic variants (`OUT/lodo/DOMAIN`), for an honest unseen-domain estimate.
5. Checks: `cosam eval` of the coarse mask and the default loop, seen domains with
   `OUT/heads` (`OUT/check`), unseen ones with `OUT/lodo` (`OUT/check-lodo`), and prints
   the summaries and the `--heads` folder to use.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CHECK_METHODS = "coarse,cosam-fixed:4"


def run(cmd):
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def source_domains(manifest, task):
    """The real domains of `task`: a synthetic case `D+shift` belongs to its source `D`."""
    cases = [c for c in json.load(open(manifest))["cases"] if c["task"] == task]
    if not cases:
        raise SystemExit(f"{manifest}: no cases of task '{task}'")
    return sorted({c["domain"].split("+")[0] for c in cases})


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="cosam-dataset/1 manifest")
    p.add_argument("--task", required=True)
    p.add_argument("-o", "--output", required=True, help="run folder")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--synth", type=int, default=0, metavar="N",
                   help="domain-randomised slabs per real case (synth.py); 0: none")
    p.add_argument("--real-share", type=float, default=0.3,
                   help="with --synth: share of samples drawn from the real slices")
    p.add_argument("--lodo", action="store_true",
                   help="also train one head set per held-out source domain")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--cosam", default=os.path.join(ROOT, "target", "release", "cosam"),
                   help="the cosam binary (default: this checkout's release build)")
    p.add_argument("--no-check", action="store_true", help="skip the cosam eval checks")
    p.add_argument("--absent-labels", action="store_true",
                   help="train on the manifest's absent_labels as empty (cosam export-training "
                        "--absent-labels); off by default, see History 20")
    args = p.parse_args()
    if shutil.which(args.cosam) is None:
        raise SystemExit(f"{args.cosam}: not found; build it with `cargo build --release` "
                         "or pass --cosam")
    out = os.path.abspath(args.output)
    domains = source_domains(args.dataset, args.task)
    os.makedirs(out, exist_ok=True)

    data = os.path.join(out, "data")
    if not os.path.isfile(os.path.join(data, "index.json")):
        run([args.cosam, "export-training", "--dataset", args.dataset, "--task", args.task,
             "-o", data] + (["--absent-labels"] if args.absent_labels else []))
    extra = []
    if args.synth > 0:
        synth, data_synth = os.path.join(out, "synth"), os.path.join(out, "data-synth")
        if not os.path.isfile(os.path.join(synth, "manifest.json")):
            run([sys.executable, os.path.join(HERE, "synth.py"), "--dataset", args.dataset,
                 "--task", args.task, "--per-case", str(args.synth), "-o", synth])
        if not os.path.isfile(os.path.join(data_synth, "index.json")):
            run([args.cosam, "export-training", "--dataset",
                 os.path.join(synth, "manifest.json"), "--task", args.task, "-o", data_synth])
        extra = ["--extra-data", data_synth, "--real-share", str(args.real_share)]

    def train(dest, hold_out):
        if os.path.isfile(os.path.join(dest, "heads.json")):
            print(f"{dest}: trained (delete it to retrain)", flush=True)
            return
        os.makedirs(dest, exist_ok=True)
        run([sys.executable, os.path.join(HERE, "train.py"), "--task", args.task,
             "--data", data, *extra, "--out", dest, "--steps", str(args.steps),
             "--threads", str(args.threads), "--device", args.device,
             "--checkpoint", os.path.join(dest, "checkpoint.pt"),
             *(["--hold-out", hold_out] if hold_out else [])])
        if os.path.exists(os.path.join(dest, "checkpoint.pt")):
            os.remove(os.path.join(dest, "checkpoint.pt"))

    heads = os.path.join(out, "heads")
    train(heads, None)
    if args.lodo:
        if len(domains) < 2:
            raise SystemExit(f"--lodo needs two source domains or more; {args.task} has {domains}")
        for d in domains:
            train(os.path.join(out, "lodo", d), d)

    if not args.no_check:
        checks = [(heads, os.path.join(out, "check"), "seen domains")]
        if args.lodo:
            checks.append((os.path.join(out, "lodo"), os.path.join(out, "check-lodo"),
                           "unseen domains (each scored by heads trained without it)"))
        for h, o, what in checks:
            run([args.cosam, "eval", "--dataset", args.dataset, "--task", args.task,
                 "--heads", h, "--methods", CHECK_METHODS, "--encoder", "fp32", "-o", o])
            print(f"\n{what}: {o}/summary.md", flush=True)
    print(f"\nheads: {heads}\nuse:   cosam segment --heads {heads} IMAGE -o OUT", flush=True)


if __name__ == "__main__":
    main()
