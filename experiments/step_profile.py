"""Where a training step's time goes: tfresnet's step taken apart, against PyTorch, in one
interleaved run.

Every variant trains ResNet-18 (CIFAR stem, 100 classes, float32) at one width and batch.
All are built and warmed up first; then, round after round, each runs ``--steps`` steps in
turn, so a slow spell of the machine hits every variant alike. Variants:

- ``fit``: ``tfresnet.bench``'s training row (train's CPU defaults: `model.fit`, CE + L2,
  metrics, SGD with Nesterov momentum, the tf.data pipeline with crop + flip);
- ``fit_xla``: the same with ``--jit on`` (XLA, 16 steps per execution, augmentation in
  the step);
- ``fit_no_augment``: ``fit`` with ``--augment none`` (tf.data and augmentation's share);
- ``fit_keras_bn``: ``fit`` with Keras' own batch norm, built from separate ops, in place
  of tfresnet's fused one (`tfresnet.models.resnet.BatchNormalization`);
- ``raw``: a bare ``tf.function`` step on one fixed batch: forward, CE, backward, SGD with
  Nesterov momentum (no Keras loop, metrics, L2 or tf.data); ``raw_l2`` adds the L2 term;
  ``raw_xla`` compiles ``raw`` with XLA;
- ``torch_eager`` and ``torch_compile``: experiments/torch_reference.py's twin, SGD with
  momentum on one fixed batch (when torch is installed).

One JSON line per variant (median, min, max img/s over the rounds). Thread and oneDNN
settings apply per process: set ``TF_ENABLE_ONEDNN_OPTS=0`` or pass ``--intra-op`` to rerun.
``--op-profile`` then traces ``--steps`` more steps of each TensorFlow variant with the
TensorFlow profiler and adds each op type's share of the op time (self time, idle excluded;
the profiler slows the step, so the shares matter, not the totals).

    python experiments/step_profile.py --width 0.125 --batch-size 128
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
BATCH_VARIANTS = ("fit", "fit_xla", "fit_no_augment", "fit_keras_bn")
RAW_VARIANTS = ("raw", "raw_l2", "raw_xla")
TORCH_VARIANTS = ("torch_eager", "torch_compile")


def keras_fit(width, batch, jit="off", augment="standard", keras_bn=False):
    """``run(steps)`` -> seconds of one epoch of ``steps`` steps of bench's training row;
    ``keras_bn``: with Keras' own (unfused) batch norm in place of tfresnet's."""
    import keras

    from tfresnet.assemble import make_pipelines
    from tfresnet.bench import bench_config, build_bench_model

    config = bench_config("resnet18", batch, "float32", jit, width, augment=augment)
    data, runtime, model = build_bench_model(config, 100, steps=8)
    for layer in model._flatten_layers() if keras_bn else ():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.__class__ = keras.layers.BatchNormalization  # same variables, Keras' call
    dataset, _ = make_pipelines(config, data, runtime)
    seconds = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.start)

    def run(steps):
        model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[Timer()],
                  shuffle=False)
        return seconds[-1]
    return run


def raw_step(width, batch, l2=0.0, jit=False):
    """``run(steps)`` -> seconds of ``steps`` bare tf.function steps on one batch."""
    import keras
    import tensorflow as tf

    from tfresnet.losses import l2_penalty, l2_variables
    from tfresnet.models import get_model

    network = get_model("resnet18", 100, width=width)
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)
    x = tf.random.normal((batch, 32, 32, 3))
    y = tf.random.uniform((batch,), 0, 100, tf.int32)
    network(x[:1])
    optimizer.build(network.trainable_variables)
    penalised = l2_variables(network)

    @tf.function(jit_compile=jit)
    def step():
        with tf.GradientTape() as tape:
            logits = network(x, training=True)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
            if l2:
                loss += l2_penalty(penalised, l2)
        grads = tape.gradient(loss, network.trainable_variables)
        optimizer.apply(grads, network.trainable_variables)
        return loss

    def run(steps):
        start = time.perf_counter()
        for _ in range(steps):
            loss = step()
        float(loss)  # wait for the last step
        return time.perf_counter() - start
    return run


def torch_step(width, batch, compiled):
    import torch
    from torch_reference import ResNet18, train_step

    torch.manual_seed(0)
    model = ResNet18(width=width).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    forward = torch.compile(model) if compiled else model
    step = train_step(forward, optimizer, torch.randn(batch, 3, 32, 32),
                      torch.randint(0, 100, (batch,)))

    def run(steps):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        return time.perf_counter() - start
    return run


def op_shares(run, steps, top=12):
    """``{op type: share of op self time}`` of ``steps`` steps under the TF profiler."""
    import tempfile

    import tensorflow as tf
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin  # TF's converter

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        run(steps)
        tf.profiler.experimental.stop()
        files = [str(p) for p in Path(logdir).rglob("*.xplane.pb")]
        table, _ = _pywrap_profiler_plugin.xspace_to_tools_data(files, "framework_op_stats", {})
    table = json.loads(table)[0]
    columns = [column["id"] for column in table["cols"]]
    by_type = {}
    for row in table["rows"]:
        row = dict(zip(columns, [cell.get("v") for cell in row["c"]]))
        if row["type"] != "IDLE":
            by_type[row["type"]] = by_type.get(row["type"], 0.0) + row["total_self_time"]
    total = sum(by_type.values())
    ranked = sorted(by_type.items(), key=lambda item: -item[1])[:top]
    return {op: round(time_us / total, 3) for op, time_us in ranked}


def build(name, width, batch):
    return {"fit": lambda: keras_fit(width, batch),
            "fit_xla": lambda: keras_fit(width, batch, jit="on"),
            "fit_no_augment": lambda: keras_fit(width, batch, augment="none"),
            "fit_keras_bn": lambda: keras_fit(width, batch, keras_bn=True),
            "raw": lambda: raw_step(width, batch),
            "raw_l2": lambda: raw_step(width, batch, l2=5e-4),
            "raw_xla": lambda: raw_step(width, batch, jit=True),
            "torch_eager": lambda: torch_step(width, batch, compiled=False),
            "torch_compile": lambda: torch_step(width, batch, compiled=True)}[name]()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", nargs="+",
                        default=[*BATCH_VARIANTS, *RAW_VARIANTS, *TORCH_VARIANTS])
    parser.add_argument("--intra-op", type=int, help="TensorFlow intra-op threads")
    parser.add_argument("--inter-op", type=int, help="TensorFlow inter-op threads")
    parser.add_argument("--json", help="append the JSON lines to this file")
    parser.add_argument("--op-profile", action="store_true",
                        help="also each TensorFlow variant's op types by share of op time")
    args = parser.parse_args()
    import importlib.util

    import tensorflow as tf

    if args.intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op)
    if args.inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)
    if importlib.util.find_spec("torch") is None:
        args.variants = [v for v in args.variants if v not in TORCH_VARIANTS]
    runs = {name: build(name, args.width, args.batch_size) for name in args.variants}
    for run in runs.values():  # compilation and first steps, untimed; the timed length,
        run(args.steps)  # as fit traces a new step for each epoch length
    rates = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            rates[name].append(args.steps * args.batch_size / run(args.steps))
    for name, values in rates.items():
        row = {
            "variant": name, "width": args.width, "batch_size": args.batch_size,
            "images_per_second": round(statistics.median(values), 1),
            "min": round(min(values), 1), "max": round(max(values), 1),
            "rounds": args.rounds, "steps": args.steps,
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
            "intra_op": args.intra_op or "auto", "inter_op": args.inter_op or "auto"}
        if args.op_profile and name not in TORCH_VARIANTS:
            row["op_shares"] = op_shares(runs[name], args.steps)
        line = json.dumps(row)
        print(line, flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
