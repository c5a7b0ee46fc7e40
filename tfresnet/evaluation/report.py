"""One run on one self-contained HTML page (``report.html``)."""

import base64
import html
import io
import json

import cv2
import numpy as np

from tfresnet.data import in_memory
from tfresnet.evaluation.gradcam import cams_and_probabilities, explained_picture
from tfresnet.evaluation.inference import load_run
from tfresnet.evaluation.pictures import HEADER_HEIGHT, curves_figure, draw_predictions
from tfresnet.evaluation.scores import confusion_figure, scores
from tfresnet.runs.probabilities import predict_probabilities
from tfresnet.runs.run_folder import RunFolder

EXCERPT_ROWS = 10  # classes of test_visualisation.png the page shows


CAM_IMAGES = 8  # Grad-CAM strip: the most confident right and wrong predictions


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:60rem;
padding:1rem;color:#1d1d1f;line-height:1.45}
h1{font-size:1.5rem;margin:.2rem 0}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px
solid #ddd}
img{max-width:100%;height:auto;display:block;margin:.5rem 0}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.9rem}
td,th{border-bottom:1px solid #e5e5e5;padding:.25rem .6rem;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.metrics{display:flex;flex-wrap:wrap;gap:.6rem}
.metric{background:#f3f4f6;border-radius:.5rem;padding:.5rem .9rem}
.metric b{display:block;font-size:1.4rem}.muted{color:#666;font-size:.85rem}
"""


def png_uri(png):
    """PNG bytes as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image_data_uri(image_bgr):
    """An OpenCV (BGR) image as a ``data:`` URI holding a PNG."""
    ok, encoded = cv2.imencode(".png", image_bgr)
    if not ok:
        raise ValueError("could not encode the picture as PNG")
    return png_uri(encoded.tobytes())


def figure_data_uri(figure):
    """A matplotlib Figure as a ``data:`` URI holding a PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return png_uri(buffer.getvalue())


def picture(uri, alt):
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def table(header, rows, numeric=()):
    """An HTML table; columns whose index is in ``numeric`` are right-aligned."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td{" class=n" if i in numeric else ""}>{html.escape(str(v))}</td>'
                         for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def percent(value):
    return "" if value is None else f"{100 * value:.2f} %"


def setting(value):
    """A config value for the settings table: floats to 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(setting, value)) + "]"
    return json.dumps(value) if isinstance(value, dict) else str(value)


def excerpt(images, labels, probabilities, class_names, header):
    """The first `EXCERPT_ROWS` rows of the test visualisation, drawn as `visualize` does."""
    canvas, layout, _ = draw_predictions(images, labels, probabilities, class_names, header,
                                         per_row=12)
    return canvas[:HEADER_HEIGHT + min(EXCERPT_ROWS, layout.rows) * layout.cell]


def cam_strip(model, images, labels, probabilities):
    """Grad-CAM of the most confident correct and wrong predictions, side by side."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    order = np.argsort(-confidence, kind="stable")
    right = order[predicted[order] == labels[order]][:CAM_IMAGES // 2]
    wrong = order[predicted[order] != labels[order]][:CAM_IMAGES - len(right)]
    chosen = np.sort(np.concatenate([right, wrong]).astype(int))
    shown = in_memory(images[chosen])
    cams, _ = cams_and_probabilities(model, shown)
    tiles = []
    for index, image, cam in zip(chosen, shown, cams):
        name = model.class_names[predicted[index]]
        mark = "right" if predicted[index] == labels[index] else (
            f"true: {model.class_names[labels[index]]}")
        tiles.append(explained_picture(image, cam, f"{name} {100 * confidence[index]:.0f}% "
                                                   f"({mark})", size=128))
    if len(tiles) % 2:
        tiles.append(np.full_like(tiles[0], 24))
    return np.vstack([np.hstack(tiles[i:i + 2]) for i in range(0, len(tiles), 2)])


def export_rows(run_dir):
    """One row per export recorded in the run folder's ``export/export.json``."""
    rows = []
    for name, entry in run_dir.exports().items():
        rows.append([name, entry.get("format", ""), entry.get("quantize") or "float32",
                     f"{entry.get('bytes', 0) / 1e6:.2f}",
                     f"{entry.get('max_probability_difference', float('nan')):.1e}",
                     percent(entry.get("top1_agreement")), percent(entry.get("export_accuracy")),
                     percent(entry.get("keras_accuracy"))])
    return rows


def build_report(target, dataset=None, data_dir=None):
    """The report page of a run folder (or ``.keras`` file) as an HTML string."""
    run_dir = RunFolder.of(target)
    model, data, images, labels, split = load_run(target, dataset, data_dir)
    config = run_dir.config()
    summary = run_dir.summary()
    probabilities = predict_probabilities(model, images)
    found, matrix = scores(probabilities, labels, data)
    top1 = found["top1"]
    width = config.get("width") or 1.0
    title = f"{model.network.name}{f' x{width:g}' if width != 1 else ''} on {data.name}"

    metrics = [(f"{split} top-1", percent(top1))]
    if "top5" in found:
        metrics.append((f"{split} top-5", percent(found["top5"])))
    if "coarse_accuracy" in found:
        metrics.append(("superclass", percent(found["coarse_accuracy"])))
    metrics.append(("calibration error", f"{found['expected_calibration_error']:.3f}"))
    if summary.get("best_val_accuracy") is not None:
        metrics.append(("best validation", percent(summary["best_val_accuracy"])))
    if summary.get("wall_seconds") is not None:
        metrics.append(("training time", f"{summary['wall_seconds'] / 60:.1f} min"))

    sections = [f"<h1>{html.escape(title)}</h1><p class=muted>{html.escape(str(run_dir))}"
                f" &middot; {len(images)} {split} images &middot; "
                f"{summary.get('parameters', model.count_params()):,} parameters"
                f" &middot; {html.escape(str(summary.get('device', '')))}</p>",
                "<h2>Results</h2><div class=metrics>" + "".join(
                    f"<div class=metric>{html.escape(k)}<b>{v}</b></div>" for k, v in metrics)
                + "</div>"]

    history = run_dir.history()
    if history:
        sections.append("<h2>Learning curves</h2>" + picture(
            figure_data_uri(curves_figure(history, title)), "learning curves"))

    confused = found["most_confused"]
    sections.append(
        "<h2>Confusion matrix</h2>" + picture(figure_data_uri(confusion_figure(
            matrix, data.class_names, data.fine_to_coarse, f"{title} ({split})")),
            "confusion matrix")
        + ("<p>Most-confused pairs (true &rarr; predicted):</p>"
           + table(["true", "predicted", "images"],
                   [[p["true"], p["predicted"], p["count"]] for p in confused], numeric={2})
           if confused else "<p>No image was confused with another class.</p>"))

    header = f"{title} ({split}, {len(images)} images): accuracy {100 * top1:.2f}%"
    rows = min(EXCERPT_ROWS, data.num_classes)
    sections.append(
        f"<h2>Test images by predicted class</h2><p class=muted>The first {rows} of "
        f"{data.num_classes} rows of test_visualisation.png (python -m tfresnet.visualize "
        "draws them all): green frame = correct, red = wrong.</p>"
        + picture(image_data_uri(excerpt(images, labels, probabilities, model.class_names,
                                       header)), "test images by predicted class"))

    sections.append(
        "<h2>Where the model looked (Grad-CAM)</h2><p class=muted>The most confident correct "
        "and wrong predictions; each image beside its Grad-CAM of the predicted class.</p>"
        + picture(image_data_uri(cam_strip(model, images, labels, probabilities)),
                  "Grad-CAM strip"))

    exports = export_rows(run_dir)
    if exports:
        sections.append("<h2>Exports</h2>" + table(
            ["file", "format", "weights", "MB", "max prob. diff.", "top-1 agreement",
             "export accuracy", "Keras accuracy"], exports, numeric={3, 4, 5, 6, 7}))

    settings = [[k, setting(v)] for k, v in config.items() if v is not None]
    sections.append("<h2>Settings</h2>" + table(["setting", "value"], settings))
    versions = summary.get("versions", {})
    if versions:
        sections.append("<h2>Versions</h2>" + table(["library", "version"],
                                                    sorted(versions.items())))
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8><meta name=viewport "
            f"content='width=device-width,initial-scale=1'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>" + "\n".join(sections) + "</body></html>\n")

