"""``torch.export`` a :class:`~export.graph.DeployModule` once, write it as ONNX (opset 18).

The same ``ExportedProgram`` feeds the ONNX exporter and AOTInductor, so the expensive symbolic
trace runs once per export. Dynamic axes are declared with ``torch.export.Dim`` (the dynamo
exporter ignores ``dynamic_axes``) and renamed ``batch``/``height``/``width`` in the ONNX file.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from cluda_deploy.sidecar import INPUT_NAME

# torch.onnx's dynamo exporter needs opset >= 18; 18 exports LayerNormalization as one op, which
# TensorRT runs at full precision (research/deploy.md 6.1: SegFormer FP16 engines need it).
ONNX_OPSET = 18
# An example batch of 1 would let torch.export specialise the batch axis to 1 ("0/1 specialisation").
EXAMPLE_BATCH = 2
AXIS_NAMES = ("batch", "height", "width")


@dataclass(frozen=True)
class InputShape:
    """The export's input axes: an int where static, None where dynamic (``min_side`` bounds H, W)."""

    batch: int | None
    height: int | None
    width: int | None
    min_side: int

    @property
    def dynamic(self) -> bool:
        return None in (self.batch, self.height, self.width)

    def as_list(self) -> list[int | str]:
        """``[N, H, W, 3]`` with axis names for dynamic axes (the sidecar's ``input.shape``)."""
        dims = (self.batch, self.height, self.width)
        return [name if dim is None else dim for dim, name in zip(dims, AXIS_NAMES, strict=True)] + [3]

    def example(self, typical: tuple[int, int]) -> torch.Tensor:
        """A uint8 example batch; dynamic axes take ``EXAMPLE_BATCH`` / ``typical`` (h, w)."""
        height = self.height or max(typical[0], self.min_side)
        width = self.width or max(typical[1], self.min_side)
        shape = (self.batch or EXAMPLE_BATCH, height, width, 3)
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def dynamic_shapes(self) -> dict | None:
        if not self.dynamic:
            return None
        dims = {}
        if self.batch is None:
            dims[0] = torch.export.Dim("batch", min=1)
        if self.height is None:
            dims[1] = torch.export.Dim("height", min=self.min_side)
        if self.width is None:
            dims[2] = torch.export.Dim("width", min=self.min_side)
        return {"images": dims}


def trace(
    module: nn.Module, shape: InputShape, typical: tuple[int, int], device: str = "cpu"
) -> torch.export.ExportedProgram:
    """``torch.export`` the module (eval mode, on ``device``) for ``shape``.

    Dynamic H/W make this symbolic trace slow: about 10 s for the demo model, minutes for MiT-B5.
    """
    module.eval()
    example = shape.example(typical).to(device)
    with torch.no_grad():
        return torch.export.export(
            module,
            (example,),
            dynamic_shapes=shape.dynamic_shapes(),
            # Size checks inside the model become runtime asserts instead of failing the export.
            prefer_deferred_runtime_asserts_over_guards=True,
        )


def write_onnx(
    program: torch.export.ExportedProgram,
    path: str | os.PathLike,
    output_names: list[str],
    verbose: bool = False,
) -> Path:
    """Convert the program to ONNX at ``path`` (single file, weights inside)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        onnx_program = torch.onnx.export(
            program,
            (),  # unused for an ExportedProgram
            dynamo=True,
            opset_version=ONNX_OPSET,
            input_names=[INPUT_NAME],
            output_names=output_names,
            external_data=False,
            verbose=verbose,
        )
    model = onnx_program.model_proto
    rename_dynamic_axes(model)
    onnx.save_model(model, str(path))
    return path


def rename_dynamic_axes(model: onnx.ModelProto) -> None:
    """Name the input's symbolic dims ``batch``/``height``/``width`` everywhere they occur."""
    graph_input = next(i for i in model.graph.input if i.name == INPUT_NAME)
    renames = {}
    for dim, name in zip(graph_input.type.tensor_type.shape.dim, AXIS_NAMES, strict=False):
        if dim.dim_param:
            renames[dim.dim_param] = name
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]


def with_logits_output(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a cluda ONNX graph that also outputs ``logits``: the input of its one ArgMax.

    Lets the parity check measure logit error on a file exported without ``--logits`` (and on
    its INT8 version) without a second export.
    """
    outputs = {o.name for o in model.graph.output}
    if "logits" in outputs:
        return model
    argmax = [node for node in model.graph.node if node.op_type == "ArgMax"]
    if len(argmax) != 1:
        raise ValueError(f"expected one ArgMax (the labels) in the graph, found {len(argmax)}")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    logits = onnx.helper.make_tensor_value_info(argmax[0].input[0], onnx.TensorProto.FLOAT, None)
    copy.graph.output.append(logits)
    return copy
