"""Several ONNX models share one external weights file (backends/shared_weights.py)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from qgraph.backends.shared_weights import share_weights


def _model(path, w, b):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y0"]), helper.make_node("Add", ["y0", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_a_tensor_both_models_hold_is_written_once(tmp_path):
    rng = np.random.default_rng(0)
    w, w2 = rng.standard_normal((64, 64), dtype=np.float32), rng.standard_normal((64, 64), dtype=np.float32)
    b = rng.standard_normal(64, dtype=np.float32)  # 256 bytes: stays inline
    paths = [tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "c.onnx"]
    _model(paths[0], w, b), _model(paths[1], w, b), _model(paths[2], w2, b)
    x = rng.standard_normal((2, 64), dtype=np.float32)
    want = [ort.InferenceSession(str(p)).run(None, {"x": x})[0] for p in paths]
    sizes = share_weights([str(p) for p in paths])
    assert sizes["tensors"] == 2 and sizes["shared"] == w.nbytes
    assert sizes["after"] < sizes["before"] - w.nbytes // 2
    assert (tmp_path / "weights.bin").stat().st_size < 3 * w.nbytes  # w and w2 once each, plus alignment
    for p, ref, weight in zip(paths, want, (w, w, w2)):
        loaded = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(p)).graph.initializer}  # reads the external data
        np.testing.assert_array_equal(loaded["w"], weight)
        np.testing.assert_array_equal(loaded["b"], b)
        np.testing.assert_array_equal(ort.InferenceSession(str(p)).run(None, {"x": x})[0], ref)


def test_models_in_two_folders_are_refused(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError, match="one folder"):
        share_weights([str(tmp_path / "a.onnx"), str(tmp_path / "x" / "b.onnx")])
