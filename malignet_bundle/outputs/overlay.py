"""Pictures people look at: a view with class-coloured lesion contours, and contact sheets of studies."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from skimage.segmentation import find_boundaries

from malignet_bundle.atomic_io import save_figure_atomic, write_atomic

if TYPE_CHECKING:
    from malignet_bundle.data.class_map import ClassMap
    from malignet_bundle.outputs.prediction import StudyPrediction

__all__ = ["CLASS_COLOURS", "window_counts", "render_overlay", "save_contact_sheet", "save_study_overlay"]

# Colour per class name, readable on an inverted grey scan (normalised names, see ClassMap).
CLASS_COLOURS = {
    "malignant": (220, 20, 60),
    "infection_inflammation": (255, 140, 0),
    "degenerative_change": (30, 144, 255),
    "post_trauma": (34, 139, 34),
    "chest": (128, 0, 128),
}
_FALLBACK_COLOUR = (200, 200, 0)


def window_counts(image: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """Counts to display grey levels as readers view bone scans: inverted, saturating the hottest 0.5 %."""
    image = np.asarray(image, dtype=np.float32)
    top = max(float(np.percentile(image, percentile)), 1e-6)
    return (255 * (1.0 - np.clip(image / top, 0, 1))).astype(np.uint8)


def render_overlay(
    image: np.ndarray,
    masks: np.ndarray,
    class_names: Sequence[str],
    box: Sequence[float] | None = None,
    thickness: int = 1,
) -> np.ndarray:
    """RGB uint8 picture of ``image`` with each mask's contour in its class colour and an optional box.

    Args:
        image: (H, W) counts.
        masks: (N, H, W) instance masks.
        class_names: class name of each mask.
        box: (x0, y0, x1, y1) drawn in purple (the chest crop).
        thickness: contour thickness in pixels.
    """
    grey = window_counts(image)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for mask, name in zip(masks, class_names, strict=True):
        edge = find_boundaries(np.asarray(mask, dtype=bool), mode="inner")
        for _ in range(thickness - 1):
            edge = find_boundaries(edge, mode="thick") | edge
        rgb[edge] = CLASS_COLOURS.get(str(name), _FALLBACK_COLOUR)
    if box is not None:
        h, w = grey.shape
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        x0, x1 = np.clip([x0, x1 - 1], 0, w - 1)
        y0, y1 = np.clip([y0, y1 - 1], 0, h - 1)
        colour = CLASS_COLOURS["chest"]
        for t in range(2):  # two pixels wide, so the box survives downscaled display
            rgb[min(y0 + t, h - 1), x0 : x1 + 1] = rgb[max(y1 - t, 0), x0 : x1 + 1] = colour
            rgb[y0 : y1 + 1, min(x0 + t, w - 1)] = rgb[y0 : y1 + 1, max(x1 - t, 0)] = colour
    return rgb


def save_contact_sheet(
    panels: Sequence[tuple[str, np.ndarray]],
    out_path: str | os.PathLike,
    columns: int = 8,
    title: str | None = None,
    panel_inches: tuple[float, float] = (1.6, 6.2),
) -> None:
    """Save RGB panels with captions as one PNG, with a class-colour legend; written atomically.

    Args:
        panels: (caption, RGB image) pairs.
        out_path: the PNG.
        columns: panels per row.
        title: optional title on top.
        panel_inches: (width, height) of one panel in the figure; whole-body views are tall and narrow.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = int(np.ceil(len(panels) / columns))
    fig, axes = plt.subplots(
        rows, columns, figsize=(panel_inches[0] * columns, panel_inches[1] * rows + 0.6), squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (caption, rgb) in zip(axes.ravel(), panels, strict=False):
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(caption, fontsize=7)
    legend = [Patch(color=np.array(c) / 255, label=n.replace("_", " ")) for n, c in CLASS_COLOURS.items()]
    fig.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    save_figure_atomic(fig, out_path, dpi=110)


def save_study_overlay(
    prediction: StudyPrediction, class_map: ClassMap, out_path: str | os.PathLike, scale: int = 2
) -> None:
    """Both views of a study as stored, full resolution, lesions outlined by class; written atomically as PNG.

    The chest crop is drawn in purple; captions and a class legend sit on top.

    Args:
        prediction: the study's lesions (whole-body stored-pixel coordinates).
        class_map: label → class name (and colour).
        out_path: the PNG.
        scale: integer zoom, so that small lesions stay visible on screen.
    """
    from PIL import Image, ImageDraw

    panels = []
    for view in prediction.views:
        names = [class_map.name(int(label)) for label in view.labels]
        rgb = render_overlay(view.image, view.masks, names, view.chest_box)
        panels.append(np.kron(rgb, np.ones((scale, scale, 1), dtype=np.uint8)))
    gap, header = 8, 44
    height = max(p.shape[0] for p in panels) + header
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) + 1)
    canvas = Image.new("RGB", (max(width, 320), height), "white")
    draw = ImageDraw.Draw(canvas)
    x = gap
    for view, panel in zip(prediction.views, panels, strict=True):
        canvas.paste(Image.fromarray(panel), (x, header))
        draw.text((x, 4), f"{prediction.study_id} {view.view}: {len(view.labels)} lesions", fill="black")
        x += panel.shape[1] + gap
    x = gap
    for name in class_map.names:
        colour = CLASS_COLOURS.get(name, _FALLBACK_COLOUR)
        draw.rectangle((x, 22, x + 10, 32), fill=colour)
        label = name.replace("_", " ")
        draw.text((x + 14, 21), label, fill="black")
        x += 20 + int(draw.textlength(label))
    write_atomic(out_path, lambda tmp: canvas.save(tmp, format="PNG"))
