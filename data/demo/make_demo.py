"""Builds data/demo/ from registry packages (run once, on purpose; the output is committed).

Sources (pinned, checksummed):
  - PyPI sdist totalsegmentator==2.18.0 (Apache-2.0): tests/reference_files/
      example_ct_dicom/ (Siemens CT series, JPEG 2000 lossless) + example_seg_dicom.nii.gz,
      example_ct_sm.nii.gz + example_seg.nii.gz, example_mr_sm.nii.gz + example_seg_mr.nii.gz.
    Their labels are TotalSegmentator's own predictions (pseudo ground truth).
  - Debian mricron-data 1.2.20211006+dfsg-4 (BSD-3-Clause): templates/ch2.nii.gz (Colin27
    T1) + ch2bet.nii.gz (brain-extracted; > 0 is the brain mask).

Usage (from the repository root, with the export environment of models/export):
  .venv-export/bin/python data/demo/make_demo.py
Needs: numpy, nibabel, pillow, pydicom, pylibjpeg-openjpeg (models/export/requirements.txt).
"""

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
TS_SDIST = ("totalsegmentator==2.18.0", "totalsegmentator-2.18.0.tar.gz")
MRICRON_DEB = "mricron-data"
TS_LABELS = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 5}
TS_LICENSE = "Apache-2.0 (TotalSegmentator 2.18.0 sdist, tests/reference_files)"
MRICRON_LICENSE = "BSD-3-Clause (Debian mricron-data, templates)"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(work):
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
         "totalsegmentator", "--use-deprecated=legacy-resolver", TS_SDIST[0], "-d", work],
        check=True)
    with tarfile.open(os.path.join(work, TS_SDIST[1])) as t:
        t.extractall(work, filter="data")
    subprocess.run(["apt-get", "download", MRICRON_DEB], cwd=work, check=True)
    deb = glob.glob(os.path.join(work, "mricron-data_*.deb"))[0]
    subprocess.run(["dpkg-deb", "-x", deb, os.path.join(work, "mricron")], check=True)
    ts = os.path.join(work, "totalsegmentator-2.18.0", "tests", "reference_files")
    mricron = os.path.join(work, "mricron", "usr", "share", "mricron", "templates")
    return ts, mricron


def bbox(mask, margin):
    rows, cols = np.nonzero(mask)
    h, w = mask.shape
    return [int(max(cols.min() - margin, 0)), int(max(rows.min() - margin, 0)),
            int(min(cols.max() + margin, w - 1)), int(min(rows.max() + margin, h - 1))]


def margin_for(shape):
    """About 1% of the longest side, at least one pixel: a tight box with a little slack."""
    return max(1, int(round(0.01 * max(shape))))


def to_display(slice_ras):
    """A RAS-ordered axial slice [i, j] to a radiological display image [row, col]:
    anterior at the top, the patient's right on the image's left."""
    return np.flipud(slice_ras.T)[:, ::-1]


def save_png(array_u8, name):
    Image.fromarray(np.ascontiguousarray(array_u8)).save(os.path.join(HERE, name), optimize=True)


