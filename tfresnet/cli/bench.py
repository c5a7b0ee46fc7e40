"""``python -m tfresnet.bench``: images per second of training, inference, the input pipeline.

Every measurement runs through the same code the product runs: warm-up steps first
(excluded), then ``--repeats`` timed repetitions of ``--steps`` batches; the median, the
spread (min-max) and the peak memory of that measurement alone are printed. ``--json FILE``
appends one JSON line per measurement, as it is taken, with device, versions and thread
settings. Unset, every setting is train's default (XLA, steps per execution, precision and
where augmentation runs follow the device).

Example:
    python -m tfresnet.bench --pipeline                          # augmentation only
    python -m tfresnet.bench --pipeline --dataset photos/ --image-size 224  # decode too
    python -m tfresnet.bench --train --inference --batch-size 64 128
    python -m tfresnet.bench --train --precision mixed_float16 --jit on --batch-size 512
    python -m tfresnet.bench --train --jit on --steps-per-execution 1 16 --augment-on host device
    python -m tfresnet.bench --train --model resnet50_imagenet --image-size 224 --transfer frozen
    python -m tfresnet.bench --train --inference --width 0.125 --compare-torch

``--compare-torch`` follows each training and inference row of the CIFAR ResNet-18 with the
PyTorch twin's (`tfresnet.training.torch_twin`: eager, then torch.compile, each in a process
of its own) and the ratio. The twin trains on one fixed batch, without tfresnet's input
pipeline, augmentation, metrics or L2, so the ratio understates tfresnet's own step.
"""



import importlib.util
import itertools
import json
import os
import subprocess
import sys

from tfresnet.data.augment import AUGMENT_PLACES
from tfresnet.errors import UserError, command_parser, run_cli
from tfresnet.models import list_models
from tfresnet.runtime.precision import JIT_MODES, PRECISIONS, resolve_precision
from tfresnet.training.bench import (
    PIPELINE_PRESETS,
    TRANSFER_STEPS,
    RowLog,
    bench_config,
    bench_inference,
    bench_pipeline,
    bench_train,
)


def torch_twin_rows(row, modes, steps, repeats, num_classes):
    """The PyTorch twin's rows for tfresnet's ``row``, one per mode (eager, compile), each
    run by ``torch_twin.py`` in a process of its own; a failed one is a row with its error."""
    script = importlib.util.find_spec("tfresnet.training.torch_twin").origin
    precision = "bfloat16" if row["precision"] == "mixed_bfloat16" else "float32"
    rows = []
    for mode in modes:
        done = subprocess.run(
            [sys.executable, script, row["kind"], mode, str(row["width"]), str(row["batch_size"]),
             str(steps), str(repeats), str(num_classes), precision],
            capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if done.returncode == 0:
            rows.append(json.loads(done.stdout.splitlines()[-1]))
        else:
            reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            rows.append({"kind": row["kind"], "source": f"torch-{mode}",
                         "error": f"PyTorch's process ended with {reason!r}"})
    return rows


def compare_torch(row, args, record):
    """Records the twin's rows after ``row`` and prints tfresnet's ratio to each."""
    for twin in torch_twin_rows(row, args.compare_torch, args.steps, args.repeats,
                                args.num_classes):
        record(twin)
        if "error" not in twin:
            print(f"  tfresnet / {twin['source']}: "
                  f"{row['images_per_second'] / twin['images_per_second']:.2f}x", flush=True)


def check_compare_torch(args):
    """Refuses what the twin cannot mirror, in one line each."""
    if args.model != ["resnet18"] or (args.image_size or 32) != 32:
        raise UserError("--compare-torch mirrors the CIFAR ResNet-18 on 32 px images: drop "
                        "--model and --image-size")
    if "mixed_float16" in args.precision:
        raise UserError("--compare-torch runs float32 or bfloat16; drop --precision "
                        "mixed_float16")
    if importlib.util.find_spec("torch") is None:
        raise UserError("--compare-torch needs PyTorch: pip install torch")


def run(args):
    """Runs the selected measurements; returns the records."""
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
    if args.compare_torch is not None:
        args.compare_torch = args.compare_torch or ["eager", "compile"]
        check_compare_torch(args)
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
                row = bench_train(config, args.steps, args.repeats, args.num_classes)
                record(row)
                if args.compare_torch:
                    compare_torch(row, args, record)
        if args.inference or everything:  # neither setting above applies to inference
            config = bench_config(name, batch, precision, jit, args.width, image_size=size)
            for result in bench_inference(config, args.steps, args.repeats, args.num_classes):
                record(result)
            if args.compare_torch:  # against the compiled call, evaluation's path
                compare_torch(result, args, record)
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
                        help="train steps per compiled call (0: as train: with XLA the largest "
                        "divisor of the epoch up to 16, else 1)")
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
    parser.add_argument("--compare-torch", nargs="*", choices=("eager", "compile"),
                        help="follow each ResNet-18 row with the PyTorch twin's, eager and "
                             "torch.compile unless one is named (needs torch)")
    return parser


def main(argv=None):
    run(build_parser().parse_args(argv))
    return 0


def cli():
    sys.exit(run_cli("tfresnet.bench", main))



if __name__ == "__main__":
    cli()
