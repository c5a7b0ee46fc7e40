"""Each configuration against the run it must equal, as a table: the cell, its reference,
what is compared, the measured difference, the tolerance and why, and whether it held.

The configuration matrix (config_matrix.py) shows that every cell trains or is refused in
one line; this shows that what trains computes what it claims:

- ``mirrored``: 2 replicas (MirroredStrategy over 2 logical CPUs) against one device, same
  data, seed and global batch, with ``--sync-bn`` (batch statistics of the global batch, as
  one device computes them) and ``--deterministic``; within 3 times the difference that
  summing in another order causes on one device (one thread instead of two). Also
  ``mirrored-no-bn``, the same for the small CNN.
- ``workers``: 2 workers on 127.0.0.1 (TF_CONFIG) against one device, likewise.
- ``bn-replicas``: batch norm's moving statistics without ``--sync-bn``: 2 replicas against
  one device with the weights held still (lr 1e-9), so the statistics depend on the data.
- ``trial``: a keras-tuner trial against the ``train`` run of its values.
- ``augment-step``: augmentation inside the XLA-compiled step against augmentation in
  tf.data on the host, on one device and per replica: equal in distribution, by
  chi-squared and Kolmogorov-Smirnov tests of crop offsets, flips and mixup weights. (Not
  draw for draw: from the same 64-bit seed words XLA's stateless generators draw other
  numbers than TensorFlow's kernels.)
- ``bn-bfloat16``: tfresnet's batch norm in mixed_bfloat16 under XLA against float32.
- ``resume``: a run killed after epoch 1 and resumed against the uninterrupted run.
- ``onednn-avx2``: on an AVX2 CPU (this one capped with ``ONEDNN_MAX_CPU_ISA=AVX2`` where
  it has AVX-512), tfresnet's default, oneDNN on, against TensorFlow's own default there,
  its Eigen kernels; within 3 times the floor of Eigen on one thread against two.

    python experiments/equivalences.py --out /tmp/eq                  # every pair
    python experiments/equivalences.py --out /tmp/eq --only resume,trial

Writes ``equivalences.jsonl`` and ``equivalences.md`` into ``--out``. Exit 1 when a pair
is not equal within its tolerance.
"""

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# A tiny ResNet with batch norm on the bundled digits: 20 steps an epoch at batch 64.
RUN = ["--dataset", "digits", "--model", "resnet18", "--width", "0.0625", "--batch-size", "64",
       "--lr", "0.05", "--epochs", "2", "--augment", "none", "--deterministic",
       "--no-visualize", "--no-tensorboard"]
TWO_DEVICES = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tfresnet.errors import run_cli
from tfresnet.cli.train import main
sys.exit(run_cli("tfresnet.train", main, sys.argv[1:]))
"""
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def environment(**variables):
    """`ENV` with these variables set (a value of None unsets one)."""
    return {k: v for k, v in {**ENV, **variables}.items() if v is not None}


def train(out, name, args, strategy="one", timeout=600, env=ENV):
    """Runs ``tfresnet.train`` as a user would (two workers for ``workers``) in the
    environment ``env``; returns the run folder."""
    from tfresnet.tuning.launch import free_ports

    common = [*args, "--output-dir", str(out), "--name", name]
    if strategy == "one":
        commands = [([sys.executable, "-m", "tfresnet.train", *common], env)]
    elif strategy == "mirrored":
        commands = [([sys.executable, "-c", TWO_DEVICES, *common, "--strategy", "mirrored"],
                     env)]
    else:
        cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
        commands = [([sys.executable, "-m", "tfresnet.train", *common, "--strategy",
                      "multiworker"],
                     {**env, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {
                         "type": "worker", "index": i}})}) for i in range(2)]
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for command, env in commands]
    try:
        for process in processes:
            _, err = process.communicate(timeout=timeout)
            if process.returncode:
                raise RuntimeError(f"{name}: exit {process.returncode}: {err[-2000:]}")
    finally:
        for process in processes:
            process.kill()
    return Path(out) / name


def curve(run_dir, key="loss"):
    from tfresnet.runs.run_folder import read_history

    return np.array([row[key] for row in read_history(run_dir / "history.csv")])


def network_weights(run_dir):
    """The trained network's weights (batch norm's statistics included), by path."""
    import keras

    import tfresnet  # noqa: F401  (registers the custom objects)

    model = keras.saving.load_model(run_dir / "last.keras")
    return {v.path: np.asarray(v) for v in model.network.weights}


def statistics_gap(a, b):
    return max(float(np.abs(a[k] - b[k]).max()) for k in a if "moving" in k)


def weights_gap(a, b):
    return max(float(np.abs(a[k] - b[k]).max()) for k in a if "moving" not in k)


def record(cell, reference, measure, difference, tolerance, why):
    return {"cell": cell, "reference": reference, "measure": measure,
            "difference": difference, "tolerance": tolerance, "why": why,
            "equal": bool(difference <= tolerance)}


def train_with(out, name, args, **variables):
    """`train` with these environment variables set (a value of None unsets one)."""
    return train(out, name, args, env=environment(**variables))


ONE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "OMP_NUM_THREADS": "1"}


def train_with_one_thread(out, name, args, **variables):
    """The one-device run again on one intra-op thread: the same arithmetic summed in
    another order, the floor that reordering alone reaches."""
    return train_with(out, name, args, **ONE_THREAD, **variables)


def gaps(a, b):
    """The loss curves', weights' and moving statistics' differences of two runs."""
    wa, wb = network_weights(a), network_weights(b)
    return {"loss curve, max relative difference":
            float(np.abs(curve(a) / curve(b) - 1).max()),
            "final weights, max abs difference": weights_gap(wa, wb),
            "batch norm moving statistics, max abs difference":
                statistics_gap(wa, wb) if any("moving" in k for k in wa) else 0.0}


