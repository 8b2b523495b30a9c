"""Where the weights of the released method's frozen networks come from, and how a download is checked.

    clip:RN50      OpenAI CLIP ResNet-50 (RN50.pt). The URL carries the file's SHA-256 as a path segment
                   (openaipublic.azureedge.net/clip/models/<sha256>/RN50.pt); the URL is read from open_clip's
                   pretrained table when open_clip is installed, and the checksum from the URL path.
    dino-resnet50  DINO ResNet-50 backbone (dino_resnet50_pretrain.pth). No checksum is published for it: the
                   download is checked against the server's Content-Length only, and the file must then load as
                   a ResNet-50 state dict (strict key and shape match); its SHA-256 is printed for the record.
    vgg16          torchvision's ImageNet VGG-16 (vgg16-397923af.pth), the trunk of LPIPS-VGG. torchvision
                   publishes the first 8 hex digits of its SHA-256 in the file name; those are checked.

A file is used, in order: the one the user gave (--embed-weights SPEC=FILE, lpips-vgg:FILE), a file of the
release's name in the weights folders (gan_prune.weights), the copy in the download cache, or, when online, a
download into that cache (once, with a progress bar, through gan_prune.io.download, which refuses incomplete
transfers, HTML pages and checksum mismatches). Offline ($GAN_PRUNE_OFFLINE or $HF_HUB_OFFLINE set to 1) no
download is tried; a missing file is one line that says which files, where to get them and which flag takes
them.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Sequence

from gan_prune.errors import GanPruneError

OFFLINE_ENV_VARS = ('GAN_PRUNE_OFFLINE', 'HF_HUB_OFFLINE')
CLIP_RN50_URL = ('https://openaipublic.azureedge.net/clip/models/'
                 'afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt')
DINO_RESNET50_URL = 'https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth'
VGG16_URL = 'https://download.pytorch.org/models/vgg16-397923af.pth'
VGG16_SHA256_PREFIX = '397923af'  # torchvision names its files <model>-<first 8 hex digits of the sha256>.pth
OFFLINE_DIME = 'effnet-lite0=15'


@dataclass(frozen=True)
class OfficialFile:
    """One published weights file: what it is, where it is, how a download of it is checked."""
    spec: str                   # the model spec it serves: clip:RN50, dino-resnet50, vgg16
    file_name: str
    url: str
    description: str
    flag: str                   # the command-line form that passes a local copy
    sha256: str | None = None   # the full SHA-256 when published
    sha256_prefix: str | None = None  # a published prefix of it (torchvision's file names)

    @property
    def check(self) -> str:
        if self.sha256:
            return f'sha256 {self.sha256}'
        if self.sha256_prefix:
            return f'sha256 starting {self.sha256_prefix}'
        return 'length only (no published checksum)'


def clip_rn50_url() -> str:
    """The RN50 URL from open_clip's pretrained table (the source of truth when installed), else ours."""
    try:
        from open_clip.pretrained import get_pretrained_url
        url = get_pretrained_url('RN50', 'openai')
    except Exception:  # open_clip missing or its table changed shape: the URL we know
        url = ''
    return url or CLIP_RN50_URL


def sha256_from_url_path(url: str) -> str | None:
    """The 64-hex path segment of an OpenAI CLIP URL (their files are named by checksum)."""
    for segment in url.split('/'):
        if re.fullmatch(r'[0-9a-f]{64}', segment):
            return segment
    return None


def official_files() -> dict[str, OfficialFile]:
    clip_url = clip_rn50_url()
    return {
        'clip:RN50': OfficialFile('clip:RN50', 'RN50.pt', clip_url, 'OpenAI CLIP ResNet-50',
                                  '--embed-weights clip:RN50=RN50.pt', sha256=sha256_from_url_path(clip_url)),
        'dino-resnet50': OfficialFile('dino-resnet50', 'dino_resnet50_pretrain.pth', DINO_RESNET50_URL,
                                      'DINO ResNet-50', '--embed-weights dino-resnet50=dino_resnet50_pretrain.pth'),
        'vgg16': OfficialFile('vgg16', 'vgg16-397923af.pth', VGG16_URL, "torchvision's VGG-16 for LPIPS",
                              '--cagan-net lpips-vgg:vgg16-397923af.pth', sha256_prefix=VGG16_SHA256_PREFIX),
    }


