"""``python -m tfresnet.tune``: search the learning rate (and more), resumably.

Two methods:
  keras-tuner (default): random, Bayesian or Hyperband search over the learning rate
      (log-uniform) and, with ``--search``, optimizer, l2, weight_decay, label_smoothing,
      batch_size and augment. Every trial trains through the same model, loss, optimizer
      and pipeline as ``tfresnet.train``; the objective is validation accuracy, never test.
      Re-running the same command continues the search; ``--fresh`` starts over.
  lr-range: one short run with the learning rate growing exponentially per step; the
      suggested rate is where the smoothed loss falls fastest, before it diverges.

Both write ``best_hparams.json``, which ``tfresnet.train --hparams`` consumes.

Parallel trials run on keras-tuner's own distributed mode: one chief (the oracle, which
alone writes the results) and workers that each run one trial at a time, set up only
through keras-tuner's variables KERASTUNER_TUNER_ID (``chief``, ``tuner0``, ...),
KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT. ``--parallel N`` starts a chief and N
workers on this machine, one GPU each.

Example:
    python -m tfresnet.tune --max-trials 10 --epochs-per-trial 3 --subset 0.2
    python -m tfresnet.tune --method lr-range --dataset cifar10
    python -m tfresnet.tune --max-trials 20 --parallel 4      # 4 GPUs, 4 trials at a time
    python -m tfresnet.train --hparams saved_models/tune/<name>/best_hparams.json
"""

import csv
import ctypes
import gc
import io
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf

from tfresnet.assemble import (
    batch_and_steps,
    build_model,
    load_data,
    make_pipelines,
    training_callbacks,
)
from tfresnet.checkpoint import atomic_save_figure, atomic_write_text, make_dir
from tfresnet.config import add_config_arguments, resolve_config
from tfresnet.data.folders import ImageFiles
from tfresnet.data.pipeline import PRESETS
from tfresnet.data.splits import stratified_split
from tfresnet.errors import UserError, command_parser, run_cli
from tfresnet.optim import OPTIMIZERS
from tfresnet.runtime import configure

# The searchable hyper-parameters besides the learning rate: name (a `TrainConfig` key) ->
# its keras-tuner declaration. Adding one is one line here.
SEARCH_SPACE = {
    "optimizer": lambda hp: hp.Choice("optimizer", list(OPTIMIZERS)),
    "l2": lambda hp: hp.Float("l2", 1e-5, 1e-2, sampling="log"),
    "weight_decay": lambda hp: hp.Float("weight_decay", 1e-5, 1e-2, sampling="log"),
    "label_smoothing": lambda hp: hp.Float("label_smoothing", 0.0, 0.2, step=0.05),
    "batch_size": lambda hp: hp.Choice("batch_size", [64, 128, 256]),
    "augment": lambda hp: hp.Choice("augment", list(PRESETS)),
}
SEARCHABLE = tuple(SEARCH_SPACE)
TUNERS = ("random", "bayesian", "hyperband")


class ResNetHyperModel(kt.HyperModel):
    """Trials are `tfresnet.train` runs of ``base`` with the searched values substituted:
    the same model, loss, optimizer and pipeline, no second code path.

    Args:
        base: the `TrainConfig` every trial starts from.
        data: the (possibly subset) `Dataset`, with a validation split.
        runtime: the resolved `tfresnet.runtime.Runtime`.
        search: names from `SEARCHABLE` to search besides the learning rate.
        lr_range: ``(low, high)`` of the log-uniform learning rate.
    """

    def __init__(self, base, data, runtime, search, lr_range):
        super().__init__()
        self.base = base
        self.data = data
        # The arrays become tensors once for the whole search: converting them again in
        # every trial's pipeline made the process grow by their size per trial.
        self.tensors = [a if isinstance(a, ImageFiles) else tf.constant(a)
                        for a in (data.x_train, data.y_train, data.x_val, data.y_val)]
        self.runtime = runtime
        self.search = set(search)
        self.lr_range = lr_range

    def trial_config(self, hp):
        """The `TrainConfig` of one trial; also declares the search space."""
        values = {"lr": hp.Float("lr", *self.lr_range, sampling="log")}
        for name in SEARCHABLE:  # a fixed order keeps keras-tuner's space stable
            if name in self.search:
                values[name] = SEARCH_SPACE[name](hp)
        if "tuner/epochs" in hp.values:  # Hyperband's budget for this trial
            values["epochs"] = int(hp.values["tuner/epochs"])
        return self.base.updated(values, "search space")

    def build(self, hp):
        return build_model(self.trial_config(hp), self.data, self.runtime)

    def fit(self, hp, model, *args, **kwargs):
        config = self.trial_config(hp)
        train_data, val_data = make_pipelines(config, self.data, self.runtime,
                                              arrays=self.tensors)
        callbacks = [*training_callbacks(config), *kwargs.get("callbacks", [])]
        return model.fit(train_data, steps_per_epoch=batch_and_steps(config, self.data)[1],
                         epochs=kwargs.pop("epochs", config.epochs),
                         initial_epoch=kwargs.pop("initial_epoch", 0),
                         validation_data=val_data, callbacks=callbacks, shuffle=False,
                         verbose=0)


