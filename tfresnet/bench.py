"""``python -m tfresnet.bench``: images per second of training, inference and the input
pipeline, through the same code the product runs.

Each measurement runs warm-up steps first (excluded), then ``--repeats`` timed repetitions
of ``--steps`` batches; the median, the spread (min-max) and the peak memory of that
measurement alone are printed. ``--json FILE`` appends one JSON line per measurement, as it
is taken, with device, versions and thread settings. Unset, every setting is train's
default (XLA, steps per execution, precision and where augmentation runs follow the device).

Example:
    python -m tfresnet.bench --pipeline                          # augmentation only
    python -m tfresnet.bench --pipeline --dataset photos/ --image-size 224  # decode too
    python -m tfresnet.bench --train --inference --batch-size 64 128
    python -m tfresnet.bench --train --precision mixed_float16 --jit on --batch-size 512
    python -m tfresnet.bench --train --jit on --steps-per-execution 1 16 --augment-on host device
    python -m tfresnet.bench --train --model resnet50_imagenet --image-size 224 --transfer frozen
"""

import dataclasses
import itertools
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from tfresnet.data.pipeline import AUGMENT_PLACES
from tfresnet.errors import UserError, command_parser, run_cli
from tfresnet.runtime import JIT_MODES, PRECISIONS

PIPELINE_PRESETS = ("standard", "strong")


def synthetic_cifar(count, num_classes, seed=0, size=32):
    """Random ``size`` x ``size`` uint8 images and labels (speed does not depend on
    content)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (count, size, size, 3), np.uint8),
            rng.integers(0, num_classes, count).astype(np.int32))


def summarize(rates):
    return {"images_per_second": round(statistics.median(rates), 1),
            "min": round(min(rates), 1), "max": round(max(rates), 1)}


def reset_peak_memory():
    """Starts a new peak for `peak_memory_mb`: the GPU allocator's statistics, or Linux's
    resident high-water mark (``/proc/self/clear_refs``)."""
    from tfresnet.runtime import gpus

    if gpus():
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats("GPU:0")
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux: the peak stays the process's


def peak_memory_mb():
    """Peak memory since `reset_peak_memory`: the GPU's when there is one, else resident
    RAM (the process's whole-life peak where Linux's high-water mark is unavailable)."""
    from tfresnet.runtime import gpus

    if gpus():
        import tensorflow as tf

        return round(tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20, 1)
    try:
        status = Path("/proc/self/status").read_text()
        return round(int(status.split("VmHWM:")[1].split()[0]) / 1024, 1)
    except (OSError, IndexError, ValueError):
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def bench_pipeline(preset, batch_size, steps, repeats, warmup, num_classes=100, dataset=None,
                   image_size=None):
    """Augmented images per second of the training pipeline: on 50,000 synthetic images
    in memory, or on an image folder's training split (decoding, cropping and resizing
    each file, as ``train`` does)."""
    from tfresnet.assemble import load_data, make_augmenter, training_images
    from tfresnet.config import TrainConfig
    from tfresnet.data.pipeline import Augmenter, make_train_pipeline

    if dataset:
        config = TrainConfig(dataset=dataset, image_size=image_size, augment=preset,
                             val_size=0).validate()
        data = load_data(config)
        images = training_images(config, data.x_train)
        labels, num_classes = data.y_train, data.num_classes
        augmenter = make_augmenter(config, data)
        source = f"{dataset} ({data.x_train.view.kind})" if data.streamed else dataset
    else:
        images, labels = synthetic_cifar(50_000 if not image_size else 2_000, num_classes,
                                         size=image_size or 32)
        augmenter = Augmenter(preset, num_classes)
        source = "synthetic in memory"
    stream, _ = make_train_pipeline(images, labels, num_classes, batch_size, augmenter, seed=0)
    iterator = iter(stream)
    for _ in range(warmup):
        next(iterator)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            next(iterator)
        rates.append(steps * batch_size / (time.perf_counter() - start))
    return {"kind": "pipeline", "source": source, "augment": preset,
            "image_size": images.shape[1], "batch_size": batch_size,
            "images": steps * batch_size, **summarize(rates)}


class _StepTimer:
    """Records when each training epoch (one timed repetition) ends."""

    def __init__(self):
        import keras

        timer = self

        class Callback(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                timer.start = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                if timer.first_step is None:
                    timer.first_step = time.perf_counter() - timer.start

            def on_epoch_begin(self, epoch, logs=None):
                timer.epoch_start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                timer.epoch_seconds.append(time.perf_counter() - timer.epoch_start)

        self.callback = Callback()
        self.first_step = None
        self.epoch_seconds = []


TRANSFER_STEPS = ("finetune", "frozen")


def bench_config(model, batch_size, precision="auto", jit="auto", width=1.0,
                 steps_per_execution=0, augment_on="auto", augment="standard", image_size=32,
                 strategy="one", transfer="finetune"):
    """The `TrainConfig` of a measurement: train's defaults unless a setting is given.

    A pretrained backbone (``*_imagenet``) is measured with random weights, the same
    compute: ``transfer`` ``finetune`` trains all of it (as ``--transfer scratch`` and
    ``finetune`` do), ``frozen`` the new head only (``--transfer frozen``)."""
    from tfresnet.config import TrainConfig

    if transfer not in TRANSFER_STEPS:
        raise UserError(f"--transfer must be one of {', '.join(TRANSFER_STEPS)}. "
                        f"Received: {transfer!r}")
    pretrained = model.endswith("_imagenet")
    if transfer == "frozen" and not pretrained:
        raise UserError(f"--transfer frozen needs a pretrained backbone (resnet18_imagenet, "
                        f"resnet50_imagenet, ...). Received: --model {model}")
    config = TrainConfig(model=model, batch_size=batch_size, precision=precision, jit=jit,
                         width=width, epochs=1, augment=augment, augment_on=augment_on,
                         steps_per_execution=steps_per_execution, strategy=strategy,
                         image_size=image_size, tensorboard=False, visualize=False,
                         transfer="scratch" if pretrained else "none").validate()
    if pretrained and transfer == "frozen":  # validated as scratch: frozen needs --weights
        config = dataclasses.replace(config, transfer="frozen")
    return config


def build_bench_model(config, num_classes, steps):
    """Synthetic data, runtime and compiled `Classifier` of a measurement, assembled
    exactly as ``tfresnet.train`` assembles a run (`tfresnet.assemble`)."""
    from tfresnet.assemble import build_model
    from tfresnet.data import Dataset
    from tfresnet.runtime import configure

    runtime = configure(config)
    images, labels = synthetic_cifar(max(config.batch_size * steps, config.batch_size),
                                     num_classes, size=config.image_size)
    data = Dataset("synthetic", images, labels, images[:0], labels[:0], None, None,
                   [str(i) for i in range(num_classes)])
    return data, runtime, build_model(config, data, runtime)


def bench_train(config, steps, repeats, num_classes):
    """Training images/s of ``model.fit`` on the product's pipeline, loss and optimizer."""
    from tfresnet.assemble import augments_in_step, make_pipelines

    data, runtime, classifier = build_bench_model(config, num_classes, steps)
    dataset, _ = make_pipelines(config, data, runtime)
    timer = _StepTimer()
    epochs = 1 + repeats  # epoch 0 is the warm-up: compilation and the first steps
    reset_peak_memory()
    classifier.fit(dataset, steps_per_epoch=steps, epochs=epochs, verbose=0,
                   callbacks=[timer.callback], shuffle=False)
    rates = [steps * config.batch_size / s for s in timer.epoch_seconds[1:]]
    return {"kind": "train", "model": config.model, "transfer": config.transfer,
            "width": config.width,
            "image_size": config.image_size, "batch_size": config.batch_size,
            "precision": runtime.precision, "jit": runtime.jit,
            "replicas": runtime.strategy.num_replicas_in_sync,
            "steps_per_execution": classifier.steps_per_execution, "augment": config.augment,
            "augment_on": "step" if augments_in_step(config, runtime) else "tf.data",
            "images": steps * config.batch_size,
            "compile_seconds": round(timer.first_step, 2), **summarize(rates),
            "peak_memory_mb": peak_memory_mb()}