def within_floor(cell, reference, floor, found, against):
    """A row per measure: ``found`` within 3 times ``floor`` (at least 1e-6)."""
    return [record(cell, reference, measure, found[measure],
                   max(3 * floor[measure], 1e-6),
                   f"3x the floor {floor[measure]:.2g} ({against})")
            for measure in found]


def replicas_against_one(out, strategy, model=("--model", "resnet18")):
    """``mirrored`` or ``workers`` against one device. Several replicas sum in another
    order than one device, and training a batch-norm ResNet this small is chaotic: one
    device against itself on one thread instead of two already differs (the floor). The
    replicas must stay within 3 times that floor; without batch norm (small_cnn) the floor
    is near float32's rounding and the bound near 1e-4 or below."""
    args = [*RUN, *model, "--sync-bn"]
    one = train(out, f"{strategy}-one", args)
    floor_run = train_with_one_thread(out, f"{strategy}-one-thread", args)
    many = train(out, f"{strategy}-two", args, strategy=strategy)

    kind = "replicas" if strategy == "mirrored" else "workers on 127.0.0.1"
    return within_floor(f"{strategy}: 2 {kind}, {model[1]}, --sync-bn", "one device",
                        gaps(one, floor_run), gaps(one, many), "one device on 1 thread vs 2")


STEP_GRADIENTS = """
import sys, numpy as np, keras, tensorflow as tf
from tfresnet.models import get_model
keras.utils.set_random_seed(0)
network = get_model("resnet18", 10, width=0.25)
x = tf.random.stateless_uniform([32, 32, 32, 3], seed=[1, 2])
y = tf.random.stateless_uniform([32], seed=[3, 4], maxval=10, dtype=tf.int32)
with tf.GradientTape() as tape:
    loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
        y, network(x, training=True), from_logits=True))
gradients = tape.gradient(loss, network.trainable_variables)
np.savez(sys.argv[1], *[g.numpy() for g in [loss, *gradients]])
"""


def step_gradients(path, **variables):
    """The loss and gradients of one training step of ResNet-18 x0.25 (seeded weights and
    batch) in a process with these environment variables."""
    subprocess.run([sys.executable, "-c", STEP_GRADIENTS, str(path)],
                   env=environment(**variables), check=True,
                   timeout=300, capture_output=True)
    with np.load(path) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def relative_gap(a, b):
    """The largest difference between two lists of arrays, over the largest magnitude."""
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b)) / max(
        float(np.abs(x).max()) for x in a)


