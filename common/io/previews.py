"""Overlay previews of a segmentation (PNG): what a user looks at first to judge a result.

A volume preview shows axial slices where the structures are (the slice of each structure's largest area), in
the radiological view at the voxels' real aspect; a picture preview shows the input and its overlay side by
side. Every panel is scaled to :data:`PANEL_SHORT_SIDE` pixels on its short side, and a legend names each
structure in its colour (the bundle's label names). Files are written atomically.

Layouts: volumes and labels ``[X, Y, Z]`` with an index-to-RAS affine; pictures ``[H, W]`` or ``[C, H, W]`` with
labels ``[H, W]``; the returned or written pictures are RGB ``[H, W, 3]`` uint8.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from common.io.atomic import atomic_path
from common.io.lazy_volumes import LazyVolume, OrientedSlabs, orientation_transform, oriented_view
from common.io.volumes import ras_axial_to_display
from common.io.writers import ArrayLike, as_label_array, check_affine, label_counts

OVERLAY_ALPHA = 0.35  # inside a structure; its outline is drawn in the full colour
PANEL_SHORT_SIDE = 256  # pixels on a panel's short side, whatever the input's size
MAX_PANELS = 8  # slices in a volume preview at most (one per structure, largest first)
MIN_PANELS = 4  # slices in a volume preview at least (where the volume has that many)
PANELS_PER_ROW = 4
GAP = 4  # pixels between panels
FONT_SIZE = 14
BACKGROUND = (0, 0, 0)
TEXT = (255, 255, 255)


def label_colors(num_labels: int) -> np.ndarray:
    """RGB colours ``[num_labels + 1, 3]`` (uint8) for labels 0..num_labels; row 0 (background) is unused."""
    import matplotlib  # previews only: a released bundle's inference writes masks without it

    colors = matplotlib.colormaps["tab10" if num_labels <= 9 else "tab20"].colors
    palette = [c for c in colors if not c[0] == c[1] == c[2]]  # no grey: it vanishes on a grey image
    rows = [(0.0, 0.0, 0.0)] + [palette[(k - 1) % len(palette)] for k in range(1, num_labels + 1)]
    return np.round(np.asarray(rows) * 255).astype(np.uint8)


def intensity_window(image: np.ndarray) -> tuple[float, float]:
    """The 0.5 and 99.5 percentiles of ``image``: the grey-level window of previews."""
    low, high = np.percentile(image, (0.5, 99.5))
    return float(low), float(high)


def _to_rgb(image: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """``[H, W]`` or ``[C, H, W]`` (C 1 or 3) to uint8 RGB ``[H, W, 3]``; uint8 colour is kept, the rest windowed.

    ``window`` (low, high) defaults to :func:`intensity_window` of the image.
    """
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim == 3:
        image = np.moveaxis(image, 0, -1)
        if image.dtype == np.uint8:
            return np.ascontiguousarray(image)
    low, high = window or intensity_window(image)
    scaled = np.round(np.clip((image.astype(np.float32) - low) / max(high - low, 1e-6), 0, 1) * 255).astype(np.uint8)
    return np.repeat(scaled[..., None], 3, axis=-1) if scaled.ndim == 2 else scaled


def panel_size(shape: tuple[int, int], pixel_mm: tuple[float, float] = (1.0, 1.0)) -> tuple[int, int]:
    """``(height, width)`` in pixels of a panel showing ``shape`` (rows, columns) of pixels ``pixel_mm`` (row
    height, column width) in size: the real aspect, :data:`PANEL_SHORT_SIDE` pixels on the short side."""
    height, width = shape[0] * pixel_mm[0], shape[1] * pixel_mm[1]
    scale = PANEL_SHORT_SIDE / min(height, width)
    return max(PANEL_SHORT_SIDE, round(height * scale)), max(PANEL_SHORT_SIDE, round(width * scale))


def overlay_panel(
    rgb: np.ndarray, labels: np.ndarray, size: tuple[int, int], colors: np.ndarray, alpha: float = OVERLAY_ALPHA
) -> np.ndarray:
    """RGB ``[H, W, 3]`` and labels ``[H, W]`` resized to ``size`` (bilinear, nearest), each structure tinted with
    its colour and outlined in it: ``size + (3,)`` uint8."""
    if rgb.shape[:2] != labels.shape:
        raise ValueError(f"image {rgb.shape[:2]} and labels {labels.shape} differ in size")
    target = (size[1], size[0])  # PIL sizes are (width, height)
    image = np.asarray(Image.fromarray(rgb).resize(target, Image.Resampling.BILINEAR), dtype=np.float32)
    resized = np.asarray(Image.fromarray(labels).resize(target, Image.Resampling.NEAREST))
    edge = np.zeros(resized.shape, bool)  # a pixel whose label differs from a 4-neighbour's
    edge[1:] |= resized[1:] != resized[:-1]
    edge[:-1] |= resized[:-1] != resized[1:]
    edge[:, 1:] |= resized[:, 1:] != resized[:, :-1]
    edge[:, :-1] |= resized[:, :-1] != resized[:, 1:]
    weight = np.where(resized > 0, np.where(edge, 1.0, alpha), 0.0)[..., None]
    return np.round((1 - weight) * image + weight * colors[resized]).astype(np.uint8)


def _font(size: int = FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def legend(entries: Sequence[tuple[str, tuple[int, int, int]]], width: int) -> np.ndarray:
    """A strip ``[h, width, 3]`` with a colour swatch and a name per entry, wrapped onto as many rows as needed."""
    font, line, swatch, pad = _font(), FONT_SIZE + 8, FONT_SIZE, 8
    items, x, rows = [], pad, 0
    for name, color in entries:
        item_width = swatch + 6 + round(font.getlength(name)) + 2 * pad
        if x + item_width > width and x > pad:
            x, rows = pad, rows + 1
        items.append((x, rows, name, color))
        x += item_width
    strip = Image.new("RGB", (width, (rows + 1) * line + pad), BACKGROUND)
    draw = ImageDraw.Draw(strip)
    for x, row, name, color in items:
        top = pad // 2 + row * line
        draw.rectangle((x, top + 3, x + swatch - 1, top + 3 + swatch - 1), fill=tuple(int(c) for c in color))
        draw.text((x + swatch + 6, top + 3), name, fill=TEXT, font=font)
    return np.asarray(strip)


def caption(panel: np.ndarray, text: str) -> np.ndarray:
    """``panel`` with ``text`` in its top-left corner (white on a dark box)."""
    image = Image.fromarray(panel)
    draw = ImageDraw.Draw(image)
    box = draw.textbbox((4, 2), text, font=_font())
    draw.rectangle((box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2), fill=BACKGROUND)
    draw.text((4, 2), text, fill=TEXT, font=_font())
    return np.asarray(image)


def compose(panels: Sequence[np.ndarray], entries: Sequence[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    """Panels (one size) in rows of at most :data:`PANELS_PER_ROW`, :data:`GAP` apart, above the legend of
    ``entries``."""
    height, width = panels[0].shape[:2]
    columns = min(len(panels), PANELS_PER_ROW)
    rows = -(-len(panels) // columns)
    picture = np.zeros((rows * height + (rows - 1) * GAP, columns * width + (columns - 1) * GAP, 3), np.uint8)
    for index, panel in enumerate(panels):
        top, left = (index // columns) * (height + GAP), (index % columns) * (width + GAP)
        picture[top : top + height, left : left + width] = panel
    return np.concatenate([picture, legend(entries, picture.shape[1])], axis=0) if entries else picture


def legend_entries(
    values: Sequence[int], colors: np.ndarray, label_names: Mapping[int, str] | None
) -> list[tuple[str, tuple[int, int, int]]]:
    """(name, colour) of each label value in ``values``: its name from ``label_names``, else ``label_<value>``."""
    names = dict(label_names or {})
    return [(names.get(value, f"label_{value}"), tuple(int(c) for c in colors[value])) for value in values]


def table_size(labels_max: int, label_names: Mapping[int, str] | None) -> int:
    """Labels the colour table covers: the largest named or present value (a structure keeps its colour)."""
    return max([labels_max, *(label_names or {})])


def write_image_overlay(
    image: ArrayLike, labels: ArrayLike, path: str | os.PathLike, label_names: Mapping[int, str] | None = None
) -> Path:
    """Write a PNG of a 2-D image ``[H, W]`` or ``[C, H, W]`` and, beside it, the image with ``labels`` ``[H, W]``
    coloured in, each :data:`PANEL_SHORT_SIDE` pixels on its short side, above a legend of the labels present."""
    path = Path(path)
    image = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if image.ndim == 3 and image.shape[0] not in (1, 3):
        raise ValueError(f"{path}: expected an image [H, W] or [C, H, W] with C 1 or 3, found shape {image.shape}")
    labels = as_label_array(labels, str(path))
    rgb = _to_rgb(image)
    colors = label_colors(table_size(int(labels.max(initial=0)), label_names))
    size = panel_size(labels.shape)
    panels = [overlay_panel(rgb, np.zeros_like(labels), size, colors), overlay_panel(rgb, labels, size, colors)]
    present = np.flatnonzero(label_counts(labels))[1:].tolist()
    with atomic_path(path) as temporary:
        Image.fromarray(compose(panels, legend_entries(present, colors, label_names))).save(temporary, format="PNG")
    return path


def preview_slices(labels: np.ndarray, count: int = MAX_PANELS, minimum: int = MIN_PANELS) -> list[int]:
    """Axial slice indices of ``labels`` ``[X, Y, Z]`` to show, in order: the slice of each structure's largest
    area (larger structures first, at most ``count``), then slices spread evenly over the foreground's extent up
    to ``minimum`` slices; a volume without foreground gives slices spread over the whole volume."""
    values = np.flatnonzero(label_counts(labels))[1:]
    picks: list[int] = []
    if values.size:
        areas = np.stack([(labels == value).sum(axis=(0, 1)) for value in values])  # [structures, Z]
        for structure in np.argsort(-areas.sum(axis=1), kind="stable"):
            best = int(areas[structure].argmax())
            if best not in picks and len(picks) < count:
                picks.append(best)
    extent = np.flatnonzero(labels.any(axis=(0, 1))) if values.size else np.arange(labels.shape[2])
    spread = extent[((np.arange(minimum) + 0.5) * extent.size / minimum).astype(int)]
    for z in spread.tolist():
        if z not in picks and len(picks) < minimum:
            picks.append(z)
    return sorted(picks)


def write_volume_overlay(
    volume: ArrayLike | LazyVolume,
    labels: ArrayLike,
    affine: ArrayLike,
    path: str | os.PathLike,
    label_names: Mapping[int, str] | None = None,
    max_slices: int = MAX_PANELS,
) -> Path:
    """Write a PNG of the axial slices :func:`preview_slices` picks, side by side, labels coloured in, above a legend.

    ``volume`` and ``labels`` are ``[X, Y, Z]`` with index-to-RAS ``affine`` (any orientation: the preview is
    reoriented to RAS and shown in the radiological view, rows anterior to posterior and the patient's right on
    the left), each panel at the voxels' real in-plane aspect. A :class:`LazyVolume` (``[X, Y, Z]``, or
    ``[X, Y, Z, C]`` showing channel 0) is read only at the slices shown. ``label_names`` maps label values to the
    legend's names.
    """
    path = Path(path)
    if not isinstance(volume, LazyVolume):
        array = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
        if array.ndim != 3:
            raise ValueError(f"{path}: expected a volume [X, Y, Z], found shape {array.shape}")
        volume = LazyVolume(array, affine, path)
    labels = as_label_array(labels, str(path))
    if volume.shape[:3] != labels.shape:
        raise ValueError(
            f"{path}: expected volume and labels [X, Y, Z] of one shape, found {volume.shape} and {labels.shape}"
        )
    affine = check_affine(affine, str(path))
    transform = orientation_transform(affine, "RAS")
    ras_labels = oriented_view(labels, transform)
    picks = preview_slices(ras_labels, max_slices)
    slabs = OrientedSlabs(volume, transform)
    ras_slices = [slabs.slab(z, z + 1)[:, :, 0] for z in picks]
    ras_slices = [image if image.ndim == 2 else image[..., 0] for image in ras_slices]
    window = intensity_window(np.stack(ras_slices, axis=-1))
    colors = label_colors(table_size(int(labels.max(initial=0)), label_names))  # one table for every panel
    spacing = np.empty(3)
    spacing[transform[:, 0].astype(int)] = np.linalg.norm(affine[:3, :3], axis=0)  # mm along R, A, S
    display_shape = (ras_labels.shape[1], ras_labels.shape[0])  # display rows follow A, columns follow R
    size = panel_size(display_shape, (float(spacing[1]), float(spacing[0])))
    panels = [
        caption(
            overlay_panel(
                _to_rgb(ras_axial_to_display(image), window), ras_axial_to_display(ras_labels[:, :, z]), size, colors
            ),
            f"axial {z + 1}/{ras_labels.shape[2]}",
        )
        for image, z in zip(ras_slices, picks)
    ]
    present = np.flatnonzero(label_counts(labels))[1:].tolist()
    with atomic_path(path) as temporary:
        Image.fromarray(compose(panels, legend_entries(present, colors, label_names))).save(temporary, format="PNG")
    return path
