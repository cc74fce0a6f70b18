"""The few documented keys qgraph writes into ``node.meta`` / ``GraphModule.meta``.

* ``CAPTURE_KEY`` (GraphModule.meta): the :class:`qgraph.graph.CaptureInfo` of the capture.
* ``ANNOTATION_KEY`` (node.meta): the ``Annotation`` the annotate pass wrote (what the recipe
  decided for this op).
* ``MODULE_PATH_KEY`` (node.meta): the user's module path of a node qgraph created (functional
  convs from canonicalize, quantizer calls).
"""

CAPTURE_KEY = "qgraph.capture"
ANNOTATION_KEY = "qgraph.annotation"
MODULE_PATH_KEY = "qgraph.module_path"
