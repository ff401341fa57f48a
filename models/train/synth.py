"""Synthesises domain-randomised training volumes from a dataset's label maps.

  .venv-export/bin/python models/train/synth.py --dataset data/bench/manifest.json \
      --task abdomen --per-case 16 -o models/train/synth/abdomen
  target/release/cosam export-training --dataset models/train/synth/abdomen/manifest.json \
      --task abdomen -o models/train/data-synth/abdomen

Each source case (the real, non-synthetic cases of the task) gives `--per-case` short
slabs of slices, written as NIfTI with the source's geometry and a `cosam-dataset/1`
manifest, so that the slabs go through cosam's own readers, model frame and encoder like
any other case. A slab is one of two kinds (SynthSeg, Billot et al. 2023; SynthStrip,
Hoopes et al. 2022):

- `labels`: an image drawn from a generation label map alone: a random mean and standard
  deviation per label (so contrasts, inverted ones included, are arbitrary), partial-volume
  blur. The generation map is the reference label map with every class it holds (the
  TotalSegmentator maps: 24-42 classes here), its background split into intensity
  clusters of the real image (k-means), and for the brain the brain mask split into three
  tissue clusters and the head outside it into three more.
- `real`: the real image, its intensities rescaled and, one time in four, inverted.

Both then get the same corruptions: an in-plane rotation (+-15 degrees, never a flip: the
model frame fixes the anatomy's orientation), scaling, an elastic deformation, a
multiplicative bias field, gamma, resampling to a coarser in-plane resolution (up to
6 mm) and back, through-plane blur and noise. The reference labels move with the image.

Domains are named SOURCE+synthNN, so `train.py --hold-out SOURCE` leaves a patient's
synthetic slabs out together with the patient.
"""

import argparse
import json
import os

import nibabel as nib
import numpy as np
from scipy import ndimage

MANIFEST_FORMAT = "cosam-dataset/1"
MAX_SPACING_MM = 6.0
ROTATION_DEG = 15.0
# background / outside-brain intensity clusters get labels from here up (above any
# TotalSegmentator class)
CLUSTER_BASE = 240


def kmeans_1d(values, k, iters=20):
    """Cluster index of each value (k-means on intensities, quantile start)."""
    centres = np.quantile(values, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        idx = np.abs(values[:, None] - centres[None, :]).argmin(1)
        for c in range(k):
            if (idx == c).any():
                centres[c] = values[idx == c].mean()
    return np.abs(values[:, None] - centres[None, :]).argmin(1)


def split_by_intensity(gen, region, image, k, base):
    """Gives the voxels of `region` the labels base..base+k-1 by intensity cluster."""
    if image is None or region.sum() < k:
        gen[region] = base
        return
    v = image[region].astype(np.float64)
    gen[region] = base + kmeans_1d(v, k)


def dicom_in_grid(series_dir, ref):
    """A DICOM series resampled (nearest voxel) onto a NIfTI's grid."""
    # pydicom decodes the series' JPEG 2000 through Pillow; without it the case would lose
    # its `real` slabs and its intensity clusters unnoticed (the slabs before session 17 did)
    try:
        import pydicom
    except ImportError:
        raise SystemExit(f"{series_dir}: a DICOM series needs pydicom "
                         "(pip install -r models/train/requirements.txt)")
    slices = []
    for name in sorted(os.listdir(series_dir)):
        d = pydicom.dcmread(os.path.join(series_dir, name))
        hu = d.pixel_array.astype(np.float32) * float(getattr(d, "RescaleSlope", 1)) \
            + float(getattr(d, "RescaleIntercept", 0))
        slices.append((np.array(d.ImagePositionPatient, float),
                       np.array(d.ImageOrientationPatient, float),
                       np.array(d.PixelSpacing, float), hu))
    row_dir, col_dir = slices[0][1][:3], slices[0][1][3:]
    normal = np.cross(row_dir, col_dir)
    z = np.array([s[0] @ normal for s in slices])
    out = np.full(ref.shape, -1024.0, np.float32)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in ref.shape], indexing="ij"), -1)
    ras = ijk.reshape(-1, 3) @ ref.affine[:3, :3].T + ref.affine[:3, 3]
    lps = ras * np.array([-1.0, -1.0, 1.0])
    which = np.abs((lps @ normal)[:, None] - z[None, :]).argmin(1)
    flat = out.reshape(-1)
    for n, (origin, _, spacing, hu) in enumerate(slices):
        sel = np.nonzero(which == n)[0]
        rel = lps[sel] - origin
        col = np.rint(rel @ row_dir / spacing[1]).astype(int)
        row = np.rint(rel @ col_dir / spacing[0]).astype(int)
        ok = (row >= 0) & (row < hu.shape[0]) & (col >= 0) & (col < hu.shape[1])
        flat[sel[ok]] = hu[row[ok], col[ok]]
    return out


