import json

import pytest

from tfresnet.cli.bench import build_parser, run
from tfresnet.errors import UserError

FIELDS = {"kind", "batch_size", "images", "images_per_second", "min", "max", "device",
          "versions", "threads", "date"}


@pytest.mark.slow
def test_json_has_every_field_and_counts_images(tmp_path):
    out = tmp_path / "bench.jsonl"
    args = build_parser().parse_args(
        ["--train", "--inference", "--pipeline", "--augment", "standard", "--width", "0.0625",
         "--batch-size", "8", "--steps", "3", "--repeats", "2", "--warmup", "1",
         "--json", str(out)])
    records = run(args)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(records) == 4  # pipeline, train, predict, compiled call
    assert [r["kind"] for r in lines] == ["pipeline", "train", "inference", "inference"]
    for record in lines:
        assert FIELDS <= set(record)
        assert record["images"] == 3 * 8  # N steps at batch B
        assert record["min"] <= record["images_per_second"] <= record["max"]
        assert record["versions"]["tensorflow"]
    train = lines[1]
    assert train["compile_seconds"] > 0 and train["peak_memory_mb"] > 0
    assert {r.get("method") for r in lines[2:]} == {"predict", "compiled_call"}


@pytest.mark.slow
def test_train_rows_follow_train_defaults_and_sweep_execution_and_augmentation(tmp_path):
    out = tmp_path / "bench.jsonl"
    run(build_parser().parse_args(
        ["--train", "--width", "0.0625", "--batch-size", "8", "--steps", "4", "--repeats",
         "1", "--steps-per-execution", "0", "2", "--augment-on", "host", "device",
         "--json", str(out)]))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # train's defaults on a CPU: float32, no XLA, so one step per execution
    assert {(r["precision"], r["jit"]) for r in rows} == {("float32", False)}
    assert [(r["steps_per_execution"], r["augment_on"]) for r in rows] == [
        (1, "tf.data"), (1, "step"), (2, "tf.data"), (2, "step")]


def test_a_frozen_backbone_trains_only_its_head():
    """``--transfer frozen`` measures the feature-extractor step: the backbone's weights
    and batch-norm statistics stay as they are, the new head learns."""
    from tfresnet.training.bench import bench_config, build_bench_model

    rows = run(build_parser().parse_args(
        ["--train", "--model", "resnet18_imagenet", "--transfer", "frozen", "finetune",
         "--image-size", "32", "--width", "0.0625", "--batch-size", "8", "--steps", "2",
         "--repeats", "1"]))
    assert [r["transfer"] for r in rows] == ["frozen", "scratch"]  # scratch: all trains
    config = bench_config("resnet18_imagenet", 8, width=0.0625, transfer="frozen")
    _, _, _, model = build_bench_model(config, 10, steps=1)
    assert {v.path.split("/")[-2] for v in model.trainable_variables} == {"fc"}
    assert model.network.frozen_base


def test_peak_memory_is_each_measurements_own():
    import numpy as np

    from tfresnet.training.bench import peak_memory_mb, reset_peak_memory

    block = np.ones(300 * 2**20, np.uint8)  # 300 MB resident
    high = peak_memory_mb()
    del block
    reset_peak_memory()
    assert peak_memory_mb() < high - 200


@pytest.mark.parametrize("args,message", [
    (["--model", "resnet19"], "unknown model 'resnet19'"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--steps", "-1"], "--steps must be positive"),
    (["--train", "--transfer", "frozen"], "--transfer frozen needs a pretrained backbone"),
    (["--train", "--model", "resnet34", "--compare-torch"], "mirrors the CIFAR ResNet-18"),
    (["--train", "--image-size", "64", "--compare-torch"], "mirrors the CIFAR ResNet-18"),
    (["--train", "--precision", "mixed_float16", "--compare-torch"], "float32 or bfloat16"),
])
def test_nonsense_settings_are_refused(args, message):
    with pytest.raises(UserError, match=message):
        run(build_parser().parse_args(args))


def test_bench_train_is_assembled_like_a_training_run(monkeypatch):
    from tfresnet.training import bench

    calls = []

    def spy(name):
        original = getattr(bench, name)

        def recorded(*args, **kwargs):
            result = original(*args, **kwargs)
            calls.append((name, args, result))
            return result
        return recorded

    for name in ("make_plan", "build_settings", "build_model", "make_pipelines"):
        monkeypatch.setattr(bench, name, spy(name))
    [row] = run(build_parser().parse_args(["--train", "--width", "0.0625", "--batch-size", "8",
                                           "--steps", "2", "--repeats", "1", "--warmup", "1"]))
    # The plan, the model and the pipelines come from tfresnet.training's plan, build and
    # pipelines modules, from one TrainConfig and its plan; the row records that plan.
    assert [name for name, *_ in calls] == ["make_plan", "build_settings", "build_model",
                                            "make_pipelines"]
    config, plan = calls[0][1][0], calls[0][2]  # make_plan's config and plan
    assert calls[1][1][0] is config  # build_settings(config): build_model's views
    assert calls[2][1][2] is plan and calls[3][1][3] is plan
    assert calls[3][1][0] == config.augment  # make_pipelines(augment, ...)
    assert row["plan"]["batch_size"] == 8 and row["plan"]["steps_per_epoch"] == 2
    assert (config.model, config.width, config.batch_size, config.augment) == \
        ("resnet18", 0.0625, 8, "standard")


def test_pipeline_on_a_folder_decodes_its_files_as_train_does(tmp_path, monkeypatch):
    import cv2
    import numpy as np

    from tfresnet.data import folders

    for name in ("a", "b"):
        (tmp_path / "set" / name).mkdir(parents=True)
        for i in range(6):
            cv2.imwrite(str(tmp_path / "set" / name / f"{i}.jpg"), np.full((30, 40, 3), 99))
    decoded = []
    original = folders.decode
    monkeypatch.setattr(folders, "decode", lambda path: decoded.append(path) or original(path))
    record, = run(build_parser().parse_args(
        ["--pipeline", "--dataset", str(tmp_path / "set"), "--image-size", "24", "--augment",
         "standard", "--batch-size", "4", "--steps", "2", "--repeats", "1", "--warmup", "1"]))
    assert record["source"] == f"{tmp_path / 'set'} (photo)" and record["image_size"] == 24
    assert len(decoded) >= 3 * 4  # warm-up and timed batches, every image decoded


@pytest.mark.slow
def test_compare_torch_follows_each_row_with_the_twins_and_its_ratio(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "bench.jsonl"
    run(build_parser().parse_args(
        ["--train", "--inference", "--width", "0.0625", "--batch-size", "8", "--steps", "2",
         "--repeats", "1", "--compare-torch", "eager", "--json", str(out)]))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["kind"], r.get("source", r.get("method"))) for r in rows] == [
        ("train", None), ("train", "torch-eager"), ("inference", "predict"),
        ("inference", "compiled_call"), ("inference", "torch-eager")]
    for twin in (rows[1], rows[4]):
        assert twin["width"] == 0.0625 and twin["batch_size"] == 8 and twin["min"] > 0
    shown = capsys.readouterr().out
    ratio = rows[0]["images_per_second"] / rows[1]["images_per_second"]
    assert f"tfresnet / torch-eager: {ratio:.2f}x" in shown
