"""What the per-epoch saves of a run cost: `tfresnet.training.callbacks.RunRecorder` writing
best.keras, last.keras, history.csv and curves.png for a full-width ResNet-18 (CIFAR stem,
100 classes, SGD with momentum), timed part by part and as the recorder's whole epoch end:
what training waits for (the copies; the files are written in the background) and the
epoch end with its writes.

The model is assembled as ``tfresnet.train`` assembles it and trained one step, so the
optimizer holds its momentum. Every save goes to a real folder (``--out``) with fsync, as
in a run. Prints one line per part (median of ``--repeats``) and the file sizes.

    python experiments/checkpoint_cost.py --repeats 5
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def median_seconds(action, repeats, before=None):
    """The median time of ``action``; ``before`` runs untimed ahead of each repeat."""
    times = []
    for _ in range(repeats):
        if before:
            before()
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--epochs-drawn", type=int, default=150,
                        help="history rows in the curves (a 150-epoch run's last epoch)")
    parser.add_argument("--out", help="folder to save into (default: a temporary one)")
    args = parser.parse_args()

    from tfresnet.evaluation.pictures import curves_figure
    from tfresnet.runs.files import atomic_save_figure, atomic_save_model, atomic_write_text
    from tfresnet.training.bench import bench_config, build_bench_model
    from tfresnet.training.callbacks import NanGuard, RunRecorder
    from tfresnet.training.pipelines import make_pipelines

    config = bench_config("resnet18", 8, precision="float32", jit="off", width=args.width)
    data, runtime, plan, model = build_bench_model(config, 100, 1)
    model.fit(make_pipelines(config.augment, data, runtime, plan)[0], steps_per_epoch=1, verbose=0)
    out = Path(args.out or tempfile.mkdtemp(prefix="checkpoint-cost-"))
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"epoch": e, "lr": 0.1, "loss": 1.0 / e, "accuracy": e / 200, "val_loss": 1.1 / e,
             "val_accuracy": e / 210, "seconds": 1.5} for e in range(1, args.epochs_drawn)]
    recorder = RunRecorder(out, args.epochs_drawn, rows, has_validation=True, guard=NanGuard(),
                           title="checkpoint cost")
    recorder.set_model(model)
    recorder.on_train_begin()
    saver = recorder._saver
    last_row = {**rows[-1], "epoch": args.epochs_drawn}

    def epoch_end():  # a new best every time: the most a recorder writes in an epoch
        recorder.best = -1.0
        recorder._save(last_row)

    parts = {
        "last.keras, a foreground save": (lambda: atomic_save_model(model, out / "f.keras"),
                                          None),
        "best.keras (no optimizer), foreground": (
            lambda: atomic_save_model(saver.copies[False], out / "g.keras"), None),
        "history.csv": (lambda: atomic_write_text(out / "h.csv", recorder._history_csv()),
                        None),
        "curves.png": (lambda: atomic_save_figure(curves_figure(rows, "cost"), out / "c.png"),
                       None),
        "epoch end (new best): training waits": (epoch_end, saver.wait),
        "epoch end (new best) and its writes": (lambda: (epoch_end(), saver.wait()), None),
    }
    for name, (action, before) in parts.items():
        action()  # warm-up: first saves import and trace
        print(f"{name:40s} {1000 * median_seconds(action, args.repeats, before):8.0f} ms")
    saver.wait()
    for name in ("best.keras", "last.keras"):
        print(f"{name} size: {(out / name).stat().st_size / 2**20:.1f} MB")


if __name__ == "__main__":
    main()
