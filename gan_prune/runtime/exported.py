"""Backends that run an exported model: 'onnxruntime' and 'openvino' (an .onnx file) and 'torchscript' (a traced
.pt file).

Each is built either from a loaded generator (exported on the fly, in memory, with psi as an input so any
truncation works) or from a file written by ``gan-prune export`` (whose truncation and noise mode are fixed
unless it was exported with a psi input). All run fp32 on the CPU; openvino is an optional package.

    run = BACKENDS.build('onnxruntime', 'model.onnx')
    img = run(z, truncation_psi=0.7)

An ONNX file is data (a graph of standard operators and its weights). A TorchScript file is a program: it loads
through gan_prune.features.torchscript, only with trust=True (--trust-pickle); its stored facts are read from the
archive as data first, so `gan-prune info` describes it without running anything.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch

from gan_prune.errors import GanPruneError
from gan_prune.features import torchscript
from gan_prune.runtime.backends import BACKENDS
from gan_prune.runtime.export import METADATA_KEY, TORCHSCRIPT_EXTRA, export_torchscript, quiet_jit

# What the refusal of an untrusted TorchScript export offers instead of --trust-pickle.
ONNX_INSTEAD = 'use the ONNX export (gan-prune export --format onnx), which holds no code'


def exported_kind(path: str) -> str | None:
    """'onnx', 'torchscript' or None (not an exported model: e.g. a network pickle)."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        return None
    if str(path).lower().endswith('.onnx'):
        return 'onnx'
    return 'torchscript' if torchscript.is_torchscript_archive(str(path)) else None


def torchscript_facts(path: str) -> dict[str, Any]:
    """The JSON facts the exporter stored in a TorchScript file ({} for a foreign one), read from the archive as
    data: nothing of the file is loaded or run."""
    raw = torchscript.read_extra_file(path, TORCHSCRIPT_EXTRA)
    if raw is None:
        return {}
    try:
        facts = json.loads(raw.decode('utf-8'))
    except (UnicodeDecodeError, ValueError):
        facts = None
    if not isinstance(facts, dict):
        raise GanPruneError(f'{path}: its {TORCHSCRIPT_EXTRA} is not a JSON object; export the model again')
    return facts


def onnx_facts(model) -> dict[str, Any]:
    """The JSON facts the exporter stored in an ONNX model's metadata ({} for a foreign model)."""
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    return {}


class ExportedBackend:
    """Common part: the facts of the model, and checking a call against what was baked in at export."""

    facts: dict[str, Any]
    G: torch.nn.Module | None = None

    @property
    def z_dim(self) -> int:
        return int(self.G.z_dim) if self.G is not None else int(self.facts['z_dim'])

    @property
    def c_dim(self) -> int:
        return int(self.G.c_dim) if self.G is not None else int(self.facts.get('c_dim', 0))

    def _check_call(self, truncation_psi: float, noise_mode: str) -> None:
        baked_psi = self.facts.get('truncation_psi')
        if not self.facts.get('psi_input') and baked_psi is not None and abs(float(truncation_psi) - baked_psi) > 1e-6:
            raise GanPruneError(f'this model was exported with truncation {baked_psi:g}; pass --trunc {baked_psi:g} '
                                f'or export again with --truncation {float(truncation_psi):g}')
        baked_noise = self.facts.get('noise_mode')
        if baked_noise is not None and noise_mode != baked_noise:
            raise GanPruneError(f'this model was exported with noise mode {baked_noise!r}; pass --noise-mode '
                                f'{baked_noise} or export again with --noise-mode {noise_mode}')

    def _inputs(self, z: torch.Tensor, c: torch.Tensor | None, truncation_psi: float) -> list[np.ndarray]:
        z = z.detach().cpu().to(torch.float32)
        inputs = [z.numpy()]
        if self.c_dim:
            if c is None:
                raise GanPruneError(f'this generator is conditional ({self.c_dim} classes); pass a label')
            inputs.append(c.detach().cpu().to(torch.float32).numpy())
        if self.facts.get('psi_input'):
            inputs.append(np.array([truncation_psi], dtype=np.float32))
        return inputs


