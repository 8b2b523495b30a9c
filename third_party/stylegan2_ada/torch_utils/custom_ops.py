"""Just-in-time build of C++/CUDA extensions through torch.utils.cpp_extension.load (ninja).

The bundled ops do not need any plugin: they are pure PyTorch. get_plugin() is kept for code that brings its
own kernels. When the tools are missing (ninja, a C++ compiler, nvcc/CUDA for .cu sources) it raises
PluginUnavailableError with one line saying what is missing, before attempting a build, so callers can fall
back to a pure-PyTorch path instead of crashing.
"""
from __future__ import annotations

import glob
import hashlib
import importlib
import os
import shutil
from typing import Dict, List, Optional

import torch

verbosity = 'brief'  # 'none', 'brief' (one line per build) or 'full' (compiler output)

_cached_plugins: Dict[str, object] = {}


class PluginUnavailableError(RuntimeError):
    """A custom op cannot be built or loaded here; use the pure-PyTorch path instead."""


def _find_msvc() -> Optional[str]:
    """Newest cl.exe of a default Visual Studio install, or None."""
    patterns = ['C:/Program Files*/Microsoft Visual Studio/*/*/VC/Tools/MSVC/*/bin/Hostx64/x64',
                'C:/Program Files*/Microsoft Visual Studio */vc/bin']
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if found:
            return found[-1]
    return None


def _missing_tools(sources: List[str]) -> Optional[str]:
    """Describe the first missing build requirement, or None if everything needed is present."""
    from torch.utils import cpp_extension
    if not cpp_extension.is_ninja_available():
        return 'ninja is not installed (pip install ninja)'
    if os.name == 'nt':
        if shutil.which('cl') is None:
            msvc = _find_msvc()
            if msvc is None:
                return 'no MSVC compiler (cl.exe) found; install Visual Studio Build Tools'
            os.environ['PATH'] = msvc + os.pathsep + os.environ.get('PATH', '')
    elif shutil.which(os.environ.get('CXX', 'c++')) is None:
        return 'no C++ compiler found (set CXX or install g++)'
    if any(src.endswith('.cu') for src in sources):
        if torch.version.cuda is None:
            return 'this PyTorch build has no CUDA support'
        cuda_home = cpp_extension.CUDA_HOME
        nvcc = os.path.join(cuda_home, 'bin', 'nvcc') if cuda_home else None
        if nvcc is None or not (os.path.isfile(nvcc) or os.path.isfile(nvcc + '.exe')):
            return 'the CUDA toolkit (nvcc) was not found; set CUDA_HOME'
        if not torch.cuda.is_available():
            return 'no CUDA device is available'
    return None


def _source_digest(sources: List[str], build_kwargs: dict) -> str:
    """Hash of the source files' contents and the build options: a new build dir whenever either changes."""
    digest = hashlib.md5()
    for src in sorted(sources):
        digest.update(os.path.basename(src).encode('utf-8'))
        with open(src, 'rb') as f:
            digest.update(f.read())
    digest.update(repr(sorted((k, repr(v)) for k, v in build_kwargs.items())).encode('utf-8'))
    return digest.hexdigest()


def _build_dir(module_name: str, sources: List[str], build_kwargs: dict) -> str:
    from torch.utils import cpp_extension
    build_root = (os.environ.get('TORCH_EXTENSIONS_DIR')
                  or cpp_extension._get_build_directory(module_name, verbose=False))  # pylint: disable=protected-access
    return os.path.join(build_root, f'{module_name}_{_source_digest(sources, build_kwargs)[:16]}')


def is_built(module_name: str, sources: List[str], **build_kwargs) -> bool:
    """Whether get_plugin() with these arguments will load a library built earlier (no compilation)."""
    import sysconfig
    sources = [os.path.abspath(src) for src in sources]
    if not all(os.path.isfile(src) for src in sources):
        return False
    stem = os.path.join(_build_dir(module_name, sources, build_kwargs), module_name)
    suffixes = ['.pyd' if os.name == 'nt' else '.so', sysconfig.get_config_var('EXT_SUFFIX') or '.so']
    return any(os.path.isfile(stem + suffix) for suffix in suffixes)


def get_plugin(module_name: str, sources: List[str], **build_kwargs):
    """Build (once per process, cached on disk by content) and import the extension `module_name`.

    sources: C++/CUDA files; build_kwargs go to torch.utils.cpp_extension.load (e.g. extra_cuda_cflags).
    Raises PluginUnavailableError if the tools are missing or the build fails.
    """
    assert verbosity in ('none', 'brief', 'full'), "verbosity must be 'none', 'brief' or 'full'"
    if module_name in _cached_plugins:
        return _cached_plugins[module_name]

    sources = [os.path.abspath(src) for src in sources]
    missing = [src for src in sources if not os.path.isfile(src)]
    if missing:
        raise PluginUnavailableError(f'cannot build {module_name}: source file {missing[0]} does not exist')
    problem = _missing_tools(sources)
    if problem is not None:
        raise PluginUnavailableError(f'cannot build {module_name}: {problem}')

    from torch.utils import cpp_extension
    if verbosity == 'full':
        print(f'Building custom op "{module_name}"...', flush=True)
    elif verbosity == 'brief':
        print(f'Building custom op "{module_name}"... ', end='', flush=True)
    try:
        build_dir = _build_dir(module_name, sources, build_kwargs)
        os.makedirs(build_dir, exist_ok=True)
        module = cpp_extension.load(name=module_name, sources=sources, build_directory=build_dir,
                                    verbose=(verbosity == 'full'), **build_kwargs)
        if module is None:  # is_python_module=False builds only load the library
            module = importlib.import_module(module_name)
    except Exception as error:
        if verbosity == 'brief':
            print('failed', flush=True)
        message = str(error).strip().splitlines()
        raise PluginUnavailableError(f'cannot build {module_name}: {message[-1] if message else type(error).__name__}'
                                     ) from error
    if verbosity == 'brief':
        print('done', flush=True)
    _cached_plugins[module_name] = module
    return module
