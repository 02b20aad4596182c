"""Inference runtimes for the encoders: PyTorch eager (the default), ONNX Runtime and OpenVINO.

    runtime = "torch"        the encoders of pipelines.encoders as they are (CPU and CUDA)
    runtime = "onnxruntime"  the same model exported to ONNX, run by onnxruntime (CPU, fp32)
                             pip install 'duchkit[onnxruntime]'
    runtime = "openvino"     the same ONNX graph, compiled by OpenVINO for the CPU (fp32, or bf16
                             on CPUs with AMX / AVX512-BF16)      pip install 'duchkit[openvino]'

The ONNX graph is the whole encoder: for images uint8 [N, S, S, 3] in (ImageNet normalisation
inside, the batch-norms already folded), the embedding out; for texts the token ids and mask in,
the pooled embedding out (sum4-mean, mean or cls, padding masked as the torch path does). The
batch axis (and for texts the sequence axis) is dynamic. A graph is exported once per model and
cached on disk under `$DUCHKIT_CACHE/onnx` (default `~/.cache/duchkit/onnx`), keyed by a hash
of the model's weights, the input size or pooling, the opset and this module's export version;
the export is checked against the torch model on a second input shape before it is used, and
written under a temporary name and renamed, so concurrent processes never read half a file.

`wrap_image_encoder` / `wrap_text_encoder` return objects with the torch encoders' interface
(`encode`, `dim`, `encoder_id`, `to`, ...), so a stage swaps runtimes without other changes.
The runtimes other than torch run on the CPU only: asking for one with `--device cuda` is a
ConfigError, as is bf16 with onnxruntime (its CPU kernels are fp32). Threads: the compiled model
uses as many threads as torch does in the calling process (`torch.get_num_threads()`), so the
encoder pool's one-thread-per-process rule holds for every runtime.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from duchkit.pipelines.stage import ConfigError

RUNTIMES = ("torch", "onnxruntime", "openvino")
OPSET = 17
EXPORT_VERSION = 2          # bump when the exported graph changes for the same model
EXPORT_TOLERANCE = 1e-3     # relative max error of the export vs torch (fp32): beyond, a bug
OUTPUT = "duchkit_embedding"  # the graph's output (a name no model uses inside)
# captions the text exports are traced and checked on (two different shapes each)
_WORDS = ["a", "plane", "is", "parked", "near", "the", "white", "buildings", "and", "some",
          "green", "trees", "beside", "road", "river", "many", "cars"]
_PIP = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


# ---------------------------------------------------------------- checks

def check_runtime(runtime: str, device: str | None = None, precision: str | None = None,
                  where: str = "runtime") -> None:
    """Validate a runtime name (and, when given, its device and precision); a missing package
    is named with its pip extra. Never imports torch."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"{where}: runtime must be one of {RUNTIMES}, not {runtime!r}")
    if runtime == "torch":
        return
    if device is not None and device != "cpu":
        raise ConfigError(f"{where}: runtime {runtime!r} runs on the CPU only; with --device "
                          f"{device} use runtime 'torch'")
    if precision == "bf16" and runtime == "onnxruntime":
        raise ConfigError(f"{where}: runtime 'onnxruntime' runs fp32 on the CPU; for bf16 use "
                          "runtime 'openvino' (or 'torch')")
    import importlib.util

    for module in ("onnx", _PIP[runtime]):
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"{where}: runtime {runtime!r} needs the {module} package: "
                              f"pip install 'duchkit[{runtime}]'")


def cache_root() -> Path:
    base = os.environ.get("DUCHKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "duchkit")
    return Path(base) / "onnx"


def weights_digest(module, *extra: Any) -> str:
    """sha256 of a module's parameters and buffers (names, dtypes, shapes, bytes) and `extra`."""
    import torch

    h = hashlib.sha256(repr((EXPORT_VERSION, OPSET) + extra).encode())
    for name, tensor in module.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.dtype == torch.bfloat16:
            t = t.float()
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:20]


def _relative_error(want: np.ndarray, got: np.ndarray) -> float:
    scale = max(float(np.abs(want).max()), 1e-6)
    return float(np.abs(want - got).max()) / scale


