"""PyTorch twin of tfresnet's CIFAR-stem ResNet-18, for two comparisons.

``bench``: step throughput against ``python -m tfresnet.bench`` (median of repetitions,
warm-up excluded), on random data:
    python experiments/torch_reference.py bench --batch-size 64 128 --compile

``train``: tfresnet's default recipe trained in PyTorch on the same data, split and
normalisation (read through ``tfresnet.data.load_dataset``): SGD with Nesterov momentum
0.9 at 0.1, linear warm-up for 2 epochs then cosine decay to 0 (per step), L2 5e-4 on conv
and dense kernels (coupled, as tfresnet's loss term), batch 128 with full batches only,
crop (pad 4, reflect) + flip, optionally cutout; He-normal (fan-out) conv kernels, BN
momentum 0.1. It writes a run folder that ``python -m tfresnet.compare`` reads
(summary.json, history.csv):
    python experiments/torch_reference.py train --data-dir C10 --width 0.125 --epochs 15 \\
        --out saved_models/torch-default

``--precision bfloat16`` runs either under PyTorch's CPU autocast in bfloat16.

Not a dependency of tfresnet; run it in an environment with torch.
"""

import argparse
import csv
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tfresnet.errors import run_cli
from tfresnet.training.torch_twin import ResNet18, autocast, twin_rows

# --- bench --------------------------------------------------------------------------------


def bench(args):
    """One JSON line per measurement: train steps per batch size, then inference."""
    bfloat16 = args.precision == "bfloat16"
    for mode in ["eager", "compile"] if args.compile else ["eager"]:
        for batch in args.batch_size:
            print(json.dumps(twin_rows("train", mode, args.width, batch, args.steps,
                                       args.repeats, bfloat16=bfloat16)), flush=True)
        print(json.dumps(twin_rows("inference", mode, args.width, args.inference_batch, 2,
                                   args.repeats, bfloat16=bfloat16)), flush=True)


# --- train --------------------------------------------------------------------------------


def augment(images, generator, cutout):
    """Crop (pad 4, reflect) + flip, and a ``cutout`` x ``cutout`` square of zero pixels if
    > 0, on a float NCHW batch of 0-255 pixels (before normalisation, as in tfresnet)."""
    batch, _, height, width = images.shape
    padded = nn.functional.pad(images, (4, 4, 4, 4), mode="reflect")
    dy, dx = torch.randint(0, 9, (2, batch), generator=generator)
    rows = (dy[:, None] + torch.arange(height))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(width))[:, None, None, :]
    index = torch.arange(batch)[:, None, None, None], torch.arange(3)[None, :, None, None]
    out = padded[index[0], index[1], rows, cols]
    mirror = torch.rand(batch, generator=generator) < 0.5
    out = torch.where(mirror[:, None, None, None], out.flip(3), out)
    if cutout:
        cy, cx = torch.randint(0, height, (batch,), generator=generator), \
            torch.randint(0, width, (batch,), generator=generator)
        top, left = cy - cutout // 2, cx - cutout // 2
        r, c = torch.arange(height), torch.arange(width)
        inside_rows = (r >= top[:, None]) & (r < (top + cutout)[:, None])
        inside_cols = (c >= left[:, None]) & (c < (left + cutout)[:, None])
        out = out * ~(inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]
    return out


