"""Where a training step's time goes: tfresnet's step taken apart, against PyTorch, in one
interleaved run.

Every variant computes the same network at one width and batch, in each of
``--precisions`` (``bfloat16``: Keras' ``mixed_bfloat16`` policy, PyTorch's CPU autocast):
by default ResNet-18 with the CIFAR stem (100 classes) trained on 32-px images; with
``--model resnet18_imagenet`` or ``resnet50_imagenet`` the ImageNet-stem network of
transfer learning at 224 px (random weights, the same compute) against torchvision's, with
``--task`` ``train`` (fine-tuning all of it), ``frozen`` (only a new head trains on the
frozen backbone, its batch norm in inference mode) or ``inference``. All are built and
warmed up first; then, round after round, each runs ``--steps`` steps in turn, so a slow
spell of the machine hits every variant alike. Variants:

- ``fit``: ``tfresnet.bench``'s training row (train's CPU defaults: `model.fit`, CE + L2,
  metrics, SGD with Nesterov momentum, the tf.data pipeline with crop + flip);
- ``fit_xla``: the same with ``--jit on`` (XLA, 16 steps per execution, augmentation in
  the step);
- ``fit_no_augment``: ``fit`` with ``--augment none`` (tf.data and augmentation's share);
- ``fit_keras_bn``: ``fit`` with Keras' own batch norm, built from separate ops, in place
  of tfresnet's fused one (`tfresnet.models.layers.BatchNormalization`); ``fit_fused_bn``
  (``resnet50_imagenet``): the reverse, tfresnet's in place of the Keras Applications
  backbone's own;
- ``call`` (``--task inference``): the compiled call evaluate and predict run, on uint8
  images (resize and normalisation in the model);
- ``raw``: a bare ``tf.function`` step on one fixed batch: forward, CE, backward, SGD with
  Nesterov momentum (no Keras loop, metrics, L2 or tf.data); ``raw_l2`` adds the L2 term;
  ``raw_xla`` compiles ``raw`` with XLA;
- ``torch_eager`` and ``torch_compile``: tfresnet.training.torch_twin (CIFAR) or
  torchvision's ResNet, SGD with momentum on one fixed batch (when torch is installed).

One JSON line per variant and precision (median, min, max img/s over the rounds). Thread
and oneDNN settings apply per process: set ``TF_ENABLE_ONEDNN_OPTS=0`` or pass
``--intra-op`` to rerun. ``--op-profile`` then traces ``--steps`` more steps of each
TensorFlow variant with the TensorFlow profiler and adds each op type's share of the op
time (self time, idle excluded; the profiler slows the step, so the shares matter, not the
totals).

    python experiments/step_profile.py --width 0.125 --batch-size 128
    python experiments/step_profile.py --precisions float32 bfloat16 --variants fit torch_eager
    python experiments/step_profile.py --model resnet50_imagenet --task frozen --batch-size 32
"""

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
BATCH_VARIANTS = ("fit", "fit_xla", "fit_no_augment", "fit_keras_bn", "fit_fused_bn")
RAW_VARIANTS = ("raw", "raw_l2", "raw_xla")
TORCH_VARIANTS = ("torch_eager", "torch_compile")
# ``--precisions``: Keras' policy for each; PyTorch runs bfloat16 under CPU autocast.
KERAS_POLICY = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


def keras_fit(spec, jit="off", augment="standard", batch_norm=None):
    """``run(steps)`` -> seconds of one epoch of ``steps`` steps of bench's training row;
    ``batch_norm="keras"``: every batch norm is Keras' own (unfused); ``"fused"``: every
    one is tfresnet's (Keras Applications' and keras-hub's backbones included)."""
    import keras

    from tfresnet.models.layers import BatchNormalization
    from tfresnet.training.bench import bench_config, build_bench_model
    from tfresnet.training.pipelines import make_pipelines

    config = bench_config(spec.model, spec.batch, KERAS_POLICY[spec.precision], jit,
                          spec.width, augment=augment, image_size=spec.image_size,
                          transfer="frozen" if spec.task == "frozen" else "finetune")
    data, runtime, plan, model = build_bench_model(config, spec.classes, steps=8)
    swap = {"keras": keras.layers.BatchNormalization, "fused": BatchNormalization}
    for layer in model._flatten_layers() if batch_norm else ():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.__class__ = swap[batch_norm]  # same variables, the other call
    dataset, _ = make_pipelines(config.augment, data, runtime, plan)
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


