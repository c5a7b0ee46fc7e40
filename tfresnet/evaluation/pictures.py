"""The pictures: ``test_visualisation.png`` (test images by predicted class), learning curves."""

import dataclasses
import math
from pathlib import Path

import cv2
import numpy as np

from tfresnet.data import in_memory
from tfresnet.evaluation.gradcam import grad_cam, overlay
from tfresnet.evaluation.inference import load_run
from tfresnet.runs.files import atomic_write_image
from tfresnet.runs.probabilities import predict_probabilities, topk_accuracy
from tfresnet.runs.run_folder import RunFolder

GREEN = (60, 180, 60)  # BGR


RED = (40, 40, 220)


FONT = cv2.FONT_HERSHEY_SIMPLEX


HEADER_HEIGHT = 64


BORDER = 2


GAP = 2


@dataclasses.dataclass
class Layout:
    """Geometry of the picture: where row ``r``, column ``c`` goes."""

    image_size: int  # side of one (upscaled) image
    per_row: int
    label_width: int
    rows: int

    @property
    def cell(self):
        return self.image_size + 2 * BORDER + GAP

    @property
    def shape(self):
        return (HEADER_HEIGHT + self.rows * self.cell,
                self.label_width + self.per_row * self.cell, 3)

    def origin(self, row, column):
        """Top-left pixel (y, x) of the image (inside its border) at ``(row, column)``."""
        return (HEADER_HEIGHT + row * self.cell + BORDER,
                self.label_width + column * self.cell + BORDER)