class OnnxModelBackend(ExportedBackend):
    """Common part of the backends that run an ONNX model: loading it (or exporting a module on first use),
    its facts, and the call. A subclass prepares its runtime's model (_prepare) and runs it (_run)."""

    name = ''
    input_names: list[str]  # set by _prepare

    def __init__(self, G: torch.nn.Module | str, device: str | torch.device = 'cpu', threads: int | None = None,
                 trust: bool = False) -> None:
        """`trust` is accepted like every file backend's and not needed: an ONNX file is data."""
        if torch.device(device).type != 'cpu':
            raise GanPruneError(f'the {self.name} backend runs on the CPU; pass --device cpu')
        self.threads = threads
        self.G = G if isinstance(G, torch.nn.Module) else None
        self.noise_mode: str | None = None  # for a module: the noise mode of the model exported last (one per mode)
        if not isinstance(G, torch.nn.Module):
            with open(G, 'rb') as f:
                self._load(f.read())

    def _load(self, data: bytes) -> None:
        import onnx
        model = onnx.load_model_from_string(data)
        self.facts = onnx_facts(model) or self._facts_from_graph(model)
        self._prepare(data)

    def _prepare(self, data: bytes) -> None:
        """Make the model `data` runnable with self.threads threads; set self.input_names (the model's order)."""
        raise NotImplementedError

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The model's output img for `feeds` (input name -> array)."""
        raise NotImplementedError

    def _export_for(self, noise_mode: str) -> None:
        """A module is exported (in memory, psi as an input) on first use and again for another noise mode."""
        if self.G is not None and noise_mode != self.noise_mode:
            from gan_prune.runtime.export import temporary_onnx
            self._load(temporary_onnx(self.G, noise_mode))
            self.noise_mode = noise_mode

    @staticmethod
    def _facts_from_graph(model) -> dict[str, Any]:
        """For an ONNX model without our metadata: dimensions from its input shapes, nothing baked in known."""
        dims = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
        if 'z' not in dims:
            raise GanPruneError('this ONNX model has no input named z; export it with gan-prune export')
        return dict(z_dim=dims['z'][-1], c_dim=dims.get('c', [0, 0])[-1], psi_input='psi' in dims)

    def __call__(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                 noise_mode: str = 'const') -> torch.Tensor:
        self._export_for(noise_mode)
        self._check_call(truncation_psi, noise_mode)
        feeds = dict(zip(self.input_names, self._inputs(z, c, truncation_psi)))
        return torch.from_numpy(self._run(feeds))


@BACKENDS.register('onnxruntime', needs_module=False, reads=('.onnx',))
class OnnxRuntimeBackend(OnnxModelBackend):
    """ONNX Runtime (CPU execution provider) on a model exported with the dynamo exporter, fp32."""

    name = 'onnxruntime'

    def _prepare(self, data: bytes) -> None:
        self.session = self._session(data, self.threads)
        self.input_names = [i.name for i in self.session.get_inputs()]

    @staticmethod
    def _session(data: bytes, threads: int | None):
        import onnxruntime as ort
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        return ort.InferenceSession(data, options, providers=['CPUExecutionProvider'])

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(['img'], feeds)[0]


def import_openvino():
    """The openvino package, or one line saying how to install it (it is optional)."""
    try:
        import openvino
    except ImportError:
        raise GanPruneError('the openvino backend needs the openvino package: pip install openvino') from None
    return openvino


