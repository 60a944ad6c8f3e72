"""What a model argument names: ``package.module:factory`` (a function returning ``(model,
example_inputs)``) or an ``.onnx`` path, loaded with a description of its inputs.

Example:
    >>> loaded = load_model("mixq.zoo:mlp")
    >>> [(i.name, i.example) for i in loaded.inputs]
    [('input', (1, 8, 8))]
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mixq.cli.errors import CliError, did_you_mean, one_line
from mixq.cli.inputs import ModelInput, fixed_batch
from mixq.core.errors import CalibrationError

__all__ = ["LoadedModel", "check_model_spec", "load_model"]


@dataclass
class LoadedModel:
    """The model (an ``nn.Module`` or an ``.onnx`` path), its example inputs, its inputs."""

    model: Any
    example_inputs: Any
    inputs: list[ModelInput]

    @property
    def is_onnx(self) -> bool:
        return isinstance(self.model, str)

    def with_free_batch(self, folder: Path) -> LoadedModel:
        """For an ONNX model with a fixed batch size: a copy in ``folder`` whose batch
        dimension is free, so analyses can run single samples (bad cases); else ``self``."""
        batch = fixed_batch(self.inputs)
        if not self.is_onnx or batch is None:
            return self
        import onnx

        proto = onnx.load(self.model)
        del proto.graph.value_info[:]
        for value in (*proto.graph.input, *proto.graph.output):
            dims = value.type.tensor_type.shape.dim
            if dims and dims[0].dim_value == batch:
                dims[0].dim_param = "batch"
        path = folder / Path(self.model).name
        onnx.save(proto, path)
        inputs = [ModelInput(i.names, i.shape, i.dtype, None, i.example) for i in self.inputs]
        return LoadedModel(str(path), self.example_inputs, inputs)

    def probe(self, batches: list[Any], source: Path) -> None:
        """Run a PyTorch model on the first sample, so a shape it cannot take is reported
        here, naming the inputs and both shapes, rather than deep inside the capture."""
        if self.is_onnx or not batches or not isinstance(batches[0], tuple):
            return
        sample = tuple(x[:1] for x in batches[0])
        try:
            with torch.no_grad():
                self.model(*sample)
        except Exception as e:
            shapes = ", ".join(
                f"{spec.name}: data {tuple(x.shape[1:])} vs example {spec.example}"
                for spec, x in zip(self.inputs, sample, strict=False)
            )
            first = one_line(str(e).strip().splitlines()[0] if str(e).strip() else repr(e))
            raise CalibrationError(
                f"{source}: the model fails on these inputs ({shapes}): {first}. Give samples "
                "shaped like the example inputs"
            ) from None


def check_model_spec(spec: str) -> None:
    """Cheap checks of a model argument (the file exists, the form is right)."""
    if spec.endswith(".onnx"):
        if not Path(spec).is_file():
            raise CliError(f"MODEL {spec!r}: no such ONNX file; give the path of an .onnx file")
    elif ":" not in spec:
        raise CliError(
            f"MODEL {spec!r} is neither 'package.module:factory' nor an .onnx file "
            "(e.g. mixq.zoo:digits_cnn)"
        )


def load_model(spec: str) -> LoadedModel:
    """``package.module:factory`` -> the factory's model and inputs; an ``.onnx`` path gives
    the path and random inputs of its declared shapes."""
    check_model_spec(spec)
    if spec.endswith(".onnx"):
        return _onnx_model(spec)
    module_name, factory = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise CliError(f"MODEL {spec!r}: cannot load {spec!r}: {e}") from None
    fn = getattr(module, factory, None)
    if not callable(fn):
        names = [n for n in dir(module) if not n.startswith("_")]
        raise CliError(
            f"MODEL {spec!r}: cannot load {spec!r}: {module_name} has no factory "
            f"{factory!r}{did_you_mean(factory, names)}"
        )
    model, inputs = fn()
    return LoadedModel(model, inputs, _torch_inputs(model, inputs))


def _onnx_model(path: str) -> LoadedModel:
    from mixq.sim.onnx import capture, random_inputs

    graph = capture(path)[0]
    specs = []
    for name in graph.inputs:
        t = graph.tensors[name]
        shape = tuple(t.shape or ())
        dtype = getattr(torch, str(t.dtype), None)
        batch = shape[0] if shape and isinstance(shape[0], int) else None
        specs.append(
            ModelInput((name,), shape[1:] if shape else None,
                       dtype if isinstance(dtype, torch.dtype) else None, batch)
        )  # fmt: skip
    dim = fixed_batch(specs) or 1
    return LoadedModel(path, random_inputs(graph, dim=dim), specs)


def _torch_inputs(model: Any, inputs: Any) -> list[ModelInput]:
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if not isinstance(inputs, tuple) or not all(isinstance(x, torch.Tensor) for x in inputs):
        return []
    try:
        params = [
            p.name
            for p in inspect.signature(model.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    params += [f"input_{n}" for n in range(len(params), len(inputs))]
    return [
        ModelInput((name,), (None,) * (x.ndim - 1), x.dtype, None, tuple(x.shape[1:]))
        for name, x in zip(params, inputs, strict=False)
    ]