def warmup_cosine(step, warmup, total):
    """tfresnet's cosine schedule as a factor of the peak: linear from 0 over ``warmup``
    steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return step / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def evaluate(model, x, y, batch=500, bfloat16=False):
    """(mean cross-entropy, top-1, top-5) over a normalised NCHW tensor."""
    model.eval()
    loss = top1 = top5 = 0.0
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            with autocast(bfloat16):
                logits = model(x[start:start + batch]).float()
            labels = y[start:start + batch]
            loss += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            best5 = logits.topk(5, 1).indices
            top1 += (best5[:, 0] == labels).sum().item()
            top5 += (best5 == labels[:, None]).any(1).sum().item()
    return loss / len(x), top1 / len(x), top5 / len(x)


def write_history(rows, path):
    """The epochs so far as CSV, replaced atomically."""
    with open(f"{path}.tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(f"{path}.tmp", path)


def train(args):
    from tfresnet.data import load_dataset

    data = load_dataset(args.dataset, args.data_dir, seed=args.seed)
    mean = torch.tensor(data.mean, dtype=torch.float32)[None, :, None, None]
    std = torch.tensor(data.std, dtype=torch.float32)[None, :, None, None]

    def normalise(images):  # uint8 NCHW -> float, as tfresnet's model input layer
        return (images.float() - mean) / std

    def tensors(images, labels):  # NHWC uint8 -> NCHW uint8, int64 labels
        return (torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                torch.from_numpy(labels.astype(np.int64)))

    x_train, y_train = tensors(data.x_train, data.y_train)
    x_val, y_val = tensors(data.x_val, data.y_val)
    x_val = normalise(x_val)  # once, not every epoch
    x_test, y_test = tensors(data.x_test, data.y_test)
    bfloat16 = args.precision == "bfloat16"
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = ResNet18(data.num_classes, args.width)
    kernels, others = [], []  # L2 on conv and dense kernels only
    for name, parameter in model.named_parameters():
        is_kernel = name.endswith("weight") and parameter.dim() > 1
        (kernels if is_kernel else others).append(parameter)
    optimizer = torch.optim.SGD([{"params": kernels, "weight_decay": args.l2},
                                 {"params": others, "weight_decay": 0.0}],
                                lr=args.lr, momentum=0.9, nesterov=True)
    steps = len(x_train) // args.batch_size
    total = args.epochs * steps
    warmup = min(total - 1, round(args.warmup_epochs * steps))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, best, step, train_seconds = [], None, 0, 0.0
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        epoch_start, loss_sum, correct = time.perf_counter(), 0.0, 0
        for index in range(steps):
            batch = order[index * args.batch_size:(index + 1) * args.batch_size]
            images = normalise(augment(x_train[batch].float(), generator, args.cutout))
            for group in optimizer.param_groups:
                group["lr"] = args.lr * warmup_cosine(step, warmup, total)
            with autocast(bfloat16):
                logits = model(images)
                loss = nn.functional.cross_entropy(logits, y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += loss.item()
            correct += (logits.argmax(1) == y_train[batch]).sum().item()
        train_seconds += time.perf_counter() - epoch_start
        val_loss, val_accuracy, val_top5 = evaluate(model, x_val, y_val, bfloat16=bfloat16)
        rows.append({"epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                     "loss": loss_sum / steps, "accuracy": correct / (steps * args.batch_size),
                     "val_loss": val_loss, "val_accuracy": val_accuracy, "val_top5": val_top5,
                     "seconds": round(time.perf_counter() - epoch_start, 3)})
        print(json.dumps(rows[-1]), flush=True)
        if best is None or val_accuracy > best["val_accuracy"]:
            best = rows[-1]
            torch.save(model.state_dict(), out / "best.pt.tmp")
            os.replace(out / "best.pt.tmp", out / "best.pt")
        write_history(rows, out / "history.csv")
    wall = time.perf_counter() - start
    model.load_state_dict(torch.load(out / "best.pt"))
    _, test_accuracy, test_top5 = evaluate(model, normalise(x_test), y_test,
                                           bfloat16=bfloat16)
    summary = {"run": str(out), "model": "resnet18 (PyTorch twin)", "dataset": args.dataset,
               "precision": "mixed_bfloat16" if bfloat16 else "float32",
               "config": vars(args), "versions": {"torch": torch.__version__,
                                                  "python": platform.python_version()},
               "threads": torch.get_num_threads(),
               "parameters": sum(p.numel() for p in model.parameters()),
               "epochs": args.epochs, "best_epoch": best["epoch"],
               "best_val_accuracy": best["val_accuracy"], "wall_seconds": round(wall, 1),
               "train_images_per_second": round(
                   steps * args.batch_size * args.epochs / train_seconds, 1),
               "test_accuracy": test_accuracy, "test_top5": test_top5}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("test_accuracy", "wall_seconds",
                                              "train_images_per_second")}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    timing = commands.add_parser("bench", help="train and inference step throughput")
    timing.add_argument("--batch-size", type=int, nargs="+", default=[64, 128])
    timing.add_argument("--inference-batch", type=int, default=256)
    timing.add_argument("--steps", type=int, default=10)
    timing.add_argument("--repeats", type=int, default=5)
    timing.add_argument("--compile", action="store_true")
    timing.add_argument("--width", type=float, default=1.0)
    run = commands.add_parser("train", help="tfresnet's default recipe, in PyTorch")
    run.add_argument("--dataset", default="cifar10")
    run.add_argument("--data-dir", required=True)
    run.add_argument("--width", type=float, default=1.0)
    run.add_argument("--epochs", type=int, default=15)
    run.add_argument("--batch-size", type=int, default=128)
    run.add_argument("--lr", type=float, default=0.1)
    run.add_argument("--warmup-epochs", type=float, default=2.0)
    run.add_argument("--l2", type=float, default=5e-4)
    run.add_argument("--cutout", type=int, default=0, help="cutout side in pixels (0: off)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", required=True, help="run folder to write")
    for command in (timing, run):
        command.add_argument("--precision", default="float32", choices=("float32", "bfloat16"),
                             help="bfloat16: CPU autocast (convolutions in bfloat16)")
    args = parser.parse_args(argv)
    bench(args) if args.command == "bench" else train(args)


if __name__ == "__main__":
    sys.exit(run_cli("torch_reference.py", main))
