"""PyTorch reference for `python -m tfresnet.bench`: the same CIFAR-stem ResNet-18 (100
classes), SGD + cross-entropy, timed the same way (median of repetitions, warm-up excluded).

Not a dependency of tfresnet; run it in an environment with torch:
    python experiments/torch_reference.py --batch-size 64 128 --compile
Prints one JSON line per measurement.
"""

import argparse
import json
import statistics
import time

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.short(x))


class ResNet18(nn.Module):
    def __init__(self, classes=100):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU())
        blocks, cin = [], 64
        for i, cout in enumerate((64, 128, 256, 512)):
            for j in range(2):
                blocks.append(Block(cin, cout, 2 if i > 0 and j == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def timed(step, images, repeats, steps):
    step()  # warm-up (and compilation)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        rates.append(steps * images / (time.perf_counter() - start))
    return statistics.median(rates), min(rates), max(rates)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--inference-batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    modes = ["eager", "compile"] if args.compile else ["eager"]
    for mode in modes:
        for batch in args.batch_size:
            model = ResNet18()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            forward = torch.compile(model) if mode == "compile" else model
            x = torch.randn(batch, 3, 32, 32)
            y = torch.randint(0, 100, (batch,))

            def train_step():
                optimizer.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(forward(x), y)
                loss.backward()
                optimizer.step()

            model.train()
            median, low, high = timed(train_step, batch, args.repeats, args.steps)
            print(json.dumps({"kind": "train", "framework": f"torch-{mode}",
                              "batch_size": batch, "images_per_second": round(median, 1),
                              "min": round(low, 1), "max": round(high, 1),
                              "threads": torch.get_num_threads(),
                              "torch": torch.__version__}), flush=True)
        model = ResNet18().eval()
        forward = torch.compile(model) if mode == "compile" else model
        x = torch.randn(args.inference_batch, 3, 32, 32)

        def infer():
            with torch.inference_mode():
                forward(x)

        median, low, high = timed(infer, args.inference_batch, args.repeats, 2)
        print(json.dumps({"kind": "inference", "framework": f"torch-{mode}",
                          "batch_size": args.inference_batch,
                          "images_per_second": round(median, 1), "min": round(low, 1),
                          "max": round(high, 1), "threads": torch.get_num_threads(),
                          "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