def make_tuner(kind, hypermodel, args, out_dir, runtime):
    """The keras-tuner tuner, recording each trial's seconds and the process's resident
    memory after it into ``trial_stats/<trial>.json``."""
    base = {"random": kt.RandomSearch, "bayesian": kt.BayesianOptimization,
            "hyperband": kt.Hyperband}[kind]

    class TimedTuner(base):
        # Stats are recorded after the oracle has saved the trial as finished, one file
        # per trial (parallel workers never write the same file).
        def on_trial_begin(self, trial):
            self._trial_start = time.perf_counter()
            super().on_trial_begin(trial)

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            release_memory()
            stats = {"seconds": round(time.perf_counter() - self._trial_start, 2),
                     "rss_mb": resident_memory_mb(), "tuner": self.tuner_id}
            make_dir(out_dir / "trial_stats")
            atomic_write_text(out_dir / "trial_stats" / f"{trial.trial_id}.json",
                              json.dumps(stats) + "\n")
            print(f"trial {trial.trial_id}: {json.dumps(trial.hyperparameters.values)} "
                  f"{stats}", flush=True)

    options = {"objective": kt.Objective("val_accuracy", "max"), "seed": args.seed,
               "directory": str(out_dir), "project_name": "keras_tuner",
               "overwrite": args.fresh and tuner_role() != "worker"}
    if runtime.strategy.num_replicas_in_sync > 1:
        options["distribution_strategy"] = runtime.strategy
    if kind == "hyperband":
        options.update(max_epochs=args.epochs_per_trial, factor=3,
                       max_retries_per_trial=0)
        tuner = TimedTuner(hypermodel, **options)
        tuner.oracle.max_trials = args.max_trials
        return tuner
    return TimedTuner(hypermodel, max_trials=args.max_trials, **options)