def onednn_against_eigen(out):
    """On an AVX2 CPU, oneDNN (which ``import tfresnet`` turns on there) against
    TensorFlow's Eigen kernels (TensorFlow's own default there). Other kernels sum in
    another order, so the bound is the replicas': 3 times Eigen on one thread against
    two. The oneDNN run leaves the variable to tfresnet, as a user would."""
    avx2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    args = [*RUN, "--model", "resnet18"]
    eigen = train_with(out, "eigen", args, TF_ENABLE_ONEDNN_OPTS="0", **avx2)
    floor_run = train_with_one_thread(out, "eigen-one-thread", args,
                                      TF_ENABLE_ONEDNN_OPTS="0", **avx2)
    onednn = train_with(out, "onednn", args, TF_ENABLE_ONEDNN_OPTS=None, **avx2)
    device = json.loads((onednn / "summary.json").read_text())["device"]
    if "oneDNN on" not in device:
        raise RuntimeError(f"the default run did not turn oneDNN on: {device}")
    cell = "onednn-avx2: oneDNN on an AVX2 CPU (tfresnet's default), resnet18"
    step = {name: step_gradients(Path(out) / f"{name}.npz", **avx2, **extra)
            for name, extra in (("eigen", {"TF_ENABLE_ONEDNN_OPTS": "0"}),
                                ("eigen-one-thread", {"TF_ENABLE_ONEDNN_OPTS": "0",
                                                      **ONE_THREAD}),
                                ("onednn", {"TF_ENABLE_ONEDNN_OPTS": None}))}
    floor = relative_gap(step["eigen"], step["eigen-one-thread"])
    found = relative_gap(step["eigen"], step["onednn"])
    return [record(cell, "TensorFlow's Eigen kernels", "one step's loss and gradients (x0.25, "
                   "batch 32), max abs difference over the largest", found,
                   max(3 * floor, 1e-4), f"3x the floor {floor:.2g} (Eigen on 1 thread vs "
                   "2), at least 1e-4: float32 sums of 10^3-10^4 terms in another order, "
                   "through about 20 layers"),
            *within_floor(cell, "TensorFlow's Eigen kernels", gaps(eigen, floor_run),
                          gaps(eigen, onednn), "Eigen on 1 thread vs 2")]


def batch_norm_over_replicas(out):
    """Without --sync-bn, with the weights held still: the stem's moving mean (linear in
    the batch means) must be one device's; the variance lacks the halves' spread."""
    args = [*RUN, "--lr", "1e-9", "--l2", "0", "--schedule", "constant", "--epochs", "1",
            "--val-size", "0"]
    w1 = network_weights(train(out, "bn-one", args))
    w2 = network_weights(train(out, "bn-two", args, strategy="mirrored"))
    mean = next(k for k in w1 if "stem_bn" in k and "moving_mean" in k)
    variance = mean.replace("moving_mean", "moving_variance")
    relative = float(np.abs(w2[mean] - w1[mean]).max() / np.abs(w1[mean]).max())
    low = float((1 - w2[variance] / w1[variance]).max())
    cell = "bn-replicas: 2 replicas, no --sync-bn"
    return [record(cell, "one device", "stem moving mean, max difference / max abs mean",
                   relative, 1e-4, "linear in the batch means: equal up to float32 order"),
            record(cell, "one device", "stem moving variance, largest relative shortfall",
                   low, 0.1, "the average of the halves' variances lacks the spread of "
                   "their means, 1/32 of a batch's variance in expectation")]


def trial_against_train(out):
    """A one-trial learning-rate search against `train` with the trial's value, both in
    mixed_bfloat16 (keras-tuner clears Keras' session, policy and seed, before each
    build)."""
    args = ["--dataset", "digits", "--model", "resnet18", "--width", "0.0625",
            "--batch-size", "64", "--augment", "none", "--seed", "3",
            "--precision", "mixed_bfloat16", "--output-dir", str(out)]
    done = subprocess.run([sys.executable, "-m", "tfresnet.tune", *args, "--lr-min", "0.02",
                           "--lr-max", "0.08", "--max-trials", "1", "--epochs-per-trial", "2",
                           "--name", "search"], env=ENV, capture_output=True, text=True,
                          timeout=900)
    if done.returncode:
        raise RuntimeError(f"tune: {done.stderr[-2000:]}")
    search = Path(out) / "tune" / "search"
    stats = [json.loads(p.read_text()) for p in (search / "trial_stats").glob("*.json")]
    with open(search / "trials.csv") as f:
        lr = next(csv.DictReader(f))["lr"]  # written with repr: the trial's own float
    reference = train(out, "trial-train", [*args, "--lr", lr, "--epochs", "2",
                                           "--no-visualize", "--no-tensorboard"])
    trial = np.array([row["val_accuracy"] for row in stats[0]["history"]])
    gap = float(np.abs(trial - curve(reference, "val_accuracy")).max())
    policy = stats[0]["dtype_policy"]
    cell = "trial: keras-tuner, mixed_bfloat16"
    return [record(cell, "train with the trial's values", f"dtype policy {policy}",
                   0.0 if policy == "mixed_bfloat16" else 1.0, 0.0,
                   "the trial must train in the run's precision"),
            record(cell, "train with the trial's values",
                   "validation accuracy per epoch, max difference", gap, 0.0,
                   "the same ops on the same data in the same order: bit-equal")]


