"""What a search leaves behind: trials.csv, lr_search.png and best_hparams.json."""

import csv
import io
import json

import keras_tuner as kt

from tfresnet.errors import UserError
from tfresnet.runs.files import atomic_save_figure, atomic_write_text


def read_trial_stats(out_dir):
    """Trial id -> the stats its tuner recorded (skipping the hidden temporary file of a
    write in progress or cut short by a kill)."""
    return {path.stem: json.loads(path.read_text())
            for path in (out_dir / "trial_stats").glob("[!.]*.json")}


def finished_trials(tuner):
    return [t for t in tuner.oracle.trials.values()
            if t.status == kt.engine.trial.TrialStatus.COMPLETED and t.score is not None]


def write_search_results(tuner, out_dir, model, dataset, epochs_per_trial):
    """trials.csv, lr_search.png and best_hparams.json from the finished trials of a search
    for ``model`` on ``dataset``."""
    trials = sorted(finished_trials(tuner), key=lambda t: int(t.trial_id))
    if not trials:
        raise UserError("no trial finished; see the errors above")
    stats = read_trial_stats(out_dir)
    keys = sorted({k for t in trials for k in t.hyperparameters.values
                   if not k.startswith("tuner/")})
    out = io.StringIO()
    writer = csv.writer(out)
    recorded = ["seconds", "compile_seconds", "dtype_policy", "rss_mb", "tuner"]
    writer.writerow(["trial", *keys, "best_val_accuracy", "epochs", *recorded])
    for t in trials:
        values = t.hyperparameters.values
        trial_stats = stats.get(t.trial_id, {})
        writer.writerow([t.trial_id, *(values.get(k, "") for k in keys), f"{t.score:.4f}",
                         values.get("tuner/epochs", epochs_per_trial),
                         *(trial_stats.get(k, "") for k in recorded)])
    atomic_write_text(out_dir / "trials.csv", out.getvalue())

    best = max(trials, key=lambda t: t.score)
    hparams = {"model": model, **{k: v for k, v in best.hyperparameters.values.items()
                                  if not k.startswith("tuner/")}}
    atomic_write_text(out_dir / "best_hparams.json", json.dumps(hparams, indent=2) + "\n")
    plot_search(out_dir / "lr_search.png", "learning rate", "best validation accuracy",
          [t.hyperparameters.values["lr"] for t in trials], [t.score for t in trials],
          marker=(best.hyperparameters.values["lr"], best.score),
          title=f"{model} on {dataset}: {len(trials)} trials")
    return hparams, trials


def plot_search(path, xlabel, ylabel, xs, ys, marker, title, line=False):
    from matplotlib.figure import Figure  # no pyplot: the caller's backend stays

    figure = Figure(figsize=(7, 4.5))
    ax = figure.subplots()
    ax.plot(xs, ys, "-" if line else "o", color="tab:blue", alpha=0.8)
    ax.plot(*marker, "*", color="tab:red", markersize=16,
            label=f"chosen: {marker[0]:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    figure.tight_layout()
    atomic_save_figure(figure, path)
