"""Pieces shared by the PyTorch -> MindSpore weight converters (``src/models/*/convert.py``).

Each converter renames the source keys its own way; the steps around the renaming are the same for every model
and live here: reading a torch checkpoint into NumPy, checking the renamed tensors against the target model's
parameters one-to-one (and refusing with a report that names every problem), and writing the MindSpore
checkpoint so that a failed or interrupted write never leaves a file at the destination.
"""

import argparse
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import mindspore as ms
import numpy as np

from src.errors import InputError
from src.fileio import atomic_output

# BatchNorm bookkeeping buffers; no converted model has a parameter for them and they change nothing numerically.
IGNORED_SUFFIXES = ("num_batches_tracked",)


class ConversionError(InputError, ValueError):
    """Raised when a checkpoint cannot be mapped one-to-one onto the model; the message lists each problem."""


def load_torch_state_dict(path) -> Dict[str, np.ndarray]:
    """Read a torch ``.pth`` file: the state dict itself, or a dict holding it under ``"model"`` or
    ``"model_state_dict"``.

    Loading uses ``weights_only=True`` (no arbitrary pickled code), with ``argparse.Namespace`` allowed because
    some published checkpoints store their training arguments next to the weights. Non-tensor entries are skipped.

    Returns:
        dict mapping key to float32 ``np.ndarray``.

    Raises:
        ConversionError: If the file is missing, cannot be read by ``torch.load`` or does not hold a dict of
            tensors.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"source not found: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types (UnpicklingError, RuntimeError, ...) for bad files
        raise ConversionError(f"{path}: cannot read as a PyTorch checkpoint: {err}") from err
    # facebookresearch/detr stores the weights under "model", csm-kr/detr_pytorch under "model_state_dict".
    for wrapper in ("model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: expected a state dict (or a dict with 'model' or 'model_state_dict'), "
                              f"got {type(obj).__name__}")
    return {k: v.detach().float().numpy() for k, v in obj.items() if hasattr(v, "detach")}


def assemble_params(renamed: Iterable[Tuple[str, Optional[str], np.ndarray]], param_shapes: Dict[str, tuple],
                    problems: Optional[List[str]] = None, exempt: Sequence[str] = ()) -> Dict[str, np.ndarray]:
    """Check renamed source tensors against the model's parameters and return them, or refuse.

    Args:
        renamed: ``(source_key, parameter_name, value)`` for every source tensor the converter kept;
            ``parameter_name`` is None when the converter has no name for the key.
        param_shapes: MindSpore parameter name -> shape, for the target model.
        problems: problems the converter already found (e.g. unmapped keys); reported together with these.
        exempt: model parameters that may stay without a value (left out of the result by design).

    Returns:
        MindSpore parameter name -> contiguous float32 ``np.ndarray``, covering ``param_shapes`` except the
        ``exempt`` names no source key was given for.

    Raises:
        ConversionError: Listing (sorted) every problem passed in, every source key whose name is not a model
            parameter, every parameter two source keys map to, every shape mismatch and every model parameter
            (outside ``exempt``) left without a value.
    """
    problems = list(problems or [])
    converted, sources = {}, {}
    for key, name, value in renamed:
        if name is None or name not in param_shapes:
            hint = f" (-> {name}, not a model parameter)" if name is not None else ""
            problems.append(f"unmapped source key: {key}{hint}")
        elif name in sources:
            problems.append(f"duplicate source keys for {name}: {sources[name]} and {key}")
        elif tuple(value.shape) != tuple(param_shapes[name]):
            sources[name] = key
            problems.append(f"shape mismatch: {key} source {tuple(value.shape)} vs model {name} "
                            f"{tuple(param_shapes[name])}")
        else:
            sources[name] = key
            converted[name] = np.ascontiguousarray(value, dtype=np.float32)
    exempt = set(exempt)
    problems += [f"missing model parameter: {name} {tuple(shape)}" for name, shape in param_shapes.items()
                 if name not in sources and name not in exempt]
    if problems:
        raise ConversionError(f"refusing to write a checkpoint, {len(problems)} problem(s):\n  "
                              + "\n  ".join(sorted(problems)))
    return converted


def _one_line(value) -> str:
    """An array as ``[a b; c d]`` (rows of the last axis, two decimals) on one line, for error messages."""
    value = np.asarray(value, np.float64)
    rows = value.reshape(-1, value.shape[-1]) if value.ndim else value.reshape(1, 1)
    return "[" + "; ".join(" ".join(f"{v:.2f}" for v in row) for row in rows) + "]"


def verify_buffers(state: Dict[str, np.ndarray], expected: Dict[str, np.ndarray],
                   atol: float = 1e-4) -> Tuple[List[str], List[str]]:
    """Check source buffers that hold no parameter but a value the target model computes itself.

    Args:
        state: the source state dict (key -> array).
        expected: buffer key -> the value the target model builds; keys absent from ``state`` are skipped.
        atol: largest absolute difference accepted.

    Returns:
        (verified keys, to drop from ``state`` before :func:`assemble_params`; problems, one line per buffer
        whose shape or values differ, naming the key and showing the stored and the expected values).
    """
    verified, problems = [], []
    for key, want in expected.items():
        if key not in state:
            continue
        got = np.asarray(state[key], np.float64)
        if got.shape == want.shape and np.allclose(got, want, rtol=0.0, atol=atol):
            verified.append(key)
        else:
            problems.append(f"buffer {key} differs from the model's: source {_one_line(got)} vs "
                            f"model {_one_line(want)}")
    return verified, problems


def cell_param_shapes(cell) -> Dict[str, tuple]:
    """MindSpore parameter name -> shape for every parameter of ``cell`` (shared Cells listed once)."""
    return {p.name: tuple(p.shape) for p in cell.get_parameters()}


def save_checkpoint_atomic(params: Dict[str, np.ndarray], output) -> None:
    """Write ``params`` (name -> array) with ``ms.save_checkpoint`` to a temporary file renamed to ``output``.

    Goes through :func:`src.fileio.atomic_output`, so a failed or interrupted write leaves neither a partial file
    under ``output`` nor the temporary file.
    """
    with atomic_output(output, suffix=".ckpt") as tmp:
        ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in params.items()], str(tmp))
