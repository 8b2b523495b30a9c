"""Just-in-time build of C++/CUDA extensions through torch.utils.cpp_extension.load (ninja).

The bundled ops do not need any plugin: they are pure PyTorch. get_plugin() is kept for code that brings its
own kernels. When the tools are missing (ninja, a C++ compiler, nvcc/CUDA for .cu sources) it raises
PluginUnavailableError with one line saying what is missing, before attempting a build, so callers can fall
back to a pure-PyTorch path instead of crashing.

Builds are cached on disk in a folder named by a digest of the sources, the build options and the CPU's
instruction-set extensions (a cache shared between machines never hands an AVX-512 build to an AVX2 machine).
Each build runs in a private temporary folder and only the finished library is renamed into the cache, so a
build killed half-way leaves nothing that a later run waits for or loads; a cached library is loaded directly.
"""
from __future__ import annotations

import glob
import hashlib
import importlib
import importlib.util
import os
import shutil
import socket
import tempfile
from typing import Dict, List, Optional

import torch

verbosity = 'brief'  # 'none', 'brief' (one line per build) or 'full' (compiler output)

_cached_plugins: Dict[str, object] = {}

# /proc/cpuinfo flags that name instruction-set extensions a compiler may use with -march=native (x86 and Arm).
_ISA_FLAG_PREFIXES = ('sse', 'ssse', 'avx', 'fma', 'f16c', 'bmi', 'amx', 'aes', 'vaes', 'sha', 'gfni', 'vpclmul',
                      'popcnt', 'abm', 'lzcnt', 'movbe', 'adx', 'asimd', 'sve', 'fp', 'neon')
_LIBRARY_SUFFIXES = ('.so', '.pyd')
_BUILD_TAG = '.build-'  # temporary build folders: <final>.build-<host>-<pid>-<random>


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


def _cpuinfo_flags() -> List[str]:
    """The CPU feature flags from /proc/cpuinfo ('flags' on x86, 'Features' on Arm); [] where there is none."""
    try:
        with open('/proc/cpuinfo', encoding='utf-8', errors='replace') as f:
            for line in f:
                key, _, value = line.partition(':')
                if key.strip() in ('flags', 'Features'):
                    return value.split()
    except OSError:
        pass
    return []


def cpu_isa() -> str:
    """The instruction sets of this CPU that a -march=native build may depend on, as a stable string."""
    import platform
    capability = torch.backends.cpu.get_cpu_capability()
    extensions = sorted({f for f in _cpuinfo_flags() if f.startswith(_ISA_FLAG_PREFIXES)})
    return f'{platform.machine()}:{capability}:{",".join(extensions)}'


def _source_digest(sources: List[str], build_kwargs: dict) -> str:
    """Hash of the source files' contents, the build options and the CPU's instruction sets: a new build dir
    whenever one of them changes."""
    digest = hashlib.md5()
    for src in sorted(sources):
        digest.update(os.path.basename(src).encode('utf-8'))
        with open(src, 'rb') as f:
            digest.update(f.read())
    digest.update(repr(sorted((k, repr(v)) for k, v in build_kwargs.items())).encode('utf-8'))
    digest.update(cpu_isa().encode('utf-8'))
    return digest.hexdigest()


def _build_dir(module_name: str, sources: List[str], build_kwargs: dict) -> str:
    from torch.utils import cpp_extension
    build_root = (os.environ.get('TORCH_EXTENSIONS_DIR')
                  or cpp_extension._get_build_directory(module_name, verbose=False))  # pylint: disable=protected-access
    return os.path.join(build_root, f'{module_name}_{_source_digest(sources, build_kwargs)[:16]}')


def _cached_library(build_dir: str, module_name: str) -> Optional[str]:
    """The finished library of `module_name` in `build_dir`, or None (a folder may hold only a lock or objects)."""
    for suffix in _LIBRARY_SUFFIXES:
        found = sorted(glob.glob(os.path.join(glob.escape(build_dir), f'{module_name}*{suffix}')))
        if found:
            return found[0]
    return None


def is_built(module_name: str, sources: List[str], **build_kwargs) -> bool:
    """Whether get_plugin() with these arguments will load a library built earlier (no compilation)."""
    sources = [os.path.abspath(src) for src in sources]
    if not all(os.path.isfile(src) for src in sources):
        return False
    return _cached_library(_build_dir(module_name, sources, build_kwargs), module_name) is not None


def _load_library(path: str, is_python_module: bool):
    """Import a built extension (its module name is the file's stem) or load a library of torch ops."""
    if not is_python_module:
        torch.ops.load_library(path)
        return path
    name = os.path.basename(path).split('.')[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def _remove_abandoned_builds(build_dir: str) -> None:
    """Delete temporary build folders of this build left by processes of this host that no longer run."""
    host = socket.gethostname()
    for path in glob.glob(glob.escape(build_dir) + _BUILD_TAG + '*'):
        owner = os.path.basename(path)[len(os.path.basename(build_dir) + _BUILD_TAG):].rsplit('-', 2)
        if len(owner) == 3 and owner[0] == host and owner[1].isdigit() and not _pid_alive(int(owner[1])):
            shutil.rmtree(path, ignore_errors=True)


def _build_into_cache(module_name: str, sources: List[str], build_dir: str, build_kwargs: dict):
    """Build in a private folder next to `build_dir`, then rename the finished library into `build_dir`."""
    from torch.utils import cpp_extension
    os.makedirs(os.path.dirname(build_dir), exist_ok=True)
    _remove_abandoned_builds(build_dir)
    private = tempfile.mkdtemp(dir=os.path.dirname(build_dir),
                               prefix=f'{os.path.basename(build_dir)}{_BUILD_TAG}{socket.gethostname()}-{os.getpid()}-')
    try:
        module = cpp_extension.load(name=module_name, sources=sources, build_directory=private,
                                    verbose=(verbosity == 'full'), **build_kwargs)
        if module is None:  # is_python_module=False builds only load the library
            module = importlib.import_module(module_name)
        built = _cached_library(private, module_name)
        if built is not None:
            os.makedirs(build_dir, exist_ok=True)
            os.replace(built, os.path.join(build_dir, os.path.basename(built)))
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return module


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
    build_dir = _build_dir(module_name, sources, build_kwargs)
    cached = _cached_library(build_dir, module_name)
    if cached is None:
        problem = _missing_tools(sources)  # a library built earlier loads without the build tools
        if problem is not None:
            raise PluginUnavailableError(f'cannot build {module_name}: {problem}')

    if verbosity == 'full':
        print(f'Building custom op "{module_name}"...', flush=True)
    elif verbosity == 'brief':
        print(f'Building custom op "{module_name}"... ', end='', flush=True)
    try:
        if cached is not None:
            module = _load_library(cached, build_kwargs.get('is_python_module', True))
        else:
            module = _build_into_cache(module_name, sources, build_dir, build_kwargs)
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
