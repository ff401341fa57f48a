#!/usr/bin/env python3
"""Prints the held-out curve of `train.py --eval-every` runs: per logged step, the
model-frame Dice of the training and held-out slices (coarse mask and two rounds), one
column triple per run (and per run's averaged weights, --ema), and each one's best held-out
step.

Usage: models/train/curve.py LOG_OR_HEADS_JSON...  (a train.py log, or a heads.json whose
training.loss_log holds the points)"""

import json
import os
import sys


def points(path):
    if path.endswith(".json"):
        log = json.load(open(path))["training"]["loss_log"]
    else:
        log = []
        for line in open(path):
            if line.startswith("{"):
                log.append(json.loads(line))
    return {p["step"]: p for p in log if "train" in p}


def main(paths):
    runs = {}
    for path in paths:
        pts = points(path)
        runs[os.path.basename(path)] = pts
        average = {s: {"step": s, **p["average"]} for s, p in pts.items() if "average" in p}
        if average:
            runs[os.path.basename(path) + " (average)"] = average
    runs = {name: pts for name, pts in runs.items() if pts}
    if not runs:
        sys.exit("no --eval-every points in " + ", ".join(paths))
    steps = sorted({s for pts in runs.values() for s in pts})
    print("step | " + " | ".join(
        f"{name}: train coarse / held-out coarse / held-out cosam:2" for name in runs))
    for step in steps:
        cells = []
        for pts in runs.values():
            p = pts.get(step)
            if p is None:
                cells.append("-")
                continue
            held = p.get("held_out", {})
            cells.append(f"{p['train']['coarse']:.3f} / {held.get('coarse', float('nan')):.3f}"
                         f" / {held.get('cosam:2', float('nan')):.3f}")
        print(f"{step} | " + " | ".join(cells))
    for name, pts in runs.items():
        held = {s: p["held_out"]["cosam:2"] for s, p in pts.items() if "held_out" in p}
        if held:
            best = max(held, key=held.get)
            print(f"{name}: best held-out cosam:2 {held[best]:.3f} at step {best}, "
                  f"last {held[max(held)]:.3f} at step {max(held)}")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        sys.exit(__doc__)
    main(sys.argv[1:])
