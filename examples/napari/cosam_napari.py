"""A napari dock widget that segments with cosam: embed the shown slice off the UI thread,
then predict on every box or click, each click refining the previous mask.

Run it::

    python examples/napari/cosam_napari.py [volume.nii.gz | dicom_series_folder]

How it works (see README.md beside this file):

- ``Open`` reads a NIfTI file (nibabel) or a folder holding one DICOM series (pydicom) into
  an array ``[slice, row, column]`` in the file's storage order, the frame cosam's CLI uses,
  so a box typed for ``cosam segment --box`` is the same box here. The image layer gets
  the voxel spacing as its scale; the prompt and labels layers share it, so their data are
  in voxel indices of the image.
- The shown slice is embedded in a napari worker thread (``create_worker``); the encoder
  releases the GIL, so the viewer stays responsive. Embeddings are cached per slice (an
  LRU of ``max_cached_slices``, 4 MiB each).
- Each change of the ``cosam box`` (Shapes), ``cosam positive`` or ``cosam negative``
  (Points) layers re-predicts the slice it touches, on the UI thread (one decoder call).
  When the new prompts extend the previous ones on that slice (same box, more clicks),
  the previous prediction's ``logits`` go back in as ``mask_input``. The mask is written
  into the ``cosam mask`` Labels layer on that slice, with the layer's selected label.

Coordinates: napari layer data are ``(slice, row, column)``; cosam prompts are ``(x, y)``
= ``(column, row)`` in pixels of the embedded slice.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

# cosam probes for a GPU (post-processing) when a Segmenter is made. wgpu's OpenGL probe
# opens EGL on the X display Qt's OpenGL uses; on the UI thread, once napari has its
# OpenGL context, it panics there (wgpu-hal gles/egl.rs: BadAccess; seen every time under
# Xvfb). Vulkan only (a GPU driver or Mesa's lavapipe) skips that probe; with no Vulkan
# driver cosam falls back to the CPU. Set WGPU_BACKEND yourself to choose otherwise.
os.environ.setdefault("WGPU_BACKEND", "vulkan")

import cosam  # noqa: E402

#: Layer names the widget creates and reads.
IMAGE_LAYER = "cosam image"
BOX_LAYER = "cosam box"
POSITIVE_LAYER = "cosam positive"
NEGATIVE_LAYER = "cosam negative"
MASK_LAYER = "cosam mask"

#: Held during a click in the positive layer, they make it a negative click.
NEGATIVE_MODIFIERS = {"Control", "Alt"}

#: Modalities cosam's ``embed`` accepts.
MODALITIES = ("auto", "ct", "mr", "display")

#: Pixel types ``embed`` takes as they are; anything else is converted to float32.
_EMBED_DTYPES = (np.uint8, np.int16, np.uint16, np.float32)


# ---- reading ------------------------------------------------------------------------------


@dataclass
class Volume:
    """A volume as the widget shows it: ``pixels[slice, row, column]`` in the file's units
    (HU for CT), the voxel size in mm in the same axis order, and the intensity mapping
    cosam should use."""

    pixels: np.ndarray
    spacing_mm: tuple[float, float, float]
    modality: str = "auto"
    window: tuple[float, float] | None = None  # (center, width) in HU
    name: str = "volume"


def read_nifti(path: str | Path) -> Volume:
    """A NIfTI file in its storage order: slice ``k`` is ``data[:, :, k].T`` (rows along
    the second voxel axis, columns along the first), as cosam's reader slices it."""
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D image, found shape {data.shape}")
    zooms = [float(z) for z in img.header.get_zooms()[:3]] + [1.0] * 3
    pixels = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    name = Path(path).name.removesuffix(".gz").removesuffix(".nii")
    return Volume(pixels, (zooms[2], zooms[1], zooms[0]), name=name)