def augmentation_draws(compiled, replicas=None, steps=400, batch=16):
    """Crop offsets, flips and mixup weights of ``steps`` batches of crop + flip and of
    mixup, drawn eagerly as tf.data does on the host, or ``compiled`` with XLA as inside
    the train step (with ``replicas``: each replica's own stream). The image encodes each
    pixel's row and column, so the centre pixel tells the offsets and its neighbour the
    flip."""
    import tensorflow as tf

    from tfresnet.data.augment import Augmenter

    side = 32
    rows, cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    image = np.stack([rows, cols, np.zeros_like(rows)], -1).astype("float32")
    images = np.repeat(image[None], batch, 0)
    labels = np.eye(batch, dtype="float32")
    augmenter = Augmenter("crop,flip", batch, seed=7)
    mixer = Augmenter("mixup", batch, seed=7)

    def draw(step, stream=None):
        out, _ = augmenter(images, labels, step, stream)
        _, mixed = mixer(images, labels, step, stream)
        return out[:, side // 2, side // 2 - 1:side // 2 + 1, :2], mixed[0, 0]

    run = tf.function(draw, jit_compile=True) if compiled else draw
    dy, dx, flips, weights = [], [], [], []
    for step in range(steps):
        for stream in ([None] if replicas is None else range(replicas)):
            centre, lam = run(tf.constant(step, tf.int64),
                              None if stream is None else tf.constant(stream))
            centre = centre.numpy()
            flipped = centre[:, 1, 1] < centre[:, 0, 1]
            dy.append(centre[:, 1, 0] - side // 2)
            # Mirrored, the centre column shows the pixel left of it before the flip.
            dx.append(centre[:, 1, 1] - np.where(flipped, side // 2 - 1, side // 2))
            flips.append(flipped)
            weights.append(float(lam))
    return {"crop dy": np.concatenate(dy), "crop dx": np.concatenate(dx),
            "flip": np.concatenate(flips), "mixup weight": np.array(weights)}


def same_distribution(a, b):
    """p-values of two-sample tests: chi-squared on counts of the discrete draws,
    Kolmogorov-Smirnov on the mixup weight."""
    from scipy import stats

    found = {}
    for name in a:
        if name == "mixup weight":
            found[name] = float(stats.ks_2samp(a[name], b[name]).pvalue)
            continue
        categories = np.union1d(a[name], b[name])
        counts = [[np.sum(x[name] == c) for c in categories] for x in (a, b)]
        found[name] = float(stats.chi2_contingency(counts).pvalue)
    return found


def augmentation_in_step(out):
    host = augmentation_draws(compiled=False)
    rows = []
    for label, draws in (("one device", augmentation_draws(compiled=True)),
                         ("2 replicas", augmentation_draws(compiled=True, replicas=2))):
        for name, p in same_distribution(host, draws).items():
            rows.append(record(f"augment-step: in the XLA-compiled step, {label}",
                               "tf.data on the host", f"{name}: 1 - p", 1 - p, 0.99,
                               f"two-sample test of {len(host['crop dy'])} draws or more a "
                               "side (chi-squared; Kolmogorov-Smirnov for the weight), "
                               "refuted at p < 0.01"))
    return rows


def bfloat16_batch_norm(out):
    """tfresnet's batch norm, mixed_bfloat16 under XLA against float32, in training."""
    import keras
    import tensorflow as tf

    from tfresnet.models.layers import BatchNormalization

    x = np.random.default_rng(0).normal(3.0, 2.0, (32, 8, 8, 64)).astype("float32")
    results = {}
    for policy, jit in (("float32", False), ("mixed_bfloat16", True)):
        keras.mixed_precision.set_global_policy(policy)
        layer = BatchNormalization(momentum=0.5)
        layer.build(x.shape)
        call = tf.function(lambda v, layer=layer: layer(v, training=True), jit_compile=jit)
        y = np.asarray(call(tf.constant(x)), "float32")
        results[policy] = (y, np.asarray(layer.moving_mean), np.asarray(layer.moving_variance))
    keras.mixed_precision.set_global_policy("float32")
    (y32, m32, v32), (y16, m16, v16) = results["float32"], results["mixed_bfloat16"]
    unit = 2.0 ** -8  # bfloat16's unit roundoff: 8 significant bits
    spread = np.sqrt(2 * v32 - 1)  # momentum 0.5 from 1: moving = (1 + batch variance) / 2
    centred = np.abs(x - x.mean((0, 1, 2)))
    # Each input rounded to bfloat16 moves by up to u |x|: y by u |x| / spread, the batch
    # mean by u mean |x|, the variance by 2u mean(|x - mean| |x|); the output's own
    # rounding adds u |y|.
    bounds = {"outputs": unit * (np.abs(x) / spread + np.abs(y32)) + 1e-6,
              "moving mean": 0.5 * unit * np.abs(x).mean((0, 1, 2)) + 1e-7,
              "moving variance": unit * (centred * np.abs(x)).mean((0, 1, 2)) + 1e-7}
    gaps = {"outputs": np.abs(y16 - y32), "moving mean": np.abs(m16 - m32),
            "moving variance": np.abs(v16 - v32)}
    cell = "bn-bfloat16: mixed_bfloat16 under XLA"
    return [record(cell, "float32, no XLA", f"{name}: max abs difference / bound",
                   float((gaps[name] / bounds[name]).max()), 1.0,
                   "the bound of rounding each input (and output) to bfloat16, u = 2^-8, "
                   "through batch norm's formula")
            for name in gaps]


def resumed_against_whole(out):
    """Three epochs, killed once the first is saved, run again; against one whole run."""
    run = [*RUN, "--epochs", "3"]
    whole = train(out, "whole", run)
    killed = Path(out) / "killed"
    process = subprocess.Popen([sys.executable, "-m", "tfresnet.train", *run, "--output-dir",
                                str(out), "--name", "killed"], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while process.poll() is None and not (killed / "last.keras").exists():
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    epochs_before = len(curve(killed))
    if epochs_before >= 3:
        raise RuntimeError("the kill landed after the last epoch; nothing was resumed")
    resumed = train(out, "killed", run)
    loss = float(np.abs(curve(resumed) - curve(whole)).max())
    w1, w2 = network_weights(whole), network_weights(resumed)
    cell = f"resume: killed after epoch {epochs_before} of 3, run again"
    why = "the same ops on the same batches in the same order: bit-equal"
    return [record(cell, "the uninterrupted run", "loss curve, max abs difference", loss, 0.0,
                   why),
            record(cell, "the uninterrupted run", "final weights and statistics, max abs "
                   "difference", max(weights_gap(w1, w2), statistics_gap(w1, w2)), 0.0, why)]


PAIRS = {
    "mirrored": lambda out: replicas_against_one(out, "mirrored"),
    "mirrored-no-bn": lambda out: replicas_against_one(out, "mirrored",
                                                       ("--model", "small_cnn")),
    "workers": lambda out: replicas_against_one(out, "workers"),
    "bn-replicas": batch_norm_over_replicas,
    "trial": trial_against_train,
    "augment-step": augmentation_in_step,
    "bn-bfloat16": bfloat16_batch_norm,
    "resume": resumed_against_whole,
    "onednn-avx2": onednn_against_eigen,
}


def table(rows):
    lines = ["| cell | reference | compared | difference | tolerance | why | equal |",
             "|---|---|---|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['cell']} | {r['reference']} | {r['measure']} | "
                     f"{r['difference']:.3g} | {r['tolerance']:.3g} | {r['why']} | "
                     f"{'yes' if r['equal'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the runs and the table")
    parser.add_argument("--only", help=f"comma-separated pairs of {', '.join(PAIRS)}")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.only.split(",") if args.only else list(PAIRS)
    rows = []
    with open(out / "equivalences.jsonl", "a") as log:
        for name in names:
            started = time.perf_counter()
            found = PAIRS[name](out / name)
            for row in found:
                row["seconds"] = round(time.perf_counter() - started, 1)
                log.write(json.dumps(row) + "\n")
                print(f"{row['cell']} vs {row['reference']}: {row['measure']} "
                      f"{row['difference']:.3g} (tolerance {row['tolerance']:.3g}) "
                      f"{'equal' if row['equal'] else 'NOT EQUAL'}", flush=True)
            rows += found
    (out / "equivalences.md").write_text(table(rows))
    return 0 if all(r["equal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
