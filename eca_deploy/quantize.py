"""Post-training INT8 quantization to explicit Q/DQ: the INT8 route TensorRT 11 and TensorRT-RTX accept.

``quantize_int8`` turns an FP32 ONNX model (plain or ECA-fused) into one with QuantizeLinear /
DequantizeLinear pairs, with ONNX Runtime's static quantizer set up the way TensorRT's explicit
quantization expects (the choice against NVIDIA ModelOpt was measured: scripts/compare_int8_quantizers.py,
BENCHMARKS.md):

- symmetric INT8, zero points 0; per-channel weights (axis 0) for Conv and Gemm, per-tensor activations;
- Q/DQ on the inputs of Conv, Gemm and MatMul and of residual Adds (TensorRT fuses ``DQ -> Conv``
  and ``Add(Conv, DQ(residual))``), except an Add input computed by a Conv, which stays float so that
  TensorRT can fold the Add into that Conv (as NVIDIA ModelOpt places them); biases stay float;
- calibrated on images preprocessed as the authors did, or on seeded random inputs (with a warning);
- every ECA block stays floating point: the nodes of unfused blocks (found by the fusion pass) are
  excluded, and EcaAttention nodes are never quantized. Input and output stay float32.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from eca_deploy.errors import EcaDeployError, first_line
from eca_deploy.onnx_files import load_onnx, save_onnx
from eca_deploy.options import CALIBRATION_METHODS, INPUT_NAME
from eca_deploy.preprocess import Preprocessing
from eca_deploy.provenance import Provenance, stamp

QUANTIZED_OP_TYPES = ("Conv", "Gemm", "MatMul", "Add")
Q_OPS, DQ_OPS = ("QuantizeLinear",), ("DequantizeLinear",)
DEFAULT_CALIBRATION_METHOD = CALIBRATION_METHODS[0]


@dataclass
class CalibrationData:
    """Float32 N x 3 x H x W batches the quantizer runs to find activation ranges, and where they came from."""

    batches: list[np.ndarray]
    source: dict

    @property
    def samples(self) -> int:
        return sum(len(batch) for batch in self.batches)


def random_calibration(input_shape: Sequence[int], size: int, seed: int = 0, batch_size: int = 8) -> CalibrationData:
    """``size`` seeded standard-normal samples: ranges fit no real image distribution (say so to the user)."""
    rng = np.random.default_rng(seed)
    batches = [rng.standard_normal((min(batch_size, size - start), *input_shape), dtype=np.float32)
               for start in range(0, size, batch_size)]
    return CalibrationData(batches, {"kind": "random", "seed": seed, "samples": size})


class CalibrationImages:
    """A checked calibration folder (ImageFolder or flat) whose images go through the model's preprocessing.

    Made before any model is loaded: a missing folder, or one without a readable image, is a one-sentence error.
    Any image the preprocessing takes is used, whatever its size; files that cannot be read are skipped and
    counted (``strict``: refused), as in ``validate --images``. ``preprocessing`` may be set once the model is
    known (the authors' transforms, or a timm model's), before :meth:`load`.
    """

    def __init__(self, folder: Path, preprocessing: Preprocessing | None = None, batch_size: int = 8, *,
                 strict: bool = False) -> None:
        from eca_deploy.image_folders import ImageFolderInputs

        self.folder = Path(folder)
        self.inputs = ImageFolderInputs(self.folder, preprocessing, batch_size=batch_size, strict=strict)

    def load(self, size: int) -> CalibrationData:
        """The first ``size`` readable images, preprocessed (fewer where some of them fail to decode)."""
        batches = [batch.images for batch in self.inputs.batches(self.inputs.samples[:size], self.inputs.batch_size)]
        if not batches:
            raise EcaDeployError(f"no calibration image in {self.folder} could be decoded: "
                                 f"{self.inputs.skipped.summary(self.folder)}")
        return CalibrationData(batches, {"kind": "images", "root": str(self.folder), "layout": self.inputs.layout,
                                         "samples": sum(len(batch) for batch in batches),
                                         "preprocessing": self.inputs.preprocessing.to_dict(),
                                         "skipped_files": self.inputs.skipped.to_dict()})

    def parity_batches(self, size: int, limit: int = 8) -> list[np.ndarray] | None:
        """Up to ``limit`` images to check the quantized model on: ones the calibration (the first ``size``)
        did not see, where the folder has them; None when none decodes (the check then uses seeded inputs)."""
        unseen = self.inputs.samples[size:] or self.inputs.samples
        batch = next(self.inputs.batches(unseen, limit), None)
        return None if batch is None else [batch.images]


def image_calibration(folder: Path, preprocessing: Preprocessing, size: int) -> CalibrationData:
    """Up to ``size`` images of ``folder`` through ``preprocessing`` (unreadable files skipped)."""
    return CalibrationImages(folder, preprocessing).load(size)


@dataclass
class QuantizationReport:
    """What the quantizer did; ``to_dict`` keys are stable (written into the export report)."""

    quantizer: str
    calibration_method: str
    calibration: dict
    quantize_linear: int
    dequantize_linear: int
    quantized_ops: dict[str, int]
    eca_blocks_in_float: int  #: ECA blocks left unquantized: unfused ones excluded, EcaAttention nodes
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)

    def summary(self) -> str:
        ops = ", ".join(f"{count} {op}" for op, count in self.quantized_ops.items())
        return (f"{self.quantize_linear} QuantizeLinear / {self.dequantize_linear} DequantizeLinear nodes; INT8 inputs "
                f"for {ops}; {self.eca_blocks_in_float} ECA blocks kept in floating point ({self.seconds:.1f} s)")

    def to_dict(self) -> dict:
        return {"quantizer": self.quantizer, "calibration_method": self.calibration_method,
                "calibration": self.calibration, "quantize_linear": self.quantize_linear,
                "dequantize_linear": self.dequantize_linear, "quantized_ops": self.quantized_ops,
                "eca_blocks_in_float": self.eca_blocks_in_float, "settings": self.settings,
                "seconds": round(self.seconds, 2)}


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader over our batches, one sample per call: its histogram
    calibrators stack every call's outputs and fail on batches of different sizes."""

    def __init__(self, input_name: str, batches: list[np.ndarray]) -> None:
        self._feeds: Iterator[dict] = ({input_name: batch[i:i + 1]} for batch in batches for i in range(len(batch)))

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


