"""Throughput of exactly what ``tfresnet.train`` runs: input pipeline, training step, inference."""

import dataclasses
import json
import os
import resource
import statistics
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tfresnet.config import TrainConfig
from tfresnet.data import Dataset
from tfresnet.data.augment import Augmenter
from tfresnet.data.pipeline import make_train_pipeline
from tfresnet.errors import UserError
from tfresnet.models.settings import Transfer
from tfresnet.runs.probabilities import predict_probabilities
from tfresnet.runtime.devices import gpus
from tfresnet.runtime.provenance import describe_device, versions
from tfresnet.runtime.session import configure
from tfresnet.training.build import build_model
from tfresnet.training.pipelines import load_data, make_augmenter, make_pipelines
from tfresnet.training.plan import build_settings, input_size, make_plan

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
    if gpus():
        tf.config.experimental.reset_memory_stats("GPU:0")
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux: the peak stays the process's


def peak_memory_mb():
    """Peak memory since `reset_peak_memory`: the GPU's when there is one, else resident
    RAM (the process's whole-life peak where Linux's high-water mark is unavailable)."""
    if gpus():
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
    if dataset:
        config = TrainConfig(dataset=dataset, image_size=image_size, augment=preset,
                             val_size=0).validate()
        data = load_data(config.data_settings, config.seed, input_size(config))
        images = data.training_images(config.augment)
        labels, num_classes = data.y_train, data.num_classes
        augmenter = make_augmenter(config.augment, data, config.seed)
        source = f"{dataset} ({data.preprocessing})" if data.streamed else dataset
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
    if transfer not in TRANSFER_STEPS:
        raise UserError(f"--transfer must be one of {', '.join(TRANSFER_STEPS)}. "
                        f"Received: {transfer!r}")
    head_only = Transfer(transfer) is Transfer.FROZEN
    pretrained = TrainConfig(model=model).model_settings.imagenet_name
    if head_only and not pretrained:
        raise UserError(f"--transfer frozen needs a pretrained backbone (resnet18_imagenet, "
                        f"resnet50_imagenet, ...). Received: --model {model}")
    config = TrainConfig(model=model, batch_size=batch_size, precision=precision, jit=jit,
                         width=width, epochs=1, augment=augment, augment_on=augment_on,
                         steps_per_execution=steps_per_execution, strategy=strategy,
                         image_size=image_size, tensorboard=False, visualize=False,
                         transfer="scratch" if pretrained else "none").validate()
    if pretrained and head_only:  # validated as scratch: frozen needs --weights
        config = dataclasses.replace(config, transfer=Transfer.FROZEN)
    return config


def build_bench_model(config, num_classes, steps):
    """Synthetic data, runtime, plan and compiled `Classifier` of a measurement, assembled
    exactly as ``tfresnet.train`` assembles a run (`tfresnet.training.plan`, `build`,
    `pipelines`)."""
    runtime = configure(config.runtime_settings, config.model, config.width)
    images, labels = synthetic_cifar(max(config.batch_size * steps, config.batch_size),
                                     num_classes, size=config.image_size)
    data = Dataset("synthetic", images, labels, images[:0], labels[:0], None, None,
                   [str(i) for i in range(num_classes)])
    plan = make_plan(config, data, runtime, input_size(config))
    return data, runtime, plan, build_model(data, runtime, plan, **build_settings(config))


def bench_train(config, steps, repeats, num_classes):
    """Training images/s of ``model.fit`` on the product's pipeline, loss and optimizer."""
    data, runtime, plan, classifier = build_bench_model(config, num_classes, steps)
    dataset, _ = make_pipelines(config.augment, data, runtime, plan)
    timer = _StepTimer()
    epochs = 1 + repeats  # epoch 0 is the warm-up: compilation and the first steps
    reset_peak_memory()
    classifier.fit(dataset, steps_per_epoch=steps, epochs=epochs, verbose=0,
                   callbacks=[timer.callback], shuffle=False)
    rates = [steps * config.batch_size / s for s in timer.epoch_seconds[1:]]
    return {"kind": "train", "model": config.model, "transfer": config.transfer.value,
            "width": config.width, "image_size": config.image_size,
            "batch_size": plan.batch_size, "precision": plan.precision, "jit": plan.jit,
            "replicas": plan.replicas, "steps_per_execution": plan.steps_per_execution,
            "augment": config.augment, "augment_on": plan.augment_on, "plan": plan.to_dict(),
            "images": steps * config.batch_size,
            "compile_seconds": round(timer.first_step, 2), **summarize(rates),
            "peak_memory_mb": peak_memory_mb()}


def bench_inference(config, steps, repeats, num_classes):
    """Inference images/s: ``model.predict`` and the compiled call evaluation uses."""
    data, runtime, plan, classifier = build_bench_model(config, num_classes, steps)
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
    return {"device": describe_device(), "versions": versions(),
            "threads": {"cpu_count": os.cpu_count(),
                        "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                        "inter_op": tf.config.threading.get_inter_op_parallelism_threads()},
            "date": time.strftime("%Y-%m-%d")}


def _print(record):
    label = " ".join(f"{k}={record[k]}" for k in (
        "kind", "method", "source", "model", "width", "augment", "image_size", "batch_size",
        "precision", "jit", "steps_per_execution", "augment_on") if k in record)
    if "error" in record:
        print(f"{label}: failed ({record['error']})", flush=True)
        return
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
        keras.backend.clear_session()  # the row's models
        self.rows.append(row)
        self.show(row)
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps({**row, **self.env}) + "\n")