def load_source(case, base):
    label_img = nib.load(os.path.join(base, case["label"]))
    label = np.asarray(label_img.dataobj).astype(np.int32)
    path = os.path.join(base, case["image"])
    if os.path.isdir(path):
        image = dicom_in_grid(path, label_img)
    else:
        img = nib.load(path)
        image = np.asarray(img.dataobj, dtype=np.float32)
        if image.shape != label.shape or not np.allclose(img.affine, label_img.affine, atol=1e-3):
            raise SystemExit(f"{path}: image and label grids differ; synth.py needs them equal")
    return label_img.affine, label_img.header.get_zooms()[:3], label, image


def generation_map(task, label, image, labels):
    """The label map images are drawn from (see the module docs)."""
    gen = np.zeros(label.shape, np.int32)
    if task == "brain":
        brain = label == labels["brain"]
        head = ~brain
        split_by_intensity(gen, brain, image, 3, 1)
        split_by_intensity(gen, head, image, 3, CLUSTER_BASE)
    else:
        gen[:] = label
        split_by_intensity(gen, label == 0, image, 3, CLUSTER_BASE)
    return gen


def slice_axis(affine):
    """The storage axis closest to superior-inferior (the axial slice axis)."""
    return int(np.argmax(np.abs(affine[2, :3]) / np.linalg.norm(affine[:3, :3], axis=0)))


def smooth_field(rng, shape, grid, sigma):
    """A random field N(0, sigma) on a coarse grid, cubic-upsampled to `shape`."""
    coarse = rng.normal(0, sigma, size=grid)
    return ndimage.zoom(coarse, [s / g for s, g in zip(shape, grid)], order=3,
                        mode="nearest")[tuple(slice(0, s) for s in shape)]


def deform(rng, arrays, orders, spacing):
    """One random in-plane similarity plus elastic warp applied to every array (axis 2 is
    the slice axis after `axes` transposition)."""
    shape = arrays[0].shape
    sp = np.array(spacing, float)
    theta = np.deg2rad(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
    scale = rng.uniform(0.85, 1.2)
    c, s = np.cos(theta) / scale, np.sin(theta) / scale
    p, q, z = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    cp, cq = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    xm, ym = (p - cp) * sp[0], (q - cq) * sp[1]
    shift = rng.normal(0, 8, size=2)  # mm
    elastic_mm = rng.uniform(0, 4)
    grid = (5, 5, max(1, min(3, shape[2])))
    dx = smooth_field(rng, shape, grid, elastic_mm)
    dy = smooth_field(rng, shape, grid, elastic_mm)
    src_p = (c * xm - s * ym + shift[0] + dx) / sp[0] + cp
    src_q = (s * xm + c * ym + shift[1] + dy) / sp[1] + cq
    coords = np.stack([src_p, src_q, z])
    return [ndimage.map_coordinates(a, coords, order=o, mode="nearest") for a, o in zip(arrays, orders)]


def rescale01(x, lo_q=0.5, hi_q=99.5):
    v = x[x != 0] if (x != 0).any() else x.ravel()
    lo, hi = np.percentile(v, [lo_q, hi_q])
    return np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1)


def corrupt(rng, x, spacing):
    """Bias field, gamma, coarser in-plane resolution, through-plane blur, noise."""
    shape = x.shape
    bias = np.exp(smooth_field(rng, shape, (4, 4, max(1, min(2, shape[2]))), rng.uniform(0, 0.35)))
    x = x * bias
    x = rescale01(x, 0.0, 100.0) ** np.exp(rng.normal(0, 0.3))
    if rng.random() < 0.7:
        target = rng.uniform(min(spacing[:2]), MAX_SPACING_MM)
        factors = [min(1.0, spacing[0] / target), min(1.0, spacing[1] / target), 1.0]
        if min(factors) < 0.95:
            sigma = [0.4 / f if f < 1 else 0 for f in factors]
            low = ndimage.zoom(ndimage.gaussian_filter(x, sigma), factors, order=1)
            x = ndimage.zoom(low, [s / l for s, l in zip(shape, low.shape)], order=1)
            x = x[:shape[0], :shape[1], :shape[2]]
            if x.shape != shape:
                x = np.pad(x, [(0, s - n) for s, n in zip(shape, x.shape)], mode="edge")
    if rng.random() < 0.5:
        x = ndimage.gaussian_filter1d(x, rng.uniform(0.2, 1.0), axis=2)
    x = x + rng.normal(0, rng.uniform(0, 0.05), size=shape)
    return np.clip(x, 0, None)


def draw_from_labels(rng, gen):
    values = np.unique(gen)
    mean = dict(zip(values, rng.uniform(0, 1, len(values))))
    std = dict(zip(values, rng.uniform(0, 0.08, len(values))))
    lut_m = np.zeros(values.max() + 1, np.float32)
    lut_s = np.zeros(values.max() + 1, np.float32)
    for v in values:
        lut_m[v], lut_s[v] = mean[v], std[v]
    x = lut_m[gen] + lut_s[gen] * rng.standard_normal(gen.shape).astype(np.float32)
    return ndimage.gaussian_filter(x, [rng.uniform(0, 1), rng.uniform(0, 1), 0])


