#!/usr/bin/env python3
"""Prints the held-out curve of `train.py --eval-every` runs: per logged step, the
model-frame Dice of the training and held-out slices (coarse mask and two rounds), one
column triple per run (and per run's averaged weights, --ema), and each one's best held-out
step.

With --choose (one run per fold, same recipe): the training length each fold would get
without seeing itself, the step where the other folds' mean held-out curve peaks, and the
fold's held-out Dice there against its last step's.

Usage: models/train/curve.py [--choose] LOG_OR_HEADS_JSON...  (a train.py log, or a
heads.json whose training.loss_log holds the points)"""

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


AVERAGE = " (average)"  # the name suffix of a run's averaged-weights curve


def held_curve(pts):
    """Step -> held-out model-frame Dice after two rounds."""
    return {s: p["held_out"]["cosam:2"] for s, p in pts.items() if "held_out" in p}


def choose(runs):
    """Per fold, the step the other folds' mean held-out cosam:2 curve peaks at."""
    held = {name: held_curve(pts) for name, pts in runs.items()}
    chosen_sum, last_sum = 0.0, 0.0
    for name, mine in held.items():
        others = [h for n, h in held.items() if n != name]
        steps = sorted(set(mine).intersection(*others)) if others else []
        if not steps:
            sys.exit(f"--choose: {name} shares no curve step with the other runs")
        mean = {s: sum(h[s] for h in others) / len(others) for s in steps}
        step = max(steps, key=lambda s: (mean[s], -s))  # the earlier step on a tie
        last = max(mine)
        chosen_sum += mine[step]
        last_sum += mine[last]
        print(f"{name}: other folds peak at step {step} ({mean[step]:.3f}); this fold there "
              f"{mine[step]:.3f}, at its last step {last} {mine[last]:.3f}")
    print(f"mean over {len(held)} folds: chosen step {chosen_sum / len(held):.3f}, "
          f"last step {last_sum / len(held):.3f}")


def main(paths, pick):
    runs = {}
    for path in paths:
        pts = points(path)
        runs[os.path.basename(path)] = pts
        average = {s: {"step": s, **p["average"]} for s, p in pts.items() if "average" in p}
        if average:
            runs[os.path.basename(path) + AVERAGE] = average
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
        held = held_curve(pts)
        if held:
            best = max(held, key=held.get)
            print(f"{name}: best held-out cosam:2 {held[best]:.3f} at step {best}, "
                  f"last {held[max(held)]:.3f} at step {max(held)}")
    if pick:
        for suffix in ("", AVERAGE):
            folds = {n: pts for n, pts in runs.items() if n.endswith(AVERAGE) == bool(suffix)}
            if len(folds) > 1:
                print(f"--choose{suffix}:")
                choose(folds)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        sys.exit(__doc__)
    args = sys.argv[1:]
    main([a for a in args if a != "--choose"], "--choose" in args)