def window_u8(hu, center, width):
    lo, hi = center - width / 2, center + width / 2
    return np.round((np.clip(hu, lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8)


def percentile_u8(x):
    nz = x[x > 0]
    lo, hi = np.percentile(nz, 0.5), np.percentile(nz, 99.5)
    return np.round((np.clip(x, lo, hi) - lo) / max(hi - lo, 1e-8) * 255).astype(np.uint8)


def dicom_case(ts, cases):
    """One slice of the CT series, with liver and spleen masks resampled from the label map
    through both files' world coordinates (so it also checks that they line up)."""
    files = sorted(glob.glob(os.path.join(ts, "example_ct_dicom", "*")))
    seg_img = nib.load(os.path.join(ts, "example_seg_dicom.nii.gz"))
    seg = np.asanyarray(seg_img.dataobj)
    inv = np.linalg.inv(seg_img.affine)
    best = None
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        rows, cols = int(ds.Rows), int(ds.Columns)
        ipp = np.array(ds.ImagePositionPatient, float)
        iop = np.array(ds.ImageOrientationPatient, float)
        dr, dc = (float(v) for v in ds.PixelSpacing)
        r, c = np.mgrid[0:rows, 0:cols]
        lps = ipp[None, None, :] + c[..., None] * iop[:3] * dc + r[..., None] * iop[3:] * dr
        ras = lps * np.array([-1, -1, 1])
        ijk = np.einsum("ij,rcj->rci", inv[:3, :3], ras) + inv[:3, 3]
        idx = np.rint(ijk).astype(int)
        if not (np.abs(ijk - idx).max() < 1e-3):
            raise SystemExit("DICOM slice and label map do not share a grid: " + f)
        labels = seg[idx[..., 0], idx[..., 1], idx[..., 2]]
        area = int((labels == TS_LABELS["liver"]).sum())
        if best is None or area > best[0]:
            best = (area, f, labels)
    _, path, labels = best
    shutil.copyfile(path, os.path.join(HERE, "ct_abdomen_slice.dcm"))
    for name in ("liver", "spleen"):
        ref = (labels == TS_LABELS[name]).astype(np.uint8)
        save_png(ref * 255, f"ct_{name}_ref.png")
        cases.append({
            "id": f"ct_{name}", "input": "ct_abdomen_slice.dcm", "reference": f"ct_{name}_ref.png",
            "label": name, "box": bbox(ref, margin_for(ref.shape)),
            "source": f"TotalSegmentator 2.18.0 example_ct_dicom/{os.path.basename(path)}; "
                      "reference from example_seg_dicom.nii.gz (model output, pseudo ground truth)",
            "license": TS_LICENSE, "min_dice": 0.80})


def nifti_volume_case(ts, cases):
    """The small CT volume as it ships, with the liver label as a NIfTI mask; the box is the
    union of the liver's extent over five central slices."""
    ct = nib.load(os.path.join(ts, "example_ct_sm.nii.gz"))
    seg = np.asanyarray(nib.load(os.path.join(ts, "example_seg.nii.gz")).dataobj)
    shutil.copyfile(os.path.join(ts, "example_ct_sm.nii.gz"), os.path.join(HERE, "ct_abdomen.nii.gz"))
    liver = (seg == TS_LABELS["liver"]).astype(np.uint8)
    ref = nib.Nifti1Image(liver, ct.affine, ct.header)
    ref.set_data_dtype(np.uint8)
    ref.header.set_slope_inter(1, 0)
    nib.save(ref, os.path.join(HERE, "ct_abdomen_liver_ref.nii.gz"))
    areas = liver.sum(axis=(0, 1))
    k = int(np.argmax(areas))
    lo, hi = k - 2, k + 2
    # cosam stores a slice as [row j, column i]: the box's x is i, y is j.
    union = liver[:, :, lo:hi + 1].max(axis=2).T
    cases.append({
        "id": "ct_liver_volume", "input": "ct_abdomen.nii.gz", "reference": "ct_abdomen_liver_ref.nii.gz",
        "label": "liver", "box": bbox(union, 1), "slices": [lo, hi],
        "source": "TotalSegmentator 2.18.0 example_ct_sm.nii.gz (3 mm CT); reference from "
                  "example_seg.nii.gz label 5 (model output, pseudo ground truth)",
        "license": TS_LICENSE, "min_dice": 0.80})


def mr_case(ts, cases):
    mr = nib.as_closest_canonical(nib.load(os.path.join(ts, "example_mr_sm.nii.gz")))
    seg = np.asanyarray(nib.as_closest_canonical(
        nib.load(os.path.join(ts, "example_seg_mr.nii.gz"))).dataobj)
    data = np.asanyarray(mr.dataobj).astype(np.float32)
    liver = seg == TS_LABELS["liver"]
    k = int(np.argmax(liver.sum(axis=(0, 1))))
    image = to_display(percentile_u8(data)[:, :, k])
    ref = to_display(liver[:, :, k]).astype(np.uint8)
    save_png(image, "mr_abdomen.png")
    save_png(ref * 255, "mr_liver_ref.png")
    cases.append({
        "id": "mr_liver", "input": "mr_abdomen.png", "reference": "mr_liver_ref.png", "label": "liver",
        "box": bbox(ref, margin_for(ref.shape)),
        "source": f"TotalSegmentator 2.18.0 example_mr_sm.nii.gz axial slice {k} (RAS), clipped at the "
                  "0.5/99.5 percentiles of non-zero voxels; reference from example_seg_mr.nii.gz label 5 "
                  "(model output, pseudo ground truth)",
        "license": TS_LICENSE, "min_dice": 0.80})


def mr_volume(ts):
    """Three axial slices of the abdominal MR through the liver, stored LPS (the CT volume is
    stored RAS), with the four organs' labels: the storage-order tests segment both."""
    mr = nib.as_closest_canonical(nib.load(os.path.join(ts, "example_mr_sm.nii.gz")))
    seg = nib.as_closest_canonical(nib.load(os.path.join(ts, "example_seg_mr.nii.gz")))
    data = np.asanyarray(mr.dataobj)
    labels = np.asanyarray(seg.dataobj)
    k = int(np.argmax((labels == TS_LABELS["liver"]).sum(axis=(0, 1))))
    k = min(max(k, 1), data.shape[2] - 2)
    keep = np.zeros_like(labels, dtype=np.uint8)
    for value in TS_LABELS.values():
        keep[labels == value] = value
    ras_to_lps = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(("R", "A", "S")), nib.orientations.axcodes2ornt(("L", "P", "S")))
    for array, name, dtype in [(data, "mr_abdomen.nii.gz", data.dtype), (keep, "mr_abdomen_labels.nii.gz", np.uint8)]:
        cropped = nib.Nifti1Image(np.asarray(array[:, :, k - 1:k + 2], dtype=dtype),
                                  mr.slicer[:, :, k - 1:k + 2].affine)
        lps = cropped.as_reoriented(ras_to_lps)
        lps.set_qform(lps.affine, code=1)
        lps.set_sform(lps.affine, code=1)
        nib.save(lps, os.path.join(HERE, name))


def brain_case(mricron, cases):
    t1 = nib.load(os.path.join(mricron, "ch2.nii.gz"))
    bet = np.asanyarray(nib.load(os.path.join(mricron, "ch2bet.nii.gz")).dataobj)
    k = 100
    image = to_display(np.asanyarray(t1.dataobj)[:, :, k]).astype(np.uint8)
    ref = to_display(bet[:, :, k] > 0).astype(np.uint8)
    save_png(image, "brain_t1.png")
    save_png(ref * 255, "brain_ref.png")
    cases.append({
        "id": "brain", "input": "brain_t1.png", "reference": "brain_ref.png", "label": "brain",
        "box": bbox(ref, margin_for(ref.shape)),
        "source": f"Colin27 ch2.nii.gz axial slice {k} (1 mm, RAS); reference ch2bet.nii.gz > 0 "
                  "(manual brain extraction)",
        "license": MRICRON_LICENSE, "min_dice": 0.60,
        "note": "Box-only LiteMedSAM covers about two thirds of the brain here (Dice 0.68, "
                "cargo test --release demo_cases -- --nocapture); extra positive points make it worse "
                "because the model was trained with boxes only. Prompt-free brain extraction is what the "
                "trained CoSAM heads are for."})


def main():
    work = tempfile.mkdtemp(prefix="cosam-demo-")
    try:
        ts, mricron = fetch(work)
        cases = []
        dicom_case(ts, cases)
        nifti_volume_case(ts, cases)
        mr_case(ts, cases)
        mr_volume(ts)
        brain_case(mricron, cases)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    files = sorted({c["input"] for c in cases} | {c["reference"] for c in cases}
                   | {"mr_abdomen.nii.gz", "mr_abdomen_labels.nii.gz"})
    manifest = {
        "about": "Demo cases for `cosam segment --cases data/demo/cases.json`. Boxes are "
                 "[x0, y0, x1, y1] in source pixels (x = column), a tight box around the "
                 "reference plus about 1% of the image side. Built by data/demo/make_demo.py. "
                 "min_dice is the floor tests/pipeline.rs holds each case to.",
        "cases": cases,
        "files": {f: sha256(os.path.join(HERE, f)) for f in files},
    }
    with open(os.path.join(HERE, "cases.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    for c in cases:
        print(c["id"], c["input"], c["box"], c.get("slices"))


if __name__ == "__main__":
    main()