def export_onnx(module, args: tuple, input_names: list[str], dynamic_axes: dict,
                path: Path, where: str) -> Path:
    """Export `module` traced on `args` to `path` (a name of this process's own)."""
    import contextlib
    import io
    import warnings

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    error = None
    for exporter in _exporters():
        try:
            with warnings.catch_warnings(), torch.no_grad(), \
                    contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")  # tracer warnings about Python control flow
                if exporter.get("dynamo"):  # dynamic axes as torch.export's shapes
                    shapes = tuple({axis: torch.export.Dim.DYNAMIC
                                    for axis in dynamic_axes.get(n, {})} for n in input_names)
                    axes = {"dynamic_shapes": shapes}
                else:
                    axes = {"dynamic_axes": dynamic_axes}
                torch.onnx.export(module, args, str(path), input_names=input_names,
                                  output_names=[OUTPUT], opset_version=OPSET,
                                  do_constant_folding=True, **axes, **exporter)
            return path
        except Exception as exc:  # noqa: BLE001 - the next exporter, else a ConfigError
            path.unlink(missing_ok=True)
            error = error or exc
    first = (str(error).strip().splitlines() or [""])[0]
    raise ConfigError(f"{where}: cannot export the model to ONNX ({type(error).__name__}: "
                      f"{first}); use runtime 'torch'") from error


def _exporters() -> list[dict]:
    """The traced (TorchScript) exporter first: it is what the checks were written against,
    and the only one of torch 2.4; from torch 2.5 the torch.export one is the fallback (the
    default from 2.9, and the one left when the traced one goes). Either export is checked
    against torch before it is kept."""
    import inspect

    import torch

    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        return [{}]
    return [{"dynamo": False}, {"dynamo": True, "external_data": False}]


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


# ---------------------------------------------------------------- compiled models

