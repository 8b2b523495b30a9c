"""The one loader of TorchScript files that users hand the toolkit: mask models, `torchscript:FILE` embedders,
OpenAI's CLIP releases and the Inception detector of the metrics.

A TorchScript archive (`torch.jit.save`) is a program: loading one may run its `__setstate__`, and calling it
runs its code. `load_torchscript(path, trust, what)` loads one only with trust=True (--trust-pickle), or when the
file's SHA-256 is in KNOWN_TORCHSCRIPT_SHA256 (published files the toolkit knows). The bytes that were hashed
are the bytes loaded. Every refusal is one line that names the file and the flag.

The toolkit's own exported generators (`gan-prune export --format torchscript`, run by gan_prune.runtime) are
TorchScript too and load through the same function. What the exporter stored next to the code (`_extra_files`)
is plain zip entries: `read_extra_file` reads one as data, so `gan-prune info` describes a file without running it.
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
import zipfile

import torch

from gan_prune.errors import GanPruneError
from gan_prune.io.trusted import TRUST_FLAG

# SHA-256 of published TorchScript files that load without --trust-pickle, with where each checksum comes from.
KNOWN_TORCHSCRIPT_SHA256: dict[str, str] = {
    # NVIDIA's Inception detector of StyleGAN2-ADA's metrics, as published at
    # nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt (95,607,719
    # bytes); other projects verify their download against this value (e.g. k-diffusion's evaluation module).
    'f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4': 'inception-2015-12-05.pt (NVIDIA)',
    # OpenAI's CLIP releases: the download URL of each file carries its SHA-256 as a path segment
    # (openaipublic.azureedge.net/clip/models/<sha256>/<name>.pt; OpenAI's clip and open_clip verify it).
    'afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762': 'RN50.pt (OpenAI CLIP)',
    '8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599': 'RN101.pt (OpenAI CLIP)',
    '7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd': 'RN50x4.pt (OpenAI CLIP)',
    '52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa': 'RN50x16.pt (OpenAI CLIP)',
    'be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c': 'RN50x64.pt (OpenAI CLIP)',
    '40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af': 'ViT-B-32.pt (OpenAI CLIP)',
    '5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f': 'ViT-B-16.pt (OpenAI CLIP)',
    'b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836': 'ViT-L-14.pt (OpenAI CLIP)',
    '3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02': 'ViT-L-14-336px.pt (OpenAI CLIP)',
}


def is_torchscript_archive(path: str | os.PathLike | io.BytesIO) -> bool:
    """True for a torch.jit.save archive (it carries compiled code; a torch.save file holds only data)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith('constants.pkl') or '/code/' in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def known_torchscript(data: bytes) -> str | None:
    """The description of a published TorchScript file with these bytes, or None."""
    return KNOWN_TORCHSCRIPT_SHA256.get(hashlib.sha256(data).hexdigest())


def read_extra_file(path: str, name: str, limit: int = 1 << 20) -> bytes | None:
    """The bytes of the extra file `name` that torch.jit.save stored in the archive at `path` (the zip entry
    `<archive>/extra/<name>`), read as data, nothing loaded or run; None when there is none. At most `limit`
    bytes: such entries are small metadata, and a larger one is refused rather than read into memory."""
    try:
        with zipfile.ZipFile(path) as z:
            entries = [i for i in z.infolist() if i.filename.split('/')[1:] == ['extra', name]]
            if not entries:
                return None
            if entries[0].file_size > limit:
                raise GanPruneError(f'{path}: its {name} entry is {entries[0].file_size} bytes, more than metadata '
                                    f'takes ({limit}); the file is damaged or not what it claims to be')
            with z.open(entries[0]) as f:
                return f.read(limit)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise GanPruneError(f'{path}: cannot read the TorchScript archive ({type(e).__name__})') from None


def load_torchscript(path: str, trust: bool, what: str, map_location: str | torch.device = 'cpu',
                     instead: str | None = None) -> torch.jit.ScriptModule:
    """Load a TorchScript archive if the user trusts it (trust=True) or it is a published file we know.

    `what` names the option or role in messages (e.g. '--mask', 'TorchScript embedder'); `instead` is what the
    refusal offers besides the flag where the caller has a better way (e.g. a format that holds no code).
    Raises GanPruneError for a missing file, a file that is not TorchScript, an untrusted program, or an archive
    torch cannot load.
    """
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        raise GanPruneError(f'{what} {path}: cannot read the file ({e.strerror or type(e).__name__})') from None
    if not is_torchscript_archive(io.BytesIO(data)):
        raise GanPruneError(f'{what} {path}: not a TorchScript file (expected one written by torch.jit.save)')
    if not trust and known_torchscript(data) is None:
        other = f', or {instead}' if instead else ' (published files the toolkit knows by checksum load without it)'
        raise GanPruneError(f'{what} {path} is a TorchScript program: loading it runs its code; pass {TRUST_FLAG} '
                            f'if you trust this file{other}')
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated upstream but remains the portable format
            warnings.simplefilter('ignore', FutureWarning)
            return torch.jit.load(io.BytesIO(data), map_location=map_location)
    except Exception as e:  # torch raises RuntimeError and others for damaged archives
        raise GanPruneError(f'{what} {path}: cannot load the TorchScript archive ({type(e).__name__})') from None
