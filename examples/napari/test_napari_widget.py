"""The napari widget driven as a user drives it, headless: open the demo CT volume, draw a
box around the liver with the mouse, wait for the embed worker, click inside the liver,
click again, and read the labels layer.

Run: ``QT_QPA_PLATFORM=offscreen xvfb-run -a python -m pytest examples/napari``. With an X
display (Xvfb) the test uses a full ``napari.Viewer`` (canvas, OpenGL through Mesa);
without one, Qt's offscreen platform has no OpenGL, and the test drives the same widget on
a ``ViewerModel`` (layers and dims, no canvas) unless ``COSAM_TEST_NAPARI_CANVAS=1``, which
CI sets so that the canvas path really runs there.
"""

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import nibabel as nib  # noqa: E402
import napari  # noqa: E402
from napari.qt import get_qapp  # noqa: E402
from napari.utils._proxies import ReadOnlyWrapper  # noqa: E402
from napari.utils.interactions import (  # noqa: E402
    mouse_move_callbacks,
    mouse_press_callbacks,
    mouse_release_callbacks,
)
from qtpy.QtWidgets import QApplication  # noqa: E402

import cosam  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cosam_napari as cn  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "data" / "demo"
SLICE = 24  # the middle of the demo case's slices 22..26
#: Measured on the demo slice (NOTES-15b.md): Dice 0.974 after the box, 0.971 and 0.969
#: after one and two clicks.
MIN_DICE = 0.9


@dataclass
class MouseEvent:
    """What napari's mouse callbacks read from a vispy mouse event (napari's own tests
    use the same fields)."""

    type: str
    position: tuple  # world coordinates (mm here: the layers carry the voxel spacing)
    is_dragging: bool = False
    button: int = 1
    modifiers: list = field(default_factory=list)
    pos: np.ndarray = field(default_factory=lambda: np.zeros(2))  # canvas pixels
    view_direction: list | None = None
    up_direction: list | None = None
    dims_displayed: list = field(default_factory=lambda: [1, 2])
    delta: tuple | None = None
    native: object = None
    handled: bool = False


def event(kind, layer, zyx, **kw):
    world = tuple(float(v) for v in layer.data_to_world(np.asarray(zyx, float)))
    return ReadOnlyWrapper(MouseEvent(kind, world, **kw), exceptions=("handled",))


def drag(layer, start_zyx, end_zyx):
    """Press at start, move to end in a few steps, release: a mouse drag on ``layer``."""
    mouse_press_callbacks(layer, event("mouse_press", layer, start_zyx))
    for t in (0.25, 0.5, 0.75, 1.0):
        zyx = np.asarray(start_zyx, float) + t * (np.asarray(end_zyx, float) - start_zyx)
        mouse_move_callbacks(layer, event("mouse_move", layer, zyx, is_dragging=True))
    mouse_release_callbacks(layer, event("mouse_release", layer, end_zyx))


def click(viewer, layer, zyx, modifiers=()):
    viewer.layers.selection.active = layer
    layer.mode = "add"
    mods = list(modifiers)
    mouse_press_callbacks(layer, event("mouse_press", layer, zyx, modifiers=mods))
    mouse_release_callbacks(layer, event("mouse_release", layer, zyx, modifiers=mods))


def wait_until(condition, widget=None, timeout_s=300.0):
    """Runs the Qt event loop (the worker's results arrive through it) until ``condition``
    holds; fails at once when the widget reports an error."""
    t0 = time.perf_counter()
    while not condition():
        QApplication.processEvents()
        if widget is not None and widget.last_error:
            raise AssertionError(f"the widget reports: {widget.last_error}")
        if time.perf_counter() - t0 > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:.0f} s")
        time.sleep(0.01)
    return time.perf_counter() - t0


def dice(a, b):
    a, b = a > 0, b > 0
    return 2 * np.sum(a & b) / (a.sum() + b.sum())


def liver_box():
    cases = json.loads((DEMO / "cases.json").read_text())["cases"]
    return next(c for c in cases if c["id"] == "ct_liver_volume")["box"]


@pytest.fixture(scope="module")
def segmenter():
    return cosam.Segmenter(threads=2)


@pytest.fixture
def viewer():
    with_canvas = bool(os.environ.get("DISPLAY"))
    if os.environ.get("COSAM_TEST_NAPARI_CANVAS") == "1" and not with_canvas:
        pytest.fail("COSAM_TEST_NAPARI_CANVAS=1 but no X display: run under xvfb-run")
    get_qapp()  # the widget is a QWidget and the worker a QRunnable, with or without canvas
    if with_canvas:
        v = napari.Viewer(show=True)  # shown, as a user has it (offscreen: no real window)
    else:
        from napari.components import ViewerModel

        v = ViewerModel()
    yield v
    if with_canvas:
        v.close()


