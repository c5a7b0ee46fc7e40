"""The PyTorch twin of tfresnet's CIFAR-stem ResNet-18 and its timed steps (needs torch).

``python torch_twin.py KIND MODE WIDTH BATCH STEPS REPEATS CLASSES PRECISION`` prints one
row as JSON: how ``tfresnet.bench --compare-torch`` runs it, in a process of its own, so
that PyTorch's threads never share a measurement with TensorFlow's and a PyTorch crash
(torch.compile aborts on some CPUs) costs only its row.
"""

import json
import statistics
import sys
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
    """CIFAR stem (3x3 conv, no pool), channels ``round(64 * width * 2**stage)`` as in
    tfresnet, initialised as tfresnet initialises (He-normal fan-out convs, Glorot dense)."""

    def __init__(self, classes=100, width=1.0):
        super().__init__()
        stem = max(1, round(64 * width))
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem),
                                  nn.ReLU())
        blocks, cin = [], stem
        for stage in range(4):
            cout = max(1, round(64 * width * 2**stage))
            for index in range(2):
                blocks.append(Block(cin, cout, 2 if stage > 0 and index == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        nn.init.xavier_uniform_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def autocast(bfloat16):
    """PyTorch's CPU mixed precision: convolutions and matrix products in bfloat16, the
    rest (batch norm, losses) in float32, when ``bfloat16``; else nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16)


def train_step(forward, optimizer, x, y, bfloat16=False):
    """One SGD step on a fixed batch, as a function of nothing."""
    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(bfloat16):
            loss = nn.functional.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()
    return step


def inference_step(forward, x, bfloat16=False):
    """One forward pass in inference mode, as a function of nothing."""
    def step():
        with torch.inference_mode(), autocast(bfloat16):
            forward(x)
    return step


def timed(step, images, repeats, steps):
    """Median, min and max images/s over ``repeats`` runs of ``steps`` steps, after one
    untimed step (the warm-up, and torch.compile's compilation)."""
    step()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        rates.append(steps * images / (time.perf_counter() - start))
    return statistics.median(rates), min(rates), max(rates)


def twin_rows(kind, mode, width, batch_size, steps, repeats, num_classes=100, bfloat16=False):
    """The twin's images/s as a bench row: ``kind`` train (SGD with momentum on one fixed
    batch: no input pipeline, augmentation, metrics or L2) or inference, ``mode`` eager or
    compile (torch.compile)."""
    torch.manual_seed(0)
    model = ResNet18(num_classes, width).train(kind == "train")
    forward = torch.compile(model) if mode == "compile" else model
    x = torch.randn(batch_size, 3, 32, 32)
    if kind == "train":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        step = train_step(forward, optimizer, x, torch.randint(0, num_classes, (batch_size,)),
                          bfloat16)
    else:
        step = inference_step(forward, x, bfloat16)
    median, low, high = timed(step, batch_size, repeats, steps)
    return {"kind": kind, "source": f"torch-{mode}", "model": "resnet18", "width": width,
            "batch_size": batch_size, "precision": "bfloat16" if bfloat16 else "float32",
            "images_per_second": round(median, 1), "min": round(low, 1), "max": round(high, 1),
            "threads": torch.get_num_threads(), "torch": torch.__version__}


if __name__ == "__main__":
    kind, mode, width, batch, steps, repeats, classes, precision = sys.argv[1:]
    print(json.dumps(twin_rows(kind, mode, float(width), int(batch), int(steps), int(repeats),
                               int(classes), precision == "bfloat16")))