def is_offline() -> bool:
    return any(os.environ.get(v, '').strip().lower() in ('1', 'true', 'yes', 'on') for v in OFFLINE_ENV_VARS)


def local_copy(spec: str) -> str | None:
    """A file of the release's name in the weights folders, or a copy in the download cache."""
    from gan_prune.io.download import cached_path
    from gan_prune.weights import resolve_weights
    entry = official_files()[spec]
    found = resolve_weights(entry.file_name)
    if found is not None:
        return found
    cached = cached_path(entry.url)
    return cached if os.path.isfile(cached) else None


def fetch(spec: str, progress: bool = True, log=print) -> str:
    """A local path of the official weights of `spec`: a file of the release's name in the weights folders, else
    the checked copy in the download cache, else a checked download (online only)."""
    from gan_prune.io.download import cached_path, download
    from gan_prune.weights import resolve_weights
    entry = official_files()[spec]
    found = resolve_weights(entry.file_name)
    if found is not None:
        return found
    in_cache = os.path.isfile(cached_path(entry.url))
    if not in_cache and is_offline():
        raise GanPruneError(missing_files_message([spec]))
    if not in_cache:
        log(f'Downloading {entry.description} weights from {entry.url} (checked: {entry.check})')
    try:
        path = download(entry.url, sha256=entry.sha256, progress=progress)  # a cached copy is checked again
    except GanPruneError as e:
        raise GanPruneError(f'{e}; {missing_files_message([spec], offline=False)}') from e
    if entry.sha256_prefix:
        digest = _sha256_of_file(path)
        if not digest.startswith(entry.sha256_prefix):
            os.remove(path)  # never leave a file that failed its check in the cache
            raise GanPruneError(f'checksum mismatch for {entry.url}: expected a sha256 starting {entry.sha256_prefix}, '
                                f'got {digest}; the file on the server is not the expected one')
    elif not entry.sha256 and not in_cache:
        log(f'{entry.file_name}: no published checksum; received {os.path.getsize(path)} bytes (as announced), '
            f'sha256 {_sha256_of_file(path)}')
    return path


def missing_files_message(specs: Sequence[str], offline: bool = True) -> str:
    """One line: which files are missing, where to get them, the flags that take them, the offline choice."""
    entries = [official_files()[s] for s in specs]
    files = ' and '.join(f'{e.file_name} ({e.description}, {e.url})' for e in entries)
    flags = ' '.join(e.flag for e in entries)
    specs_text = ' and '.join(e.spec for e in entries)
    where = 'this machine is offline' if offline else 'the download failed'
    alternative = (f', or run offline with --dime {OFFLINE_DIME}' if any(e.spec != 'vgg16' for e in entries)
                   else ', or use --cagan-net effnet-lite0 (runs offline)')
    return (f'{specs_text} need{"" if len(entries) > 1 else "s"} weights that are not here and {where}: {files}; '
            f'download {"them" if len(entries) > 1 else "it"} and pass {flags}{alternative}')


def resolve_embed_weights(names: Sequence[str], given: Sequence[str] | None, progress: bool = True,
                          log=print) -> list[str]:
    """`given` (--embed-weights entries) completed with SPEC=FILE for each official embedder in `names` that has
    no file yet. All missing files are named in one line when offline."""
    from gan_prune.distill.dime import resolve_weight_files
    given = list(given or [])
    have = resolve_weight_files(list(names), given)
    needed = [n for n in names if n in official_files() and n != 'vgg16' and n not in have]
    missing = [n for n in needed if local_copy(n) is None]
    if missing and is_offline():
        raise GanPruneError(missing_files_message(missing))
    return given + [f'{n}={fetch(n, progress=progress, log=log)}' for n in needed]


def _sha256_of_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()
