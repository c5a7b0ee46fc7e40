"""The documented configuration space, as a matrix: every cell of a pairwise covering set
trains on tiny data, or is refused in one line with exit 2.

Dimensions (`DIMENSIONS`): strategy (one device, MirroredStrategy over 2 logical CPUs, 2
local workers on 127.0.0.1), precision, XLA, where augmentation runs, the augmentation,
steps per execution (1, auto, and 3, which divides no epoch here), the data (digits in
memory, or a streamed folder of non-square photos) and transfer (none, frozen, finetune,
two-stage from a local weights file), and ``--checkpoint-every`` (off, or every 5 steps).

Cells are chosen greedily (AETG-style) until every pair of values that some trainable
configuration holds is in a cell that trains; then every pair that only refused
configurations hold gets a refused cell. A trainable cell trains 2 epochs, is killed
(SIGKILL) once its first epoch is saved, resumes to the end, then evaluate, predict and
export (SavedModel) run on its run folder. `expected_refusals` states what tfresnet must
refuse; a cell passes when what happened is what was expected.

    python experiments/config_matrix.py --out /tmp/matrix            # every cell
    python experiments/config_matrix.py --out /tmp/m --quick         # the test suite's cover

Writes ``matrix.jsonl`` (a line per cell, as it finishes) and ``matrix.md`` into ``--out``.
"""

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

DIMENSIONS = {
    "strategy": ("one", "mirrored", "workers"),
    "precision": ("float32", "mixed_bfloat16", "mixed_float16"),
    "jit": ("off", "on"),
    "augment_on": ("host", "device"),
    "augment": ("standard", "none", "shift_flip", "strong", "crop,flip,mixup", "flip,cutmix",
                "randaugment"),
    "spe": ("auto", "1", "3"),
    "data": ("memory", "folder"),
    "transfer": ("none", "frozen", "finetune", "two-stage"),
    "checkpoint_every": ("off", "5"),  # steps; a cell with it is killed inside an epoch
}
# The test suite's cover: fewer values, no kill, two commands afterwards.
QUICK_DIMENSIONS = {
    "strategy": ("one", "mirrored"),
    "precision": ("float32", "mixed_float16"),
    "jit": ("off", "on"),
    "augment_on": ("host", "device"),
    "augment": ("standard", "crop,flip,mixup"),
    "spe": ("auto", "3"),
    "data": ("memory", "folder"),
    "transfer": ("none", "frozen"),
}
NOT_DIVIDING = "3"  # digits: 20 steps an epoch at batch 64; the folder: 10 at batch 32

# Splits the CPU into two logical devices before TensorFlow starts, then runs train.
TWO_DEVICES = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tfresnet.errors import run_cli
from tfresnet.cli.train import main
sys.exit(run_cli("tfresnet.train", main, sys.argv[1:]))
"""
# evaluate, predict and export on a run folder, in one process.
AFTERWARDS = """
import sys
from tfresnet.cli import evaluate, export, predict
from tfresnet.errors import run_cli
run, image, out = sys.argv[1:]
for prog, main, args in (("evaluate", evaluate.main, [run]),
                         ("predict", predict.main, [run, image, "--json", out + "/p.json"]),
                         ("export", export.main, [run, "--format", "saved_model", "--out",
                                                  out + "/saved", "--check-images", "20"])):
    code = run_cli("tfresnet." + prog, main, args)
    if code:
        print(f"{prog} failed with exit {code}", file=sys.stderr)
        sys.exit(code)
