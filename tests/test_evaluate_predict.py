import json

import cv2
import keras
import numpy as np
import pytest

from tfresnet.data import load_dataset
from tfresnet.evaluation.predictions import predict
from tfresnet.evaluation.scores import evaluate, expected_calibration_error
from tfresnet.models import Classifier, ImagePreprocessor, get_model


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """An untrained but fixed small CNN on the digits, saved as a tfresnet model file."""
    keras.utils.set_random_seed(7)
    data = load_dataset("digits")
    model = Classifier(get_model("small_cnn", 10, width=0.5),
                       ImagePreprocessor.from_mean_std(data.image_size, data.mean, data.std),
                       data.class_names, dataset="digits")
    model(data.x_test[:1])
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return path, data


def test_evaluate_numbers_match_an_independent_computation(digits_model, tmp_path):
    path, data = digits_model
    result = evaluate(path, out_dir=tmp_path)
    logits = keras.saving.load_model(path).predict(data.x_test, verbose=0)
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    predicted = probabilities.argmax(1)
    assert result["top1"] == pytest.approx(np.mean(predicted == data.y_test))
    top5 = np.argsort(-probabilities, 1)[:, :5]
    assert result["top5"] == pytest.approx(np.mean([y in row for y, row in zip(data.y_test, top5)]))
    # The most confused pair is the largest off-diagonal count.
    counts = {}
    for y, p in zip(data.y_test, predicted):
        if y != p:
            counts[(str(y), str(p))] = counts.get((str(y), str(p)), 0) + 1
    if counts:
        assert result["most_confused"][0]["count"] == max(counts.values())
    per_class = (tmp_path / "per_class_accuracy.csv").read_text().splitlines()
    assert len(per_class) == 11 and per_class[0] == "class,images,correct,accuracy"
    assert json.loads((tmp_path / "evaluation.json").read_text())["top1"] == result["top1"]
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 0


def test_expected_calibration_error_by_hand():
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])
    # Bins: 0.9 -> two samples, accuracy 0.5 (|0.5-0.9| = 0.4, weight 0.5);
    # 0.6 -> one, correct (0.4, weight 0.25); 0.7 -> one, correct (0.3, weight 0.25).
    assert expected_calibration_error(probabilities, labels) == pytest.approx(
        0.5 * 0.4 + 0.25 * 0.4 + 0.25 * 0.3)


def test_predict_matches_model_predict_and_reports_non_images(digits_model, tmp_path, capsys):
    path, data = digits_model
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        cv2.imwrite(str(folder / f"{i}.png"), data.x_test[i][..., ::-1])  # RGB -> BGR file
    (folder / "notes.txt").write_text("not an image")  # not an image file: skipped quietly
    (folder / "broken.png").write_text("not an image")
    results = predict(path, folder, top_k=3)
    err = capsys.readouterr().err
    assert "broken.png" in err and "notes.txt" not in err
    assert [r["file"].rsplit("/", 1)[1] for r in results] == [f"{i}.png" for i in range(4)]
    expected = keras.saving.load_model(path).predict(data.x_test[:4], verbose=0).argmax(1)
    assert [r["top"][0]["index"] for r in results] == expected.tolist()
    assert all(len(r["top"]) == 3 for r in results)
    assert results[0]["top"][0]["class"] == data.class_names[expected[0]]