class CompiledModel:
    """An ONNX file run by onnxruntime or OpenVINO on the CPU; one compiled instance per
    (precision, threads), made on first use."""

    def __init__(self, path: Path, runtime: str):
        self.path, self.runtime = Path(path), runtime
        self._compiled: dict[tuple[str, int], Any] = {}

    @staticmethod
    def _threads() -> int:
        try:
            import torch

            return max(1, torch.get_num_threads())
        except ImportError:
            return max(1, os.cpu_count() or 1)

    def _get(self, precision: str):
        key = (precision, self._threads())
        if key not in self._compiled:
            self._compiled[key] = self._compile(*key)
        return self._compiled[key]

    def _compile(self, precision: str, threads: int):
        if self.runtime == "onnxruntime":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.log_severity_level = 3
            session = ort.InferenceSession(str(self.path), opts,
                                           providers=["CPUExecutionProvider"])
            return lambda feeds: session.run(None, feeds)[0]
        import openvino as ov

        # no pinning: OpenVINO pins each process's threads from core 0 on, so the CPU encoder
        # pool's one-thread processes all ran on the same core (half the rate on 2 cores)
        config = {"INFERENCE_NUM_THREADS": threads,
                  "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}
        compiled = ov.Core().compile_model(str(self.path), "CPU", config)
        request = compiled.create_infer_request()
        return lambda feeds: np.array(request.infer(feeds)[0], copy=True)

    def run(self, feeds: dict[str, np.ndarray], precision: str = "auto") -> np.ndarray:
        # auto on the CPU is fp32, as for torch; fp16 is CUDA-only and runs fp32 here
        out = self._get("bf16" if precision == "bf16" else "fp32")(feeds)
        return np.ascontiguousarray(out, dtype=np.float32)


class _RuntimeEncoder:
    """What the runtime encoders share: the torch encoder's attributes, CPU only."""

    def __init__(self, torch_encoder, runtime: str, compiled: CompiledModel):
        self.torch_encoder, self.runtime, self.compiled = torch_encoder, runtime, compiled

    def __getattr__(self, name: str):  # dim, input_size, arch, weights, encoder_id, ...
        if name in ("torch_encoder", "runtime", "compiled"):
            raise AttributeError(name)
        return getattr(self.torch_encoder, name)

    @property
    def onnx_path(self) -> Path:
        return self.compiled.path

    def to(self, device: str):
        check_runtime(self.runtime, device)
        return self

    def _check(self, device: str, precision: str) -> None:
        check_runtime(self.runtime, device, precision, "encode")


# ---------------------------------------------------------------- images

def _image_module(enc):
    """uint8 [N, S, S, 3] -> embedding: the torch path's normalise + model, as one module."""
    import torch

    class FromPixels(torch.nn.Module):
        def __init__(self, model, mean, std):
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

        def forward(self, pixels):
            x = pixels.permute(0, 3, 1, 2).float() / 255.0
            return self.model((x - self.mean) / self.std).reshape(pixels.shape[0], -1)

    return FromPixels(enc.model, enc.mean, enc.std).eval().to("cpu")


class RuntimeImageEncoder(_RuntimeEncoder):
    def encode(self, batch_uint8, device: str = "cpu", precision: str = "auto") -> np.ndarray:
        self._check(device, precision)
        pixels = batch_uint8.numpy() if hasattr(batch_uint8, "numpy") else batch_uint8
        return self.compiled.run({"pixels": np.ascontiguousarray(pixels, np.uint8)}, precision)


def wrap_image_encoder(enc, runtime: str, where: str = "image model"):
    """`enc` (a pipelines.encoders.ImageEncoder) as run by `runtime`; `enc` itself for torch."""
    check_runtime(runtime, where=where)
    if runtime == "torch":
        return enc
    import torch

    module = _image_module(enc)
    s = enc.input_size
    digest = weights_digest(module, "image", enc.arch, s, enc.mean, enc.std)
    path = cache_root() / f"image-{_safe(enc.arch)}-{s}-{digest}.onnx"
    if not path.is_file():
        gen = torch.Generator().manual_seed(0)
        example = torch.randint(0, 256, (2, s, s, 3), dtype=torch.uint8, generator=gen)
        check = torch.randint(0, 256, (3, s, s, 3), dtype=torch.uint8, generator=gen)
        _export_checked(module, path, runtime, where, ["pixels"], (example,), (check,),
                        {"pixels": {0: "batch"}, OUTPUT: {0: "batch"}})
    return RuntimeImageEncoder(enc, runtime, CompiledModel(path, runtime))


# ---------------------------------------------------------------- texts

def _text_module(enc, inputs: Sequence[str]):
    """(token ids, mask[, token types]) -> the pooled embedding, as one module."""
    import torch

    from duchkit.pipelines.encoders import pool

    class Pooled(torch.nn.Module):
        def __init__(self, model, pooling, token_types):
            super().__init__()
            self.model, self.pooling, self.token_types = model, pooling, token_types

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
            if self.token_types:
                feeds["token_type_ids"] = token_type_ids
            out = self.model(**feeds, output_hidden_states=self.pooling == "sum4-mean")
            return pool(out, attention_mask, self.pooling)

    return Pooled(enc.model, enc.pooling, "token_type_ids" in inputs).eval().to("cpu")


class RuntimeTextEncoder(_RuntimeEncoder):
    def __init__(self, torch_encoder, runtime: str, compiled: CompiledModel,
                 inputs: Sequence[str]):
        super().__init__(torch_encoder, runtime, compiled)
        self.inputs = list(inputs)

    def encode(self, texts: Sequence[str], device: str = "cpu", batch_size: int = 256,
               precision: str = "auto") -> np.ndarray:
        """As TextEncoder.encode: length-sorted batches, padding masked out of the pooling."""
        self._check(device, precision)
        out = np.zeros((len(texts), self.dim), np.float32)
        if not texts:
            return out
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="np")
            feeds = {k: np.ascontiguousarray(enc[k], np.int64) for k in self.inputs}
            out[idx] = self.compiled.run(feeds, precision)
        return out