"""


def expected_refusals(cell):
    """The one-line errors tfresnet must refuse ``cell`` with (any of them, since the
    checks run in order), or an empty list when it must train."""
    reasons = []
    replicas = cell["strategy"] != "one"
    if replicas and cell["jit"] == "on":
        reasons.append("--jit on")
    if cell["augment"] == "randaugment" and cell["augment_on"] == "device" and (
            cell["jit"] == "on"):
        reasons.append("cannot run inside an XLA-compiled step")
    if cell["spe"] == NOT_DIVIDING:
        reasons.append("needs one device" if replicas else "does not divide the epoch")
    return reasons


def cover(dimensions):
    """Cells (dicts) covering every pair of values: first by trainable cells, then the
    pairs only refused cells hold."""
    names = list(dimensions)
    every = [dict(zip(names, values)) for values in itertools.product(*dimensions.values())]

    def pairs(cell):
        return {((a, cell[a]), (b, cell[b])) for a, b in itertools.combinations(names, 2)}

    chosen = []
    for trainable in (True, False):
        pool = [c for c in every if bool(expected_refusals(c)) != trainable]
        uncovered = set().union(*map(pairs, pool)) - set().union(*map(pairs, chosen))
        if not trainable:  # pairs that some trainable cell covers are done
            uncovered -= set().union(*(pairs(c) for c in every if not expected_refusals(c)))
        while uncovered:
            best = max(pool, key=lambda c: len(pairs(c) & uncovered))
            chosen.append(best)
            uncovered -= pairs(best)
    return chosen


def write_folder(root, per_class=120, classes=3):
    """A photo folder: digits upscaled to 48x40 (not square: the photo view), in
    ``train/<class>`` and ``test/<class>``."""
    import cv2

    from tfresnet.data import load_dataset

    data = load_dataset("digits", val_size=0)
    for split, images, labels in (("train", data.x_train, data.y_train),
                                  ("test", data.x_test, data.y_test)):
        for label in range(classes):
            folder = Path(root) / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(images[labels == label][:per_class]):
                photo = cv2.resize(image, (48, 40), interpolation=cv2.INTER_LINEAR)
                cv2.imwrite(str(folder / f"{i}.png"), photo[..., ::-1])
    return Path(root)


def write_weights(path):
    """A pretrained backbone's local file: a tfresnet ResNet-18 x0.125, ImageNet stem."""
    import numpy as np

    from tfresnet.models import get_model

    source = get_model("resnet18", 5, stem="imagenet", width=0.125)
    source(np.zeros((1, 32, 32, 3), "float32"))
    source.save(path)
    return path


def train_args(cell, folder, weights, out, name, epochs):
    data = ["--dataset", str(folder), "--batch-size", "32"] if cell["data"] == "folder" else (
        ["--dataset", "digits", "--batch-size", "64"])
    if cell["transfer"] == "none":
        model = ["--model", "resnet18", "--width", "0.0625"]
    else:
        model = ["--model", "resnet18", "--width", "0.125", "--transfer", cell["transfer"],
                 "--weights", str(weights),
                 *(["--head-epochs", "1"] if cell["transfer"] == "two-stage" else [])]
    spe = "0" if cell["spe"] == "auto" else cell["spe"]
    return [*data, *model, "--image-size", "32", "--lr", "0.05", "--epochs", str(epochs),
            "--strategy", "multiworker" if cell["strategy"] == "workers" else cell["strategy"],
            "--precision", cell["precision"], "--jit", cell["jit"], "--augment", cell["augment"],
            "--augment-on", cell["augment_on"], "--steps-per-execution", spe,
            *(["--checkpoint-every", cell["checkpoint_every"]]
              if cell.get("checkpoint_every", "off") != "off" else []),
            "--no-visualize", "--no-tensorboard", "--output-dir", str(out), "--name", name]


def start(cell, args):
    """The training processes of a cell (two workers for ``workers``)."""
    from tfresnet.tuning.launch import free_ports

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    pipe = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    if cell["strategy"] == "mirrored":
        return [subprocess.Popen([sys.executable, "-c", TWO_DEVICES, *args], env=env, **pipe)]
    if cell["strategy"] == "one":
        return [subprocess.Popen([sys.executable, "-m", "tfresnet.train", *args], env=env,
                                 **pipe)]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    return [subprocess.Popen(
        [sys.executable, "-m", "tfresnet.train", *args], **pipe,
        env={**env, "TF_CONFIG": json.dumps({"cluster": cluster,
                                             "task": {"type": "worker", "index": i}})})
        for i in range(2)]


def finish(processes, timeout):
    """``(exit status, stdout, stderr)`` of the first process that failed, else the
    first's; every process is stopped afterwards."""
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=timeout)
            results.append((process.returncode, out, err))
    finally:
        for process in processes:
            process.kill()
    return next((r for r in results if r[0]), results[0])


