"""Small reusable models and data for the demo, the CLI and the tests.

Everything here runs offline: the data is scikit-learn's bundled ``load_digits`` (1,797 images of
8x8 pixels, 10 classes), and the model trains in a few seconds on a CPU.

Factory convention (used by ``qgraph quantize MODULE:FACTORY``): a factory takes no arguments and
returns ``(model, example_inputs)`` or ``(model, example_inputs, calib_batches)``, where
``example_inputs`` is a tensor, a tuple of positional tensors or a mapping of ``forward``'s arguments
by name (``examples/digits_bert.py``) and ``calib_batches`` is an iterable of batches in the same form.
"""

from __future__ import annotations

import functools

import torch
from torch import nn


def load_digits_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn digits as ``(x_train, y_train, x_test, y_test)``.

    Images are float32 ``[N, 1, 8, 8]`` in ``[0, 1]``; labels are int64. The split is a fixed,
    stratified 70/30 split (1,257 train / 540 test for ``seed=0``).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[:, None, :, :]
    y = digits.target.astype("int64")
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    return torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te)


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class DigitsCNN(nn.Module):
    """A ~24k-parameter CNN for 1x8x8 digits: conv blocks, a residual add, a max-pool, two linears."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(1, 16)
        self.conv1 = _conv_bn_relu(16, 16)
        self.conv2 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)  # 8x8 -> 4x4
        self.conv3 = _conv_bn_relu(16, 32)
        self.fc1 = nn.Linear(32 * 4 * 4, 32)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.relu(x + self.conv2(self.conv1(x)))  # residual block
        x = self.conv3(self.pool(x))
        x = torch.flatten(x, 1)
        return self.fc2(self.act(self.fc1(x)))


def train_digits_cnn(epochs: int = 30, seed: int = 0) -> DigitsCNN:
    """Train :class:`DigitsCNN` on the digits training split; returns the model in eval mode.

    Deterministic for a given ``seed`` (Adam, lr 3e-3, cosine schedule, batch 64). Trains on one
    thread: the batches are tiny, and a second thread makes it many times slower whenever the two
    cores are busy. About 99% test accuracy (99.3% for seed 0) in about 3.5 s on one core.
    """
    x_tr, y_tr, _, _ = load_digits_data(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(x_tr, y_tr, epochs, seed)
    finally:
        torch.set_num_threads(threads)


def _train(x_tr: torch.Tensor, y_tr: torch.Tensor, epochs: int, seed: int) -> DigitsCNN:
    torch.manual_seed(seed)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(x_tr), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            loss_fn(model(x_tr[idx]), y_tr[idx]).backward()
            opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy in ``[0, 1]`` of a module or any callable mapping a batch to logits."""
    if isinstance(model, nn.Module):
        model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size])
        correct += int((torch.as_tensor(logits).argmax(-1) == y[i:i + batch_size]).sum())
    return correct / max(len(x), 1)


def calib_batches(x: torch.Tensor, n: int = 8, batch_size: int = 32) -> list[torch.Tensor]:
    """The first ``n`` batches of ``batch_size`` rows of ``x``, for calibration."""
    return [x[i * batch_size:(i + 1) * batch_size] for i in range(n) if i * batch_size < len(x)]


@functools.lru_cache(maxsize=4)
def _trained(epochs: int, seed: int) -> DigitsCNN:
    return train_digits_cnn(epochs=epochs, seed=seed)


def digits_cnn(epochs: int = 30, seed: int = 0):
    """CLI factory: ``(trained DigitsCNN, (x_test[:32],), 8 training batches of 32)``.

    The trained model is cached per process; each call returns an independent copy.
    """
    import copy

    x_tr, _, x_te, _ = load_digits_data(seed)
    model = copy.deepcopy(_trained(epochs, seed))
    return model, (x_te[:32],), calib_batches(x_tr, 8, 32)


def digits_cnn_calib(seed: int = 0) -> list[torch.Tensor]:
    """The calibration batches :func:`digits_cnn` returns: 8 training batches of 32."""
    x_tr, _, _, _ = load_digits_data(seed)
    return calib_batches(x_tr, 8, 32)
