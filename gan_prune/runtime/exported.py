"""Backends that run an exported model: 'onnxruntime' and 'openvino' (an .onnx file) and 'torchscript' (a traced
.pt file).

Each is built either from a loaded generator (exported on the fly, in memory, with psi as an input so any
truncation works) or from a file written by ``gan-prune export`` (whose truncation and noise mode are fixed
unless it was exported with a psi input). All run fp32 on the CPU; openvino is an optional package.

    run = BACKENDS.build('onnxruntime', 'model.onnx')
    img = run(z, truncation_psi=0.7)
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Any

import numpy as np
import torch

from gan_prune.errors import GanPruneError
from gan_prune.runtime.backends import BACKENDS
from gan_prune.runtime.export import METADATA_KEY, TORCHSCRIPT_EXTRA, quiet_jit


def is_torchscript_file(path: str) -> bool:
    """Whether `path` is a TorchScript archive (a zip holding code/ and constants.pkl)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(name.endswith('/constants.pkl') for name in names) and any('/code/' in name for name in names)


def exported_kind(path: str) -> str | None:
    """'onnx', 'torchscript' or None (not an exported model: e.g. a network pickle)."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        return None
    if str(path).lower().endswith('.onnx'):
        return 'onnx'
    return 'torchscript' if is_torchscript_file(str(path)) else None


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

    def __init__(self, G: torch.nn.Module | str, device: str | torch.device = 'cpu', threads: int | None = None) -> None:
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

    def __init__(self, G: torch.nn.Module | str, device: str | torch.device = 'cpu', threads: int | None = None) -> None:
        import_openvino()  # before any export: one line when the package is missing
        super().__init__(G, device, threads)

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

    def __init__(self, G: torch.nn.Module | str, device: str | torch.device = 'cpu') -> None:
        if torch.device(device).type != 'cpu':
            raise GanPruneError('the torchscript backend runs on the CPU; pass --device cpu')
        self.G = G if isinstance(G, torch.nn.Module) else None
        self.noise_mode: str | None = None  # for a module: the noise mode of the module traced last (one per mode)
        if not isinstance(G, torch.nn.Module):
            self._load(G)

    def _load(self, source: str | io.BytesIO) -> None:
        extra = {TORCHSCRIPT_EXTRA: ''}
        with quiet_jit():
            self.module = torch.jit.load(source, map_location='cpu', _extra_files=extra).eval()
        self.facts = json.loads(extra[TORCHSCRIPT_EXTRA] or '{}')
        if 'z_dim' not in self.facts:
            raise GanPruneError('this TorchScript file was not written by gan-prune export (no gan_prune.json)')

    def _export_for(self, noise_mode: str) -> None:
        if self.G is None or noise_mode == self.noise_mode:
            return
        import tempfile
        from gan_prune.runtime.export import export_torchscript
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, 'G.pt')
            export_torchscript(self.G, path, None, 1.0, noise_mode, psi_input=True)
            with open(path, 'rb') as f:
                self._load(io.BytesIO(f.read()))
        self.noise_mode = noise_mode

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
    'eager', meaning no choice) names another that does."""
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
        extra = {TORCHSCRIPT_EXTRA: ''}
        with quiet_jit():
            module = torch.jit.load(path, map_location='cpu', _extra_files=extra)
        facts = json.loads(extra[TORCHSCRIPT_EXTRA] or '{}')
        summary['facts'] = facts
        graph_inputs = [i.debugName() for i in list(module.graph.inputs())[1:]]
        summary['inputs'] = [dict(name=name, shape=_shape_from_facts(name, facts), dtype='float32')
                             for name in facts.get('inputs', graph_inputs)]
        summary['outputs'] = [dict(name='img', shape=_shape_from_facts('img', facts), dtype='float32')]
    return summary


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
        lines.append(f'{label:<11} ' + ', '.join(f'{v["name"]} {v["shape"]} {v["dtype"]}' for v in summary[key]))
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
