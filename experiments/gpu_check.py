"""The prepared GPU check: what train's GPU defaults cost and gain, on one GPU, in one call.

ResNet-18 on CIFAR-100-sized synthetic data (32 px, 100 classes), measured by
``tfresnet.bench`` through the same assembly as ``tfresnet.train``:

- training throughput and peak GPU memory around train's GPU default (mixed precision,
  XLA, automatic steps per execution, augmentation inside the step), one setting changed
  per row: float32 / mixed_bfloat16 / mixed_float16, XLA off, 1 step per execution,
  augmentation in tf.data; plus the plain float32 baseline (no XLA, 1 step, tf.data);
- an epoch of 39 steps, which 16 does not divide: the automatic rule runs 13 per execution
  in Keras' own loop (`tfresnet.training.assemble.steps_per_execution`);
- mixup (and crop, flip) inside the XLA-compiled step;
- with 2 or more GPUs, the two-GPU default: MirroredStrategy, XLA off, 1 step per
  execution (``--strategy auto --jit auto``);
- ``model.predict`` against the compiled inference call;
- where the training images land when held as a ``tf.constant`` (as the pipeline and the
  tuner hold them): the tensor's device and the GPU memory it adds.

Writes ``gpu_check.jsonl`` (one line per row, as measured) and ``gpu_check.md`` (the table)
into ``--out``. On one H200-class GPU the full check should take about 5 minutes, most of
it XLA compilation (a paper estimate until it has run). ``--tiny`` rehearses the same rows
on a CPU in about a minute, the two-GPU row on two logical CPU devices.

    python experiments/gpu_check.py --out "$OUT"          # on the GPU
    python experiments/gpu_check.py --tiny --out /tmp/gc  # rehearsal on a CPU
"""

import argparse
import json
import time
from pathlib import Path

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
TWO_GPUS = ("mixed_bfloat16", "auto", 0, "auto", "standard", "mirrored")


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


def table(rows):
    """The rows as one Markdown table."""
    lines = ["| what | precision | XLA | steps/exec | augment | img/s (min-max) | compile s "
             "| peak MB |", "| --- | --- | --- | ---: | --- | ---: | ---: | ---: |"]
    for r in rows:
        if r["kind"] == "placement":
            lines.append(f"| tf.constant of {r['megabytes']:.0f} MB of images | | | | | "
                         f"on {r['device']}, +{r['gpu_megabytes_added']} MB of GPU memory "
                         "| | |")
            continue
        what = f"inference ({r['method']})" if r["kind"] != "train" else (
            "train" if r["replicas"] == 1 else f"train, {r['replicas']} replicas")
        augment = f"{r['augment']} in {r['augment_on']}" if r["kind"] == "train" else ""
        lines.append(
            f"| {what} | {r['precision']} | {'on' if r['jit'] else 'off'} | "
            f"{r.get('steps_per_execution', '')} | {augment} | "
            f"{r['images_per_second']:,.0f} ({r['min']:,.0f}-{r['max']:,.0f}) | "
            f"{r['compile_seconds']} | {r['peak_memory_mb']:,.0f} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.jsonl and .md")
    parser.add_argument("--tiny", action="store_true", help="CPU rehearsal: width 1/16, "
                        "batch 8, 2 steps")
    args = parser.parse_args()

    import tensorflow as tf

    if args.tiny:  # two logical CPU devices stand in for two GPUs
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tfresnet.training.bench import (
        RowLog,
        bench_config,
        bench_inference,
        bench_train,
        synthetic_cifar,
    )

    # 39 steps: 16 does not divide them, the automatic rule takes 13 per execution.
    width, batch, steps, repeats = (0.0625, 8, 6, 1) if args.tiny else (1.0, 256, 39, 3)
    devices = 2 if args.tiny else len(tf.config.list_physical_devices("GPU"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.jsonl").write_text("")
    record = RowLog(out / "gpu_check.jsonl", show=lambda row: print(json.dumps(row), flush=True))
    env = record.env

    start = time.perf_counter()
    for precision, jit, spe, place, augment, strategy in ROWS + [TWO_GPUS] * (devices > 1):
        config = bench_config("resnet18", batch, precision, jit, width, spe, place, augment,
                              strategy=strategy)
        record(bench_train(config, steps, repeats, num_classes=100))
    for row in bench_inference(bench_config("resnet18", batch, *DEFAULT[:2], width), steps,
                               repeats, num_classes=100):
        record(row)
    images, _ = synthetic_cifar(500 if args.tiny else 50_000, 100)
    record(placement(images))
    (out / "gpu_check.md").write_text(
        f"{env['device']}, {env['date']}, TensorFlow {env['versions']['tensorflow']}, "
        f"ResNet-18 x{width:g}, batch {batch}, {steps} steps x {repeats} repeats, "
        f"{time.perf_counter() - start:.0f} s in all\n\n" + table(record.rows))
    print((out / "gpu_check.md").read_text())


if __name__ == "__main__":
    main()
