"""The classical baselines: kNN and a linear probe on pixels or on a trained run's features."""

import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfresnet.data import in_memory, load_dataset
from tfresnet.errors import UserError, require
from tfresnet.evaluation.inference import TOP_K, has_top_k
from tfresnet.runs.files import make_dir
from tfresnet.runs.probabilities import topk_accuracy
from tfresnet.runs.run_folder import RunFolder, load_model

K_VALUES = (1, 3, 5, 7, 10, 15, 20, 30)


C_VALUES = (0.001, 0.01, 0.1, 1.0)


def pixel_features(images):
    """Raw pixels as float vectors in [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def network_features(run, arrays, batch_size=256):
    """Penultimate features of a trained run's best model for each array of images."""
    model = load_model(run)
    extract = tf.function(model.features)
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


def classical_baseline(method, dataset="cifar10", data_dir=None, val_size=None, seed=0,
                       features=None, train_subset=None, output_dir="saved_models", name=None):
    """kNN or linear: chooses its setting on validation, scores once on test and writes
    ``<output_dir>/<name>/summary.json`` (a run folder `tfresnet.compare` reads).

    Args:
        method: ``knn`` or ``linear``.
        features: a trained run (folder or ``.keras``) whose penultimate features to use
            instead of the raw pixels.
        train_subset: use only the first N training images.
    """
    start = time.perf_counter()
    data = load_dataset(dataset, data_dir=data_dir, val_size=val_size, seed=seed)
    if not len(data.x_val) or data.x_test is None:
        raise UserError("baselines need a validation split and a test set")
    if train_subset is not None:
        if train_subset <= 0:
            raise UserError(f"--train-subset must be positive. Received: {train_subset}")
        data.x_train = data.x_train[:train_subset]
        data.y_train = data.y_train[:train_subset]
    arrays = tuple(in_memory(x) for x in (data.x_train, data.x_val, data.x_test))
    vectors = network_features(features, arrays) if features else [
        pixel_features(a) for a in arrays]
    fit_baseline = run_knn if method == "knn" else run_linear
    best, table, probabilities = fit_baseline(data, vectors)
    source = f"features of {features}" if features else "raw pixels"
    run_dir = RunFolder(Path(output_dir) / (name or f"{method}-{Path(data.name).name}"))
    summary = {
        "run": str(run_dir), "model": f"{method} ({source})", "dataset": data.name,
        "config": {"method": method, "features": features, **best},
        "epochs": 0, "best_epoch": None, "best_val_accuracy": best["val_accuracy"],
        "validation_sweep": table, "train_images": len(data.x_train),
        "test_accuracy": topk_accuracy(probabilities, data.y_test, 1),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    if has_top_k(data.num_classes):
        summary["test_top5"] = topk_accuracy(probabilities, data.y_test, TOP_K)
    make_dir(run_dir.path)
    run_dir.write_summary(summary)
    print(f"{summary['model']} on {data.name}: chose {best} on validation; "
          f"test top-1 {100 * summary['test_accuracy']:.2f}%")
    return summary

