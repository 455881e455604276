"""ONNX files in and out: load (checked, or just the graph), save (external data above 2 GB), check.

Light on purpose (onnx only): the commands that only read or write ONNX files never import PyTorch.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from eca_deploy.errors import EcaDeployError, first_line


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load and check an ONNX model (external data too); bad files raise EcaDeployError."""
    path = Path(path)
    if not path.is_file():
        raise EcaDeployError(f"{path}: no such file" if not path.exists() else f"{path} is not a file")
    try:
        model = onnx.load(str(path))
    except (DecodeError, onnx.checker.ValidationError, ValueError, OSError) as error:
        raise EcaDeployError(f"{path} is not a readable ONNX model: {first_line(error)}") from error
    if not model.graph.node and not model.graph.output:
        raise EcaDeployError(f"{path} is not an ONNX model (it holds no graph)")
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, ValueError) as error:
        raise EcaDeployError(f"{path} is not a valid ONNX model: {first_line(error)}") from error
    return model


def load_graph(path: Path) -> onnx.ModelProto:
    """The ONNX model without its external weights (enough for types, node counts and parsing from bytes
    with the model's path, where the parser reads the external weights)."""
    try:
        return onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as error:
        raise EcaDeployError(f"{path} is not a readable ONNX model: {first_line(error)}") from error


def onnx_precision(model: onnx.ModelProto) -> str:
    """"int8" for a Q/DQ model (``eca-export --int8``), "fp16" when the weights are FP16 (``--fp16``), else "fp32"."""
    if any(node.op_type == "DequantizeLinear" for node in model.graph.node):
        return "int8"
    return "fp16" if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer) else "fp32"


def save_onnx(model: onnx.ModelProto, path: Path, external_data: bool = False) -> Path | None:
    """Save ``model`` to ``path``, weights in ``<name>.data`` beside it when ``external_data``.

    Returns the external data path, if any. Models over 2 GB must use external data.
    """
    path = Path(path)
    if not external_data:
        if model.ByteSize() > onnx.checker.MAXIMUM_PROTOBUF:
            raise EcaDeployError(f"{path.name} would exceed protobuf's 2 GB limit: pass --external-data")
        onnx.save_model(model, path)
        return None
    data_path = path.with_name(path.name + ".data")
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_path.name, size_threshold=1024)
    return data_path


def check_onnx(path: Path) -> onnx.ModelProto:
    """Run the full ONNX checker and strict shape inference on a saved model (external data too)."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes_path(str(path), strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise EcaDeployError(f"{Path(path).name} failed the ONNX checker: {first_line(error)}") from error
    return onnx.load(str(path))


def save_checked(model: onnx.ModelProto, path: Path, external_data: bool = False) -> Path | None:
    """:func:`save_onnx` then :func:`check_onnx`; returns the external data path, if any."""
    data_path = save_onnx(model, path, external_data)
    check_onnx(path)
    return data_path
