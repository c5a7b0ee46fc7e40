"""The prepared GPU check: whether the flagship runs are right and fast, in one call.

ResNet-18 on CIFAR-100-sized synthetic data (32 px, 100 classes), through the same
assembly as ``tfresnet.train`` (``tfresnet.bench``, and ``train``/``tune`` themselves):

- training throughput and peak GPU memory at train's own batch of 128 around its GPU
  default (mixed precision, XLA, automatic steps per execution, augmentation inside the
  step), one setting changed per row: float32 / mixed_bfloat16 / mixed_float16, XLA off,
  1 step per execution, augmentation in tf.data, mixup in the step; plus the plain float32
  baseline (no XLA, 1 step, tf.data);
- ``tfresnet.train`` end to end, 3 epochs with validation and checkpoints: the epoch's
  images/s against the step-only row, and the first epoch's extra seconds (train and
  evaluation compilation);
- a ``tfresnet.tune`` trial: its dtype policy (must be the run's precision) and compile
  seconds, trial 1 against trial 2;
- with 2 or more GPUs: MirroredStrategy at a fixed per-GPU batch (128 and 256) against one
  GPU at the same per-GPU batch, a mirrored mixed_float16 row (loss scaling over
  replicas) and a ``--sync-bn`` row;
- batch norm in mixed_bfloat16 under XLA against float32, within the bound of rounding
  (experiments/equivalences.py);
- ``model.predict`` against the compiled inference call; where the training images land
  when held as a ``tf.constant``; the CUDA, cuDNN and driver versions.

Writes ``gpu_check.jsonl`` (one line per row, as measured) and ``gpu_check.md`` into
``--out``. On one H100-class GPU it should take about 6 minutes, most of it XLA
compilation (a paper estimate until it has run; at most 8). ``--tiny`` rehearses every row
on a CPU, the several-GPU rows on two logical CPU devices.

    python experiments/gpu_check.py --out "$OUT"          # on the GPU
    python experiments/gpu_check.py --tiny --out /tmp/gc  # rehearsal on a CPU
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tfresnet.data.sources import Source, register_source

# (precision, jit, steps per execution (0: auto), where augmentation runs, augmentation,
# strategy); the first is train's default on one Ampere-or-later GPU.
DEFAULT = ("mixed_bfloat16", "on", 0, "device", "standard", "one")
ROWS = [
    DEFAULT,
    ("float32", "on", 0, "device", "standard", "one"),
    ("mixed_float16", "on", 0, "device", "standard", "one"),
    ("mixed_bfloat16", "off", 0, "device", "standard", "one"),
    ("mixed_bfloat16", "off", 1, "host", "standard", "one"),
    ("mixed_bfloat16", "on", 1, "device", "standard", "one"),
    ("mixed_bfloat16", "on", 0, "host", "standard", "one"),
    ("mixed_bfloat16", "on", 0, "device", "crop,flip,mixup", "one"),
    ("float32", "off", 1, "host", "standard", "one"),
]
MIRRORED = ("mixed_bfloat16", "auto", 0, "auto", "standard", "mirrored")
TRAIN_BATCH = 128  # train's default batch on one GPU, and per GPU on several


@register_source("synthetic-cifar100")
def synthetic_cifar100(data_dir=None, download=True):
    """CIFAR-100's shape without a download: 50,000 + 10,000 random images (5,000 + 1,000
    with ``GPU_CHECK_TINY``)."""
    from tfresnet.training.bench import synthetic_cifar

    count = 6_000 if os.environ.get("GPU_CHECK_TINY") else 60_000
    images, labels = synthetic_cifar(count, 100)
    cut = count * 5 // 6
    return Source(images[:cut], labels[:cut], images[cut:], labels[cut:],
                  [f"class{i}" for i in range(100)])


def end_to_end(out, width, tiny):
    """``tfresnet.train`` for 3 epochs with validation and checkpoints, train's defaults
    otherwise; epoch 1's extra seconds over epoch 3 are compilation (train and
    evaluation)."""
    from tfresnet.cli.train import main
    from tfresnet.runs.run_folder import read_history

    run = ["--dataset", "synthetic-cifar100", "--model", "resnet18", "--width", str(width),
           "--epochs", "3", "--no-visualize", "--output-dir", str(out), "--name", "e2e"]
    assert main(run) == 0
    summary = json.loads((out / "e2e" / "summary.json").read_text())
    rows = read_history(out / "e2e" / "history.csv")
    seconds = [r["seconds"] for r in rows]
    images = summary["plan"]["batch_size"] * summary["plan"]["steps_per_epoch"]
    return {"kind": "train_e2e", "plan": summary["plan"], "epoch_seconds": seconds,
            "epoch_images_per_second": round(images / seconds[-1], 1),
            "first_epoch_extra_seconds": round(seconds[0] - seconds[-1], 1)}


def tuner_trials(out, width):
    """Two ``tfresnet.tune`` trials of one epoch on a tenth of the data: each trial's
    dtype policy and compile seconds."""
    from tfresnet.cli.tune import main

    assert main(["--dataset", "synthetic-cifar100", "--model", "resnet18", "--width",
                 str(width), "--max-trials", "2", "--epochs-per-trial", "1", "--subset",
                 "0.1", "--output-dir", str(out), "--name", "trials"]) == 0
    folder = out / "tune" / "trials" / "trial_stats"
    stats = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    return {"kind": "tune", "dtype_policies": [s["dtype_policy"] for s in stats],
            "compile_seconds": [s["compile_seconds"] for s in stats],
            "trial_seconds": [s["seconds"] for s in stats]}


def build_versions():
    """CUDA and cuDNN of this TensorFlow build, and the NVIDIA driver (None without)."""
    import tensorflow as tf

    info = tf.sysconfig.get_build_info()
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                                 "--format=csv,noheader"], capture_output=True, text=True,
                                timeout=30).stdout.strip() or None
    except OSError:
        driver = None
    return {"kind": "versions", "cuda": info.get("cuda_version"),
            "cudnn": info.get("cudnn_version"), "gpus_and_driver": driver}


def placement(images):
    """The device a ``tf.constant`` of the training images lands on, and the GPU memory it
    adds (0 without a GPU)."""
    import tensorflow as tf

    def in_use():
        if not tf.config.list_physical_devices("GPU"):
            return 0
        return tf.config.experimental.get_memory_info("GPU:0")["current"]

    before = in_use()
    held = tf.constant(images)
    return {"kind": "placement", "device": held.device, "megabytes": images.nbytes / 2**20,
            "gpu_megabytes_added": round((in_use() - before) / 2**20, 1)}


def train_row(r):
    what = "train" if r["replicas"] == 1 else f"train, {r['replicas']} replicas"
    what += ", --sync-bn" if r.get("sync_bn") else ""
    return (f"| {what} | {r['batch_size']} | {r['precision']} | "
            f"{'on' if r['jit'] else 'off'} | {r['steps_per_execution']} | "
            f"{r['augment']} in {r['augment_on']} | "
            f"{r['images_per_second']:,.0f} ({r['min']:,.0f}-{r['max']:,.0f}) | "
            f"{r['compile_seconds']} | {r['peak_memory_mb']:,.0f} |")


# The checks that are not throughput rows: kind -> the line of the table's notes.
NOTES = {
    "placement": lambda r: (f"tf.constant of {r['megabytes']:.0f} MB of images: on "
                            f"{r['device']}, +{r['gpu_megabytes_added']} MB of GPU memory"),
    "train_e2e": lambda r: (f"tfresnet.train, 3 epochs ({r['plan']['precision']}, XLA "
                            f"{'on' if r['plan']['jit'] else 'off'}, batch "
                            f"{r['plan']['batch_size']}): {r['epoch_images_per_second']:,.0f} "
                            f"img/s over the last epoch, seconds {r['epoch_seconds']}; epoch "
                            f"1 took {r['first_epoch_extra_seconds']} s more (compilation)"),
    "tune": lambda r: (f"tfresnet.tune trials: dtype policies {r['dtype_policies']}, compile "
                       f"s {r['compile_seconds']}, trial s {r['trial_seconds']}"),
    "equivalence": lambda r: (f"{r['cell']} vs {r['reference']}: {r['measure']} "
                              f"{r['difference']:.3g} (at most {r['tolerance']:.3g}): "
                              f"{'equal' if r['equal'] else 'NOT EQUAL'}"),
    "versions": lambda r: f"CUDA {r['cuda']}, cuDNN {r['cudnn']}, {r['gpus_and_driver']}",
}


def table(rows):
    """The throughput rows as one Markdown table, then the other checks as lines."""
    lines = ["| what | batch | precision | XLA | steps/exec | augment | img/s (min-max) "
             "| compile s | peak MB |", "| --- | ---: | --- | --- | ---: | --- | ---: | ---: "
             "| ---: |"]
    notes = [f"- {NOTES[r['kind']](r)}" for r in rows if r["kind"] in NOTES]
    for r in rows:
        if r["kind"] == "train":
            lines.append(train_row(r))
        elif r["kind"] == "inference":
            lines.append(f"| inference ({r['method']}) | {r['batch_size']} | "
                         f"{r['precision']} | {'on' if r['jit'] else 'off'} | | | "
                         f"{r['images_per_second']:,.0f} ({r['min']:,.0f}-{r['max']:,.0f}) "
                         f"| {r['compile_seconds']} | {r['peak_memory_mb']:,.0f} |")
    return "\n".join(lines + [""] + notes) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.jsonl and .md")
    parser.add_argument("--tiny", action="store_true", help="CPU rehearsal: width 1/16, "
                        "batch 16, 2 logical devices, few steps")
    args = parser.parse_args()

    import dataclasses

    import tensorflow as tf

    if args.tiny:  # two logical CPU devices stand in for two GPUs
        os.environ["GPU_CHECK_TINY"] = "1"
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, str(Path(__file__).parent))
    from equivalences import bfloat16_batch_norm

    from tfresnet.training.bench import (
        RowLog,
        bench_config,
        bench_inference,
        bench_train,
        synthetic_cifar,
    )

    # 39 steps: 16 does not divide them, the automatic rule takes 13 per execution.
    width, batch, steps, repeats = (0.0625, 16, 6, 1) if args.tiny else (1.0, TRAIN_BATCH, 39, 3)
    devices = 2 if args.tiny else len(tf.config.list_physical_devices("GPU"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.jsonl").write_text("")
    record = RowLog(out / "gpu_check.jsonl", show=lambda row: print(json.dumps(row), flush=True))
    env = record.env

    start = time.perf_counter()
    record(build_versions())
    for precision, jit, spe, place, augment, strategy in ROWS:
        config = bench_config("resnet18", batch, precision, jit, width, spe, place, augment,
                              strategy=strategy)
        record(bench_train(config, steps, repeats, num_classes=100))
    if devices > 1:  # the same work per GPU on one and on every GPU
        precision, jit, spe, place, augment, _ = DEFAULT
        one_gpu = bench_config("resnet18", 2 * batch, precision, jit, width, spe, place,
                               augment)
        record(bench_train(one_gpu, steps, repeats, num_classes=100))
        precision, jit, spe, place, augment, strategy = MIRRORED
        for per_gpu, precision_here, sync in ((batch, precision, False),
                                              (2 * batch, precision, False),
                                              (batch, "mixed_float16", False),
                                              (batch, precision, True)):
            config = dataclasses.replace(
                bench_config("resnet18", per_gpu * devices, precision_here, jit, width, spe,
                             place, augment, strategy=strategy), sync_bn=sync)
            record({**bench_train(config, steps, repeats, num_classes=100), "sync_bn": sync})
    for row in bench_inference(bench_config("resnet18", batch, *DEFAULT[:2], width),
                               steps, repeats, num_classes=100):
        record(row)
    for row in bfloat16_batch_norm(out):
        record({"kind": "equivalence", **row})
    record(end_to_end(out, width, args.tiny))
    record(tuner_trials(out, width))
    images, _ = synthetic_cifar(500 if args.tiny else 50_000, 100)
    record(placement(images))
    (out / "gpu_check.md").write_text(
        f"{env['device']}, {env['date']}, TensorFlow {env['versions']['tensorflow']}, "
        f"ResNet-18 x{width:g}, {steps} steps x {repeats} repeats, "
        f"{time.perf_counter() - start:.0f} s in all\n\n" + table(record.rows))
    print((out / "gpu_check.md").read_text())


if __name__ == "__main__":
    main()