def make_layout(class_names, counts, image_size, per_row=None, max_width=4000):
    """Chooses the label column and images per row; ``per_row=None`` fits ``max_width``."""
    text_width = max(cv2.getTextSize(n, FONT, 0.5, 1)[0][0] for n in class_names)
    label_width = text_width + 16
    cell = image_size + 2 * BORDER + GAP
    if per_row is None:
        per_row = max(1, min(max(counts, default=1), (max_width - label_width) // cell))
    return Layout(image_size, per_row, label_width, len(class_names))


def pick(ranked, count, select):
    """``count`` of the confidence-ranked indices: the first ones (``"top"``) or evenly
    spaced ranks from most to least confident (``"spread"``), order kept."""
    if len(ranked) <= count:
        return ranked
    if select == "top":
        return ranked[:count]
    return ranked[np.unique(np.linspace(0, len(ranked) - 1, count).round().astype(int))]


def draw_predictions(images, labels, probabilities, class_names, header, per_row=None,
                     scale=2, select="spread"):
    """Draws the picture; returns ``(BGR image, layout, placement)``.

    ``placement[(row, column)]`` is the index of the image drawn there. Rows are predicted
    classes, ordered by confidence; a row with more images than fit shows the most
    confident (``select="top"``) or a sample spread over the whole confidence range
    (``"spread"``, so the doubtful -- often red -- end of the row is visible too).
    """
    if len(images) != len(probabilities):
        raise ValueError("one probability row per image is needed")
    predicted = np.argmax(probabilities, axis=1)
    confidence = probabilities[np.arange(len(images)), predicted]
    members = [np.flatnonzero(predicted == c) for c in range(len(class_names))]
    members = [m[np.argsort(-confidence[m], kind="stable")] for m in members]
    size = images.shape[1] * scale
    layout = make_layout(class_names, [len(m) for m in members], size, per_row)
    canvas = np.full(layout.shape, 24, np.uint8)
    cv2.putText(canvas, header, (10, 28), FONT, 0.7, (255, 255, 255), 1, cv2.LINE_AA)
    legend = ("rows: predicted class, most confident first" +
              ("" if select == "top" else " (sampled across the confidence range)") +
              "; green frame = correct, red = wrong")
    cv2.putText(canvas, legend, (10, 52), FONT, 0.5, (200, 200, 200), 1, cv2.LINE_AA)
    placement = {}
    for row, indices in enumerate(members):
        top = HEADER_HEIGHT + row * layout.cell
        cv2.putText(canvas, class_names[row], (8, top + layout.cell // 2 + 5), FONT, 0.5,
                    (255, 255, 255), 1, cv2.LINE_AA)
        for column, index in enumerate(pick(indices, layout.per_row, select)):
            y, x = layout.origin(row, column)
            colour = GREEN if predicted[index] == labels[index] else RED
            cv2.rectangle(canvas, (x - BORDER, y - BORDER),
                          (x + size + BORDER - 1, y + size + BORDER - 1), colour, BORDER)
            tile = cv2.resize(images[index], (size, size), interpolation=cv2.INTER_NEAREST)
            canvas[y:y + size, x:x + size] = tile[..., ::-1]  # RGB -> BGR
            placement[(row, column)] = int(index)
    return canvas, layout, placement


class SparseTiles:
    """Images by index, like an array's ``tiles[i]`` and ``shape``; black where none was
    drawn (and never stored)."""

    def __init__(self, tiles, shape):
        self.tiles, self.shape = tiles, shape
        self.black = np.zeros(shape[1:], np.uint8)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, index):
        return self.tiles.get(int(index), self.black)


def cam_tiles(model, images, indices, scale):
    """Images ``scale`` times larger, with the Grad-CAM of their predicted class laid over
    them at that resolution; only ``indices`` are drawn, the rest are black."""
    height, width = images.shape[1] * scale, images.shape[2] * scale
    shown = in_memory(images[indices])
    tiles = {}
    for index, image, cam in zip(indices, shown, grad_cam(model, shown)):
        big = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)
        heat = cv2.resize(cam, (width, height), interpolation=cv2.INTER_LINEAR)
        tiles[int(index)] = overlay(big, heat)[..., ::-1]  # BGR -> RGB, as the images
    return SparseTiles(tiles, (len(images), height, width, 3))


def draw_run(target, dataset=None, data_dir=None, out=None, per_row=None, scale=2,
             select="spread", cam=False):
    """Draws ``test_visualisation.png`` (with ``cam``: ``test_visualisation_cam.png``, the
    same rows with Grad-CAM overlays) for a run folder or model; returns its path."""
    model, data, images, labels, split = load_run(target, dataset, data_dir)
    probabilities = predict_probabilities(model, images)
    accuracy = topk_accuracy(probabilities, labels, 1)
    header = (f"{model.network.name} on {data.name} ({split}, {len(images)} images): "
              f"accuracy {100 * accuracy:.2f}%")
    picture, _, placement = draw_predictions(images, labels, probabilities, model.class_names,
                                             header, per_row, scale, select)
    if cam:
        shown = np.array(sorted(set(placement.values())), dtype=int)
        picture, _, _ = draw_predictions(cam_tiles(model, images, shown, scale), labels,
                                         probabilities, model.class_names,
                                         f"{header}; Grad-CAM of the predicted class",
                                         per_row, 1, select)
    name = "test_visualisation_cam.png" if cam else "test_visualisation.png"
    out = Path(out) if out else RunFolder.of(target) / name
    atomic_write_image(out, picture)
    print(f"{out}: {picture.shape[1]}x{picture.shape[0]} px, {len(model.class_names)} rows")
    return out


def curves_figure(rows, title):
    """Loss and accuracy against epoch, train vs validation (a matplotlib Figure)."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend stays
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]
    figure = Figure(figsize=(11, 4))
    loss_ax, acc_ax = figure.subplots(1, 2)
    for ax, key, label in ((loss_ax, "loss", "loss"), (acc_ax, "accuracy", "accuracy")):
        # Markers too: a run of one epoch is one point, which a bare line would not show.
        ax.plot(epochs, [r[key] for r in rows], ".-", color="tab:red", label=f"train {label}")
        if any(f"val_{key}" in r for r in rows):
            ax.plot(epochs, [r.get(f"val_{key}", math.nan) for r in rows], ".-",
                    color="tab:blue", label=f"validation {label}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.5
        ax.set_ylabel(label)
        if key == "loss":  # one huge early loss (BN statistics of a few batches) stays readable
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    figure.suptitle(title)
    figure.tight_layout()
    return figure
