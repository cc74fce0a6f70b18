"""The few documented keys qgraph writes into ``node.meta`` / ``GraphModule.meta``.

* ``CAPTURE_KEY`` (GraphModule.meta): the :class:`qgraph.graph.CaptureInfo` of the capture.
* ``ANNOTATION_KEY`` (node.meta): the ``Annotation`` the annotate pass wrote (what the recipe
  decided for this op).
* ``MODULE_PATH_KEY`` (node.meta): the user's module path of a node qgraph created (functional
  convs from canonicalize, quantizer calls).
* ``FLOAT_BIASES_KEY`` (GraphModule.meta): True on a graph whose integer layers' biases must stay
  float in ONNX Runtime (a fixed-bits copy of a bit-switch model, whose biases are not on any
  int32 grid): the ONNX export adds every such bias after its op (``backends/onnx_fold.py`` rule 10).
* ``LAYOUT_KEY`` (node.meta): the layout of a node whose value is a sparse tensor (ShapeProp's own
  metadata has none); read by :func:`qgraph.ops.is_sparse`.
"""

CAPTURE_KEY = "qgraph.capture"
ANNOTATION_KEY = "qgraph.annotation"
MODULE_PATH_KEY = "qgraph.module_path"
FLOAT_BIASES_KEY = "qgraph.float_biases"
LAYOUT_KEY = "qgraph.layout"