def keras_inference(spec):
    """``run(steps)`` -> seconds of the compiled call (what evaluate and predict run) over
    ``steps`` batches."""
    from tfresnet.runs.probabilities import predict_probabilities
    from tfresnet.training.bench import bench_config, build_bench_model

    config = bench_config(spec.model, spec.batch, KERAS_POLICY[spec.precision], "off",
                          spec.width, image_size=spec.image_size)
    data, _, _, model = build_bench_model(config, spec.classes, steps=1)
    images = data.x_train[:spec.batch]

    def run(steps):
        start = time.perf_counter()
        for _ in range(steps):
            predict_probabilities(model, images, spec.batch)
        return time.perf_counter() - start
    return run


def raw_step(spec, l2=0.0, jit=False):
    """``run(steps)`` -> seconds of ``steps`` bare tf.function steps on one batch."""
    import keras
    import tensorflow as tf

    from tfresnet.losses import l2_penalty, l2_variables
    from tfresnet.models import get_model

    keras.mixed_precision.set_global_policy(KERAS_POLICY[spec.precision])
    network = get_model("resnet18", spec.classes, width=spec.width)
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)
    x = tf.random.normal((spec.batch, 32, 32, 3))
    y = tf.random.uniform((spec.batch,), 0, spec.classes, tf.int32)
    network(x[:1])
    optimizer.build(network.trainable_variables)
    penalised = l2_variables(network)

    @tf.function(jit_compile=jit)
    def step():
        with tf.GradientTape() as tape:
            logits = network(x, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=y, logits=tf.cast(logits, tf.float32)))
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


def torch_network(spec):
    """The PyTorch network of ``spec``: the twin of tfresnet's CIFAR ResNet-18, or
    torchvision's ImageNet ResNet (random weights) with a new ``spec.classes`` head, frozen
    but for the head (its batch norm in inference mode) when ``spec.task`` is frozen."""
    import torch

    torch.manual_seed(0)
    if not spec.model.endswith("_imagenet"):
        from tfresnet.training.torch_twin import ResNet18

        return ResNet18(spec.classes, width=spec.width)
    import torchvision

    network = getattr(torchvision.models, spec.model.removesuffix("_imagenet"))()
    network.fc = torch.nn.Linear(network.fc.in_features, spec.classes)
    if spec.task == "frozen":
        for name, parameter in network.named_parameters():
            parameter.requires_grad_(name.startswith("fc."))
    return network


def torch_step(spec, compiled):
    import torch

    from tfresnet.training.torch_twin import inference_step, train_step

    network = torch_network(spec)
    network.train(spec.task == "train")
    forward = torch.compile(network) if compiled else network
    x = torch.randn(spec.batch, 3, spec.image_size, spec.image_size)
    bfloat16 = spec.precision == "bfloat16"
    if spec.task == "inference":
        step = inference_step(forward, x, bfloat16)
    else:
        optimizer = torch.optim.SGD([p for p in network.parameters() if p.requires_grad],
                                    lr=0.1, momentum=0.9)
        step = train_step(forward, optimizer, x, torch.randint(0, spec.classes, (spec.batch,)),
                          bfloat16)

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


@dataclasses.dataclass(frozen=True)
class Spec:
    """What every variant of one run computes."""

    model: str
    task: str
    width: float
    batch: int
    image_size: int
    classes: int
    precision: str


def build(name, spec):
    return {"fit": lambda: keras_fit(spec),
            "fit_xla": lambda: keras_fit(spec, jit="on"),
            "fit_no_augment": lambda: keras_fit(spec, augment="none"),
            "fit_keras_bn": lambda: keras_fit(spec, batch_norm="keras"),
            "fit_fused_bn": lambda: keras_fit(spec, batch_norm="fused"),
            "call": lambda: keras_inference(spec),
            "raw": lambda: raw_step(spec),
            "raw_l2": lambda: raw_step(spec, l2=5e-4),
            "raw_xla": lambda: raw_step(spec, jit=True),
            "torch_eager": lambda: torch_step(spec, compiled=False),
            "torch_compile": lambda: torch_step(spec, compiled=True)}[name]()


