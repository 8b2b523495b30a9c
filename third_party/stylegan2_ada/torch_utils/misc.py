"""Small utilities the StyleGAN2-ADA networks and training code use: cached constants, shape checks, samplers,
parameter copying, DDP utilities and a module summary printer."""
from __future__ import annotations

import contextlib
import functools
import re
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

# ------------------------------------------------------------------------------------------------------------------
# Cached constant tensors.

_constant_cache: Dict[tuple, torch.Tensor] = {}


def constant(value, shape: Optional[Sequence[int]] = None, dtype: Optional[torch.dtype] = None,
             device: Optional[torch.device] = None, memory_format: Optional[torch.memory_format] = None
             ) -> torch.Tensor:
    """A tensor holding `value` (broadcast to `shape`), created once per (value, shape, dtype, device, format).

    Defaults: torch's default dtype, CPU, contiguous. Callers must not modify the result in place.
    """
    value = np.asarray(value)
    if shape is not None:
        shape = tuple(shape)
    if dtype is None:
        dtype = torch.get_default_dtype()
    if device is None:
        device = torch.device('cpu')
    device = torch.device(device)
    if memory_format is None:
        memory_format = torch.contiguous_format

    key = (value.shape, value.dtype, value.tobytes(), shape, dtype, device, memory_format)
    tensor = _constant_cache.get(key)
    if tensor is None:
        tensor = torch.as_tensor(value.copy(), dtype=dtype, device=device)
        if shape is not None:
            tensor = torch.broadcast_to(tensor, shape)
        tensor = tensor.contiguous(memory_format=memory_format)
        _constant_cache[key] = tensor
    return tensor


# ------------------------------------------------------------------------------------------------------------------
# Thin aliases kept for code written against older PyTorch versions.

nan_to_num = torch.nan_to_num
symbolic_assert = torch._assert  # pylint: disable=protected-access


class suppress_tracer_warnings(warnings.catch_warnings):
    """Context manager that silences torch.jit.TracerWarning (shape checks are meant to be traced as constants)."""

    def __enter__(self):
        result = super().__enter__()
        warnings.simplefilter('ignore', category=torch.jit.TracerWarning)
        return result


# ------------------------------------------------------------------------------------------------------------------
# Shape checks and profiling.

def assert_shape(tensor: torch.Tensor, ref_shape: Sequence[Any]) -> None:
    """Check tensor.ndim and every size against `ref_shape`; None entries match anything.

    Works under torch.jit tracing, where sizes may be tensors (checked with symbolic_assert).
    """
    if tensor.ndim != len(ref_shape):
        raise AssertionError(f'Wrong number of dimensions: got {tensor.ndim}, expected {len(ref_shape)}')
    for idx, (size, ref_size) in enumerate(zip(tensor.shape, ref_shape)):
        if ref_size is None:
            continue
        if isinstance(ref_size, torch.Tensor):
            with suppress_tracer_warnings():
                symbolic_assert(torch.equal(torch.as_tensor(size), ref_size), f'Wrong size for dimension {idx}')
        elif isinstance(size, torch.Tensor):
            with suppress_tracer_warnings():
                symbolic_assert(torch.equal(size, torch.as_tensor(ref_size)),
                                f'Wrong size for dimension {idx}: expected {ref_size}')
        elif size != ref_size:
            raise AssertionError(f'Wrong size for dimension {idx}: got {size}, expected {ref_size}')


def profiled_function(fn: Callable) -> Callable:
    """Decorator: run `fn` inside torch.autograd.profiler.record_function(fn.__name__)."""
    @functools.wraps(fn)
    def decorator(*args, **kwargs):
        with torch.autograd.profiler.record_function(fn.__name__):
            return fn(*args, **kwargs)
    return decorator


# ------------------------------------------------------------------------------------------------------------------
# Endless sampler.

class InfiniteSampler(torch.utils.data.Sampler):
    """Yields dataset indices forever; with several replicas, replica `rank` takes every num_replicas-th index.

    shuffle=True: the stream is a sequence of passes, each a fresh seeded permutation of the dataset, so the
    same seed gives the same stream on every replica. window_size is accepted for compatibility; 0 repeats the
    first permutation on every pass instead of drawing a new one. shuffle=False yields 0, 1, 2, ... in order.
    """

    def __init__(self, dataset, rank: int = 0, num_replicas: int = 1, shuffle: bool = True, seed: int = 0,
                 window_size: float = 0.5):
        assert len(dataset) > 0, 'dataset is empty'
        assert num_replicas > 0, 'num_replicas must be positive'
        assert 0 <= rank < num_replicas, 'rank must be in [0, num_replicas)'
        assert 0 <= window_size <= 1, 'window_size must be in [0, 1]'
        super().__init__()
        self.dataset = dataset
        self.rank = rank
        self.num_replicas = num_replicas
        self.shuffle = shuffle
        self.seed = seed
        self.window_size = window_size

    def __iter__(self) -> Iterator[int]:
        size = len(self.dataset)
        rnd = np.random.RandomState(self.seed)
        order = rnd.permutation(size) if self.shuffle else np.arange(size)
        position = 0
        while True:
            for index in order:
                if position % self.num_replicas == self.rank:
                    yield int(index)
                position += 1
            if self.shuffle and self.window_size > 0:
                order = rnd.permutation(size)


# ------------------------------------------------------------------------------------------------------------------
# Parameters and buffers.

def params_and_buffers(module: torch.nn.Module) -> List[torch.Tensor]:
    """All parameters, then all buffers."""
    assert isinstance(module, torch.nn.Module)
    return list(module.parameters()) + list(module.buffers())


