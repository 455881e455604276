"""The fused ECA node as a TensorRT Quickly Deployable Plugin whose kernel is baked into the engine.

``register_aot_plugin()`` registers ``eca_deploy::EcaAttention`` with ``tensorrt.plugin``
(TensorRT >= 10.7) with an ahead-of-time implementation: the single-launch kernel of
``plugins/eca/ecaKernels.cuh``, compiled to PTX by NVRTC from the same source the plugin library
is built from. An engine built this way runs in trtexec, Triton or a C++ service with no plugin
library and no Python. ``mark_for_aot(model)`` adds the ``aot`` attribute with which TensorRT's
ONNX parser picks the AOT implementation for a node.
"""

from __future__ import annotations

import functools
from types import ModuleType

import onnx
from onnx import helper

from eca_deploy.errors import EcaDeployError
from eca_deploy.nvrtc import compile_ptx, single_launch_params
from eca_deploy.passes.fused_node import is_fused_eca_node
from eca_deploy.schema import eca_schema

AOT_ATTRIBUTE = "aot"  # bool node attribute read by TensorRT's ONNX parser
DEFAULT_PTX_ARCH = "compute_75"  # the oldest GPU we support; the driver JIT-compiles PTX for newer ones
SUPPORTED_TYPES = "FP32|FP16"


def plugin_id() -> str:
    """``namespace::name`` under which the plugin is registered, as in the schema."""
    schema = eca_schema()
    return f"{schema.namespace}::{schema.name}"


def _tensorrt_plugin() -> tuple[ModuleType, ModuleType]:
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError as error:
        raise EcaDeployError("the ahead-of-time plugin needs TensorRT >= 10.7 with its `tensorrt.plugin` module "
                             f"(pip install 'tensorrt>=10.7'): {error}") from error
    return trt, trtp


@functools.cache
def register_aot_plugin(ptx_arch: str = DEFAULT_PTX_ARCH) -> str:
    """Register the shape function, formats and AOT implementation once; returns the plugin id.

    ``ptx_arch`` is the virtual architecture the PTX targets; newer GPUs JIT-compile it.
    """
    trt, trtp = _tensorrt_plugin()
    schema = eca_schema()
    ptx = compile_ptx(ptx_arch).encode()

    @trtp.register(plugin_id())
    def eca_shape(x: trtp.TensorDesc, weight: trtp.TensorDesc, kernel_size: int, pad_mode: str) -> trtp.TensorDesc:
        return x.like()

    @trtp.autotune(plugin_id())
    def eca_formats(x: trtp.TensorDesc, weight: trtp.TensorDesc, outputs: tuple) -> list:
        return [trtp.AutoTuneCombination(f"{SUPPORTED_TYPES}, {SUPPORTED_TYPES}, {SUPPORTED_TYPES}", "LINEAR")]

    @trtp.aot_impl(plugin_id())
    def eca_kernel(x: trtp.TensorDesc, weight: trtp.TensorDesc, kernel_size: int, pad_mode: str,
                   outputs: tuple, tactic: int) -> tuple:
        batch, *rest = x.shape_expr
        if not all(dim.is_constant() for dim in rest):
            raise ValueError(f"{schema.name} AOT needs static C, H and W; got {x.shape_expr}")
        channels, height, width = (dim.constant_value() for dim in rest)
        dtype = "float16" if x.dtype == trt.float16 else "float32"
        params = single_launch_params(1, channels, height, width, kernel_size, dtype, pad_mode)
        launch = trtp.KernelLaunchParams()
        launch.grid_x = batch * params.channel_tiles
        launch.block_x = params.block[0]
        launch.shared_mem = params.shared_mem_bytes
        _, *constants = params.extra_args  # (N, C, H*W, k, pad code, channels per block)
        extra_args = trtp.SymIntExprs.from_tuple([trtp.SymInt32(batch), *(trtp.SymInt32(v) for v in constants)])
        return params.kernel_name.encode(), ptx, launch, extra_args

    return plugin_id()


def mark_for_aot(model: onnx.ModelProto) -> int:
    """Set ``aot=1`` on every EcaAttention node (in place) and declare it in the fallback function;
    returns how many nodes were marked."""
    schema = eca_schema()
    marked = 0
    for node in model.graph.node:
        if is_fused_eca_node(node) and not any(a.name == AOT_ATTRIBUTE for a in node.attribute):
            node.attribute.append(helper.make_attribute(AOT_ATTRIBUTE, 1))
            marked += 1
    for function in model.functions:
        if (function.domain, function.name) == (schema.domain, schema.name) and AOT_ATTRIBUTE not in function.attribute:
            function.attribute.append(AOT_ATTRIBUTE)
    return marked