def read_dicom_series(folder: str | Path) -> Volume:
    """The single-frame DICOM files of one series in a folder, sorted along the slice
    normal, rescaled to their units (HU for CT), with the first file's window."""
    import pydicom

    folder = Path(folder)
    datasets = []
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(f)
        except pydicom.errors.InvalidDicomError:
            continue
        if "PixelData" in ds:
            datasets.append(ds)
    if not datasets:
        raise ValueError(f"{folder}: no DICOM image files")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) > 1:
        raise ValueError(f"{folder}: {len(series)} series; pick a folder with one")
    first = datasets[0]
    if "ImageOrientationPatient" in first and all("ImagePositionPatient" in d for d in datasets):
        o = np.array(first.ImageOrientationPatient, dtype=float)
        normal = np.cross(o[:3], o[3:])
        datasets.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, float))))
    else:
        datasets.sort(key=lambda d: int(d.get("InstanceNumber", 0)))
    slices = []
    for ds in datasets:
        px = ds.pixel_array.astype(np.float32)
        if px.shape != datasets[0].pixel_array.shape:
            raise ValueError(f"{folder}: slices of different sizes")
        slices.append(px * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0)))
    pixels = np.stack(slices)
    row_mm, col_mm = (float(v) for v in first.get("PixelSpacing", [1.0, 1.0]))
    if len(datasets) > 1 and "ImagePositionPatient" in first:
        a = np.array(datasets[0].ImagePositionPatient, float)
        b = np.array(datasets[1].ImagePositionPatient, float)
        slice_mm = float(np.linalg.norm(b - a)) or 1.0
    else:
        slice_mm = float(first.get("SliceThickness", 1.0) or 1.0)
    modality = {"CT": "ct", "MR": "mr"}.get(str(first.get("Modality", "")), "auto")
    window = None
    if modality == "ct" and "WindowCenter" in first and "WindowWidth" in first:
        center, width = first.WindowCenter, first.WindowWidth
        center = center[0] if isinstance(center, pydicom.multival.MultiValue) else center
        width = width[0] if isinstance(width, pydicom.multival.MultiValue) else width
        window = (float(center), float(width))
    if pixels.min() >= -32768 and pixels.max() <= 32767 and np.all(pixels == np.round(pixels)):
        pixels = pixels.astype(np.int16)
    return Volume(pixels, (slice_mm, row_mm, col_mm), modality, window, folder.name)


def read_volume(path: str | Path) -> Volume:
    """A DICOM series folder or a NIfTI file."""
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path)
    return read_nifti(path)


# ---- prompts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlicePrompts:
    """The prompts on one slice, in cosam's frame: box ``(x0, y0, x1, y1)``, points
    ``(x, y)``."""

    box: tuple[float, float, float, float] | None = None
    positive: tuple[tuple[float, float], ...] = ()
    negative: tuple[tuple[float, float], ...] = ()

    def is_empty(self) -> bool:
        return self.box is None and not self.positive and not self.negative

    def extends(self, earlier: SlicePrompts) -> bool:
        """Same box, and every earlier click still there plus at least one more: the
        previous mask can be refined rather than started over."""
        return (
            self.box == earlier.box
            and set(earlier.positive) <= set(self.positive)
            and set(earlier.negative) <= set(self.negative)
            and (len(self.positive), len(self.negative))
            != (len(earlier.positive), len(earlier.negative))
        )


@dataclass
class PredictionRecord:
    """One decoder call, for the status line, tests and latency figures."""

    slice_index: int
    prompts: SlicePrompts
    refined: bool  # the previous logits were passed as mask_input
    area_px: int
    iou: float
    predict_ms: float  # prompt to mask in the labels layer, on the UI thread
    decode_ms: float  # of which the module's predict call
    logits: np.ndarray = field(repr=False)


def _on_slice(coords: np.ndarray, z: int) -> np.ndarray:
    return np.abs(np.asarray(coords)[:, 0] - z) < 0.5


# ---- the widget ---------------------------------------------------------------------------


