import json
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

from tfresnet.cli.evaluate import main as evaluate_main
from tfresnet.cli.predict import main as predict_main
from tfresnet.data import load_dataset
from tfresnet.errors import UserError
from tfresnet.evaluation.gradcam import explain
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
    assert [r["file"] for r in results] == [f"{i}.png" for i in range(4)]
    expected = keras.saving.load_model(path).predict(data.x_test[:4], verbose=0).argmax(1)
    assert [r["top"][0]["index"] for r in results] == expected.tolist()
    assert all(len(r["top"]) == 3 for r in results)
    assert results[0]["top"][0]["class"] == data.class_names[expected[0]]


def write_class_folders(root, data, per_class, classes, nested=True):
    """``per_class`` test digits of each of ``classes`` as PNGs in ``root/<class>/``, every
    other one a folder deeper; returns their paths relative to ``root`` and their images."""
    files = {}
    for name in classes:
        for j, index in enumerate(np.flatnonzero(data.y_test == int(name))[:per_class]):
            relative = Path(name, "2024" if nested and j % 2 else "", f"{j}.png")
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / relative), data.x_test[index][..., ::-1])
            files[relative] = data.x_test[index]
    return files


def test_predict_reads_a_folder_of_class_folders_and_names_files_relative_to_it(
        digits_model, tmp_path, capsys):
    path, data = digits_model
    files = write_class_folders(tmp_path / "held", data, 3, ["1", "7"])
    assert predict_main([str(path), str(tmp_path / "held"), "--json",
                         str(tmp_path / "p.json")]) == 0
    printed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    rows = json.loads((tmp_path / "p.json").read_text())
    names = sorted(str(name) for name in files)
    assert [row["file"] for row in rows] == printed == names == [
        "1/0.png", "1/2.png", "1/2024/1.png", "7/0.png", "7/2.png", "7/2024/1.png"]
    expected = keras.saving.load_model(path).predict(
        np.stack([files[Path(name)] for name in names]), verbose=0).argmax(1)
    assert [row["top"][0]["index"] for row in rows] == expected.tolist()
    # Grad-CAM pictures keep the sub-folders, so equal names do not overwrite each other.
    written = explain(path, tmp_path / "held", tmp_path / "cams")
    assert [str(p.relative_to(tmp_path / "cams")) for p in written] == [
        name.replace(".png", "_cam.png") for name in names]


def test_evaluate_scores_every_image_of_a_labelled_folder_the_run_never_saw(digits_model,
                                                                           tmp_path, capsys):
    path, data = digits_model
    held = tmp_path / "held"
    files = write_class_folders(held, data, 4, ["3", "5", "8"])
    assert evaluate_main([str(path), "--dataset", str(held), "--out-dir",
                          str(tmp_path / "out")]) == 0
    assert f"every image of {held} (12 images): top-1" in capsys.readouterr().out
    result = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert (result["split"], result["images"]) == ("all", 12)
    predicted = keras.saving.load_model(path).predict(np.stack(list(files.values())),
                                                      verbose=0).argmax(1)
    labels = [int(name.parts[0]) for name in files]
    assert result["top1"] == pytest.approx(np.mean(predicted == labels))
    per_class = (tmp_path / "out" / "per_class_accuracy.csv").read_text().splitlines()
    assert [line.split(",")[1] for line in per_class[1:]] == [
        "4" if str(i) in "358" else "0" for i in range(10)]

    # A folder with a test/ split: all of test/ and nothing else.
    write_class_folders(held / "test", data, 2, ["0", "9"], nested=False)
    assert evaluate(path, str(held), out_dir=tmp_path / "out")["images"] == 4


def test_a_folder_with_classes_the_model_does_not_know_is_refused(digits_model, tmp_path):
    path, data = digits_model
    write_class_folders(tmp_path / "held", data, 1, ["4"])
    (tmp_path / "held" / "cat").mkdir()
    cv2.imwrite(str(tmp_path / "held" / "cat" / "0.png"), data.x_test[0])
    with pytest.raises(UserError) as info:
        evaluate(path, str(tmp_path / "held"), out_dir=tmp_path)
    assert "has classes the model does not know: cat (it knows 0, 1, 2, 3, 4 and 5 more)" in (
        str(info.value)) and "\n" not in str(info.value)
