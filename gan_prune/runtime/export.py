"""Export a generator for other runtimes: ONNX (ONNX Runtime, OpenVINO, browsers) and TorchScript.

The exported model takes ``z`` [N, z_dim] (and ``c`` [N, c_dim] when the generator is conditional) and returns
``img`` [N, C, H, W] float32 in the generator's own value range (about [-1, 1]); mapping and truncation are
inside. With ``psi_input=True`` the truncation psi is a third input ``psi`` [1] instead of a constant (the web
page's slider uses this).

The network is traced in fp32 along its reference code path. A naive export returned a constant image that
did not depend on z: a network loaded from a pickle requires no grad, so its layers chose CPU inference paths
that call compiled kernels on raw tensor memory; a tracer cannot see through those calls and records their
outputs as constants (the tracer's own words: the output "did not have observable data dependence with trace
inputs"). And fp16 blocks would be traced in half precision, which CPU runtimes run 20-30x slower.
So the exporter traces a copy whose parameters require grad, with grad mode on and ``force_fp32=True``: every
inference-only shortcut steps aside, only standard operators remain, and the graph depends on z. (Where the
layers have a single code path, the copy changes nothing; the export is the same.) Modulation is traced in its
non-fused form (styles applied to the activations), so the batch dimension stays dynamic.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import tempfile
import warnings
from typing import Any, Iterator

import torch

from gan_prune.errors import GanPruneError
from gan_prune.fileio import atomic_write, atomic_write_bytes
from gan_prune.runtime import webassets

FORMATS = ('onnx', 'torchscript', 'web')
EXPORT_NOISE_MODES = ('const', 'none')
ONNX_OPSET = 18
METADATA_KEY = 'gan_prune'  # ONNX metadata_props key / TorchScript extra file holding the facts below as JSON
TORCHSCRIPT_EXTRA = 'gan_prune.json'


class ExportedGenerator(torch.nn.Module):
    """``G`` as a plain function of its inputs: (z[, c][, psi]) -> img, fp32, along the reference code path.

    Build it with exported_generator(), which picks the subclass whose forward takes exactly those inputs.
    """

    def __init__(self, G: torch.nn.Module, truncation_psi: float = 1.0, noise_mode: str = 'const',
                 psi_input: bool = False) -> None:
        super().__init__()
        if noise_mode not in EXPORT_NOISE_MODES:
            raise GanPruneError(f'--noise-mode {noise_mode!r} cannot be exported (random noise would be baked in); '
                                f'choose one of {", ".join(EXPORT_NOISE_MODES)}')
        self.G = reference_copy(G)
        self.conditional = int(G.c_dim) > 0
        self.truncation_psi = float(truncation_psi)
        self.noise_mode = noise_mode
        self.psi_input = psi_input

    def generate(self, z: torch.Tensor, c: torch.Tensor | None, psi: torch.Tensor | None) -> torch.Tensor:
        if c is None:
            c = z.new_zeros([z.shape[0], 0])
        if psi is not None:
            ws = self.G.mapping(z, c, truncation_psi=1)
            ws = self.G.mapping.w_avg.lerp(ws, psi.reshape([]))  # the mapping's own truncation, psi as a tensor
        else:
            ws = self.G.mapping(z, c, truncation_psi=self.truncation_psi)
        # Non-fused modulation: the fused form is a grouped convolution with one group per sample, which fixes the
        # batch size into the graph; modulating the activations instead keeps the batch dimension free.
        return self.G.synthesis(ws, noise_mode=self.noise_mode, force_fp32=True, fused_modconv=False)

    def input_names(self) -> list[str]:
        return ['z'] + (['c'] if self.conditional else []) + (['psi'] if self.psi_input else [])

    def example_inputs(self, batch: int) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(0)
        inputs = [torch.randn([batch, int(self.G.z_dim)], generator=gen)]
        if self.conditional:
            inputs.append(torch.eye(int(self.G.c_dim))[torch.arange(batch) % int(self.G.c_dim)])
        if self.psi_input:
            inputs.append(torch.tensor([self.truncation_psi]))
        return tuple(inputs)


# One forward signature per set of inputs: exporters name the graph's inputs after forward's parameters.
class _FromZ(ExportedGenerator):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generate(z, None, None)


class _FromZC(ExportedGenerator):
    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.generate(z, c, None)


class _FromZPsi(ExportedGenerator):
    def forward(self, z: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        return self.generate(z, None, psi)


class _FromZCPsi(ExportedGenerator):
    def forward(self, z: torch.Tensor, c: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        return self.generate(z, c, psi)


def exported_generator(G: torch.nn.Module, truncation_psi: float = 1.0, noise_mode: str = 'const',
                       psi_input: bool = False) -> ExportedGenerator:
    """The module to export: inputs z, c (conditional generators only) and psi (with psi_input), output img."""
    kind = {(False, False): _FromZ, (True, False): _FromZC, (False, True): _FromZPsi, (True, True): _FromZCPsi}
    return kind[int(G.c_dim) > 0, bool(psi_input)](G, truncation_psi, noise_mode, psi_input)


def reference_copy(G: torch.nn.Module) -> torch.nn.Module:
    """A float32 CPU copy of G whose parameters require grad (so no inference-only shortcut applies)."""
    G = copy.deepcopy(G).cpu().float().eval()
    return G.requires_grad_(True)


def model_facts(G: torch.nn.Module, module: ExportedGenerator, batch: int | None, fmt: str,
                source: str | None = None, fp16_weights: bool = False) -> dict[str, Any]:
    """What a backend or the web page needs to know about an exported model (stored inside it as JSON)."""
    return dict(format=fmt, z_dim=int(G.z_dim), c_dim=int(G.c_dim), w_dim=int(G.w_dim),
                img_resolution=int(G.img_resolution), img_channels=int(G.img_channels),
                truncation_psi=None if module.psi_input else module.truncation_psi, psi_input=module.psi_input,
                noise_mode=module.noise_mode, batch=batch, inputs=module.input_names(), outputs=['img'],
                fp16_weights=fp16_weights, source=source, generator_class=type(G).__name__)


def parse_batch(text: str | int | None) -> int | None:
    """'dynamic' (or None) -> None; a positive integer -> that fixed batch size."""
    if text is None or str(text).strip().lower() == 'dynamic':
        return None
    try:
        batch = int(text)
    except ValueError:
        raise GanPruneError(f'--batch {text!r} is not a number; use a positive integer or "dynamic"') from None
    if batch < 1:
        raise GanPruneError(f'--batch {batch} must be at least 1 (or "dynamic")')
    return batch


def _export_onnx_program(module: ExportedGenerator, batch: int | None):
    """torch.onnx's dynamo exporter on the reference path; a dynamic batch is traced with 2 (1 would specialise)."""
    inputs = module.example_inputs(batch or 2)
    names = module.input_names()
    dynamic_shapes = None
    if batch is None:
        dim = torch.export.Dim('batch', min=1, max=4096)
        dynamic_shapes = {name: ({0: dim} if name in ('z', 'c') else None) for name in names}
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter('ignore')
        return torch.onnx.export(module, inputs, dynamo=True, opset_version=ONNX_OPSET, input_names=names,
                                 output_names=['img'], dynamic_shapes=dynamic_shapes, verbose=False,
                                 optimize=True)