def wrap_text_encoder(enc, runtime: str, where: str = "text model"):
    """`enc` (a pipelines.encoders.TextEncoder) as run by `runtime`; `enc` itself for torch."""
    check_runtime(runtime, where=where)
    if runtime == "torch":
        return enc
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in enc.tokenizer.model_input_names:
        names.append("token_type_ids")
    module = _text_module(enc, names)
    digest = weights_digest(module, "text", enc.encoder_id, enc.pooling, names)
    path = cache_root() / f"text-{_safe(enc.encoder_id)}-{enc.pooling}-{digest}.onnx"
    if not path.is_file():
        example = [" ".join(_WORDS[:n]) for n in (3, 9)]
        check = [" ".join(_WORDS[i:i + n]) for i, n in ((0, 2), (2, 15), (5, 7), (1, 11))]

        def tokens(texts):
            t = enc.tokenizer(texts, padding=True, truncation=True, max_length=enc.max_length,
                              return_tensors="pt")
            return [t[n] for n in names]

        _export_checked(module, path, runtime, where, names, tuple(tokens(example)),
                        tuple(tokens(check)), {**{n: {0: "batch", 1: "tokens"} for n in names},
                                               OUTPUT: {0: "batch"}})
    return RuntimeTextEncoder(enc, runtime, CompiledModel(path, runtime), names)


# ---------------------------------------------------------------- token states (BERTScore)

class RuntimeTokenModel:
    """A transformers encoder as bert-score calls it, `model(ids, attention_mask=...)[0]` (the
    token states of its last kept layer), run by an ONNX runtime on the CPU."""

    def __init__(self, compiled: CompiledModel, precision: str):
        self.compiled, self.precision = compiled, precision

    def eval(self):
        return self

    def __call__(self, input_ids, attention_mask=None, output_hidden_states: bool = False):
        import torch

        if output_hidden_states:
            raise ValueError("a runtime token model gives the last layer only (all_layers off)")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.compiled.run({"input_ids": input_ids.cpu().numpy(),
                                 "attention_mask": attention_mask.cpu().numpy()}, self.precision)
        return (torch.from_numpy(out),)


def wrap_token_model(model, tokenizer, runtime: str, precision: str = "fp32",
                     where: str = "bertscore model"):
    """`model` (a transformers encoder, as bert-score loaded and cut it) run by `runtime`:
    same call, same token states to float rounding; `model` itself for torch."""
    check_runtime(runtime, "cpu", precision, where)
    if runtime == "torch":
        return model
    import torch

    class States(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids, attention_mask=attention_mask)[0]

    module = States().eval().to("cpu")
    names = ["input_ids", "attention_mask"]
    path = cache_root() / f"tokens-{weights_digest(module, 'tokens', names)}.onnx"
    if not path.is_file():

        def tokens(texts):
            t = tokenizer(texts, padding=True, return_tensors="pt")
            return tuple(t[n] for n in names)

        _export_checked(module, path, runtime, where, names,
                        tokens([" ".join(_WORDS[:n]) for n in (3, 9)]),
                        tokens([" ".join(_WORDS[i:i + n]) for i, n in ((0, 2), (2, 15), (5, 7))]),
                        {**{n: {0: "batch", 1: "tokens"} for n in names},
                         OUTPUT: {0: "batch", 1: "tokens"}})
    return RuntimeTokenModel(CompiledModel(path, runtime), precision)


# ---------------------------------------------------------------- helpers

def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))[-60:]


def _export_checked(module, path: Path, runtime: str, where: str, names: list[str],
                    example: tuple, check: tuple, dynamic_axes: dict) -> None:
    """Export `module` traced on `example`; keep it (rename it to `path`) only if `runtime`
    running it agrees with torch on `check`, an input of other shapes than the traced one."""
    import torch

    tmp = export_onnx(module, example, names, dynamic_axes, _tmp_name(path), where)
    try:
        with torch.inference_mode():
            want = module(*check).float().numpy()
        try:
            got = CompiledModel(tmp, runtime).run(
                {n: t.numpy() for n, t in zip(names, check)}, "fp32")
        except Exception as exc:  # noqa: BLE001 - a graph the runtime cannot load or run
            raise ConfigError(f"{where}: {runtime} cannot run the ONNX export "
                              f"({type(exc).__name__}: {str(exc)[:300]}); use runtime "
                              "'torch'") from exc
        err = _relative_error(want, got) if want.shape == got.shape else float("inf")
        if err > EXPORT_TOLERANCE:
            raise ConfigError(f"{where}: the ONNX export disagrees with the torch model "
                              f"(relative error {err:.2g} on a second input shape); use "
                              "runtime 'torch'")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
