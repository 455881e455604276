"""Stand-in for ``tensorrt.tensorrt``, the compiled module of TensorRT's Python package (``tensorrt.so``).

TensorRT's bindings wheel holds pure-Python code (``tensorrt/__init__.py`` and the ``tensorrt.plugin``
package, whose registration and validation we test) and one compiled module that needs
``libnvinfer`` from a wheel this machine cannot download. test_qdp.py copies the real package and puts
this file where ``tensorrt/__init__.py`` imports the compiled module (``from .tensorrt import *``);
nothing else is replaced.

It provides what that Python code touches: enumerations with distinct members, plugin fields, the
plugin registry, and, for the build-time calls TensorRT makes into a plugin, symbolic dimension
expressions that can be evaluated for a given batch size (``IDimensionExpr.evaluate``).
"""

from __future__ import annotations

import enum
import operator


class _Enum(enum.Enum):
    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


DataType = _Enum("DataType", "FLOAT HALF INT8 INT32 BOOL UINT8 FP8 BF16 INT64 INT4 FP4 E8M0")
float32, float16, int8, int32, bool, uint8 = (DataType.FLOAT, DataType.HALF, DataType.INT8, DataType.INT32,
                                               DataType.BOOL, DataType.UINT8)
fp8, bfloat16, int64, int4, fp4 = DataType.FP8, DataType.BF16, DataType.INT64, DataType.INT4, DataType.FP4
TensorFormat = _Enum("TensorFormat", "LINEAR CHW2 HWC8 CHW4 CHW16 CHW32 DHWC8 CDHW32 HWC DLA_LINEAR DLA_HWC4 HWC16 DHWC")
PluginFieldType = _Enum("PluginFieldType", "FLOAT16 FLOAT32 FLOAT64 INT8 INT16 INT32 CHAR DIMS UNKNOWN BF16 INT64 FP8 INT4 FP4")
DimensionOperation = _Enum("DimensionOperation", "SUM PROD MAX MIN SUB EQUAL LESS FLOOR_DIV CEIL_DIV")
TensorRTPhase = _Enum("TensorRTPhase", "BUILD RUNTIME")
QuickPluginCreationRequest = _Enum("QuickPluginCreationRequest", "UNKNOWN PREFER_JIT PREFER_AOT STRICT_JIT STRICT_AOT")
PluginArgType = _Enum("PluginArgType", "INT")
PluginArgDataType = _Enum("PluginArgDataType", "INT8 INT16 INT32")
PluginCapabilityType = _Enum("PluginCapabilityType", "CORE BUILD RUNTIME")


class ILogger:
    Severity = _Enum("Severity", "INTERNAL_ERROR ERROR WARNING INFO VERBOSE")

    def __init__(self, *args: object) -> None:
        pass


class Logger(ILogger):
    def log(self, severity: object, message: str) -> None:
        pass


class _Opaque:
    """Classes the package decorates or subclasses; nothing here calls into them."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass


class ICudaEngine(_Opaque): ...
class IExecutionContext(_Opaque): ...
class Runtime(_Opaque): ...
class IHostMemory(_Opaque): ...
class Builder(_Opaque): ...
class INetworkDefinition(_Opaque): ...
class OnnxParser(_Opaque): ...
class IBuilderConfig(_Opaque): ...
class ITensor(_Opaque): ...
class IPluginV3(_Opaque): ...
class IPluginV3QuickCore(_Opaque): ...
class IPluginV3QuickBuild(_Opaque): ...
class IPluginV3QuickAOTBuild(_Opaque): ...
class IPluginV3QuickRuntime(_Opaque): ...
class IPluginCreatorV3Quick(_Opaque): ...
class ISymExpr(_Opaque): ...
class IExprBuilder(_Opaque): ...


class IDimensionExpr:
    """A dimension expression: a constant, the batch size (``symbol``) or an operation on two of them."""

    _OPERATIONS = {DimensionOperation.SUM: operator.add, DimensionOperation.PROD: operator.mul,
                   DimensionOperation.SUB: operator.sub, DimensionOperation.FLOOR_DIV: operator.floordiv,
                   DimensionOperation.CEIL_DIV: lambda a, b: -(-a // b), DimensionOperation.MAX: max,
                   DimensionOperation.MIN: min, DimensionOperation.EQUAL: lambda a, b: int(a == b),
                   DimensionOperation.LESS: lambda a, b: int(a < b)}

    def __init__(self, value: int | None = None, operation: object = None,
                 operands: tuple[IDimensionExpr, IDimensionExpr] = ()) -> None:
        self.value, self.operation, self.operands = value, operation, operands

    def is_constant(self) -> bool:
        return self.operation is None and self.value is not None or (
            self.operation is not None and all(o.is_constant() for o in self.operands))

    def get_constant_value(self) -> int:
        assert self.is_constant()
        return self.evaluate(None)

    def evaluate(self, batch: int | None) -> int:
        """The expression's value when the symbolic dimension is ``batch``."""
        if self.operation is None:
            return batch if self.value is None else self.value
        left, right = (operand.evaluate(batch) for operand in self.operands)
        return self._OPERATIONS[self.operation](left, right)


class ExprBuilder(IExprBuilder):
    def constant(self, value: int) -> IDimensionExpr:
        return IDimensionExpr(int(value))

    def operation(self, op: object, left: IDimensionExpr, right: IDimensionExpr) -> IDimensionExpr:
        return IDimensionExpr(operation=op, operands=(left, right))


class Dims(list):
    MAX_DIMS = 8


class DimsExprs(list):
    def __init__(self, length: int = 0) -> None:
        super().__init__([None] * length)


class PluginTensorDesc:
    def __init__(self) -> None:
        self.dims, self.type, self.format, self.scale = Dims(), DataType.FLOAT, TensorFormat.LINEAR, -1.0


class DynamicPluginTensorDesc:
    def __init__(self) -> None:
        self.desc, self.min, self.max, self.opt = PluginTensorDesc(), Dims(), Dims(), Dims()


class PluginField:
    def __init__(self, name: str = "", data: object = None, type: object = PluginFieldType.UNKNOWN) -> None:
        self.name, self.data, self.type = name, data, type


class PluginFieldCollection(list):
    pass


class _Registry:
    def __init__(self) -> None:
        self.creators: dict[tuple[str, str, str], object] = {}

    def register_creator(self, creator: object, namespace: str) -> bool:
        self.creators[creator.name, "1", namespace] = creator
        return True

    def get_creator(self, name: str, version: str, namespace: str) -> object:
        return self.creators.get((name, version, namespace))

    @property
    def all_creators(self) -> list:
        return list(self.creators.values())


_REGISTRY = _Registry()


def get_plugin_registry() -> _Registry:
    return _REGISTRY
