"""A model's scores on a labelled split, and the files ``tfresnet.evaluate`` writes.

Top-k and superclass accuracy, calibration, the confusion matrix and its figure.
"""

import csv
import io
import json
from pathlib import Path

import numpy as np

from tfresnet.evaluation.inference import TOP_K, coarse_accuracy, has_top_k, load_run
from tfresnet.runs.files import atomic_save_figure, atomic_write_text
from tfresnet.runs.probabilities import predict_probabilities, topk_accuracy
from tfresnet.runs.run_folder import RunFolder


def expected_calibration_error(probabilities, labels, bins=15):
    """ECE (Guo et al., arXiv 1706.04599): the support-weighted mean, over confidence bins,
    of |accuracy - mean confidence|."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            error += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(error)


def confusion_matrix(labels, predicted, num_classes):
    """``matrix[true, predicted]`` counts."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def most_confused(matrix, class_names, count=10):
    """The ``count`` largest off-diagonal cells as ``{true, predicted, count}``."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:count]
    pairs = []
    for flat in order:
        true, predicted = divmod(int(flat), matrix.shape[0])
        if off[true, predicted] == 0:
            break
        pairs.append({"true": class_names[true], "predicted": class_names[predicted],
                      "count": int(off[true, predicted])})
    return pairs


def confusion_figure(matrix, class_names, fine_to_coarse, title):
    """Row-normalised confusion matrix, classes grouped by superclass when known (a
    matplotlib Figure)."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend stays

    order = np.arange(len(class_names))
    if fine_to_coarse is not None:
        order = np.lexsort((order, fine_to_coarse))
    rates = matrix[np.ix_(order, order)] / np.maximum(matrix.sum(axis=1)[order, None], 1)
    size = max(6.0, 0.16 * len(class_names))
    figure = Figure(figsize=(size + 1.5, size))
    ax = figure.subplots()
    image = ax.imshow(rates, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    font = 10 if len(class_names) <= 20 else 5
    names = [class_names[i] for i in order]
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=font)
    ax.set_yticks(range(len(names)), names, fontsize=font)
    if fine_to_coarse is not None:
        groups = fine_to_coarse[order]
        for boundary in np.flatnonzero(np.diff(groups)) + 0.5:
            ax.axhline(boundary, color="white", linewidth=0.4)
            ax.axvline(boundary, color="white", linewidth=0.4)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true" + (" (grouped by superclass)" if fine_to_coarse is not None else ""))
    ax.set_title(title)
    figure.colorbar(image, ax=ax, fraction=0.03, label="fraction of the true class")
    figure.tight_layout()
    return figure


def scores(probabilities, labels, data):
    """Top-1, top-5 (with more than 5 classes), calibration error, most-confused pairs and
    (CIFAR-100) superclass accuracy of ``probabilities`` on ``data``'s ``labels``; returns
    them as a dict, and the confusion matrix."""
    matrix = confusion_matrix(labels, probabilities.argmax(axis=1), data.num_classes)
    result = {"top1": topk_accuracy(probabilities, labels, 1)}
    if has_top_k(data.num_classes):
        result["top5"] = topk_accuracy(probabilities, labels, TOP_K)
    result.update({
        "expected_calibration_error": expected_calibration_error(probabilities, labels),
        "most_confused": most_confused(matrix, data.class_names),
    })
    if data.fine_to_coarse is not None:
        result["coarse_accuracy"] = coarse_accuracy(probabilities, labels, data.fine_to_coarse)
    return result, matrix


def evaluate(target, dataset=None, data_dir=None, tta=None, out_dir=None):
    """Evaluates a run folder or model file; returns the evaluation dict."""
    model, data, images, labels, split = load_run(target, dataset, data_dir)
    probabilities = predict_probabilities(model, images)
    if tta == "flip":
        probabilities = (probabilities + predict_probabilities(model, images, flip=True)) / 2
    found, matrix = scores(probabilities, labels, data)
    result = {"model": str(target), "dataset": data.name, "split": split,
              "images": len(images), "tta": tta, **found}

    out_dir = Path(out_dir) if out_dir else RunFolder.of(target).path
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["class", "images", "correct", "accuracy"])
    for index, name in enumerate(data.class_names):
        support, correct = int(matrix[index].sum()), int(matrix[index, index])
        writer.writerow([name, support, correct, f"{correct / support:.4f}" if support else ""])
    atomic_write_text(out_dir / "per_class_accuracy.csv", rows.getvalue())
    figure = confusion_figure(matrix, data.class_names, data.fine_to_coarse,
                              f"{model.network.name} on {data.name} ({split}): top-1 "
                              f"{100 * result['top1']:.2f}%")
    atomic_save_figure(figure, out_dir / "confusion_matrix.png")
    atomic_write_text(out_dir / "evaluation.json", json.dumps(result, indent=2) + "\n")
    return result