def limit_heap_arenas(arenas=2):
    """Caps glibc's malloc arenas (``mallopt(M_ARENA_MAX)``; a no-op elsewhere). By default
    every thread that allocates may get an arena of its own, and TensorFlow's thread pools
    left each trial's freed memory spread over them: the search grew 5-7 MB per trial; with
    2 arenas it stays flat after the first trial (experiments/README.md)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8: M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def release_memory():
    """Frees what a finished trial left behind: Keras' global state, Python's reference
    cycles, and the free pages of the C heap (glibc's ``malloc_trim``; a no-op elsewhere),
    which otherwise stay with the process after each trial's graphs are freed."""
    keras.backend.clear_session()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def resident_memory_mb():
    """Current resident memory of this process (Linux /proc), in MB."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def read_trial_stats(out_dir):
    """Trial id -> the stats its tuner recorded (skipping the hidden temporary file of a
    write in progress or cut short by a kill)."""
    return {path.stem: json.loads(path.read_text())
            for path in (out_dir / "trial_stats").glob("[!.]*.json")}


def finished_trials(tuner):
    return [t for t in tuner.oracle.trials.values()
            if t.status == kt.engine.trial.TrialStatus.COMPLETED and t.score is not None]


def write_search_results(tuner, out_dir, base, epochs_per_trial):
    """trials.csv, lr_search.png and best_hparams.json from the finished trials."""
    trials = sorted(finished_trials(tuner), key=lambda t: int(t.trial_id))
    if not trials:
        raise UserError("no trial finished; see the errors above")
    stats = read_trial_stats(out_dir)
    keys = sorted({k for t in trials for k in t.hyperparameters.values
                   if not k.startswith("tuner/")})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["trial", *keys, "best_val_accuracy", "epochs", "seconds", "rss_mb",
                     "tuner"])
    for t in trials:
        values = t.hyperparameters.values
        trial_stats = stats.get(t.trial_id, {})
        writer.writerow([t.trial_id, *(values.get(k, "") for k in keys), f"{t.score:.4f}",
                         values.get("tuner/epochs", epochs_per_trial),
                         trial_stats.get("seconds", ""), trial_stats.get("rss_mb", ""),
                         trial_stats.get("tuner", "")])
    atomic_write_text(out_dir / "trials.csv", out.getvalue())

    best = max(trials, key=lambda t: t.score)
    hparams = {"model": base.model, **{k: v for k, v in best.hyperparameters.values.items()
                                       if not k.startswith("tuner/")}}
    atomic_write_text(out_dir / "best_hparams.json", json.dumps(hparams, indent=2) + "\n")
    _plot(out_dir / "lr_search.png", "learning rate", "best validation accuracy",
          [t.hyperparameters.values["lr"] for t in trials], [t.score for t in trials],
          marker=(best.hyperparameters.values["lr"], best.score),
          title=f"{base.model} on {base.dataset}: {len(trials)} trials")
    return hparams, trials


def _plot(path, xlabel, ylabel, xs, ys, marker, title, line=False):
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


def lr_range_test(base, data, runtime, lr_range, steps, out_dir):
    """Trains ``steps`` batches with the LR growing from ``lr_range[0]`` to ``[1]``;
    returns the suggested LR (steepest fall of the smoothed loss before divergence)."""
    if base.grad_accum > 1:
        raise UserError("the LR range test records one LR per batch; drop --grad-accum for "
                        "it (the LR it finds holds per update)")
    low, high = lr_range
    schedule = keras.optimizers.schedules.ExponentialDecay(low, max(1, steps - 1), high / low)
    model = build_model(base, data, runtime)
    model.optimizer.learning_rate = schedule
    train_data, _ = make_pipelines(base, data, runtime)
    record = []

    class Recorder(keras.callbacks.Callback):
        # One step per "epoch", so the logged loss is that batch's alone.
        def on_epoch_end(self, epoch, logs=None):
            record.append((float(schedule(epoch)), float(logs["loss"])))
            smoothed = _smooth([loss for _, loss in record])
            if not math.isfinite(record[-1][1]) or smoothed[-1] > 4 * min(smoothed):
                self.model.stop_training = True

    model.fit(train_data, steps_per_epoch=1, epochs=steps, callbacks=[Recorder()],
              shuffle=False, verbose=0)
    rates = np.array([lr for lr, _ in record])
    smoothed = np.array(_smooth([loss for _, loss in record]))
    finite = np.isfinite(smoothed)
    rates, smoothed = rates[finite], smoothed[finite]
    suggestion = steepest_descent(rates, smoothed)
    out = io.StringIO()
    out.write("step,lr,loss,smoothed_loss\n")
    for step, ((lr, loss), smooth) in enumerate(zip(record, _smooth([v for _, v in record]))):
        out.write(f"{step},{lr:.6g},{loss:.6g},{smooth:.6g}\n")
    atomic_write_text(out_dir / "lr_range.csv", out.getvalue())
    _plot(out_dir / "lr_range.png", "learning rate", "smoothed training loss", rates, smoothed,
          marker=(suggestion, smoothed[int(np.argmin(np.abs(rates - suggestion)))]),
          title=f"LR range test: {base.model} on {base.dataset}, {len(record)} steps",
          line=True)
    return suggestion


def steepest_descent(rates, losses):
    """The largest rate that still falls at least 80 % as fast as the steepest point of the
    loss curve, before its minimum.

    Slopes are per log-step of the rate, over a window of ``n/15`` steps, and the first
    tenth of the sweep is ignored, so the noise of the first steps cannot win. Along a
    long, evenly steep stretch the top of it is taken, not a noisy point near its start.
    """
    lowest = int(np.argmin(losses))
    start = len(losses) // 10
    window = max(2, len(losses) // 15)
    if lowest - start < 2 * window:
        raise UserError("the loss never fell steadily; widen the range (lower --lr-min) or "
                        "use more --range-steps")
    log_rates = np.log(rates)
    centres = np.arange(start + window, lowest - window + 1)
    slopes = ((losses[centres + window] - losses[centres - window])
              / (log_rates[centres + window] - log_rates[centres - window]))
    steep = centres[slopes <= 0.8 * slopes.min()]
    return float(rates[steep.max()])


def _smooth(values, beta=0.98):
    """Bias-corrected exponential moving average."""
    average, out = 0.0, []
    for i, value in enumerate(values, start=1):
        average = beta * average + (1 - beta) * value
        out.append(average / (1 - beta**i))
    return out


def subset(data, fraction, seed):
    """Keeps a stratified ``fraction`` of the training split (validation untouched)."""
    if fraction >= 1.0:
        return data
    _, kept = stratified_split(data.y_train, max(data.num_classes,
                                                 round(fraction * len(data.y_train))), seed)
    data.mean  # noqa: B018  (the whole training split's statistics, as before the subset)
    data.x_train, data.y_train = data.x_train[kept], data.y_train[kept]
    if data.coarse_train is not None:
        data.coarse_train = data.coarse_train[kept]
    return data


def tuner_role():
    """``"chief"`` or ``"worker"`` under keras-tuner's distributed mode, else None."""
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID")
    if not tuner_id:
        return None
    missing = [name for name in ("KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")
               if not os.environ.get(name)]
    if missing:
        raise UserError(f"KERASTUNER_TUNER_ID is set but {' and '.join(missing)} is not; set "
                        "all three on the chief and on every worker, or none")
    return "chief" if tuner_id == "chief" else "worker"


def check_arguments(args):
    low, high = args.lr_min, args.lr_max
    if not (0 < low < high):
        raise UserError(f"the learning-rate range must satisfy 0 < --lr-min < --lr-max. "
                        f"Received: {low} .. {high}")
    if args.max_trials <= 0 or args.epochs_per_trial <= 0 or args.range_steps < 10:
        raise UserError("--max-trials and --epochs-per-trial must be positive and "
                        "--range-steps at least 10")
    if args.parallel < 1:
        raise UserError(f"--parallel must be at least 1. Received: {args.parallel}")
    if (args.parallel > 1 or tuner_role()) and args.method != "keras-tuner":
        raise UserError("parallel tuning runs keras-tuner trials; the lr-range test is one "
                        "run: drop --parallel (and the KERASTUNER_* variables)")
    if not 0 < args.subset <= 1:
        raise UserError(f"--subset must be in (0, 1]. Received: {args.subset}")
    unknown = sorted(set(args.search) - set(SEARCHABLE))
    if unknown:
        raise UserError(f"unknown hyperparameter(s) {', '.join(unknown)}; searchable: lr "
                        f"(always) and {', '.join(SEARCHABLE)}")


def tune(args, base):
    """Runs the chosen method; returns the best hyper-parameters written (empty on a
    keras-tuner worker, which runs trials and writes only their own records)."""
    check_arguments(args)
    role = tuner_role()
    name = args.name or f"{base.model}-{Path(base.dataset).name}"
    out_dir = Path(base.output_dir) / "tune" / name
    space = {"method": args.method, "tuner": args.tuner, "search": sorted(args.search),
             "lr_range": [args.lr_min, args.lr_max], "base": base.to_dict(),
             "subset": args.subset, "epochs_per_trial": args.epochs_per_trial}
    space_path = out_dir / "search.json"
    if space_path.exists() and not (args.fresh and role != "worker"):
        saved = json.loads(space_path.read_text())
        if saved != space:
            changed = sorted(k for k in space if saved.get(k) != space[k])
            raise UserError(f"{out_dir} holds a search with another setup ({', '.join(changed)}"
                            "); use another --name, or --fresh to start over")
    runtime = configure(base)
    data = subset(load_data(base), args.subset, base.seed)
    if not len(data.x_val):
        raise UserError("tuning needs a validation split; drop --val-size 0")
    if role != "worker":
        make_dir(out_dir)  # only now: a refused search leaves nothing behind
        atomic_write_text(space_path, json.dumps(space, indent=2) + "\n")
    lr_range = (args.lr_min, args.lr_max)
    if args.method == "lr-range":
        suggestion = lr_range_test(base, data, runtime, lr_range, args.range_steps, out_dir)
        hparams = {"model": base.model, "lr": suggestion}
        atomic_write_text(out_dir / "best_hparams.json", json.dumps(hparams, indent=2) + "\n")
        print(f"suggested learning rate: {suggestion:.3g}")
    else:
        hypermodel = ResNetHyperModel(base, data, runtime, args.search, lr_range)
        tuner = make_tuner(args.tuner, hypermodel, args, out_dir, runtime)
        tuner.search()
        if role == "worker":
            print(f"{os.environ['KERASTUNER_TUNER_ID']}: the search is complete")
            return {}
        hparams, trials = write_search_results(tuner, out_dir, base, args.epochs_per_trial)
        print(f"{len(trials)} trials; best: {json.dumps(hparams)}")
    print(f"results: {out_dir}")
    return hparams


def build_parser():
    parser = command_parser("tfresnet.tune", __doc__)
    search = parser.add_argument_group("search")
    search.add_argument("--method", choices=["keras-tuner", "lr-range"], default="keras-tuner")
    search.add_argument("--tuner", choices=TUNERS, default="random")
    search.add_argument("--search", nargs="*", default=[], metavar="NAME",
                        help=f"also search these: {', '.join(SEARCHABLE)}")
    search.add_argument("--lr-min", type=float, default=1e-4)
    search.add_argument("--lr-max", type=float, default=1.0)
    search.add_argument("--max-trials", type=int, default=10)
    search.add_argument("--epochs-per-trial", type=int, default=3)
    search.add_argument("--range-steps", type=int, default=200,
                        help="steps of the LR range test")
    search.add_argument("--subset", type=float, default=1.0,
                        help="fraction of the training set to search on")
    search.add_argument("--fresh", action="store_true", help="restart the search")
    search.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="run N trials at a time: a chief and N workers on this machine, "
                             "one GPU each")
    parser.add_argument("--config", metavar="FILE", help="JSON file of base settings")
    add_config_arguments(parser)
    return parser