def unfused_eca_blocks(model: onnx.ModelProto) -> list[tuple[str, ...]]:
    """The node names of each unfused ECA block of ``model`` (pooling, gate path, Mul), as the fusion pass
    finds them; nodes need names (see :func:`_named`)."""
    from eca_deploy.passes import fuse_eca

    _, report = fuse_eca(model, verify=False)
    return [block.replaced for block in report.fused]


def eca_block_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes of every unfused ECA block of ``model``, for a quantizer's exclusion list."""
    return [name for block in unfused_eca_blocks(model) for name in block]


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with a unique name on every node (the quantizer excludes nodes by name)."""
    taken = {node.name for node in model.graph.node if node.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return model


def quantize_int8(model_path: str | Path, output_path: str | Path, calibration: CalibrationData, *,
                  method: str = DEFAULT_CALIBRATION_METHOD, external_data: bool = False,
                  provenance: Provenance | None = None) -> QuantizationReport:
    """Write the INT8 Q/DQ version of the float ONNX model ``model_path`` to ``output_path``, with the float
    model's metadata, its provenance replaced by ``provenance`` where given (an INT8 file of the same model)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIBRATION_METHODS:
        raise EcaDeployError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    model = _named(load_onnx(model_path))
    if any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer):
        raise EcaDeployError(f"{Path(model_path).name} is FP16: quantize the FP32 model (INT8 layers choose their "
                             "own precision for what stays floating point)")
    from eca_deploy.passes import count_fused_nodes

    blocks = unfused_eca_blocks(model)
    excluded = [name for block in blocks for name in block]
    settings = {"quant_format": "QDQ", "activation_type": "int8", "weight_type": "int8", "per_channel": True,
                "symmetric": True, "op_types": list(QUANTIZED_OP_TYPES), "output_quantization": False,
                "bias": "float"}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="eca-int8-") as work:
        source = Path(work) / "float.onnx"
        save_onnx(model, source, external_data=model.ByteSize() > onnx.checker.MAXIMUM_PROTOBUF // 2)
        try:
            with _quiet_quantizer():
                quantize_static(
                    str(source), str(Path(work) / "int8.onnx"), _Reader(INPUT_NAME, calibration.batches),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    per_channel=True, op_types_to_quantize=list(QUANTIZED_OP_TYPES), nodes_to_exclude=excluded,
                    calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                                      "entropy": CalibrationMethod.Entropy}[method],
                    use_external_data_format=external_data,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                                   "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OP_TYPES),
                                   # Bounds memory by merging every 4 samples' histograms; ONNX Runtime's
                                   # MinMax calibrator drops its ranges instead (onnxruntime#18893).
                                   **({} if method == "minmax" else {"CalibMaxIntermediateOutputs": 4})})
        except Exception as error:  # the quantizer raises bare exceptions from deep inside
            raise EcaDeployError(f"ONNX Runtime's quantizer failed on {Path(model_path).name}: "
                                 f"{first_line(error)}") from error
        quantized = onnx.load(str(Path(work) / "int8.onnx"))
    _float_conv_outputs_into_adds(quantized)
    _drop_unused_initializers(quantized)
    quantized.producer_name = "eca-deploy"
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(model.metadata_props)
    if provenance is not None:
        stamp(quantized, provenance)
    save_onnx(quantized, Path(output_path), external_data)
    ops = Counter(node.op_type for node in quantized.graph.node)
    consumers = _dequantized_consumers(quantized)
    return QuantizationReport(
        quantizer=f"onnxruntime {_ort_version()} quantize_static", calibration_method=method,
        calibration=calibration.source, quantize_linear=sum(ops[op] for op in Q_OPS),
        dequantize_linear=sum(ops[op] for op in DQ_OPS),
        quantized_ops=dict(sorted(Counter(consumers).items())),
        eca_blocks_in_float=len(blocks) + count_fused_nodes(model),
        seconds=time.perf_counter() - start, settings=settings)