def last_line(text):
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def run_cell(cell, folder, weights, out, name, kill=True, timeout=600):
    """Trains one cell (killed after its first epoch and resumed, with ``kill``) and runs
    the commands on its result; returns the cell's record."""
    started = time.perf_counter()
    record = {**cell, "expected": "refused" if expected_refusals(cell) else "trained"}
    run_dir = Path(out) / name
    epochs = 2 if kill else 1
    processes = start(cell, train_args(cell, folder, weights, out, name, epochs))
    if kill:
        # The first resume point: inside epoch 1 with --checkpoint-every, else its end.
        while processes[0].poll() is None and not any(
                (run_dir / name).exists() for name in ("resume.keras", "last.keras")):
            time.sleep(0.05)
        if processes[0].poll() is None:
            for process in processes:
                process.send_signal(signal.SIGKILL)
            finish(processes, timeout)
            processes = start(cell, train_args(cell, folder, weights, out, name, epochs))
            record["killed"] = True
    code, stdout, stderr = finish(processes, timeout)
    if code:
        record.update(outcome="refused" if code == 2 else f"failed (exit {code})",
                      message=last_line(stderr))
    else:
        after = subprocess.run([sys.executable, "-c", AFTERWARDS, str(run_dir),
                                str(next(Path(folder).rglob("*.png"))), str(run_dir)],
                               capture_output=True, text=True, timeout=timeout,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        resumed = not kill or "resuming" in stdout
        epochs_done = len((run_dir / "history.csv").read_text().splitlines()) - 1
        ok = after.returncode == 0 and resumed and epochs_done == epochs
        record.update(outcome="trained" if ok else "failed after training",
                      message=last_line(stdout if ok else after.stderr or stdout),
                      startup=next((line for line in stdout.splitlines()
                                    if " | XLA " in line), ""),
                      resumed=next((line.split(" ", 2)[2] for line in stdout.splitlines()
                                    if line.startswith("resuming ")), ""))
    record["passed"] = record["outcome"] == record["expected"] and (
        record["outcome"] == "trained"
        or any(reason in record["message"] for reason in expected_refusals(cell)))
    record["seconds"] = round(time.perf_counter() - started, 1)
    return record


def table(records):
    names = list(DIMENSIONS)
    lines = ["| # | " + " | ".join(names) + " | outcome | start-up line or refusal |",
             "|" + "---|" * (len(names) + 3)]
    for i, r in enumerate(records, 1):
        detail = r.get("startup") or r["message"].replace("tfresnet.train: error: ", "")
        mark = "" if r["passed"] else " **UNEXPECTED**"
        lines.append(f"| {i} | " + " | ".join(str(r.get(n, "")) for n in names)
                     + f" | {r['outcome']}{mark} | {detail.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the runs and the table")
    parser.add_argument("--quick", action="store_true",
                        help="the test suite's smaller cover: no kill, one epoch")
    parser.add_argument("--cells", help="comma-separated cell numbers (1-based) to run")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = cover(QUICK_DIMENSIONS if args.quick else DIMENSIONS)
    numbers = [int(n) for n in args.cells.split(",")] if args.cells else range(1, len(cells) + 1)
    print(f"{len(cells)} cells; running {len(numbers)}", flush=True)
    folder = write_folder(out / "photos")
    weights = write_weights(out / "backbone.keras")
    records = []
    with open(out / "matrix.jsonl", "a") as log:
        for number in numbers:
            record = run_cell(cells[number - 1], folder, weights, out / "runs", f"cell{number}",
                              kill=not args.quick)
            records.append({"cell": number, **record})
            log.write(json.dumps(records[-1]) + "\n")
            log.flush()
            print(f"cell {number}: {record['outcome']}{'' if record['passed'] else ' UNEXPECTED'}"
                  f" ({record['seconds']} s) {record['message'][:150]}", flush=True)
    (out / "matrix.md").write_text(table(records))
    failed = [r["cell"] for r in records if not r["passed"]]
    print(f"{len(records) - len(failed)}/{len(records)} cells as expected"
          + (f"; unexpected: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
