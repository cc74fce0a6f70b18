"""Shared fixtures: scikit-learn digits, a trained DigitsCNN, calibration batches, quantized models.

The trained model and the expensive quantized models are session-scoped: they are built once and
every test that uses them gets the same object, so tests must not modify them (``qgraph.quantize``
copies its input model, and tests that train make their own quantized model).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `examples` is not installed; plain `pytest` does not add the repo root
    sys.path.insert(0, str(ROOT))

import qgraph  # noqa: E402
from examples.models import accuracy, calib_batches, load_digits_data, train_digits_cnn  # noqa: E402

# Under pytest-xdist (`-n 2`, scripts/test.sh) each worker gets its share of the cores: two workers
# each running torch's default of one thread per core would oversubscribe them.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))

TRAIN_EPOCHS = 20
EXAMPLE_BATCH = 32


@pytest.fixture(scope="session")
def digits():
    """``(x_train, y_train, x_test, y_test)``: float32 [N, 1, 8, 8] images in [0, 1], int64 labels."""
    return load_digits_data(seed=0)


@pytest.fixture(scope="session")
def trained_cnn(digits):
    """DigitsCNN trained for TRAIN_EPOCHS epochs (seed 0), in eval mode. Do not modify it."""
    model = train_digits_cnn(epochs=TRAIN_EPOCHS, seed=0)
    return model.eval()


@pytest.fixture(scope="session")
def fp32_accuracy(trained_cnn, digits):
    _, _, x_te, y_te = digits
    return accuracy(trained_cnn, x_te, y_te)


@pytest.fixture(scope="session")
def calib(digits):
    """Eight batches of 32 training images (the test set is never used for calibration)."""
    x_tr = digits[0]
    return calib_batches(x_tr, n=8, batch_size=32)


@pytest.fixture(scope="session")
def example_batch(digits):
    return digits[2][:EXAMPLE_BATCH]


@pytest.fixture(scope="session")
def digits_w8a8(trained_cnn, example_batch, calib):
    """The trained CNN quantized W8A8 (post-training)."""
    return qgraph.quantize(trained_cnn, example_batch, recipe="w8a8", calib_data=calib)


@pytest.fixture(scope="session")
def digits_w8a8_export(digits_w8a8, tmp_path_factory):
    """The W8A8 digits model exported (and verified) once: ``(ExportResult, directory)``."""
    out = tmp_path_factory.mktemp("digits_w8a8")
    result = digits_w8a8.export(str(out / "digits_w8a8"))
    return result, out