@pytest.fixture
def widget(viewer, segmenter):
    w = cn.CosamWidget(viewer, segmenter=segmenter)
    if hasattr(viewer, "window"):
        viewer.window.add_dock_widget(w, name="cosam")
    yield w
    wait_until(lambda: not w.busy())


def test_box_then_clicks_segment_the_liver_and_refine(viewer, widget, segmenter):
    widget.open_path(DEMO / "ct_abdomen.nii.gz")
    assert viewer.layers[cn.IMAGE_LAYER].data.shape == (30, 101, 122)
    viewer.dims.set_current_step(0, SLICE)
    assert widget.current_slice() == SLICE
    ref = nib.load(DEMO / "ct_abdomen_liver_ref.nii.gz").get_fdata()[:, :, SLICE].T > 0
    labels = viewer.layers[cn.MASK_LAYER]

    # Draw the box with the mouse on the shapes layer (add_rectangle mode, active).
    x0, y0, x1, y1 = liver_box()
    boxes = viewer.layers[cn.BOX_LAYER]
    assert viewer.layers.selection.active is boxes and str(boxes.mode) == "add_rectangle"
    drag(boxes, (SLICE, y0, x0), (SLICE, y1, x1))
    assert len(boxes.data) == 1
    assert widget.prompts_on(SLICE).box == (x0, y0, x1, y1)

    # The embed runs in a worker; the box waits for it, then the mask appears.
    waited = wait_until(lambda: widget.embedding_ready(SLICE) and len(widget.history) >= 1,
                        widget)
    assert widget.last_error is None
    first = labels.data[SLICE] == 1
    assert first.sum() > 500, f"box mask has {first.sum()} px"
    assert np.all(labels.data[SLICE - 1] == 0) and np.all(labels.data[SLICE + 1] == 0)
    inside = first[y0:y1 + 1, x0:x1 + 1].sum() / first.sum()
    assert inside >= 0.98, f"only {inside:.0%} of the mask lies inside the box"
    d_box = dice(first, ref)
    assert d_box >= MIN_DICE, f"Dice {d_box:.3f} after the box"

    # The same prediction through the module directly: coordinates were converted right.
    emb = widget.embeddings[SLICE]
    direct = segmenter.predict(emb, box=(x0, y0, x1, y1))
    assert np.array_equal(direct.mask > 0, first)

    # A positive click inside the liver (napari: row, column) refines through the logits.
    rows, cols = np.nonzero(ref)
    r, c = int(np.median(rows)), int(np.median(cols))
    assert ref[r, c]
    positives = viewer.layers[cn.POSITIVE_LAYER]
    click(viewer, positives, (SLICE, r, c))
    assert len(positives.data) == 1
    second = widget.history[-1]
    assert second.refined and second.prompts.positive == ((c, r),)
    expected = segmenter.predict(emb, box=(x0, y0, x1, y1), points=[(c, r)], labels=[1],
                                 mask_input=widget.history[-2].logits)
    after_one = labels.data[SLICE] == 1
    assert np.array_equal(after_one, expected.mask > 0)
    d_one = dice(after_one, ref)
    assert d_one >= MIN_DICE, f"Dice {d_one:.3f} after one click"

    # A second positive click, at the far end of the liver, changes the mask without
    # erasing it.
    far = np.argmax((rows - r) ** 2 + (cols - c) ** 2)
    r2, c2 = int(rows[far] + np.sign(r - rows[far]) * 3), int(cols[far] + np.sign(c - cols[far]) * 3)
    assert ref[r2, c2], "pick a point inside the reference"
    click(viewer, positives, (SLICE, r2, c2))
    third = widget.history[-1]
    assert third.refined and len(third.prompts.positive) == 2
    after_two = labels.data[SLICE] == 1
    assert not np.array_equal(after_two, after_one), "the second click changed nothing"
    assert dice(after_two, after_one) >= 0.8, "the second click erased the mask"
    d_two = dice(after_two, ref)
    assert d_two >= MIN_DICE, f"Dice {d_two:.3f} after two clicks"

    ms = [h.predict_ms for h in widget.history]
    print(f"\nembed wait {waited:.1f} s (embed {widget.embed_seconds[SLICE]:.2f} s); "
          f"Dice box {d_box:.3f}, 1 click {d_one:.3f}, 2 clicks {d_two:.3f}; "
          f"click-to-labels ms {', '.join(f'{m:.0f}' for m in ms)} (predict "
          f"{', '.join(f'{h.decode_ms:.0f}' for h in widget.history)})")