@BACKENDS.register('openvino', needs_module=False, reads=('.onnx',))
class OpenVinoBackend(OnnxModelBackend):
    """OpenVINO (CPU plugin) on the same ONNX model as onnxruntime, which it reads directly; fp32.

    The precision is pinned to f32: on CPUs with bfloat16 (AVX-512 BF16, AMX) OpenVINO would otherwise compute
    in bfloat16. A dynamic batch stays dynamic; `threads` sets INFERENCE_NUM_THREADS (default: OpenVINO's own).
    """

    name = 'openvino'

    def __init__(self, G: torch.nn.Module | str, device: str | torch.device = 'cpu', threads: int | None = None,
                 trust: bool = False) -> None:
        import_openvino()  # before any export: one line when the package is missing
        super().__init__(G, device, threads, trust)

    def _prepare(self, data: bytes) -> None:
        ov = import_openvino()
        core = ov.Core()
        config: dict[str, Any] = {'INFERENCE_PRECISION_HINT': 'f32'}
        if self.threads:
            config['INFERENCE_NUM_THREADS'] = int(self.threads)
        self.compiled = core.compile_model(core.read_model(data), 'CPU', config)
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.compiled(feeds)['img']  # a copy: the request's own output buffer is reused by the next call


@BACKENDS.register('torchscript', needs_module=False, reads=('.pt', '.ts'))
class TorchScriptBackend(ExportedBackend):
    """A traced TorchScript module of the reference path, fp32 on the CPU (torch.jit.load, no gan_prune needed)."""

    def __init__(self, G: torch.nn.Module | str, device: str | torch.device = 'cpu', trust: bool = False) -> None:
        """`trust` (--trust-pickle) lets a TorchScript file load: it is a program, and loading it runs its code."""
        if torch.device(device).type != 'cpu':
            raise GanPruneError('the torchscript backend runs on the CPU; pass --device cpu')
        self.G = G if isinstance(G, torch.nn.Module) else None
        self.noise_mode: str | None = None  # for a module: the noise mode of the module traced last (one per mode)
        if not isinstance(G, torch.nn.Module):
            self._load_file(G, trust)

    def _load_file(self, path: str, trust: bool) -> None:
        """The facts first (data: a foreign file is refused before anything loads), then the program, if trusted."""
        facts = torchscript_facts(path)
        if 'z_dim' not in facts:
            raise GanPruneError(f'{path}: this TorchScript file was not written by gan-prune export (no '
                                f'{TORCHSCRIPT_EXTRA})')
        with quiet_jit():
            module = torchscript.load_torchscript(path, trust, 'exported generator', instead=ONNX_INSTEAD)
        self.module, self.facts = module.eval(), facts

    def _export_for(self, noise_mode: str) -> None:
        """A module is traced (psi as an input) on first use and again for another noise mode. The file is the one
        this process just wrote from a network already loaded, so loading it needs no trust."""
        if self.G is None or noise_mode == self.noise_mode:
            return
        import tempfile
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, 'G.pt')
            facts = export_torchscript(self.G, path, None, 1.0, noise_mode, psi_input=True)
            with quiet_jit():
                self.module = torch.jit.load(path, map_location='cpu').eval()
        self.facts, self.noise_mode = facts, noise_mode

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                 noise_mode: str = 'const') -> torch.Tensor:
        self._export_for(noise_mode)
        self._check_call(truncation_psi, noise_mode)
        return self.module(*[torch.from_numpy(a) for a in self._inputs(z, c, truncation_psi)])


# The kind of an exported file (exported_kind) -> the suffix a backend declares in `reads` to run it.
KIND_SUFFIX = {'onnx': '.onnx', 'torchscript': '.pt'}


def load_exported(path: str, backend: str | None = None, **kwargs: Any) -> ExportedBackend:
    """The backend for an exported file: the first registered one that reads its kind, unless `backend` (or
    'eager', meaning no choice) names another that does. `kwargs` go to the backend (`trust=True` lets a
    TorchScript file load)."""
    kind = exported_kind(path)
    if kind is None:
        raise GanPruneError(f'{path} is not an exported model (.onnx or a TorchScript file from gan-prune export)')
    readers = [name for name in BACKENDS if KIND_SUFFIX[kind] in BACKENDS.info(name).get('reads', ())]
    if backend not in (None, 'eager', *readers):
        raise GanPruneError(f'{path} is a {kind} model; run it with ' +
                            ' or '.join(f'--backend {name}' for name in readers))
    return BACKENDS.build(readers[0] if backend in (None, 'eager') else backend, path, **kwargs)


