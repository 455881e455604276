"""The fused ECA node as a TensorRT Quickly Deployable Plugin whose kernel is baked into the engine.

``register_aot_plugin()`` registers ``eca_deploy::EcaAttention`` with ``tensorrt.plugin``
(TensorRT >= 10.9, where ``aot_impl`` appeared) with an ahead-of-time implementation: the
single-launch kernel of ``plugins/eca/ecaKernels.cuh``, compiled to PTX by NVRTC from the same
source the plugin library is built from. An engine built this way runs in trtexec, Triton or a C++
service with no plugin library and no Python. ``mark_for_aot(model)`` sets the node attribute
``aot=1``, with which TensorRT's ONNX parser asks the plugin for its AOT implementation
(``QuickPluginCreationRequest.STRICT_AOT``).

``tensorrt.plugin`` validates the decorated functions by their annotation objects, so this module
must not use ``from __future__ import annotations`` and spells the annotations as TensorRT's
samples do (``Tuple[trtp.TensorDesc]``, ``List[trtp.AutoTuneCombination]``, the AOT 4-tuple).
"""

import functools
from types import ModuleType
from typing import List, Tuple, Union

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper

from eca_deploy.errors import EcaDeployError
from eca_deploy.passes.fused_node import is_fallback_function, is_fused_eca_node
from eca_deploy.schema import eca_schema
from eca_deploy.tensorrt.backend import AOT_MIN_VERSION, version_tuple
from eca_deploy.tensorrt.nvrtc import compile_ptx, single_launch_params

AOT_ATTRIBUTE = "aot"  # bool node attribute read by TensorRT's ONNX parser
DEFAULT_PTX_ARCH = "compute_75"  # the oldest GPU we support; the driver JIT-compiles PTX for newer ones
SUPPORTED_TYPES = "FP32|FP16"


def plugin_id() -> str:
    """``namespace::name`` under which the plugin is registered, as in the schema."""
    schema = eca_schema()
    return f"{schema.namespace}::{schema.name}"


def tensorrt_plugin_module() -> Tuple[ModuleType, ModuleType]:
    """``tensorrt`` and ``tensorrt.plugin``, refusing versions without the AOT API."""
    minimum = ".".join(map(str, AOT_MIN_VERSION))
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError as error:
        raise EcaDeployError(f"the ahead-of-time plugin needs TensorRT >= {minimum} with its `tensorrt.plugin` "
                             f"module (pip install 'tensorrt>={minimum}'): {error}") from error
    if version_tuple(trt.__version__) < AOT_MIN_VERSION or not hasattr(trtp, "aot_impl"):
        raise EcaDeployError(f"the ahead-of-time plugin needs TensorRT >= {minimum} (tensorrt.plugin.aot_impl); "
                             f"this is TensorRT {trt.__version__}: build with --plugin libeca_plugin.so instead")
    return trt, trtp


def attribute_text(value: str) -> str:
    """A string plugin attribute as Python code should see it: TensorRT's parser passes ONNX strings as
    kCHAR fields whose length counts the terminating NUL, which ``tensorrt.plugin`` keeps."""
    return value.rstrip("\0")


@functools.cache
def register_aot_plugin(ptx_arch: str = DEFAULT_PTX_ARCH) -> str:
    """Register the shape function, formats and AOT implementation once; returns the plugin id.

    ``ptx_arch`` is the virtual architecture the PTX targets; newer GPUs JIT-compile it.
    """
    trt, trtp = tensorrt_plugin_module()
    schema = eca_schema()
    ptx = compile_ptx(ptx_arch).encode()

    # kernel_size is an int32 array, as TensorRT's ONNX parser passes INT attributes (one element): an `int`
    # annotation would make tensorrt.plugin < 11.4 call int() on the array, which NumPy >= 2.4 refuses.
    @trtp.register(plugin_id())
    def eca_shape(x: trtp.TensorDesc, weight: trtp.TensorDesc, kernel_size: npt.NDArray[np.int32],
                  pad_mode: str) -> trtp.TensorDesc:
        return x.like()

    @trtp.autotune(plugin_id())
    def eca_formats(x: trtp.TensorDesc, weight: trtp.TensorDesc,
                    outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(f"{SUPPORTED_TYPES}, {SUPPORTED_TYPES}, {SUPPORTED_TYPES}", "LINEAR")]

    @trtp.aot_impl(plugin_id())
    def eca_kernel(x: trtp.TensorDesc, weight: trtp.TensorDesc, kernel_size: npt.NDArray[np.int32], pad_mode: str,
                   outputs: Tuple[trtp.TensorDesc], tactic: int
                   ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
        batch, *rest = x.shape_expr
        if not all(dim.is_constant for dim in rest):
            raise ValueError(f"{schema.name} AOT needs static C, H and W; got {x.shape_expr}")
        channels, height, width = (dim.constant_value() for dim in rest)
        dtype = "float16" if x.dtype == trt.float16 else "float32"
        params = single_launch_params(1, channels, height, width, int(kernel_size[0]), dtype, attribute_text(pad_mode))
        launch = trtp.KernelLaunchParams()
        launch.grid_x = params.channel_tiles
        launch.grid_y = batch
        launch.block_x = params.block[0]
        launch.shared_mem = params.shared_mem_bytes
        extra_args = trtp.SymIntExprs.from_tuple([trtp.SymInt32(v) for v in params.extra_args])  # batch-free
        return params.kernel_name, ptx, launch, extra_args

    return plugin_id()


def mark_for_aot(model: onnx.ModelProto) -> int:
    """Set ``aot=1`` on every EcaAttention node (in place) and declare it in the fallback function if the
    model carries one; returns how many nodes were marked."""
    marked = 0
    for node in model.graph.node:
        if is_fused_eca_node(node) and not any(a.name == AOT_ATTRIBUTE for a in node.attribute):
            node.attribute.append(helper.make_attribute(AOT_ATTRIBUTE, 1))
            marked += 1
    for function in model.functions:
        if is_fallback_function(function) and AOT_ATTRIBUTE not in function.attribute:
            function.attribute.append(AOT_ATTRIBUTE)
    return marked
