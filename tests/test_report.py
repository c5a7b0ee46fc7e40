"""``python -m tfresnet.report``: a self-contained page, checked in a real headless browser."""

import base64
import re
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from conftest import TINY, run_cli
from tfresnet.cli.export import main as export_main
from tfresnet.cli.train import main as train_main

SECTIONS = ["Results", "Learning curves", "Confusion matrix", "Test images by predicted class",
            "Where the model looked (Grad-CAM)", "Exports", "Settings", "Versions"]
# Appended to a copy of the page: after loading, the body records how many images the
# browser decoded. The report itself has no script.
IMAGE_PROBE = ("<script>addEventListener('load', () => { const all = [...document.images]; "
               "document.body.dataset.images = all.length + '/' + all.filter("
               "i => i.complete && i.naturalWidth > 0).length; });</script>")


def browser():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium here (apt-get install chromium): the report's browser check "
                "did not run")


def headless(*args):
    done = subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", *map(str, args)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A CIFAR-100-layout run, exported to TFLite, and its report."""
    from conftest import write_cifar100

    root = tmp_path_factory.mktemp("report")
    write_cifar100(root / "c100")
    run = root / "r"
    assert train_main([*TINY, "--dataset", "cifar100", "--data-dir", str(root / "c100"),
                       "--epochs", "2", "--output-dir", str(root), "--name", "r"]) == 0
    assert export_main([str(run), "--format", "tflite", "--check-images", "50"]) == 0
    done = run_cli("tfresnet.report", run)
    assert done.returncode == 0, done.stderr
    return run / "report.html"


@pytest.mark.slow
def test_the_report_holds_every_section_and_embeds_every_picture(report):
    page = report.read_text()
    for section in SECTIONS:
        assert f"<h2>{section}</h2>" in page, section
    assert "superclass" in page  # CIFAR-100: the coarse accuracy too
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing fetched
    pictures = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(pictures) == 4  # curves, confusion matrix, test images, Grad-CAM
    for encoded in pictures:
        image = cv2.imdecode(np.frombuffer(base64.b64decode(encoded), np.uint8),
                             cv2.IMREAD_COLOR)
        assert image is not None and min(image.shape[:2]) > 50
    assert "model.tflite" in page and "float32" in page  # the export table


def test_the_report_renders_in_a_headless_browser(report, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", IMAGE_PROBE + "</body>"))
    dom = headless("--virtual-time-budget=20000", "--dump-dom", probe.as_uri())
    assert 'data-images="4/4"' in dom  # every picture decoded, none broken
    for section in SECTIONS:
        assert f"<h2>{section}</h2>" in dom.replace("&amp;", "&"), section
    shot = tmp_path / "phone.png"
    headless("--window-size=412,3000", f"--screenshot={shot}", report.as_uri())
    image = cv2.imread(str(shot))
    assert image.shape[:2] == (3000, 412)
    assert (image < 200).any(axis=2).mean() > 0.1  # text and pictures, not a blank page