def test_a_negative_click_reaches_the_decoder_as_label_0(viewer, widget, segmenter):
    """LiteMedSAM (box-trained) moves little for a negative click inside a box, so this
    checks the wiring: the widget's mask is the module's prediction with label 0 and the
    previous logits, and not the one with label 1. It first opens the volume twice in a row,
    the second while the first open's embed runs: the shown slice must still get embedded."""
    widget.open_path(DEMO / "ct_abdomen.nii.gz")
    widget.open_path(DEMO / "ct_abdomen.nii.gz")
    shown = widget.current_slice()
    wait_until(lambda: widget.embedding_ready(shown), widget, timeout_s=120)
    viewer.dims.set_current_step(0, SLICE)
    x0, y0, x1, y1 = liver_box()
    # A box typed in (layer data are slice, row, column): the layer's programmatic path.
    viewer.layers[cn.BOX_LAYER].add_rectangles(
        np.array([[SLICE, y0, x0], [SLICE, y0, x1], [SLICE, y1, x1], [SLICE, y1, x0]], float))
    wait_until(lambda: len(widget.history) >= 1, widget)
    assert widget.history[-1].prompts.box == (x0, y0, x1, y1)
    labels = viewer.layers[cn.MASK_LAYER]
    before = labels.data[SLICE] == 1
    rows, cols = np.nonzero(before)
    r, c = int(rows.max()) - 2, int(np.median(cols[rows == rows.max()]))
    click(viewer, viewer.layers[cn.NEGATIVE_LAYER], (SLICE, r, c))
    after = labels.data[SLICE] == 1
    rec = widget.history[-1]
    assert rec.refined and rec.prompts.negative == ((c, r),) and rec.prompts.positive == ()
    emb, logits = widget.embeddings[SLICE], widget.history[-2].logits
    neg = segmenter.predict(emb, box=(x0, y0, x1, y1), points=[(c, r)], labels=[0],
                            mask_input=logits)
    pos = segmenter.predict(emb, box=(x0, y0, x1, y1), points=[(c, r)], labels=[1],
                            mask_input=logits)
    assert np.array_equal(after, neg.mask > 0)
    assert not np.array_equal(neg.logits, pos.logits)

    # Control-click in the positive layer: a negative click too.
    r2, c2 = int(np.median(rows)), int(cols.min()) + 2
    click(viewer, viewer.layers[cn.POSITIVE_LAYER], (SLICE, r2, c2), modifiers=["Control"])
    assert len(viewer.layers[cn.POSITIVE_LAYER].data) == 0
    rec = widget.history[-1]
    assert rec.refined and rec.prompts.negative == ((c, r), (c2, r2))
    assert rec.prompts.positive == ()


def test_a_dicom_folder_opens_in_hu_with_the_file_window(viewer, widget, segmenter, tmp_path):
    """The DICOM path: a folder holding the demo CT slice opens as one slice in HU with
    the file's first window (as the CLI uses it), and a box gives the module's mask."""
    import pydicom
    from PIL import Image

    shutil.copy(DEMO / "ct_abdomen_slice.dcm", tmp_path / "IM0001")
    (tmp_path / "notes.txt").write_text("not DICOM")
    widget.open_path(tmp_path)
    ds = pydicom.dcmread(DEMO / "ct_abdomen_slice.dcm")
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    window = (float(ds.WindowCenter[0]), float(ds.WindowWidth[0]))
    assert widget.volume.pixels.shape == (1, 512, 512)
    assert np.array_equal(widget.volume.pixels[0], hu)
    assert widget.volume.modality == "ct" and widget.volume.window == window

    cases = json.loads((DEMO / "cases.json").read_text())["cases"]
    x0, y0, x1, y1 = next(c for c in cases if c["id"] == "ct_liver")["box"]
    drag(viewer.layers[cn.BOX_LAYER], (0, y0, x0), (0, y1, x1))
    wait_until(lambda: len(widget.history) >= 1, widget)
    mask = viewer.layers[cn.MASK_LAYER].data[0] == 1
    emb = segmenter.embed(hu.astype(np.int16), modality="ct", window=window)
    assert np.array_equal(mask, segmenter.predict(emb, box=(x0, y0, x1, y1)).mask > 0)
    ref = np.array(Image.open(DEMO / "ct_liver_ref.png")) > 0
    assert dice(mask, ref) >= MIN_DICE, f"Dice {dice(mask, ref):.3f}"
