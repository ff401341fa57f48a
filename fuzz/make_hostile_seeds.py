"""Writes the small hostile seeds (the shapes of tests/hostile.rs) into fuzz/corpus/ (run from the repository
root with a Python that has pydicom):

    .venv-export/bin/python fuzz/make_hostile_seeds.py

Each is a few hundred bytes to a few kB: the shapes of the crafted inputs that once
aborted or misled the readers (tests/hostile.rs builds the full-size ones in temp
folders), so that mutations start from them.
"""
import gzip
import struct
from pathlib import Path

import pydicom

ROOT = Path(__file__).resolve().parent.parent
NIFTI = ROOT / "fuzz/corpus/nifti"
DICOM = ROOT / "fuzz/corpus/dicom"


def header(dims, datatype, bitpix, vox_offset, sform=None, qform=None):
    h = bytearray(348)
    struct.pack_into("<i", h, 0, 348)
    struct.pack_into("<8h", h, 40, 3, *dims, 1, 1, 1, 1)
    struct.pack_into("<hh", h, 70, datatype, bitpix)
    struct.pack_into("<8f", h, 76, *([1.0] * 8))
    struct.pack_into("<fff", h, 108, vox_offset, 1.0, 0.0)
    h[123] = 2
    rows = sform or [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]
    struct.pack_into("<hh", h, 252, 1 if qform else 0, 1 if sform is not False else 0)
    if qform:
        struct.pack_into("<3f", h, 256, *qform)
    struct.pack_into("<12f", h, 280, *[float(v) for r in rows for v in r])
    h[344:348] = b"n+1\0"
    return bytes(h)


def nifti(h, offset, data, ext=b""):
    body = bytearray(h) + bytearray(max(offset, 352) - 348)
    body[348 : 348 + len(ext)] = ext
    return bytes(body) + data


NIFTI.mkdir(parents=True, exist_ok=True)
DICOM.mkdir(parents=True, exist_ok=True)
# zero-size extension before the voxels
(NIFTI / "hostile_zero_ext.nii").write_bytes(
    nifti(header((4, 4, 2), 2, 8, 416.0), 416, bytes(32), ext=b"\x01\0\0\0" + bytes(8))
)
# voxels at 1024, junk before them, gzip
h = header((8, 6, 3), 4, 16, 1024.0)
body = bytearray(nifti(h, 1024, struct.pack("<144h", *range(144))))
body[352:1024] = b"\x7f" * 672
(NIFTI / "hostile_vox_offset.nii.gz").write_bytes(gzip.compress(bytes(body), 6))
# a header claiming 1024x1024x1000 with a short body (the bomb's header)
(NIFTI / "hostile_bomb_header.nii.gz").write_bytes(
    gzip.compress(nifti(header((1024, 1024, 1000), 2, 8, 352.0), 352, bytes(4096)), 9)
)
(NIFTI / "hostile_complex64.nii").write_bytes(nifti(header((4, 4, 1), 32, 64, 352.0), 352, bytes(128)))
(NIFTI / "hostile_bitpix.nii").write_bytes(nifti(header((4, 4, 1), 16, 8, 352.0), 352, bytes(64)))
rank1 = [[1, 1, 1, 0], [2, 2, 2, 0], [3, 3, 3, 0]]
(NIFTI / "hostile_rank1_sform.nii").write_bytes(
    nifti(header((4, 4, 2), 2, 8, 352.0, sform=rank1, qform=(0.0, 0.0, 0.0)), 352, bytes(32))
)
(NIFTI / "hostile_long_quaternion.nii").write_bytes(
    nifti(header((4, 4, 2), 2, 8, 352.0, sform=False, qform=(0.9, 0.9, 0.0)), 352, bytes(32))
)

src = ROOT / "tests/fixtures/io/dicom/MR_small.dcm"
ds = pydicom.dcmread(src)
ds.NumberOfFrames = 2147483647
ds.save_as(DICOM / "hostile_frames.dcm")
ds = pydicom.dcmread(src)
ds.PixelSpacing = [0, 0]
ds.ImageOrientationPatient = [1, 0, 0, 0.5, 0.8660254, 0]
ds.save_as(DICOM / "hostile_geometry.dcm")
(DICOM / "hostile_no_preamble.dcm").write_bytes(src.read_bytes()[128:])