def check_variants(args):
    """The variants that apply to ``args.model`` and ``args.task``; exits on others."""
    allowed = {"train": [*BATCH_VARIANTS, *RAW_VARIANTS], "frozen": ["fit"],
               "inference": ["call"]}[args.task]
    if args.model != "resnet18":
        allowed = [v for v in allowed if v not in (*RAW_VARIANTS, "fit_keras_bn")]
    if args.model != "resnet50_imagenet":  # the one with Keras' batch norm to swap
        allowed = [v for v in allowed if v != "fit_fused_bn"]
    allowed += TORCH_VARIANTS
    if args.task == "frozen" and not args.model.endswith("_imagenet"):
        sys.exit("--task frozen needs a pretrained backbone (--model resnet18_imagenet, "
                 "resnet50_imagenet)")
    wrong = [v for v in args.variants if v not in allowed]
    if wrong:
        sys.exit(f"variants {', '.join(wrong)} do not apply to --model {args.model} --task "
                 f"{args.task}; choose from {', '.join(allowed)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float,
                        help="default 0.125; *_imagenet: 1.0 only, as torchvision's")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="resnet18",
                        choices=("resnet18", "resnet18_imagenet", "resnet50_imagenet"))
    parser.add_argument("--task", default="train", choices=("train", "frozen", "inference"))
    parser.add_argument("--image-size", type=int,
                        help="input side (default: 32, 224 for *_imagenet)")
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--precisions", nargs="+", default=["float32"],
                        choices=tuple(KERAS_POLICY), help="every variant in each")
    parser.add_argument("--variants", nargs="+",
                        help="default: all that apply to --model and --task")
    parser.add_argument("--intra-op", type=int, help="TensorFlow intra-op threads")
    parser.add_argument("--inter-op", type=int, help="TensorFlow inter-op threads")
    parser.add_argument("--json", help="append the JSON lines to this file")
    parser.add_argument("--op-profile", action="store_true",
                        help="also each TensorFlow variant's op types by share of op time")
    args = parser.parse_args()
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        import torch  # noqa: F401 (torch 2.14's CUDA wheel crashes when imported after TF)
    import tensorflow as tf

    if args.intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op)
    if args.inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)
    if args.variants is None:
        args.variants = {"train": [*BATCH_VARIANTS, *RAW_VARIANTS],
                         "frozen": ["fit"], "inference": ["call"]}[args.task]
        if args.model != "resnet18":
            args.variants = [v for v in args.variants if v in ("fit", "fit_xla", "call")]
        args.variants += TORCH_VARIANTS
    check_variants(args)
    imagenet = args.model.endswith("_imagenet")
    if imagenet and args.width not in (None, 1.0):
        sys.exit(f"--model {args.model} compares full-width networks; drop --width")
    args.width = args.width or (1.0 if imagenet else 0.125)
    if importlib.util.find_spec("torch") is None:
        args.variants = [v for v in args.variants if v not in TORCH_VARIANTS]
    size = args.image_size or (224 if args.model.endswith("_imagenet") else 32)
    runs = {}
    for precision in args.precisions:
        spec = Spec(args.model, args.task, args.width, args.batch_size, size,
                    args.num_classes, precision)
        for name in args.variants:
            runs[name, precision] = build(name, spec)
    for run in runs.values():  # compilation and first steps, untimed; the timed length,
        run(args.steps)  # as fit traces a new step for each epoch length
    rates = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            rates[name].append(args.steps * args.batch_size / run(args.steps))
    for (name, precision), values in rates.items():
        row = {
            "variant": name, "model": args.model, "task": args.task, "image_size": size,
            "precision": precision, "width": args.width, "batch_size": args.batch_size,
            "images_per_second": round(statistics.median(values), 1),
            "min": round(min(values), 1), "max": round(max(values), 1),
            "rounds": args.rounds, "steps": args.steps,
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
            "intra_op": args.intra_op or "auto", "inter_op": args.inter_op or "auto"}
        if args.op_profile and name not in TORCH_VARIANTS:
            row["op_shares"] = op_shares(runs[name, precision], args.steps)
        line = json.dumps(row)
        print(line, flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
