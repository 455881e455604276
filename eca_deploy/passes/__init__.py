"""Graph passes on exported ONNX models: fuse every ECA block into one EcaAttention plugin node.

Finds global-average-pool -> 1D conv across channels -> sigmoid -> multiply chains in the shapes
PyTorch's exporters and simplifiers produce, replaces each with an EcaAttention node (TensorRT maps
it to libeca_plugin.so; without the plugin, TensorRT and ONNX Runtime run the model-local function
carried in the same file) and reports near-misses with their reason.
"""

from eca_deploy.passes.eca_fusion import fuse_eca
from eca_deploy.passes.fused_node import count_fused_nodes, is_fused_eca_node, make_eca_function
from eca_deploy.passes.report import FusedBlock, FusionReport, NearMiss

__all__ = [
    "FusedBlock", "FusionReport", "NearMiss", "count_fused_nodes", "fuse_eca", "is_fused_eca_node", "make_eca_function",
]
