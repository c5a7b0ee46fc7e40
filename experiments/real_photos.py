"""Real photos (issue 32): folders cut from ``../shared/data/pets-180.tar``, and a twin of
keras.io's "Image classification from scratch" recipe trained on the same folders.

    python experiments/real_photos.py split PETS                       # 3000/500/500 a class
    python experiments/real_photos.py split PETS-SMALL --train 123 --val 77 --test 500
    python experiments/real_photos.py twin PETS --image-size 64 --epochs 5 --out RUN

``split`` writes ``OUT/{train,val,test}/{cat,dog}/<n>.jpg`` in the order of the file numbers:
the first ``--train`` photos of each class train, the next ``--val`` validate and the last
``--test`` test, so every split of a small folder shares its test set with the large
one. The photos are copied as they are (180x180 JPEGs).

``twin`` is written from keras.io's published description of its recipe: images resized to
``--image-size``, horizontal flips and rotations up to 0.1 of a turn, rescaled to [0, 1]; an
Xception-style network (a 128-filter stride-2 stem, three residual stages of separable
convolutions with 256, 512 and 728 filters, each ending in a stride-2 max-pool beside a
1x1 stride-2 shortcut, a 1024-filter separable convolution, global average pooling, dropout
0.25, one logit); binary cross-entropy, Adam 1e-3, batch 128. It writes ``OUT/summary.json``
and ``OUT/history.csv`` in tfresnet's format, so ``python -m tfresnet.compare`` draws it
beside tfresnet's runs; its test accuracy is that of its best validation epoch, as
tfresnet's is. ``--no-jit`` turns off XLA, which keras.io's recipe has on (on a 2-core CPU
XLA made its epochs several times slower); ``--bn-momentum`` changes batch norm's momentum
from Keras' default 0.99, as a diagnostic.
"""

import argparse
import csv
import json
import shutil
import sys
import tarfile
import time
from pathlib import Path

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "pets-180.tar"
TOTAL = 4000  # photos per class in the archive


def split(args):
    if args.train + args.val + args.test > TOTAL:
        raise SystemExit(f"--train + --val + --test must be at most {TOTAL}")
    out = Path(args.out)
    counts = {}
    with tarfile.open(args.archive) as tar:
        photos = {}  # class -> its members, by file number (numbers have gaps)
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(".jpg"):
                photos.setdefault(member.name.split("/")[-2], []).append(member)
        for name, members in photos.items():
            members.sort(key=lambda m: int(Path(m.name).stem))
            parts = {"train": members[:args.train],
                     "val": members[args.train:args.train + args.val],
                     "test": members[len(members) - args.test:]}
            for part, chosen in parts.items():
                folder = out / part / name
                folder.mkdir(parents=True, exist_ok=True)
                for member in chosen:
                    with tar.extractfile(member) as source, \
                            open(folder / Path(member.name).name, "wb") as f:
                        shutil.copyfileobj(source, f)
                counts[part] = counts.get(part, 0) + len(chosen)
    print(f"{out}: " + ", ".join(f"{counts.get(p, 0)} {p}" for p in ("train", "val", "test")))


def twin_network(image_size, bn_momentum=0.99):
    """The keras.io network, from its description (one logit: dog against cat); batch norm
    at Keras' default momentum unless ``bn_momentum`` says otherwise."""
    import keras
    from keras import layers

    def norm(x):
        return layers.BatchNormalization(momentum=bn_momentum)(x)

    inputs = keras.Input((image_size, image_size, 3))
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Conv2D(128, 3, strides=2, padding="same")(x)
    x = layers.Activation("relu")(norm(x))
    shortcut = x
    for filters in (256, 512, 728):
        for _ in range(2):
            x = layers.Activation("relu")(x)
            x = norm(layers.SeparableConv2D(filters, 3, padding="same")(x))
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        x = layers.add([x, layers.Conv2D(filters, 1, strides=2, padding="same")(shortcut)])
        shortcut = x
    x = norm(layers.SeparableConv2D(1024, 3, padding="same")(x))
    x = layers.GlobalAveragePooling2D()(layers.Activation("relu")(x))
    outputs = layers.Dense(1)(layers.Dropout(0.25)(x))
    return keras.Model(inputs, outputs, name="keras_io_xception")


def twin(args):
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(args.seed)
    size = (args.image_size, args.image_size)

    def folder(part, shuffle):
        return keras.utils.image_dataset_from_directory(
            Path(args.data) / part, image_size=size, batch_size=args.batch_size,
            shuffle=shuffle, seed=args.seed, label_mode="binary", verbose=False)

    train, val, test = folder("train", True), folder("val", False), folder("test", False)
    augment = keras.Sequential([keras.layers.RandomFlip("horizontal"),
                                keras.layers.RandomRotation(0.1)])
    train = train.map(lambda x, y: (augment(x, training=True), y),
                      num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    val, test = val.prefetch(tf.data.AUTOTUNE), test.prefetch(tf.data.AUTOTUNE)
    model = twin_network(args.image_size, args.bn_momentum)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")],
                  jit_compile=args.jit)

    rows, best = [], {"val_accuracy": -1.0}

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            rows.append({"epoch": epoch + 1, "seconds": time.perf_counter() - self.start,
                         **{k: float(v) for k, v in logs.items()}})
            print(json.dumps(rows[-1]), flush=True)
            if logs["val_accuracy"] > best["val_accuracy"]:
                best.update(val_accuracy=float(logs["val_accuracy"]),
                            weights=self.model.get_weights(), epoch=epoch + 1)

    start = time.perf_counter()
    model.fit(train, validation_data=val, epochs=args.epochs, callbacks=[Record()], verbose=0)
    wall = time.perf_counter() - start
    model.set_weights(best["weights"])
    test_accuracy = float(model.evaluate(test, verbose=0, return_dict=True)["accuracy"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "history.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    images = sum(len(list((Path(args.data) / "train").glob(f"{c}/*"))) for c in ("cat", "dog"))
    summary = {"model": model.name, "dataset": str(args.data), "epochs": args.epochs,
               "config": {"image_size": args.image_size, "batch_size": args.batch_size,
                          "jit": args.jit, "seed": args.seed,
                          "bn_momentum": args.bn_momentum},
               "best_val_accuracy": best["val_accuracy"], "best_epoch": best["epoch"],
               "test_accuracy": test_accuracy, "wall_seconds": round(wall, 1),
               "train_images_per_second": round(
                   images * args.epochs / sum(r["seconds"] for r in rows), 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("split", help="cut train/val/test folders from pets-180.tar")
    p.add_argument("out")
    p.add_argument("--train", type=int, default=3000, help="training photos per class")
    p.add_argument("--val", type=int, default=500, help="validation photos per class")
    p.add_argument("--test", type=int, default=500, help="test photos per class (the last)")
    p.add_argument("--archive", default=str(ARCHIVE))
    p = commands.add_parser("twin", help="train the keras.io twin on a split folder")
    p.add_argument("data")
    p.add_argument("--out", required=True)
    p.add_argument("--image-size", type=int, default=180)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--jit", action=argparse.BooleanOptionalAction, default=True,
                   help="XLA, as keras.io's recipe (Keras' default) compiles")
    p.add_argument("--bn-momentum", type=float, default=0.99,
                   help="batch norm momentum (0.99: Keras' default, the recipe's)")
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    {"split": split, "twin": twin}[args.command](args)


if __name__ == "__main__":
    main()