def _float_conv_outputs_into_adds(model: onnx.ModelProto) -> int:
    """Remove the Q/DQ pair from each Conv output that only residual Adds read (in place); returns how many.

    TensorRT folds a residual Add into the Conv that computes one of its inputs, the other input being
    dequantized; a Q/DQ pair on the Conv's output would keep it from doing so.
    """
    nodes = model.graph.node
    producers = {output: node for node in nodes for output in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    removed = []
    for quantize in [node for node in nodes if node.op_type in Q_OPS]:
        source = producers.get(quantize.input[0])
        dequantizes = readers.get(quantize.output[0], [])
        adds = [reader for dq in dequantizes for reader in readers.get(dq.output[0], [])]
        if (source is None or source.op_type != "Conv" or not dequantizes or not adds
                or any(dq.op_type not in DQ_OPS for dq in dequantizes) or any(a.op_type != "Add" for a in adds)):
            continue
        for add in adds:
            add.input[:] = [quantize.input[0] if name in {dq.output[0] for dq in dequantizes} else name
                            for name in add.input]
        removed += [quantize, *dequantizes]
    for node in removed:
        nodes.remove(node)
    return len(removed) // 2


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    """Remove initializers no node reads (in place): the scales and zero points of Q/DQ pairs taken out, which
    ONNX Runtime would otherwise warn about in every session."""
    read = {name for node in _all_nodes(model.graph) for name in node.input}
    read |= {value.name for value in model.graph.output}
    unused = [init for init in model.graph.initializer if init.name not in read]
    for init in unused:
        model.graph.initializer.remove(init)


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """The nodes of ``graph`` and of the subgraphs (If/Loop/Scan bodies) inside them."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for subgraph in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                yield from _all_nodes(subgraph)


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Silence the quantizer's advice on the root logger (it suggests a pre-processing the exporters did) and
    its calibration prints on stdout, which would break into the progress line."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _dequantized_consumers(model: onnx.ModelProto) -> list[str]:
    """Op types of the nodes that read a DequantizeLinear output (one entry per node): the layers
    TensorRT can run in INT8."""
    dequantized = {output for node in model.graph.node if node.op_type in DQ_OPS for output in node.output}
    return [node.op_type for node in model.graph.node
            if node.op_type not in (*Q_OPS, *DQ_OPS) and dequantized.intersection(node.input)]


def qdq_inside_eca_blocks(model: onnx.ModelProto) -> list[str]:
    """Q/DQ nodes inside ECA blocks (none in a proper INT8 export): in the gate path of unfused blocks, as
    the fusion pass finds them, or on the weight of EcaAttention nodes."""
    from eca_deploy.passes.fused_node import is_fused_eca_node

    model = _named(_copy(model))
    ops = {node.name: node.op_type for node in model.graph.node}
    producers = {output: node for node in model.graph.node for output in node.output}
    inside = [name for name in eca_block_nodes(model) if ops.get(name) in (*Q_OPS, *DQ_OPS)]
    for node in model.graph.node:
        weight = producers.get(node.input[1]) if is_fused_eca_node(node) else None
        while weight is not None and weight.op_type in (*Q_OPS, *DQ_OPS):
            inside.append(weight.name)
            weight = producers.get(weight.input[0])
    return inside


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy
