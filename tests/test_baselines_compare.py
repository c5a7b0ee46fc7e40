import json

import numpy as np
import pytest

from conftest import TINY
from tfresnet.cli.baselines import main as baselines_main
from tfresnet.cli.compare import main as compare_main
from tfresnet.cli.train import main as train_main
from tfresnet.evaluation.baselines import knn_sweep


def test_knn_is_exact_on_separable_data_and_k_comes_from_validation():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 10.0], [0.0, 10.0]])
    y_train = np.repeat(np.arange(3), 200)
    x_train = centres[y_train] + rng.normal(0, 0.5, (600, 2))
    y_val = np.arange(3).repeat(5)
    x_val = centres[y_val] + rng.normal(0, 0.5, (15, 2))
    table, best = knn_sweep(x_train, y_train, x_val, y_val, k_values=(1, 3, 5))
    assert all(r["val_accuracy"] == 1.0 for r in table)
    assert best["k"] == 1  # ties go to the smallest k

    # Label noise next to each validation point: k=1 copies the noise, k=5 votes it away.
    noisy_x = np.concatenate([x_train, x_val + 1e-4])
    noisy_y = np.concatenate([y_train, (y_val + 1) % 3])
    table, best = knn_sweep(noisy_x, noisy_y, x_val, y_val, k_values=(1, 5))
    by_k = {(r["metric"], r["k"]): r["val_accuracy"] for r in table}
    assert by_k[("euclidean", 1)] == 0.0 and by_k[("euclidean", 5)] == 1.0
    assert best["k"] == 5


def test_knn_cli_on_digits_writes_a_comparable_summary(tmp_path):
    assert baselines_main(["knn", "--dataset", "digits", "--output-dir", str(tmp_path),
                           "--name", "knn"]) == 0
    summary = json.loads((tmp_path / "knn" / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.9  # kNN is strong on the clean digits
    assert {"best_val_accuracy", "test_accuracy", "test_top5", "wall_seconds"} <= set(summary)
    assert len(summary["validation_sweep"]) == 2 * 8


@pytest.mark.slow
def test_compare_runs_and_baselines(tmp_path):
    assert train_main([*TINY, "--model", "small_cnn", "--epochs", "2", "--output-dir",
                       str(tmp_path), "--name", "a"]) == 0
    assert baselines_main(["linear", "--dataset", "digits", "--output-dir", str(tmp_path),
                           "--name", "lin"]) == 0
    out = tmp_path / "cmp"
    assert compare_main([str(tmp_path / "a"), str(tmp_path / "lin"), "--out-dir", str(out)]) == 0
    table = (out / "comparison.md").read_text().splitlines()
    assert len(table) == 4 and table[2].startswith("| a | small_cnn | digits")
    assert "linear (raw pixels)" in table[3]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    cells = dict(zip(table[0].strip("| ").split(" | "), table[2].strip("| ").split(" | ")))
    assert cells["wall_seconds"] == f"{summary['wall_seconds']:,.1f}"  # seconds, never a %
    assert cells["test_accuracy"] == f"{100 * summary['test_accuracy']:.2f}%"
    assert (out / "comparison.png").stat().st_size > 0
    assert (out / "comparison.csv").read_text().count("\n") == 3


def test_network_features_are_the_saved_models_pooled_features(tmp_path):
    from tfresnet.evaluation.baselines import network_features
    from tfresnet.models import Classifier, ImagePreprocessor, get_model

    model = Classifier(get_model("resnet18", 10, width=0.0625),
                       ImagePreprocessor.from_mean_std((32, 32), [120] * 3, [60] * 3),
                       [str(i) for i in range(10)])
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3)).astype(np.uint8)
    model(images)
    model.save(tmp_path / "best.keras")
    (features,) = network_features(tmp_path, [images], batch_size=4)
    assert features.shape == (5, model.network.num_features)
    expected = model.network.features(model.preprocessor(images), training=False)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)
