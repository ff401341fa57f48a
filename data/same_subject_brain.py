"""Is the ITK brain scan Colin27's anatomy? (Run through data/fetch's venv.)

    .venv-export/bin/python data/same_subject_brain.py

Question from issue 14 (models/train/README.md, History 17): ITK ships
KmeansTest_T1UCharRaw (our itk-kmeans-t1) without saying whose head it is. If it is a
BrainWeb phantom, it was simulated from Colin Holmes's anatomy, the colin27 scan the brain
fold without itk-kmeans-t1 trains on, and that fold's "unseen" row would be a seen subject.

Each scan and its brain mask are resampled (trilinear, then the mask at 0.5) onto a 2 mm
RAS grid in its own world frame. The world frames differ, so the translation that best
overlaps the brain masks is searched exhaustively (by FFT, 2 mm steps), for each rotation
of the second scan by up to 8 degrees about each axis (4 degree steps); the rotation with
the best intensity correlation is kept. At that offset two things are
compared inside both masks: the Pearson correlation of the intensities, each standardised
within the mask, and the Dice of the darkest 15% of voxels (ventricles and sulci: their
shape differs between people, and a brain mask alone does not). Controls: colin27 against
itself moved onto an ITK-like grid (2 x 3 x 6 mm, another world origin) is what one subject
scores; colin27 against the ROBEX atlas, another head, is what two do.
"""

import itertools
import os
import sys

import nibabel as nib
import numpy as np
from scipy.ndimage import affine_transform, map_coordinates
from scipy.signal import fftconvolve

from same_patient import to_grid, window

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "data", "bench", "brain")
GRID_MM = 2.0
DARK_SHARE = 0.15
ROTATIONS = (-8, -4, 0, 4, 8)  # degrees about each axis


def load(domain):
    image = nib.load(os.path.join(BENCH, domain, "image.nii.gz"))
    mask = nib.load(os.path.join(BENCH, domain, "label.nii.gz"))
    return (np.asarray(image.dataobj, dtype=np.float32).squeeze(), image.affine,
            np.asarray(mask.dataobj, dtype=np.float32).squeeze() > 0)


def scan(image, affine, mask):
    return (to_grid(image, affine, GRID_MM, order=1),
            to_grid(mask.astype(np.float32), affine, GRID_MM, order=1) > 0.5)


def best_offset(a, b):
    """The offset of b within a with the largest brain-mask overlap, and its Dice."""
    overlap = fftconvolve(a.astype(np.float32), b[::-1, ::-1, ::-1].astype(np.float32))
    peak = np.unravel_index(np.argmax(overlap), overlap.shape)
    offset = tuple(int(p - (n - 1)) for p, n in zip(peak, b.shape))
    return 2 * overlap[peak] / (a.sum() + b.sum()), offset


def standardised(values):
    return (values - values.mean()) / max(values.std(), 1e-6)


def rotated(volume, degrees, order):
    """volume rotated about its centre by x, y, z angles (degrees)."""
    rx, ry, rz = np.radians(degrees)
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    matrix = (np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
              @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
              @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]))
    centre = (np.array(volume.shape) - 1) / 2
    return affine_transform(volume.astype(np.float32), matrix, centre - matrix @ centre,
                            order=order, cval=0)


def scores(first, second):
    (ia, ma), (ib, mb) = first, second
    dice, offset = best_offset(ma, mb)
    wia, wib = window(ia, ib, offset)
    wma, wmb = window(ma, mb, offset)
    inside = wma & wmb
    a, b = standardised(wia[inside]), standardised(wib[inside])
    dark_a, dark_b = a < np.quantile(a, DARK_SHARE), b < np.quantile(b, DARK_SHARE)
    dark = 2 * (dark_a & dark_b).sum() / max(dark_a.sum() + dark_b.sum(), 1)
    return float((a * b).mean()), dice, offset, dark, int(inside.sum())


def compare(name, first, second):
    """The best intensity correlation over rotations of the second scan within ROTATIONS."""
    image, mask = second
    best = max((scores(first, (rotated(image, r, 1), rotated(mask, r, 1) > 0.5)), r)
               for r in itertools.product(ROTATIONS, repeat=3))
    (correlation, dice, offset, dark, voxels), rotation = best
    print(f"{name}: intensity correlation {correlation:.3f}, darkest {DARK_SHARE:.0%} Dice "
          f"{dark:.3f}, brain-mask Dice {dice:.3f}, over {voxels} voxels, at rotation "
          f"{rotation} degrees and offset {offset} ({GRID_MM:g} mm voxels)")


def main():
    colin = load("colin27")
    colin_grid = scan(*colin)

    # The control: colin27 resampled onto a grid like the ITK scan's, in a world frame
    # moved by a translation the search does not know.
    image, affine, mask = colin
    itk_like = np.diag([2.0, 3.0, 6.0, 1.0])
    itk_like[:3, 3] = [-254.0, -254.0, 0.0]
    moved = affine.copy()
    moved[:3, 3] += [-161.0, -127.0, 76.0]
    shape = (128, 62, 43)
    index = np.stack([*np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"),
                      np.ones(shape)], -1) @ (np.linalg.inv(moved) @ itk_like).T
    coords = [index[..., 0], index[..., 1], index[..., 2]]
    control = (map_coordinates(image, coords, order=1, cval=0),
               itk_like, map_coordinates(mask.astype(np.float32), coords, order=1) > 0.5)

    compare("colin27 vs itk-kmeans-t1", colin_grid, scan(*load("itk-kmeans-t1")))
    compare("control, one subject: colin27 vs itself on an ITK-like grid", colin_grid,
            scan(*control))
    compare("control, two subjects: colin27 vs robex-atlas", colin_grid,
            scan(*load("robex-atlas")))
    compare("control, two subjects: itk-kmeans-t1 vs robex-atlas", scan(*load("itk-kmeans-t1")),
            scan(*load("robex-atlas")))


if __name__ == "__main__":
    sys.exit(main())
