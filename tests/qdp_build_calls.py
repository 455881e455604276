"""Register our Quickly Deployable Plugin with TensorRT's real ``tensorrt.plugin`` and make the calls
TensorRT's builder makes into an AOT plugin, as TensorRT's ONNX parser hands them the node's fields.

Run by test_qdp.py in a process whose ``tensorrt`` package is the real one from a TensorRT bindings
wheel with only its compiled module replaced (tests/tensorrt_stub.py):

    python qdp_build_calls.py C H W KERNEL_SIZE PAD_MODE DTYPE BATCH [BATCH ...]

prints one JSON object: the output shape and, per batch size, the launch shape and the kernel's extra
arguments, evaluated from the symbolic expressions the plugin returned; plus the kernel name and
whether the PTX defines it. Exits with the error sentence when registration is refused.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import numpy as np
import tensorrt as trt

from eca_deploy.errors import EcaDeployError
from eca_deploy.schema import eca_schema
from eca_deploy.tensorrt.qdp import register_aot_plugin


def onnx_fields(kernel_size: int, pad_mode: str) -> list:
    """The node's attributes as TensorRT's ONNX parser passes them: INT as int32, STRING as chars
    whose length counts the terminating NUL."""
    return [trt.PluginField("kernel_size", np.array([kernel_size], dtype=np.int32), trt.PluginFieldType.INT32),
            trt.PluginField("pad_mode", np.frombuffer(pad_mode.encode() + b"\0", dtype=np.int8),
                            trt.PluginFieldType.CHAR)]


def dims_exprs(*dims: int | None) -> list:
    """Dimension expressions; None is the symbolic batch."""
    return [trt.IDimensionExpr(d) for d in dims]


def tensor_desc(dtype: object, *dims: int) -> object:
    desc = trt.DynamicPluginTensorDesc()
    desc.desc.type, desc.desc.dims = dtype, trt.Dims(dims)
    return desc


class SymExprSetter:
    """What TensorRT passes to collect the extra kernel arguments."""

    def __init__(self) -> None:
        self.nbSymExprs, self.values = 0, {}

    def __setitem__(self, index: int, expr: object) -> None:
        self.values[index] = expr


def main(argv: list[str]) -> int:
    channels, height, width, kernel_size = map(int, argv[:4])
    pad_mode, dtype_name, batches = argv[4], argv[5], [int(b) for b in argv[6:]]
    dtype = {"float32": trt.float32, "float16": trt.float16}[dtype_name]
    try:
        register_aot_plugin()
    except EcaDeployError as error:
        sys.exit(str(error))
    schema = eca_schema()
    creator = trt.get_plugin_registry().get_creator(schema.name, schema.version, schema.namespace)
    plugin = creator.create_plugin(schema.name, schema.namespace, trt.PluginFieldCollection(
        onnx_fields(kernel_size, pad_mode)), trt.TensorRTPhase.BUILD, trt.QuickPluginCreationRequest.STRICT_AOT)

    assert plugin.get_output_data_types([dtype, dtype], [4, 3]) == [dtype]
    builder = trt.ExprBuilder()
    inputs = [dims_exprs(None, channels, height, width), dims_exprs(1, 1, kernel_size)]
    (output,) = plugin.get_output_shapes(inputs, [], builder)
    in_out = [tensor_desc(dtype, -1, channels, height, width), tensor_desc(dtype, 1, 1, kernel_size),
              tensor_desc(dtype, -1, channels, height, width)]
    combinations = plugin.get_supported_format_combinations(in_out, 2)
    plugin.configure_plugin(in_out[:2], in_out[2:])
    tactics = plugin.get_valid_tactics()
    plugin.set_tactic(tactics[0] if tactics else 0)
    launch, setter = SimpleNamespace(), SymExprSetter()
    plugin.get_launch_params(inputs, in_out, 2, launch, setter, builder)
    kernel_name, ptx = plugin.get_kernel([d.desc for d in in_out[:2]], [in_out[2].desc])

    report = {
        "output_shape": [[d.evaluate(n) for d in output] for n in batches],
        "formats": sorted({(c.type.name, c.format.name) for c in combinations}),
        "launches": [{"grid": [launch.grid_x.expr.evaluate(n), launch.grid_y.expr.evaluate(n),
                               launch.grid_z.expr.evaluate(n)],
                      "block": [launch.block_x.expr.evaluate(n), launch.block_y.expr.evaluate(n),
                                launch.block_z.expr.evaluate(n)],
                      "shared_mem": launch.shared_mem.expr.evaluate(n),
                      "extra_args": [setter.values[i].expr.evaluate(n) for i in range(setter.nbSymExprs)]}
                     for n in batches],
        "kernel_name": kernel_name.decode() if isinstance(kernel_name, bytes) else kernel_name,
        "ptx_defines_kernel": f".entry {kernel_name if isinstance(kernel_name, str) else kernel_name.decode()}"
                              in (ptx.decode() if isinstance(ptx, bytes) else ptx),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