def strip_trace_metadata(model) -> None:
    """Drop the per-node Python stack traces and module paths the exporter records (most of a small model's
    bytes; of no use to a runtime)."""
    for node in model.graph.node:
        node.doc_string = ''
        del node.metadata_props[:]
    for value in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        del value.metadata_props[:]
    for init in model.graph.initializer:
        del init.metadata_props[:]


def store_weights_fp16(model) -> int:
    """Store each float32 weight (initializer) as float16 plus a Cast back to float32 at the graph's start.

    The file shrinks to about half; every operator still computes in float32 (on values rounded to fp16).
    Returns the number of weights converted.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    graph = model.graph
    casts, kept, converted = [], [], 0
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or np.prod(init.dims or [1]) < 16:
            kept.append(init)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name + '__fp16')
        kept.append(half)
        casts.append(helper.make_node('Cast', [half.name], [init.name], to=onnx.TensorProto.FLOAT,
                                      name=init.name + '__to_fp32'))
        converted += 1
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return converted


def export_onnx(G: torch.nn.Module, path: str, batch: int | None = None, truncation_psi: float = 1.0,
                noise_mode: str = 'const', fp16_weights: bool = False, psi_input: bool = False,
                source: str | None = None) -> dict[str, Any]:
    """Write G as an ONNX model (opset 18, one file, written atomically); returns the facts stored in it."""
    import onnx
    module = exported_generator(G, truncation_psi, noise_mode, psi_input)
    program = _export_onnx_program(module, batch)
    model = program.model_proto
    strip_trace_metadata(model)
    if fp16_weights:
        store_weights_fp16(model)
    facts = model_facts(G, module, batch, 'onnx', source, fp16_weights)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(facts)
    model.producer_name = 'gan_prune'
    onnx.checker.check_model(model)
    _makedirs_for(path)
    atomic_write(path, lambda f: f.write(model.SerializeToString()))
    return facts


def export_torchscript(G: torch.nn.Module, path: str, batch: int | None = None, truncation_psi: float = 1.0,
                       noise_mode: str = 'const', psi_input: bool = False,
                       source: str | None = None) -> dict[str, Any]:
    """Write G as a traced TorchScript module (loadable with torch.jit.load, no gan_prune needed)."""
    module = exported_generator(G, truncation_psi, noise_mode, psi_input)
    inputs = module.example_inputs(batch or 2)
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter('ignore')  # tracer warnings about Python-side shape checks
        traced = torch.jit.trace(module, inputs, check_trace=False)
    traced = traced.requires_grad_(False)
    facts = model_facts(G, module, batch, 'torchscript', source)
    _makedirs_for(path)
    with quiet_jit():
        atomic_write(path, lambda f: torch.jit.save(traced, f, _extra_files={TORCHSCRIPT_EXTRA: json.dumps(facts)}))
    return facts


@contextlib.contextmanager
def quiet_jit() -> Iterator[None]:
    """Silence torch.jit's deprecation notice: the user asked for TorchScript (--help says it is deprecated)."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message=r'`torch\.jit\.', category=FutureWarning)
        yield


def _makedirs_for(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)


def export_generator(G: torch.nn.Module, fmt: str, out: str, batch: int | None = None, truncation_psi: float = 1.0,
                     noise_mode: str = 'const', fp16_weights: bool = False, source: str | None = None,
                     ort_web: str | None = None) -> dict[str, Any]:
    """Dispatch on `fmt` (one of FORMATS); returns the stored facts (plus 'files' for the web folder)."""
    if fmt != 'web' and os.path.isdir(out):
        suffix = 'onnx' if fmt == 'onnx' else 'pt'
        raise GanPruneError(f'--out {out} is a folder; --format {fmt} writes one file (e.g. --out {out}/G.{suffix})')
    if fmt == 'onnx':
        return export_onnx(G, out, batch, truncation_psi, noise_mode, fp16_weights, source=source)
    if fmt == 'torchscript':
        if fp16_weights:
            raise GanPruneError('--fp16 applies to --format onnx and web only (TorchScript keeps fp32 weights)')
        return export_torchscript(G, out, batch, truncation_psi, noise_mode, source=source)
    if fmt == 'web':
        return export_web(G, out, truncation_psi, noise_mode, fp16_weights, source=source, ort_web=ort_web)
    raise GanPruneError(f'--format {fmt!r} is unknown; choose one of {", ".join(FORMATS)}')


def temporary_onnx(G: torch.nn.Module, noise_mode: str = 'const') -> bytes:
    """G as ONNX bytes with psi as an input (what the onnxruntime backend runs when handed a module)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'G.onnx')
        export_onnx(G, path, None, 1.0, noise_mode, psi_input=True)
        with open(path, 'rb') as f:
            return f.read()


def export_web(G: torch.nn.Module, out: str, truncation_psi: float = 0.7, noise_mode: str = 'const',
               fp16_weights: bool = False, source: str | None = None, ort_web: str | None = None) -> dict[str, Any]:
    """Write the page folder `out` (built next to it, then moved in place); returns the facts in model.json."""
    dist = webassets.find_ort_web(ort_web)
    webassets.check_out_folder(out)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.' + os.path.basename(os.path.abspath(out)) + '.', dir=parent)
    try:
        facts = export_onnx(G, os.path.join(tmp, 'model.onnx'), None, truncation_psi, noise_mode, fp16_weights,
                            psi_input=True, source=source)
        facts.update(format='web', truncation_default=float(truncation_psi),
                     model_bytes=os.path.getsize(os.path.join(tmp, 'model.onnx')),
                     ort_web_version=webassets.ort_web_version(dist))
        atomic_write(os.path.join(tmp, 'model.json'), lambda f: f.write(json.dumps(facts, indent=2).encode()))
        for name in webassets.PAGE_FILES:
            atomic_write_bytes(os.path.join(tmp, name), webassets.page_source(name))
        os.makedirs(os.path.join(tmp, 'ort'))
        for name in webassets.ORT_WEB_FILES:
            shutil.copyfile(os.path.join(dist, name), os.path.join(tmp, 'ort', name))
        os.chmod(tmp, 0o777 & ~webassets.umask())  # mkdtemp makes it private; a page folder is meant to be served
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    facts['files'] = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)
    return facts