def bench_inference(config, steps, repeats, num_classes):
    """Inference images/s: ``model.predict`` and the compiled call evaluation uses."""
    from tfresnet.inference import predict_probabilities

    data, runtime, classifier = build_bench_model(config, num_classes, steps)
    images = data.x_train[: steps * config.batch_size]
    results = []
    for method, run in (
        ("predict", lambda: classifier.predict(images, batch_size=config.batch_size,
                                               verbose=0)),
        ("compiled_call", lambda: predict_probabilities(classifier, images,
                                                        config.batch_size)),
    ):
        reset_peak_memory()
        start = time.perf_counter()
        run()  # warm-up: tracing and compilation
        compile_seconds = time.perf_counter() - start
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            rates.append(len(images) / (time.perf_counter() - start))
        results.append({"kind": "inference", "method": method, "model": config.model,
                        "width": config.width, "image_size": config.image_size,
                        "batch_size": config.batch_size, "precision": runtime.precision,
                        "jit": runtime.jit, "images": len(images),
                        "compile_seconds": round(compile_seconds, 2), **summarize(rates),
                        "peak_memory_mb": peak_memory_mb()})
    return results


def environment():
    """Device, versions and thread settings recorded with every measurement."""
    import tensorflow as tf

    from tfresnet.runtime import describe_device, versions

    return {"device": describe_device(), "versions": versions(),
            "threads": {"cpu_count": os.cpu_count(),
                        "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                        "inter_op": tf.config.threading.get_inter_op_parallelism_threads()},
            "date": time.strftime("%Y-%m-%d")}


def _print(record):
    label = " ".join(f"{k}={record[k]}" for k in (
        "kind", "method", "source", "model", "width", "augment", "image_size", "batch_size",
        "precision", "jit", "steps_per_execution", "augment_on") if k in record)
    extra = f"  compile {record['compile_seconds']}s" if "compile_seconds" in record else ""
    memory = f"  peak {record['peak_memory_mb']} MB" if "peak_memory_mb" in record else ""
    print(f"{label}: {record['images_per_second']:,.1f} img/s "
          f"(min {record['min']:,.1f}, max {record['max']:,.1f}){extra}{memory}", flush=True)


class RowLog:
    """The measured rows: each is shown, appended with `environment` as one JSON line to
    ``path`` (if given) as soon as it is measured, so a sweep cut short keeps its rows, and
    followed by a cleared Keras session, so the next row starts clean."""

    def __init__(self, path=None, show=_print):
        self.path, self.show, self.rows = path, show, []
        self.env = environment() if path else None

    def __call__(self, row):
        import keras

        keras.backend.clear_session()  # the row's models
        self.rows.append(row)
        self.show(row)
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps({**row, **self.env}) + "\n")