class CosamWidget(QWidget):
    """Dock widget: open a volume, embed the shown slice in a worker, segment from box and
    click layers into a labels layer.

    ``viewer``: a ``napari.Viewer`` (or a ``napari.components.ViewerModel``: the widget
    uses only layers and dims). ``segmenter``: a ``cosam.Segmenter`` to share; None
    creates one (``threads``) on first use, in the worker.
    """

    def __init__(self, viewer, segmenter=None, threads: int = 2, max_cached_slices: int = 64):
        super().__init__()
        self.viewer = viewer
        self._segmenter = segmenter
        self._threads = threads
        self.max_cached_slices = max_cached_slices
        self.volume: Volume | None = None
        self.embeddings: OrderedDict[int, cosam.Embedding] = OrderedDict()
        self.history: list[PredictionRecord] = []
        self.embed_seconds: dict[int, float] = {}
        self.last_error: str | None = None
        self._last: dict[int, PredictionRecord] = {}  # per slice: the prediction shown
        self._embed_queue: list[int] = []
        self._pending: set[int] = set()  # slices whose prompts wait for their embedding
        self._worker = None
        self._embedding: tuple[int, int] | None = None  # (generation, slice) running
        self._generation = 0  # bumped on open / modality change; stale results dropped
        self._negative_click = False  # the last press in the positive layer held Control

        self._open_file = QPushButton("Open NIfTI…")
        self._open_dir = QPushButton("Open DICOM folder…")
        self._modality = QComboBox()
        self._modality.addItems(MODALITIES)
        self._new_object = QPushButton("New object")
        self._status = QLabel("Open a volume.")
        self._status.setWordWrap(True)
        self._open_file.clicked.connect(self._ask_file)
        self._open_dir.clicked.connect(self._ask_dir)
        self._modality.currentTextChanged.connect(self._modality_changed)
        self._new_object.clicked.connect(self.new_object)

        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(self._open_file)
        row.addWidget(self._open_dir)
        layout.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(QLabel("Intensities"))
        row.addWidget(self._modality)
        layout.addLayout(row)
        layout.addWidget(self._new_object)
        layout.addWidget(QLabel(
            "Draw a rectangle in 'cosam box', click in 'cosam positive' (inside; "
            "Control-click: outside) or 'cosam negative' (outside). Each click refines "
            "the mask."
        ))
        layout.addWidget(self._status)
        layout.addStretch()
        viewer.dims.events.current_step.connect(self._slice_changed)

    # -- public ---------------------------------------------------------------------------

    @property
    def status(self) -> str:
        return self._status.text()

    def open_path(self, path: str | Path) -> None:
        """Reads a NIfTI file or DICOM series folder and shows it with empty prompt and
        labels layers; starts embedding the shown slice."""
        self.open_volume(read_volume(path))

    def open_volume(self, volume: Volume) -> None:
        self._generation += 1
        self.volume = volume
        self.embeddings.clear()
        self.embed_seconds.clear()
        self._last.clear()
        self._pending.clear()
        self._embed_queue.clear()
        for name in (IMAGE_LAYER, BOX_LAYER, POSITIVE_LAYER, NEGATIVE_LAYER, MASK_LAYER):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        scale = volume.spacing_mm
        contrast = volume.window and (volume.window[0] - volume.window[1] / 2,
                                      volume.window[0] + volume.window[1] / 2)
        if contrast is None and (volume.modality == "ct" or volume.pixels.min() < -500):
            contrast = (40 - 200, 40 + 200)
        self.viewer.add_image(volume.pixels, name=IMAGE_LAYER, scale=scale,
                              contrast_limits=contrast)
        mask = self.viewer.add_labels(np.zeros(volume.pixels.shape, np.uint8),
                                      name=MASK_LAYER, scale=scale)
        mask.selected_label = 1
        boxes = self.viewer.add_shapes(ndim=3, name=BOX_LAYER, scale=scale, edge_color="yellow",
                                       face_color="transparent", edge_width=1)
        pos = self.viewer.add_points(ndim=3, name=POSITIVE_LAYER, scale=scale,
                                     face_color="lime", size=4)
        neg = self.viewer.add_points(ndim=3, name=NEGATIVE_LAYER, scale=scale,
                                     face_color="red", size=4)
        boxes.events.data.connect(self._prompts_changed)
        # Control-click (or Alt-click) in the positive layer makes a negative click.
        pos.mouse_drag_callbacks.insert(0, self._note_modifiers)
        pos.events.data.connect(self._prompts_changed)
        neg.events.data.connect(self._prompts_changed)
        # A rectangle drawn with the mouse is added on press and grows while dragging
        # without data events: segment when the button is released.
        boxes.mouse_drag_callbacks.append(self._box_drag)
        boxes.mode = "add_rectangle"
        self.viewer.layers.selection.active = boxes
        self._set_status(f"{volume.name}: {volume.pixels.shape[0]} slices of "
                         f"{volume.pixels.shape[1]}x{volume.pixels.shape[2]}")
        with _Blocked(self._modality):
            self._modality.setCurrentText(volume.modality)
        self.request_embed(self.current_slice())

    def current_slice(self) -> int:
        """Index of the slice on display."""
        if self.volume is None or IMAGE_LAYER not in self.viewer.layers:
            return 0
        image = self.viewer.layers[IMAGE_LAYER]
        z = image.world_to_data(self.viewer.dims.point)[0]
        return int(np.clip(round(float(z)), 0, self.volume.pixels.shape[0] - 1))

    def embedding_ready(self, z: int) -> bool:
        return z in self.embeddings

    def busy(self) -> bool:
        """An embed is running or queued."""
        return self._worker is not None or bool(self._embed_queue)

    def request_embed(self, z: int, front: bool = True) -> None:
        """Queues slice ``z`` for embedding (first in line unless ``front`` is False)."""
        if self.volume is None or z in self.embeddings:
            return
        if self._embedding == (self._generation, z):  # running for this volume already
            return
        if z in self._embed_queue:
            self._embed_queue.remove(z)
        if front:
            self._embed_queue.insert(0, z)
        else:
            self._embed_queue.append(z)
        self._start_next_embed()

    def prompts_on(self, z: int) -> SlicePrompts:
        """The prompts on slice ``z`` in cosam's frame: the bounding box of the last shape
        drawn on it, and its clicks, clipped to the slice."""
        rows, cols = self.volume.pixels.shape[1:]
        box = None
        shapes = self.viewer.layers[BOX_LAYER].data
        for vertices in reversed(shapes):
            vertices = np.asarray(vertices)
            if _on_slice(vertices, z).all():
                y0, x0 = vertices[:, 1].min(), vertices[:, 2].min()
                y1, x1 = vertices[:, 1].max(), vertices[:, 2].max()
                x0, x1 = np.clip([x0, x1], 0, cols - 1)
                y0, y1 = np.clip([y0, y1], 0, rows - 1)
                if x1 - x0 >= 1 and y1 - y0 >= 1:  # not the zero-size box a drag starts with
                    box = tuple(round(float(v), 2) for v in (x0, y0, x1, y1))
                    break

        def clicks(name):
            data = np.asarray(self.viewer.layers[name].data).reshape(-1, 3)
            data = data[_on_slice(data, z)]
            inside = (data[:, 1] >= 0) & (data[:, 1] <= rows - 1) & (data[:, 2] >= 0) & (
                data[:, 2] <= cols - 1)
            return tuple((round(float(p[2]), 2), round(float(p[1]), 2)) for p in data[inside])

        return SlicePrompts(box, clicks(POSITIVE_LAYER), clicks(NEGATIVE_LAYER))

    def segment(self, z: int) -> PredictionRecord | None:
        """Predicts slice ``z`` from its prompts and writes the mask into the labels layer;
        waits for the embedding (queued first) when the slice is not embedded yet."""
        if self.volume is None:
            return None
        prompts = self.prompts_on(z)
        last = self._last.get(z)
        if last is not None and prompts == last.prompts:
            return last
        if prompts.is_empty():
            self._last.pop(z, None)
            self._write_mask(z, None)
            return None
        if z not in self.embeddings:
            self._pending.add(z)
            self.request_embed(z)
            self._set_status(f"slice {z}: embedding…")
            return None
        self.embeddings.move_to_end(z)
        refine = last is not None and prompts.extends(last.prompts)
        points = list(prompts.positive) + list(prompts.negative)
        labels = [1] * len(prompts.positive) + [0] * len(prompts.negative)
        t0 = time.perf_counter()
        try:
            p = self.segmenter.predict(
                self.embeddings[z], box=prompts.box, points=points or None,
                labels=labels or None, mask_input=last.logits if refine else None)
        except cosam.CosamError as e:
            self._error(f"slice {z}: {e}")
            return None
        decode_ms = (time.perf_counter() - t0) * 1000
        self._write_mask(z, p.mask)
        ms = (time.perf_counter() - t0) * 1000
        record = PredictionRecord(z, prompts, refine, int(p.mask.sum()), float(p.iou), ms,
                                  decode_ms, p.logits)
        self._last[z] = record
        self.history.append(record)
        self._set_status(
            f"slice {z}: {record.area_px} px, IoU {record.iou:.2f}, {ms:.0f} ms"
            + (" (refined)" if refine else ""))
        return record

    def new_object(self) -> None:
        """Clears the prompts on the shown slice and moves to the next label value, so the
        next box or clicks start a new structure (the current mask stays)."""
        if self.volume is None:
            return
        z = self.current_slice()
        for name in (BOX_LAYER, POSITIVE_LAYER, NEGATIVE_LAYER):
            layer = self.viewer.layers[name]
            with layer.events.data.blocker():
                if name == BOX_LAYER:
                    keep = [v for v in layer.data if not _on_slice(v, z).all()]
                    layer.data = keep
                else:
                    data = np.asarray(layer.data).reshape(-1, 3)
                    layer.data = data[~_on_slice(data, z)]
        self._last.pop(z, None)
        mask = self.viewer.layers[MASK_LAYER]
        mask.selected_label = int(mask.selected_label) + 1

    @property
    def segmenter(self):
        if self._segmenter is None:
            self._segmenter = cosam.Segmenter(threads=self._threads)
        return self._segmenter

    # -- internals ------------------------------------------------------------------------

    def _set_status(self, text: str) -> None:
        self._status.setText(text)

    def _error(self, text: str) -> None:
        self.last_error = text
        self._set_status(f"error: {text}")

    def _write_mask(self, z: int, mask: np.ndarray | None) -> None:
        layer = self.viewer.layers[MASK_LAYER]
        label = int(layer.selected_label)
        plane = layer.data[z]
        plane[plane == label] = 0
        if mask is not None:
            plane[mask > 0] = label
        layer.refresh()

    def _ask_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open NIfTI", "", "NIfTI (*.nii *.nii.gz)")
        if path:
            self._open_reporting(path)

    def _ask_dir(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open DICOM series folder")
        if path:
            self._open_reporting(path)

    def _open_reporting(self, path: str) -> None:
        try:
            self.open_path(path)
        except Exception as e:  # a file the user picked: report, never crash the viewer
            self._error(f"{path}: {e}")

    def _modality_changed(self, text: str) -> None:
        if self.volume is None or text == self.volume.modality:
            return
        self.volume.modality = text
        if text != "ct":
            self.volume.window = None
        self._generation += 1
        self.embeddings.clear()
        self._last.clear()
        self._embed_queue.clear()
        self._pending.add(self.current_slice())
        self.request_embed(self.current_slice())

    def _slice_changed(self, event=None) -> None:
        if self.volume is None:
            return
        z = self.current_slice()
        # Only the shown slice (and slices with prompts waiting) are worth embedding.
        self._embed_queue = [s for s in self._embed_queue if s in self._pending]
        self.request_embed(z)

    def _note_modifiers(self, layer, event) -> None:
        self._negative_click = bool(NEGATIVE_MODIFIERS & set(event.modifiers))

    def _prompts_changed(self, event) -> None:
        action = str(getattr(event, "action", "") or "")
        if action.endswith("ing"):  # adding / removing / changing: the data is not there yet
            return
        if self.volume is None:
            return
        layer = event.source
        if layer.name == POSITIVE_LAYER and action == "added" and self._negative_click:
            self._negative_click = False
            self._move_to_negative(layer, list(event.data_indices))
            return
        touched = set()
        for i in getattr(event, "data_indices", ()) or ():
            if layer.name == BOX_LAYER and action != "removed" and i < len(layer.data):
                touched.update(int(round(v)) for v in np.asarray(layer.data[i])[:, 0])
            elif layer.name != BOX_LAYER and action != "removed" and i < len(layer.data):
                touched.add(int(round(float(layer.data[i][0]))))
        if not touched or action == "removed":
            touched = {self.current_slice()} | set(self._last)
        for z in sorted(touched):
            if 0 <= z < self.volume.pixels.shape[0]:
                self.segment(z)

    def _move_to_negative(self, positives, indices) -> None:
        """Moves points just added to the positive layer to the negative layer (whose data
        event then segments)."""
        data = np.asarray(positives.data).reshape(-1, 3)
        moved = data[indices]
        with positives.events.data.blocker():
            positives.data = np.delete(data, indices, axis=0)
        self.viewer.layers[NEGATIVE_LAYER].add(moved)

    def _box_drag(self, layer, event):
        yield  # press
        while event.type == "mouse_move":
            yield
        if str(layer.mode) in ("add_rectangle", "add_ellipse"):
            self.segment(self.current_slice())

    def _start_next_embed(self) -> None:
        if self._worker is not None or not self._embed_queue or self.volume is None:
            return
        from napari.qt.threading import create_worker

        z = self._embed_queue.pop(0)
        pixels = self.volume.pixels[z]
        if pixels.dtype not in _EMBED_DTYPES:
            pixels = pixels.astype(np.float32)
        pixels = np.ascontiguousarray(pixels)
        modality, window = self.volume.modality, self.volume.window
        generation = self._generation

        def embed():
            t0 = time.perf_counter()
            seg = self.segmenter  # loads the models on first use, off the UI thread
            emb = seg.embed(pixels, modality=modality, window=window)
            return z, emb, time.perf_counter() - t0

        self._embedding = (generation, z)
        worker = create_worker(embed, _start_thread=False)
        worker.returned.connect(lambda r: self._embedded(generation, *r))
        worker.errored.connect(lambda e: self._embed_failed(z, e))
        worker.finished.connect(self._embed_finished)
        self._worker = worker
        self._set_status(f"slice {z}: embedding…")
        worker.start()

    def _embedded(self, generation: int, z: int, emb, seconds: float) -> None:
        if generation != self._generation:
            return
        self.embeddings[z] = emb
        self.embed_seconds[z] = seconds
        while len(self.embeddings) > self.max_cached_slices:
            self.embeddings.popitem(last=False)
        self._set_status(f"slice {z}: embedded in {seconds:.1f} s")
        if z in self._pending:
            self._pending.discard(z)
            self.segment(z)

    def _embed_failed(self, z: int, e: Exception) -> None:
        self._pending.discard(z)
        self._error(f"slice {z}: {e}")

    def _embed_finished(self) -> None:
        self._worker = None
        self._embedding = None
        self._start_next_embed()


class _Blocked:
    """Blocks a Qt object's signals for the block's duration."""

    def __init__(self, obj):
        self.obj = obj

    def __enter__(self):
        self._was = self.obj.blockSignals(True)

    def __exit__(self, *exc):
        self.obj.blockSignals(self._was)


def main(argv=None) -> None:
    import argparse

    import napari

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", help="a NIfTI file or a DICOM series folder")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads per model")
    args = parser.parse_args(argv)
    viewer = napari.Viewer(title="cosam")
    widget = CosamWidget(viewer, threads=args.threads)
    viewer.window.add_dock_widget(widget, name="cosam", area="right")
    if args.path:
        widget.open_path(args.path)
    napari.run()


if __name__ == "__main__":
    main()