def slab(rng, n, want):
    """Indices of a random slab: `want` slices at stride 1 or 2, inside 0..n."""
    stride = 2 if n >= 2 * want and rng.random() < 0.5 else 1
    length = min(want, (n - 1) // stride + 1)
    start = int(rng.integers(0, n - (length - 1) * stride))
    return start, stride, start + stride * np.arange(length)


def make_variant(rng, task, src, k, kind, want):
    affine, spacing, label, image, gen, labels = src
    ax = slice_axis(affine)
    start, stride, idx = slab(rng, label.shape[ax], want)
    # work with the slice axis last
    order = [a for a in range(3) if a != ax] + [ax]
    inv = np.argsort(order)
    take = lambda a: np.transpose(np.take(a, idx, axis=ax), order)  # noqa: E731
    sp = [spacing[a] for a in order]
    task_label = np.where(np.isin(label, list(labels.values())), label, 0)
    arrays = [take(gen), take(task_label)]
    if kind == "real":
        real = rescale01(image)
        if rng.random() < 0.25:
            real = 1.0 - real
        arrays.append(take(real).astype(np.float32))
    warped = deform(rng, arrays, [0, 0, 1][:len(arrays)], sp)
    lab = warped[1]
    x = draw_from_labels(rng, warped[0]) if kind == "labels" else warped[2]
    x = corrupt(rng, x.astype(np.float32), sp)
    x = (1000.0 * x / max(float(x.max()), 1e-6)).astype(np.float32)
    new_affine = affine.copy()
    new_affine[:3, 3] = affine[:3, :3] @ np.eye(3)[ax] * start + affine[:3, 3]
    new_affine[:3, ax] = affine[:3, ax] * stride
    return np.transpose(x, inv), np.transpose(lab, inv).astype(np.uint8), new_affine


def write_nifti(array, affine, path):
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    tmp = path.replace(".nii.gz", ".partial.nii.gz")
    nib.save(img, tmp)
    os.replace(tmp, path)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="cosam-dataset/1 manifest of the real cases")
    p.add_argument("--task", required=True)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--per-case", type=int, default=16, help="slabs per source case")
    p.add_argument("--slices", type=int, default=10, help="slices per slab")
    p.add_argument("--labels-share", type=float, default=0.6,
                   help="share of slabs drawn from label maps alone (the rest: real intensities)")
    p.add_argument("--seed", type=int, default=20261129)
    args = p.parse_args()
    manifest = json.load(open(args.dataset))
    base = os.path.dirname(os.path.abspath(args.dataset))
    sources = [c for c in manifest["cases"] if c["task"] == args.task and not c.get("synthetic")]
    if not sources:
        raise SystemExit(f"{args.dataset}: no real cases of task {args.task}")
    os.makedirs(args.output, exist_ok=True)
    cases = []
    for n, case in enumerate(sources):
        affine, spacing, label, image = load_source(case, base)
        gen = generation_map(args.task, label, image, case["labels"])
        src = (affine, spacing, label, image, gen, case["labels"])
        print(f"{case['id']}: {label.shape}, {len(np.unique(gen))} generation labels", flush=True)
        for k in range(args.per_case):
            rng = np.random.default_rng([args.seed, n, k])
            kind = "labels" if image is None or rng.random() < args.labels_share else "real"
            domain = f"{case['domain']}+synth{k:02d}"
            out = os.path.join(args.output, domain)
            os.makedirs(out, exist_ok=True)
            x, lab, aff = make_variant(rng, args.task, src, k, kind, args.slices)
            write_nifti(x, aff, os.path.join(out, "image.nii.gz"))
            write_nifti(lab, aff, os.path.join(out, "label.nii.gz"))
            cases.append({
                "id": f"{args.task}/{domain}", "task": args.task, "domain": domain,
                "image": f"{domain}/image.nii.gz", "label": f"{domain}/label.nii.gz",
                "labels": case["labels"], "synthetic": True, "shift": f"synth-{kind}",
                "label_kind": case.get("label_kind", ""),
                "spacing_source": case.get("spacing_source", ""),
                "source": f"{case['id']} via models/train/synth.py (seed {args.seed}, {kind})",
            })
    path = os.path.join(args.output, "manifest.json")
    with open(path + ".partial", "w") as f:
        json.dump({"format": MANIFEST_FORMAT,
                   "about": "Domain-randomised training slabs written by models/train/synth.py "
                            f"from {args.dataset}; paths are relative to this file.",
                   "cases": cases}, f, indent=1)
    os.replace(path + ".partial", path)
    print(f"wrote {len(cases)} slabs to {args.output}", flush=True)


if __name__ == "__main__":
    main()
