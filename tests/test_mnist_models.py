"""The bundled MNIST models (XOResNet-18, width 0.25; docs/mnist.md): what they claim holds.

The QAT model's recorded held-out accuracy (its in-training evaluation through the exact integer
forward, on the first 200 test images) must be what the integer reference computes on those
images with the scales it carries, and its float parent must be the bundled float model, found by
its recorded SHA-256. The full 1000-image figures of docs/mnist.md take minutes and are measured by
``xoresnet-eval``, not here.
"""

from __future__ import annotations

import pytest

from conftest import REPO

FLOAT_MODEL = REPO / "models" / "xoresnet18-mnist.pt"
QAT_MODEL = REPO / "models" / "xoresnet18-mnist-qat.pt"


def test_bundled_mnist_qat_model_scores_its_recorded_accuracy_on_the_integer_reference():
    from deploy.pipeline import calibrate_checkpoint
    from hw_targets.stats import collect_statistics
    from xoresnet.checkpoint import load_checkpoint, load_model
    from xoresnet.files import file_sha256
    from xoresnet.data import load_dataset

    model, ckpt = load_model(QAT_MODEL)
    assert ckpt.quant is not None and ckpt.meta["dataset"] == "mnist"
    assert (model.config.arch, model.config.width_factor, model.config.input_size) == ("xoresnet18", 0.25, 28)
    parent = ckpt.meta["float_parent"]
    assert parent["path"] == "models/xoresnet18-mnist.pt" and parent["sha256"] == file_sha256(FLOAT_MODEL)
    assert parent["test_accuracy"] == load_checkpoint(FLOAT_MODEL).meta["test_accuracy"] == pytest.approx(0.97)

    last = ckpt.meta["history"][-1]
    assert last["integer"] and last["test_samples"] == 200
    test = load_dataset("mnist", "test", limit=200)
    calibration = calibrate_checkpoint(model, ckpt, test.pixels[:0])  # the trained scales: no images needed
    stats, _ = collect_statistics(calibration.graph, test.pixels, test.labels)
    assert stats["samples"] == 200
    assert stats["accuracy"]["integer"] == pytest.approx(last["test_accuracy"], abs=1e-12) == pytest.approx(0.975)