def describe_exported(path: str) -> dict[str, Any]:
    """What `gan-prune info` shows for an exported model: inputs, outputs, size, opset, stored facts."""
    kind = exported_kind(path)
    summary: dict[str, Any] = dict(source=path, format=kind, size_bytes=os.path.getsize(path))
    if kind == 'onnx':
        import onnx
        model = onnx.load(path)
        summary['opset'] = {o.domain or 'ai.onnx': int(o.version) for o in model.opset_import}
        summary['inputs'] = [_value_info(v) for v in model.graph.input]
        summary['outputs'] = [_value_info(v) for v in model.graph.output]
        summary['nodes'] = len(model.graph.node)
        summary['producer'] = f'{model.producer_name} {model.producer_version}'.strip()
        summary['facts'] = onnx_facts(model)
    else:
        summary.update(_describe_torchscript(path))
    return summary


def _describe_torchscript(path: str) -> dict[str, Any]:
    """Facts, inputs and outputs of a TorchScript export, from its stored facts only: describing a file must not
    run it, and the inputs of a foreign file (no facts) stay unknown."""
    facts = torchscript_facts(path)
    names = facts.get('inputs', [])
    return dict(facts=facts, inputs=[_tensor(name, facts) for name in names],
                outputs=[_tensor(name, facts) for name in facts.get('outputs', ['img'] if facts else [])])


def _tensor(name: str, facts: dict[str, Any]) -> dict[str, Any]:
    return dict(name=name, shape=_shape_from_facts(name, facts), dtype='float32')


def _value_info(value) -> dict[str, Any]:
    import onnx
    tensor = value.type.tensor_type
    shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
    return dict(name=value.name, shape=shape, dtype=onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name)


def _shape_from_facts(name: str, facts: dict[str, Any]) -> list:
    batch = facts.get('batch') or 'batch'
    shapes: dict[str, list[Any]] = dict(z=[batch, facts.get('z_dim')], c=[batch, facts.get('c_dim')], psi=[1],
                  img=[batch, facts.get('img_channels'), facts.get('img_resolution'), facts.get('img_resolution')])
    return shapes.get(name, [])


def format_exported(summary: dict[str, Any]) -> str:
    """The text `gan-prune info` prints for an exported model."""
    facts = summary.get('facts') or {}
    lines = [f'source:     {summary["source"]}',
             f'format:     {summary["format"]} model ({summary["size_bytes"] / 2 ** 20:.2f} MiB)']
    if 'opset' in summary:
        lines.append('opset:      ' + ', '.join(f'{d} {v}' for d, v in summary['opset'].items()) +
                     f'; {summary["nodes"]} nodes; producer {summary["producer"] or "?"}')
    for label, key in (('inputs:', 'inputs'), ('outputs:', 'outputs')):
        described = ', '.join(f'{v["name"]} {v["shape"]} {v["dtype"]}' for v in summary[key])
        lines.append(f'{label:<11} ' + (described or 'unknown (not written by gan-prune export)'))
    if facts:
        psi = 'an input (psi)' if facts.get('psi_input') else f'{facts.get("truncation_psi")}'
        lines.append(f'generator:  {facts.get("generator_class", "?")} {facts.get("img_resolution")}x'
                     f'{facts.get("img_resolution")}x{facts.get("img_channels")}, z_dim {facts.get("z_dim")}, '
                     f'c_dim {facts.get("c_dim")}')
        lines.append(f'baked in:   truncation {psi}, noise mode {facts.get("noise_mode")}, batch '
                     f'{facts.get("batch") or "dynamic"}, fp16 weight storage {"yes" if facts.get("fp16_weights") else "no"}')
        if facts.get('source'):
            lines.append(f'exported from: {facts["source"]}')
    return '\n'.join(lines)