def named_params_and_buffers(module: torch.nn.Module) -> List[Tuple[str, torch.Tensor]]:
    """(name, tensor) for all parameters, then all buffers."""
    assert isinstance(module, torch.nn.Module)
    return list(module.named_parameters()) + list(module.named_buffers())


def copy_params_and_buffers(src_module: torch.nn.Module, dst_module: torch.nn.Module,
                            require_all: bool = False) -> None:
    """Copy every parameter/buffer of dst that src also has (by name), keeping dst's requires_grad.

    require_all: fail if dst has a name that src lacks. Shapes must match.
    """
    assert isinstance(src_module, torch.nn.Module)
    assert isinstance(dst_module, torch.nn.Module)
    src_tensors = dict(named_params_and_buffers(src_module))
    with torch.no_grad():
        for name, tensor in named_params_and_buffers(dst_module):
            assert (name in src_tensors) or (not require_all), f'{name} is missing from the source module'
            if name in src_tensors:
                tensor.copy_(src_tensors[name].detach()).requires_grad_(tensor.requires_grad)


# ------------------------------------------------------------------------------------------------------------------
# Distributed training utilities.

@contextlib.contextmanager
def ddp_sync(module: torch.nn.Module, sync: bool) -> Iterator[None]:
    """For a DistributedDataParallel module with sync=False, skip gradient sync (no_sync()); otherwise no-op."""
    assert isinstance(module, torch.nn.Module)
    if sync or not isinstance(module, torch.nn.parallel.DistributedDataParallel):
        yield
    else:
        with module.no_sync():
            yield


def check_ddp_consistency(module: torch.nn.Module, ignore_regex: Optional[str] = None) -> None:
    """Assert every parameter/buffer equals rank 0's copy (NaNs compare equal). No-op without torch.distributed."""
    assert isinstance(module, torch.nn.Module)
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    for name, tensor in named_params_and_buffers(module):
        fullname = type(module).__name__ + '.' + name
        if ignore_regex is not None and re.fullmatch(ignore_regex, fullname):
            continue
        tensor = tensor.detach()
        if tensor.is_floating_point():
            tensor = nan_to_num(tensor)
        other = tensor.clone()
        torch.distributed.broadcast(tensor=other, src=0)
        assert (tensor == other).all(), f'{fullname} differs between processes'


# ------------------------------------------------------------------------------------------------------------------
# Module summary.

def print_module_summary(module: torch.nn.Module, inputs: Sequence[Any], max_nesting: int = 3,
                         skip_redundant: bool = True) -> Any:
    """Run module(*inputs), print one row per submodule (parameters, buffers, output shapes, dtypes); return outputs.

    max_nesting: deepest submodule level listed. skip_redundant: hide rows that add nothing (no own parameters,
    buffers, or outputs that differ from their parent's).
    """
    assert isinstance(module, torch.nn.Module)
    assert not isinstance(module, torch.jit.ScriptModule)
    assert isinstance(inputs, (tuple, list))

    rows: List[dict] = []  # in the order forward() finishes
    depth = [0]

    def pre_hook(_mod, _inputs):
        depth[0] += 1

    def post_hook(mod, _inputs, outputs):
        depth[0] -= 1
        if depth[0] <= max_nesting:
            outs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
            rows.append(dict(mod=mod, outputs=[t for t in outs if isinstance(t, torch.Tensor)]))

    handles = []
    for submodule in module.modules():
        handles.append(submodule.register_forward_pre_hook(pre_hook))
        handles.append(submodule.register_forward_hook(post_hook))
    try:
        outputs = module(*inputs)
    finally:
        for handle in handles:
            handle.remove()

    # Count each tensor once: under the innermost module that owns it and was called.
    seen = set()
    for row in rows:
        row['params'] = [t for t in row['mod'].parameters() if id(t) not in seen]
        row['buffers'] = [t for t in row['mod'].buffers() if id(t) not in seen]
        seen.update(id(t) for t in row['params'] + row['buffers'])
    if skip_redundant:
        rows = [row for row in rows if row['params'] or row['buffers'] or row['outputs'] or row['mod'] is module]

    names = {mod: name for name, mod in module.named_modules()}
    names[module] = '<top-level>'
    table = [['Module', 'Parameters', 'Buffers', 'Output shape', 'Datatype'], ['---'] * 5]
    total_params = total_buffers = 0
    for row in rows:
        n_params = sum(t.numel() for t in row['params'])
        n_buffers = sum(t.numel() for t in row['buffers'])
        total_params += n_params
        total_buffers += n_buffers
        shapes = [str(list(t.shape)) for t in row['outputs']] or ['-']
        dtypes = [str(t.dtype).split('.')[-1] for t in row['outputs']] or ['-']
        table.append([names.get(row['mod'], type(row['mod']).__name__), str(n_params) if n_params else '-',
                      str(n_buffers) if n_buffers else '-', shapes[0], dtypes[0]])
        for extra in range(1, len(shapes)):
            table.append([names.get(row['mod'], '') + f':{extra}', '', '', shapes[extra], dtypes[extra]])
    table.append(['---'] * 5)
    table.append(['Total', str(total_params), str(total_buffers), '', ''])

    widths = [max(len(cell) for cell in column) for column in zip(*table)]
    print()
    for line in table:
        print('  '.join(cell + ' ' * (width - len(cell)) for cell, width in zip(line, widths)).rstrip())
    print()
    return outputs