def run(args):
    """Runs the selected measurements; returns the records."""
    from tfresnet.models import list_models
    from tfresnet.runtime import resolve_precision

    for name in args.model:
        if name not in list_models():
            raise UserError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    for name in ("steps", "repeats", "num_classes"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive. "
                            f"Received: {getattr(args, name)}")
    if args.image_size is not None and args.image_size < 8:
        raise UserError(f"--image-size must be at least 8. Received: {args.image_size}")
    if any(b <= 0 for b in args.batch_size):
        raise UserError(f"--batch-size must be positive. Received: {args.batch_size}")
    for precision in args.precision:
        resolve_precision(precision)
    everything = not (args.pipeline or args.train or args.inference)
    record = RowLog(args.json)

    if args.pipeline or everything:
        for preset in args.augment:
            for batch in args.batch_size:
                record(bench_pipeline(preset, batch, args.steps, args.repeats, args.warmup,
                                      args.num_classes, args.dataset, args.image_size))
    for name, batch, precision, jit in itertools.product(args.model, args.batch_size,
                                                         args.precision, args.jit):
        size = args.image_size or 32
        if args.train or everything:
            for spe, place, transfer in itertools.product(
                    args.steps_per_execution, args.augment_on, args.transfer):
                config = bench_config(name, batch, precision, jit, args.width, spe, place,
                                      image_size=size, transfer=transfer)
                record(bench_train(config, args.steps, args.repeats, args.num_classes))
        if args.inference or everything:  # neither setting above applies to inference
            config = bench_config(name, batch, precision, jit, args.width, image_size=size)
            for result in bench_inference(config, args.steps, args.repeats, args.num_classes):
                record(result)
    return record.rows


def build_parser():
    parser = command_parser("tfresnet.bench", __doc__)
    parser.add_argument("--pipeline", action="store_true", help="measure the input pipeline")
    parser.add_argument("--train", action="store_true", help="measure training (model.fit)")
    parser.add_argument("--inference", action="store_true", help="measure inference")
    parser.add_argument("--model", nargs="+", default=["resnet18"])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[128])
    parser.add_argument("--precision", nargs="+", default=["auto"],
                        choices=PRECISIONS)
    parser.add_argument("--jit", nargs="+", default=["auto"], choices=JIT_MODES,
                        help="XLA (auto: as train, on with a GPU)")
    parser.add_argument("--steps-per-execution", type=int, nargs="+", default=[0],
                        help="train steps per compiled call (0: as train, 16 with XLA)")
    parser.add_argument("--augment-on", nargs="+", default=["auto"], choices=AUGMENT_PLACES,
                        help="where training augments (auto: as train, in the step with "
                             "XLA)")
    parser.add_argument("--augment", nargs="+", default=list(PIPELINE_PRESETS),
                        help="pipeline presets to measure")
    parser.add_argument("--steps", type=int, default=20, help="batches per repetition")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=5,
                        help="untimed pipeline batches (training and inference always "
                             "discard their first, compiling, repetition)")
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--width", type=float, default=1.0, help="model width multiplier")
    parser.add_argument("--transfer", nargs="+", default=["finetune"], choices=TRANSFER_STEPS,
                        help="--train of a *_imagenet model: train all of it, or only the "
                             "new head on the frozen backbone (random weights: same compute)")
    parser.add_argument("--image-size", type=int,
                        help="input side (default 32; a --dataset folder: as train decides)")
    parser.add_argument("--dataset", help="--pipeline: an image folder to stream (default: "
                                          "synthetic images in memory)")
    parser.add_argument("--json", metavar="FILE", help="append one JSON line per measurement")
    return parser


def main(argv=None):
    run(build_parser().parse_args(argv))
    return 0


def cli():
    sys.exit(run_cli("tfresnet.bench", main))


if __name__ == "__main__":
    cli()
