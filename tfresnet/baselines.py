"""``python -m tfresnet.baselines``: the comparison points of seed 001.

  knn     k-nearest neighbours (L1 and L2) on raw pixels or, with ``--features RUN``, on a
          trained network's penultimate features; k and the distance are chosen on the
          validation split, then scored once on test.
  linear  a softmax (logistic-regression) classifier on the same inputs, its regularisation
          chosen on validation.
  cnn     seed 001's small CNN, trained through ``tfresnet.train`` (all its flags apply).

Each writes ``saved_models/<name>/summary.json`` with the fields a training run writes, so
``python -m tfresnet.compare`` can put them side by side.

Example:
    python -m tfresnet.baselines knn --dataset cifar10
    python -m tfresnet.baselines knn --dataset cifar10 --features saved_models/my-run
    python -m tfresnet.baselines cnn --dataset cifar10 --epochs 10
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from tfresnet.checkpoint import atomic_write_text
from tfresnet.errors import ArgumentParser, UserError, command_parser, require, run_cli
from tfresnet.inference import TOP_K, has_top_k, topk_accuracy

K_VALUES = (1, 3, 5, 7, 10, 15, 20, 30)
C_VALUES = (0.001, 0.01, 0.1, 1.0)


def pixel_features(images):
    """Raw pixels as float vectors in [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def network_features(run, arrays, batch_size=256):
    """Penultimate features of a trained run's best model for each array of images."""
    import tensorflow as tf

    from tfresnet.checkpoint import load_model

    model = load_model(run)
    extract = tf.function(lambda x: model.network.features(model.normalise(x),
                                                           training=False))
    return [np.concatenate([extract(a[i:i + batch_size]).numpy()
                            for i in range(0, len(a), batch_size)]) for a in arrays]


def knn_sweep(x_train, y_train, x_val, y_val, k_values=K_VALUES):
    """Validation accuracy for every (metric, k); returns the table and the best pair."""
    neighbors = require("sklearn.neighbors", "baselines")
    table = []
    for metric in ("manhattan", "euclidean"):  # L1, L2
        search = neighbors.KNeighborsClassifier(n_neighbors=max(k_values), metric=metric, n_jobs=-1)
        search.fit(x_train, y_train)
        neighbours = search.kneighbors(x_val, return_distance=False)
        votes = y_train[neighbours]
        for k in k_values:
            if k > len(x_train):
                continue
            predicted = np.array([np.bincount(row[:k]).argmax() for row in votes])
            table.append({"metric": metric, "k": k,
                          "val_accuracy": float(np.mean(predicted == y_val))})
    best = max(table, key=lambda r: (r["val_accuracy"], -r["k"]))
    return table, best


def run_knn(data, features):
    x_train, x_val, x_test = features
    table, best = knn_sweep(x_train, data.y_train, x_val, data.y_val)
    neighbors = require("sklearn.neighbors", "baselines")
    final = neighbors.KNeighborsClassifier(n_neighbors=best["k"], metric=best["metric"],
                                           n_jobs=-1)
    final.fit(x_train, data.y_train)
    probabilities = np.zeros((len(x_test), data.num_classes))
    probabilities[:, final.classes_] = final.predict_proba(x_test)
    return best, table, probabilities


def run_linear(data, features):
    LogisticRegression = require("sklearn.linear_model", "baselines").LogisticRegression
    StandardScaler = require("sklearn.preprocessing", "baselines").StandardScaler

    x_train, x_val, x_test = features
    scaler = StandardScaler().fit(x_train)
    x_train, x_val, x_test = (scaler.transform(x) for x in (x_train, x_val, x_test))
    table, models = [], {}
    for c in C_VALUES:
        model = LogisticRegression(C=c, max_iter=300)
        model.fit(x_train, data.y_train)
        models[c] = model
        table.append({"C": c, "val_accuracy": float(model.score(x_val, data.y_val))})
    best = max(table, key=lambda r: r["val_accuracy"])
    probabilities = np.zeros((len(x_test), data.num_classes))
    probabilities[:, models[best["C"]].classes_] = models[best["C"]].predict_proba(x_test)
    return best, table, probabilities


def classical_baseline(args):
    """kNN or linear: choose on validation, score once on test, write summary.json."""
    from tfresnet.data import in_memory, load_dataset

    start = time.perf_counter()
    data = load_dataset(args.dataset, data_dir=args.data_dir, val_size=args.val_size,
                        seed=args.seed)
    if not len(data.x_val) or data.x_test is None:
        raise UserError("baselines need a validation split and a test set")
    if args.train_subset is not None:
        if args.train_subset <= 0:
            raise UserError(f"--train-subset must be positive. Received: {args.train_subset}")
        data.x_train = data.x_train[:args.train_subset]
        data.y_train = data.y_train[:args.train_subset]
    arrays = tuple(in_memory(x) for x in (data.x_train, data.x_val, data.x_test))
    if args.features:
        features = network_features(args.features, arrays)
    else:
        features = [pixel_features(a) for a in arrays]
    method = run_knn if args.method == "knn" else run_linear
    best, table, probabilities = method(data, features)
    source = f"features of {args.features}" if args.features else "raw pixels"
    run_dir = Path(args.output_dir) / (args.name or f"{args.method}-{Path(data.name).name}")
    summary = {
        "run": str(run_dir), "model": f"{args.method} ({source})", "dataset": data.name,
        "config": {"method": args.method, "features": args.features, **best},
        "epochs": 0, "best_epoch": None, "best_val_accuracy": best["val_accuracy"],
        "validation_sweep": table, "train_images": len(data.x_train),
        "test_accuracy": topk_accuracy(probabilities, data.y_test, 1),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    if has_top_k(data.num_classes):
        summary["test_top5"] = topk_accuracy(probabilities, data.y_test, TOP_K)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"{summary['model']} on {data.name}: chose {best} on validation; "
          f"test top-1 {100 * summary['test_accuracy']:.2f}%")
    return summary


def build_parser():
    parser = command_parser("tfresnet.baselines", __doc__)
    parser.add_argument("method", choices=["knn", "linear", "cnn"])
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    method = build_parser().parse_args(argv[:1]).method
    if method == "cnn":
        from tfresnet.train import main as train_main

        return train_main(["--model", "small_cnn", *argv[1:]])
    parser = ArgumentParser(prog=f"python -m tfresnet.baselines {method}")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data-dir")
    parser.add_argument("--val-size", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--features", metavar="RUN", help="use a trained run's features")
    parser.add_argument("--train-subset", type=int, help="use only the first N training images")
    parser.add_argument("--output-dir", default="saved_models")
    parser.add_argument("--name")
    args = parser.parse_args(argv[1:])
    args.method = method
    classical_baseline(args)
    return 0


def cli():
    sys.exit(run_cli("tfresnet.baselines", main))


if __name__ == "__main__":
    cli()
