"""Find the first layer where an ONNX model stops agreeing with the PyTorch FP32 module.

Polygraphy bisects by marking intermediate tensors as outputs. Here every tensor of the ONNX
graph becomes an output on ONNX Runtime, and every module of the PyTorch model reports its output
through a forward hook. Exporters rename, fold (BatchNorm into Conv) and fuse (ECA blocks into one
node), so tensors are matched to module outputs by value: a module output is *reproduced* when some
ONNX tensor of the same shape is within ``tolerance`` of it (max abs difference relative to the
output's largest value). Modules folded away are reproduced by nothing but are followed by modules
that are; the first diverging module is the first one after the last reproduced module that has
same-shaped tensors in the graph to compare with.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from eca_deploy.errors import EcaDeployError, first_line

# Relative error below which an ONNX tensor reproduces a PyTorch module output.
MATCH_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2, "int8": 0.25}  # INT8 layers are a few % off each, compounding


@dataclass(frozen=True)
class Divergence:
    """Where the ONNX model first departs from PyTorch, and by how much."""

    last_matching_module: str | None
    diverging_module: str | None
    diverging_module_type: str | None
    nearest_onnx_tensor: str | None
    onnx_node: str | None
    onnx_op_type: str | None
    relative_error: float | None
    modules_reproduced: int
    modules_compared: int
    not_searched: str | None = None  #: why the search could not run (the rest of the report is unaffected)

    @classmethod
    def unavailable(cls, reason: str) -> Divergence:
        """The answer when the search cannot run on this module or model."""
        return cls(None, None, None, None, None, None, None, 0, 0, not_searched=reason)

    def summary(self) -> str:
        if self.not_searched is not None:
            return f"first diverging layer not searched: {self.not_searched}"
        if self.diverging_module is None:
            return (f"every compared module output is reproduced ({self.modules_reproduced}/{self.modules_compared}); "
                    f"the difference arises after the last module")
        after = f" (last matching: {self.last_matching_module})" if self.last_matching_module else ""
        return (f"first diverging layer: {self.diverging_module} ({self.diverging_module_type}){after}; nearest "
                f"ONNX tensor {self.nearest_onnx_tensor!r} from node {self.onnx_node!r} ({self.onnx_op_type}) "
                f"differs by {self.relative_error:.3g} relative")

    def to_dict(self) -> dict:
        return asdict(self) | {"summary": self.summary()}


def module_outputs(module: nn.Module, sample: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    """(name, type, output) of every submodule in the order the modules finish, for one FP32 forward pass."""
    recorded: list[tuple[str, str, np.ndarray]] = []
    handles = []
    for name, submodule in module.named_modules():
        if not name:
            continue

        def hook(_module, _inputs, output, name=name, kind=type(submodule).__name__):
            if isinstance(output, torch.Tensor):  # clone: later in-place ops (ReLU) must not change it
                recorded.append((name, kind, output.detach().float().clone().numpy()))

        handles.append(submodule.register_forward_hook(hook))
    try:
        with torch.no_grad():
            module.float().eval()(torch.from_numpy(sample))
    finally:
        for handle in handles:
            handle.remove()
    return recorded


def onnx_intermediates(path: Path, sample: np.ndarray) -> list[tuple[str, np.ndarray, str, str]]:
    """Every float tensor an ONNX model computes for ``sample`` on ONNX Runtime CPU, in graph order:
    (tensor name, value, producing node, its op type)."""
    model = onnx.load(str(path))
    outputs = {out.name for out in model.graph.output}
    producers = {}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in outputs:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
                outputs.add(name)
            if name:
                producers[name] = (node.name, node.op_type)
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types
        raise EcaDeployError(f"ONNX Runtime rejects {path.name} with every tensor marked as an output "
                             f"({first_line(error)})") from error
    (graph_input,) = session.get_inputs()
    dtype = np.float16 if graph_input.type == "tensor(float16)" else np.float32
    names = [name for name in producers if name in {out.name for out in session.get_outputs()}]
    values = session.run(names, {graph_input.name: sample.astype(dtype)})
    return [(name, np.asarray(value), *producers[name]) for name, value in zip(names, values)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f"]


def first_divergence(module: nn.Module, onnx_path: str | Path, sample: np.ndarray, *,
                     precision: str = "fp32") -> Divergence:
    """Compare every module output of ``module`` with the tensors of ``onnx_path`` on one sample; where that
    cannot run (a TorchScript module takes no forward hooks, ONNX Runtime refuses the model's intermediates),
    the Divergence says why."""
    if isinstance(module, torch.jit.ScriptModule):
        return Divergence.unavailable("a TorchScript module takes no forward hooks, so its layers' outputs cannot "
                                      "be compared; give the checkpoint or architecture as SOURCE")
    try:
        intermediates = onnx_intermediates(Path(onnx_path), sample)
    except EcaDeployError as error:
        return Divergence.unavailable(str(error))
    tolerance = MATCH_TOLERANCE[precision]
    by_shape: dict[tuple[int, ...], list[tuple[int, str, np.ndarray, str, str]]] = defaultdict(list)
    for position, (tensor, value, node, op_type) in enumerate(intermediates):
        by_shape[value.shape].append((position, tensor, value.astype(np.float64), node, op_type))

    compared = []  # (module, type, [(relative error, graph position, tensor, node, op type), ...] best first)
    for name, kind, output in module_outputs(module, sample):
        candidates = by_shape.get(output.shape)
        if candidates:
            expected = output.astype(np.float64)
            scale = max(float(np.abs(expected).max()), 1e-6)
            errors = sorted((float(np.abs(value - expected).max()) / scale, position, tensor, node, op)
                            for position, tensor, value, node, op in candidates)
            compared.append((name, kind, errors))
    reproduced = [index for index, (_, _, errors) in enumerate(compared) if errors[0][0] <= tolerance]
    last = reproduced[-1] if reproduced else -1
    last_name = compared[last][0] if last >= 0 else None
    if compared and last == len(compared) - 1:
        return Divergence(last_name, None, None, None, None, None, None, len(reproduced), len(compared))
    name, kind, errors = compared[last + 1]
    # The nearest tensor computed after the last reproduced one: the divergence lies between them.
    after = compared[last][2][0][1] if last >= 0 else -1
    error, _, tensor, node, op_type = next((e for e in errors if e[1] > after), errors[0])
    return Divergence(last_name, name, kind, tensor, node, op_type, error, len(reproduced), len(compared))
