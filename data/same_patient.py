"""Are two benchmark label maps from the same scan? (Run through data/fetch's venv.)

    .venv-export/bin/python data/same_patient.py

Question from issue 14: TotalSegmentator ships example_ct_sm (our ts-ct-3mm) and
example_ct_dicom (our ts-ct-dicom-1mm) without saying whether they come from one patient,
and their world frames differ, so the affines cannot tell. If they were one scan, a fold
that holds one out would still train on the other.

Both label maps (TotalSegmentator's 117 classes) are resampled onto 3 mm RAS grids in their
own world frames; the translation that best overlaps them is searched exhaustively (every
z offset, 6 mm steps in-plane, then refined to 3 mm). The score is the share of labelled
voxels that carry the same class in both. A positive control runs the same search against
ts-ct-3mm's own label, resampled onto a grid shaped like the DICOM series (LAS, 0.977 mm,
20 slices of 2 mm) and moved to another world frame: a same-scan pair scores like that.
Thin rigid bones (ribs, vertebrae) are the fingerprint: they move little between
scans of one patient and differ between patients.
"""

import os
import sys

import nibabel as nib
import numpy as np
from scipy.ndimage import map_coordinates

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "data", "bench", "abdomen")
GRID_MM = 3.0
RIBS = range(92, 116)  # TotalSegmentator v2: rib_left_1 .. rib_right_12
VERTEBRAE = range(26, 51)  # vertebrae_S1 .. vertebrae_C1


def to_grid(volume, affine, grid_mm=GRID_MM, order=0):
    """Resampling (nearest-neighbour by default) onto a grid_mm RAS grid covering the
    volume, in its own world frame."""
    corners = np.array([[i, j, k, 1] for i in (0, volume.shape[0] - 1)
                        for j in (0, volume.shape[1] - 1)
                        for k in (0, volume.shape[2] - 1)]) @ affine.T
    lo, hi = corners[:, :3].min(0), corners[:, :3].max(0)
    axes = [np.arange(lo[d], hi[d] + 1e-6, grid_mm) for d in range(3)]
    world = np.stack([*np.meshgrid(*axes, indexing="ij"), np.ones([len(a) for a in axes])], -1)
    index = world @ np.linalg.inv(affine).T
    return map_coordinates(volume, [index[..., 0], index[..., 1], index[..., 2]], order=order)


def window(a, b, offset):
    """The overlapping parts of a and of b placed at voxel offset within a."""
    sa, sb = [], []
    for d in range(3):
        lo, hi = max(0, offset[d]), min(a.shape[d], offset[d] + b.shape[d])
        hi = max(lo, hi)  # no overlap: empty windows
        sa.append(slice(lo, hi))
        sb.append(slice(lo - offset[d], hi - offset[d]))
    return a[tuple(sa)], b[tuple(sb)]


def agreement(a, b, offset, min_slices=10):
    wa, wb = window(a, b, offset)
    if wa.size == 0 or wa.shape[2] < min_slices:
        return 0.0
    labelled = (wa > 0) | (wb > 0)
    return float(((wa == wb) & (wa > 0)).sum() / max(labelled.sum(), 1))


def best_offset(a, b):
    coarse = [(agreement(a, b, (x, y, z)), (x, y, z))
              for z in range(-b.shape[2] + 1, a.shape[2])
              for x in range(-b.shape[0], a.shape[0], 2)
              for y in range(-b.shape[1], a.shape[1], 2)]
    coarse.sort(reverse=True)
    fine = [(agreement(a, b, (x + i, y + j, z)), (x + i, y + j, z))
            for _, (x, y, z) in coarse[:5] for i in (-1, 0, 1) for j in (-1, 0, 1)]
    return max(fine)


def class_dice(a, b, offset, classes):
    wa, wb = window(a, b, offset)
    out = []
    for k in classes:
        na, nb = (wa == k).sum(), (wb == k).sum()
        if na + nb >= 40:
            out.append(2 * ((wa == k) & (wb == k)).sum() / (na + nb))
    return out


def report(name, a, b):
    score, offset = best_offset(a, b)
    ribs = class_dice(a, b, offset, RIBS)
    spine = class_dice(a, b, offset, VERTEBRAE)
    print(f"{name}: label agreement {score:.3f} at offset {offset} (3 mm voxels); "
          f"ribs: median Dice {np.median(ribs):.2f} over {len(ribs)}; "
          f"vertebrae: median Dice {np.median(spine):.2f} over {len(spine)}")


def main():
    ct = nib.load(os.path.join(BENCH, "ts-ct-3mm", "label.nii.gz"))
    dicom = nib.load(os.path.join(BENCH, "ts-ct-dicom-1mm", "label.nii.gz"))
    a = to_grid(np.asarray(ct.dataobj).astype(np.int16), ct.affine)
    report("ts-ct-3mm vs ts-ct-dicom-1mm", a,
           to_grid(np.asarray(dicom.dataobj).astype(np.int16), dicom.affine))

    # The control: ts-ct-3mm's label on a DICOM-like grid, in a world frame moved by a
    # translation the search does not know.
    grid = np.diag([-0.9765625, 0.9765625, 2.0, 1.0])
    grid[:3, 3] = [249.5, -61.5, -804.5]
    moved = ct.affine.copy()
    moved[:3, 3] += [-3.5, 26.0, -924.0]
    index = np.stack([*np.meshgrid(np.arange(512), np.arange(512), np.arange(20), indexing="ij"),
                      np.ones((512, 512, 20))], -1) @ (np.linalg.inv(moved) @ grid).T
    control = map_coordinates(np.asarray(ct.dataobj).astype(np.int16),
                              [index[..., 0], index[..., 1], index[..., 2]], order=0, cval=0)
    report("control (ts-ct-3mm vs itself on a DICOM-like grid)", a, to_grid(control, grid))


if __name__ == "__main__":
    sys.exit(main())
