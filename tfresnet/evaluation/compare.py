"""Several runs side by side: one table and one accuracy chart."""

import csv
import io
from itertools import accumulate

from tfresnet.runs.files import atomic_save_figure, atomic_write_text
from tfresnet.runs.run_folder import RunFolder

COLUMNS = ("run", "model", "dataset", "transfer", "epochs", "best_val_accuracy",
           "test_accuracy", "test_top5", "wall_seconds", "train_images_per_second")


def load_runs(paths):
    """``(row, history)`` for each run folder; a folder without summary.json is an error."""
    runs = []
    for folder in map(RunFolder, paths):
        summary = folder.summary(required=True)
        config = summary.get("config", {})
        row = {"run": folder.name,
               "model": summary.get("model") or config.get("model", "?"),
               "dataset": summary.get("dataset") or config.get("dataset", "?"),
               "transfer": config.get("transfer", ""),
               **{k: summary.get(k) for k in COLUMNS[4:]}}
        runs.append((row, folder.history()))
    return runs


ACCURACIES = ("best_val_accuracy", "test_accuracy", "test_top5")  # fractions, shown as %


def _cell(column, value):
    if value is None:
        return ""
    if column in ACCURACIES:
        return f"{100 * value:.2f}%"
    return f"{value:,.1f}" if isinstance(value, float) else str(value)


def write_table(runs, out_dir):
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(c, row[c]) for c in COLUMNS) + " |" for row, _ in runs]
    atomic_write_text(out_dir / "comparison.md", "\n".join(lines) + "\n")
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS)
    writer.writeheader()
    writer.writerows(row for row, _ in runs)
    atomic_write_text(out_dir / "comparison.csv", out.getvalue())
    return lines


def plot(runs, out_dir):
    from matplotlib.figure import Figure  # no pyplot: the caller's backend stays
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(12, 4.5))
    by_epoch, by_time = figure.subplots(1, 2, sharey=True)
    for row, history in runs:
        points = [r for r in history if "val_accuracy" in r]
        if points:
            minutes = list(accumulate(r["seconds"] / 60 for r in history))
            epochs = [r["epoch"] for r in points]
            elapsed = [minutes[history.index(r)] for r in points]
            accuracy = [r["val_accuracy"] for r in points]
            by_epoch.plot(epochs, accuracy, "-o", markersize=3, label=row["run"])
            by_time.plot(elapsed, accuracy, "-o", markersize=3, label=row["run"])
        elif row["best_val_accuracy"] is not None:  # a baseline without epochs
            by_epoch.axhline(row["best_val_accuracy"], linestyle="--", color="gray")
            by_epoch.annotate(row["run"], (0, row["best_val_accuracy"]), fontsize=8)
    by_epoch.set_xlabel("epoch")
    by_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_time.set_xlabel("wall time (minutes)")
    by_epoch.set_ylabel("validation accuracy")
    for ax in (by_epoch, by_time):
        ax.grid(alpha=0.3)
    by_time.legend(fontsize=8)
    figure.tight_layout()
    atomic_save_figure(figure, out_dir / "comparison.png")

