#!/usr/bin/env python3
"""Could a head set run fewer correction rounds than CoSAM's four without losing Dice on
domains it never saw? (issue 18: fewer rounds are fewer head calls per slice.)

Input: the cases.csv of `scripts/eval-cosam TASK` (each domain scored by the
leave-one-domain-out head set that never saw it, with coarse and cosam-fixed:1..4) and
the LODO folder. Each fold's held-out domains (a patient or scanner and, for some, its
synthetic shifts) count once: synthetic shifts of one patient are not independent evidence.

Rule tried: the fewest rounds T in 0..3 (0 = the coarse mask) whose Dice, paired per
case x structure against four rounds, is not lower on average over the folds; else 4.
Nested check: each fold gets the T the rule picks on the *other* folds, and is scored on
its own held-out domains. A rule worth shipping must not lose there.

Usage: models/train/rounds.py out/eval-cosam/TASK/cases.csv models/lodo/TASK
"""
import collections
import csv
import glob
import json
import os
import sys

METHOD = {0: "coarse", 1: "cosam-fixed:1", 2: "cosam-fixed:2", 3: "cosam-fixed:3"}
REFERENCE = "cosam-fixed:4"


def main(cases_csv, lodo):
    dice = collections.defaultdict(dict)
    with open(cases_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row["status"] == "ok":
                dice[(row["domain"], row["structure"])][row["method"]] = float(row["dice"])
    folds = {}
    for path in sorted(glob.glob(os.path.join(lodo, "*", "heads.json"))):
        with open(path) as f:
            folds[os.path.basename(os.path.dirname(path))] = set(json.load(f)["held_out_domains"])
    if not folds:
        sys.exit(f"rounds.py: no heads.json under {lodo}/*/")

    # fold -> T -> mean paired difference against four rounds on the fold's held-out cases
    diff = {}
    for fold, held in folds.items():
        cases = [d for (domain, _), d in dice.items() if domain in held and REFERENCE in d]
        if not cases:
            sys.exit(f"rounds.py: {cases_csv} has no {REFERENCE} row for fold {fold}")
        diff[fold] = {t: sum(d[m] - d[REFERENCE] for d in cases) / len(cases)
                      for t, m in METHOD.items()}
        shown = ", ".join(f"T={t} {v:+.4f}" for t, v in diff[fold].items())
        print(f"{fold} (n = {len(cases)}): against 4 rounds {shown}")

    def pick(on):
        mean = {t: sum(diff[f][t] for f in on) / len(on) for t in METHOD}
        return min((t for t, v in mean.items() if v >= 0.0), default=4), mean

    t, mean = pick(list(folds))
    shown = ", ".join(f"T={k} {v:+.4f}" for k, v in mean.items())
    print(f"every fold once: {shown}; the rule picks T = {t}")
    nested = []
    for fold in folds:
        t, _ = pick([f for f in folds if f != fold])
        held = diff[fold][t] if t in METHOD else 0.0
        nested.append(held)
        print(f"nested: {fold} gets T = {t} from the other folds; on its own domains {held:+.4f}")
    print(f"nested, mean over folds: {sum(nested) / len(nested):+.4f} "
          f"({'loses' if sum(nested) < 0 else 'does not lose'} against 4 rounds)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
