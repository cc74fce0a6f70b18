"""Dims a model declares dynamic (``qgraph_dynamic_dims``) stay dynamic in the graph and the ONNX file."""

import numpy as np
import onnx
import pytest
import torch
from qgraph.backends import ort as ort_backend
from torch import nn

import qgraph
from qgraph.errors import InputError


class _Memory(nn.Module):
    """Attends over a memory of any length: declares its dim 1 dynamic."""

    qgraph_dynamic_dims = {"memory": {1: "slots"}}

    def __init__(self):
        super().__init__()
        self.q, self.out = nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x, memory):
        w = torch.softmax(self.q(x)[:, None, :] @ memory.transpose(1, 2), -1)
        return self.out((w @ memory)[:, 0])


def test_declared_dynamic_dims_reach_the_onnx_file(tmp_path):
    torch.manual_seed(0)
    calib = [(torch.randn(4, 8), torch.randn(4, 5 + i, 8)) for i in range(3)]
    qm = qgraph.quantize(_Memory(), calib[0], "w8a8", calib_data=calib)
    qm.export(str(tmp_path / "m"), formats=("onnx",))
    model = onnx.load(str(tmp_path / "m.onnx"))
    memory = next(i for i in model.graph.input if i.name == "memory")
    assert [d.dim_param or d.dim_value for d in memory.type.tensor_type.shape.dim] == ["batch", "slots", 8]
    x, mem = torch.randn(2, 8), torch.randn(2, 11, 8)
    with torch.no_grad():
        want = qm(x, mem).numpy()
    got = ort_backend.session(str(tmp_path / "m.onnx"), exact_int8=True).run(None, {"x": x.numpy(), "memory": mem.numpy()})[0]
    assert np.abs(got - want).max() < 1e-4


def test_declared_dims_must_be_a_mapping():
    class Bad(_Memory):
        qgraph_dynamic_dims = ["memory"]

    with pytest.raises(InputError, match="qgraph_dynamic_dims"):
        qgraph.quantize(Bad(), (torch.randn(2, 8), torch.randn(2, 3, 8)))