def run_in_parallel(argv, workers):
    """Runs this search as keras-tuner's chief plus ``workers`` workers on 127.0.0.1, each
    worker on its own GPU (if any); returns the first non-zero exit status, else 0."""
    from tfresnet.runtime import gpus

    argv = list(argv)
    at = next(i for i, a in enumerate(argv) if a.startswith("--parallel"))
    del argv[at:at + (1 if "=" in argv[at] else 2)]
    with socket.socket() as probe:  # a free port for the oracle
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    devices = len(gpus())
    processes = []
    for tuner_id in ["chief", *(f"tuner{i}" for i in range(workers))]:
        env = {**os.environ, "KERASTUNER_TUNER_ID": tuner_id,
               "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": port}
        if devices and tuner_id != "chief":
            env["CUDA_VISIBLE_DEVICES"] = str(int(tuner_id[5:]) % devices)
        elif devices:
            env["CUDA_VISIBLE_DEVICES"] = ""  # the oracle needs no GPU
        processes.append(subprocess.Popen([sys.executable, "-m", "tfresnet.tune", *argv],
                                          env=env))
    try:
        while True:
            codes = [p.poll() for p in processes]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                return failed[0]
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.2)
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            process.wait()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.parallel > 1 and not tuner_role():
        check_arguments(args)
        return run_in_parallel(argv, args.parallel)
    limit_heap_arenas()
    args.hparams = None
    base = resolve_config(args)
    args.seed, args.name = base.seed, base.name
    base = base.updated({"epochs": args.epochs_per_trial, "visualize": False,
                         "tensorboard": False}, "tune")
    tune(args, base)
    return 0


def cli():
    sys.exit(run_cli("tfresnet.tune", main))


if __name__ == "__main__":
    cli()

