"""Photo-sized image folders from the real CIFAR-10 images, and the peak memory of training
on them (issue: image folders stream from disk).

    python experiments/photo_folders.py make OUT --train-per-class 400 --test-per-class 20
    python experiments/photo_folders.py memory F4000 F8000 F16000 -- --image-size 224 ...
    python experiments/photo_folders.py memory F16000 --cap-mb 1500 -- --image-size 224 ...

``make`` turns ``../shared/data/cifar10-jpg.tar.gz`` into ``OUT/train/<class>/*.jpg`` and
``OUT/test/<class>/*.jpg``: each 32 px image upscaled (bicubic) to 375x375 and widened to
500x375 by mirroring its borders, saved as a JPEG (quality 90), so the object fills the
centre of a landscape photo. ``--classes 5-9`` takes a range of CIFAR-10's classes;
``--native`` writes the 32 px images as they are, as PNGs (a CIFAR-like folder).

``memory`` trains ``python -m tfresnet.train --dataset FOLDER <train args>`` on each folder in
a child process and prints a Markdown table of its peak resident memory (the child's own
``ru_maxrss``). With ``--cap-mb`` the child runs in a v1 memory cgroup of that size (root
only), so a run whose decoded images exceed the cap shows it trains anyway.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import cv2
import numpy as np

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]
CGROUP = Path("/sys/fs/cgroup/memory")


def photo(image, height=375, width=500):
    """A ``height`` x ``width`` photo of a small square image: upscaled, borders mirrored."""
    big = cv2.resize(image, (height, height), interpolation=cv2.INTER_CUBIC)
    side = width - height
    return cv2.copyMakeBorder(big, 0, 0, side // 2, side - side // 2, cv2.BORDER_REFLECT_101)


def make(args):
    low, high = (int(v) for v in args.classes.split("-"))
    wanted = {"train": args.train_per_class, "test": args.test_per_class}
    counts = {}
    with tarfile.open(args.archive, "r|gz") as tar:
        for member in tar:
            if not (member.isfile() and member.name.endswith(".jpg")):
                continue
            split, name, _ = member.name.split("/")[-3:]
            if not low <= CLASSES.index(name) <= high:
                continue
            if counts.get((split, name), 0) >= wanted[split]:
                continue
            data = np.frombuffer(tar.extractfile(member).read(), np.uint8)
            folder = Path(args.out) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            image = cv2.imdecode(data, cv2.IMREAD_COLOR)
            if args.native:
                cv2.imwrite(str(folder / f"{Path(member.name).stem}.png"), image)
            else:
                cv2.imwrite(str(folder / Path(member.name).name), photo(image),
                            [cv2.IMWRITE_JPEG_QUALITY, 90])
            counts[(split, name)] = counts.get((split, name), 0) + 1
    total = {s: sum(v for (k, _), v in counts.items() if k == s) for s in wanted}
    kind = "32 px PNGs" if args.native else "photos (500x375)"
    print(f"{args.out}: {total['train']} train, {total['test']} test {kind}")


def peak(args):
    """Runs tfresnet.train in this process; prints its peak resident memory as JSON."""
    from tfresnet.cli.train import main

    start = time.perf_counter()
    status = main(args.train_args)
    print("PEAK " + json.dumps({
        "status": status, "wall_seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def _in_cgroup(cap_mb):
    """A shell prefix that moves the child into a fresh v1 memory cgroup of ``cap_mb``."""
    group = CGROUP / f"tfresnet-{os.getpid()}"
    group.mkdir(exist_ok=True)
    for limit in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"):  # RAM, +swap
        if (group / limit).exists():
            (group / limit).write_text(str(cap_mb * 2**20))
    return group, ["sh", "-c", f'echo $$ > {group}/tasks && exec "$@"', "sh"]


def memory(args):
    rows = []
    for folder in args.folders:
        train = sorted(Path(folder).glob("train/*/*"))
        prefix, group = [], None
        if args.cap_mb:
            group, prefix = _in_cgroup(args.cap_mb)
        command = [*prefix, sys.executable, __file__, "peak", "--", "--dataset", folder,
                   *args.train_args]
        done = subprocess.run(command, capture_output=True, text=True)
        line = next((x for x in done.stdout.splitlines() if x.startswith("PEAK ")), None)
        if done.returncode or line is None:
            print(done.stdout[-2000:], done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"training on {folder} failed (exit {done.returncode})")
        result = json.loads(line[5:])
        if group is not None:
            result["cgroup_peak_mb"] = round(
                int((group / "memory.max_usage_in_bytes").read_text()) / 2**20, 1)
            result["failcnt"] = int((group / "memory.failcnt").read_text())
            group.rmdir()
        size = args.decoded_side
        rows.append({"folder": folder, "train_images": len(train),
                     "decoded_mb": round(len(train) * size * size * 3 / 2**20, 1), **result})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n| folder | training images | their pixels at {args.decoded_side} px | peak RSS | "
          "wall |" + (" cgroup cap / peak |" if args.cap_mb else ""))
    print("| --- | ---: | ---: | ---: | ---: |" + (" ---: |" if args.cap_mb else ""))
    for row in rows:
        cap = (f" {args.cap_mb} MB / {row['cgroup_peak_mb']} MB |" if args.cap_mb else "")
        print(f"| {row['folder']} | {row['train_images']:,} | {row['decoded_mb']:,} MB | "
              f"{row['peak_rss_mb']:,} MB | {row['wall_seconds']} s |{cap}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("make")
    p.add_argument("out")
    p.add_argument("--train-per-class", type=int, default=400)
    p.add_argument("--test-per-class", type=int, default=20)
    p.add_argument("--classes", default="0-9", help="range of CIFAR-10 class indices")
    p.add_argument("--native", action="store_true", help="32 px PNGs instead of photos")
    p.add_argument("--archive", default=str(ARCHIVE))
    commands.add_parser("peak")
    p = commands.add_parser("memory")
    p.add_argument("folders", nargs="+")
    p.add_argument("--cap-mb", type=int, help="run each child in a memory cgroup of this size")
    p.add_argument("--decoded-side", type=int, default=224,
                   help="side the table's decoded-pixel column assumes")
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)  # then tfresnet.train's args
    args = parser.parse_args(argv[:split])
    args.train_args = argv[split + 1:]
    {"make": make, "peak": peak, "memory": memory}[args.command](args)


if __name__ == "__main__":
    main()
