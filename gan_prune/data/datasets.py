"""Training images for distillation: StyleGAN2-ADA datasets (zip or folder) and a data-free teacher source.

Dataset layout (the one StyleGAN2-ADA's dataset tool writes and its training reads):
- a zip file or a folder holding PNG/JPG images, at any depth, all square and of one size;
- optionally `dataset.json` at the top level: {"labels": [[relative_path, label], ...]} where a label is an
  int class (turned into a one-hot vector) or a list of floats; `"labels": null` means unlabelled.

The loop never touches `ImageDataset` directly: it reads batches from a *source* (`RealImageSource` over a
dataset, or `TeacherSampleDataset` when the user has no data). Both give float images in [-1, 1] on the
training device and can save/restore their position, so a resumed run sees exactly the same batches.
"""
from __future__ import annotations

import io
import json
import os
import stat
import zipfile
from typing import Iterable, Iterator, Sequence

import numpy as np
import PIL.Image
import torch

from gan_prune.core.images import float_to_uint8, uint8_to_float
from gan_prune.errors import GanPruneError
from gan_prune.fileio import atomic_write

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')
LABELS_FILE = 'dataset.json'
# What NVIDIA's tools (calc_metrics.py) expect in a snapshot's training_set_kwargs: the same kwargs as ours.
NVIDIA_DATASET_CLASS = 'training.dataset.ImageFolderDataset'
# Bounds on one dataset image, checked before anything is read or decoded, so that a crafted or misplaced file
# (a symlink to /dev/zero, a header declaring a gigapixel image) fails with one line instead of exhausting memory.
# StyleGAN2-ADA images are at most 1024-2048 px (a few MB as PNG); these limits are far above that.
MAX_IMAGE_FILE_BYTES = 256 << 20
MAX_IMAGE_PIXELS = 8192 * 8192


# ------------------------------------------------------------------------------------------------------------
# ImageDataset

class ImageDataset(torch.utils.data.Dataset):
    """A StyleGAN2-ADA dataset: a zip or folder of images, optional labels, optional x-flips.

    `__getitem__(i)` returns `(image, label)`: a uint8 array [C, H, W] and a float32 array [label_dim].
    With `xflip=True` the dataset has twice the images; the second half are the mirrored first half.
    `max_size` keeps a random subset (chosen with `random_seed`, kept in file order) of that many images.
    """

    def __init__(self, path: str, resolution: int | None = None, use_labels: bool = False, xflip: bool = False,
                 max_size: int | None = None, random_seed: int = 0):
        self.path = os.fspath(path)
        self._use_labels = bool(use_labels)
        self._xflip = bool(xflip)
        self._zip: zipfile.ZipFile | None = None  # opened lazily, once per process (DataLoader workers)
        self._zip_pid: int | None = None

        if os.path.isdir(self.path):
            self._kind = 'dir'
            all_names = [os.path.relpath(os.path.join(root, f), self.path).replace(os.sep, '/')
                         for root, _dirs, files in os.walk(self.path) for f in files]
        elif os.path.isfile(self.path) and zipfile.is_zipfile(self.path):
            self._kind = 'zip'
            all_names = [n for n in self._get_zip().namelist() if not n.endswith('/')]
        elif os.path.exists(self.path):
            raise GanPruneError(f'dataset {self.path} is neither a folder nor a zip file; '
                                f'give a folder or zip of PNG/JPG images')
        else:
            raise GanPruneError(f'dataset {self.path} does not exist; give a folder or zip of PNG/JPG images')
        self._all_names = set(all_names)
        image_names = sorted(n for n in all_names if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS)
        if not image_names:
            raise GanPruneError(f'dataset {self.path} holds no images ({", ".join(IMAGE_EXTENSIONS)}); '
                                f'check the path')

        raw_count = len(image_names)
        keep = np.arange(raw_count)
        if max_size is not None and max_size < raw_count:
            if max_size < 1:
                raise GanPruneError(f'max_size must be at least 1, got {max_size}')
            keep = np.sort(np.random.RandomState(random_seed).permutation(raw_count)[:max_size])
        self._image_names = [image_names[i] for i in keep]

        self.image_shape: list[int] | None = None  # known once the first image is read
        first = self._load_raw_image(0)
        if first.shape[1] != first.shape[2]:
            raise GanPruneError(f'dataset images must be square; {self._image_names[0]} is '
                                f'{first.shape[2]}x{first.shape[1]}; crop or resize the dataset')
        self.image_shape = list(first.shape)
        if resolution is not None and first.shape[1] != resolution:
            raise GanPruneError(f'dataset {self.path} has {first.shape[1]} px images but {resolution} px are needed; '
                                f'resize the dataset to the generator resolution')
        self.resolution = int(first.shape[1])
        self.num_channels = int(first.shape[0])
        self.name = os.path.splitext(os.path.basename(self.path.rstrip('/\\')))[0]

        self._labels = self._load_labels() if self._use_labels else None
        if self._use_labels and self._labels is None:
            raise GanPruneError(f'dataset {self.path} has no labels ({LABELS_FILE}) but labels were requested; '
                                f'add {LABELS_FILE} or use an unconditional network')
        self.label_dim = 0 if self._labels is None else int(self._labels.shape[1])
        self.label_shape = [self.label_dim]
        self.has_labels = self.label_dim > 0

    # -- raw access

    def _get_zip(self) -> zipfile.ZipFile:
        # One ZipFile per process: a forked loader worker inherits the parent's open file, whose read position
        # is shared between processes, so concurrent reads would interleave (intermittent EOFError/BadZipFile).
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip = zipfile.ZipFile(self.path)
            self._zip_pid = os.getpid()
        return self._zip

    def _read_bytes(self, name: str) -> bytes:
        """The bytes of one dataset member, refusing anything that is not a regular file of bounded size."""
        if self._kind == 'zip':
            return self._read_zip_member(name)
        return self._read_folder_file(name)

    def _read_zip_member(self, name: str) -> bytes:
        info = self._get_zip().getinfo(name)
        self._check_file_size(name, info.file_size)
        with self._get_zip().open(info) as f:
            data = f.read(MAX_IMAGE_FILE_BYTES + 1)
        self._check_file_size(name, len(data))
        return data

    def _read_folder_file(self, name: str) -> bytes:
        path = os.path.join(self.path, name)
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat on the open file then tells what it is.
        fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0) | getattr(os, 'O_BINARY', 0))
        with os.fdopen(fd, 'rb') as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise GanPruneError(f'{name} in dataset {self.path} is not a regular file (a device, pipe or '
                                    f'socket, perhaps through a symlink); remove it from the dataset')
            self._check_file_size(name, info.st_size)
            data = f.read(MAX_IMAGE_FILE_BYTES + 1)  # bounded even if the file grows while we read
        self._check_file_size(name, len(data))
        return data

    def _check_file_size(self, name: str, size: int) -> None:
        if size > MAX_IMAGE_FILE_BYTES:
            raise GanPruneError(f'{name} in dataset {self.path} is {size} bytes, more than the '
                                f'{MAX_IMAGE_FILE_BYTES >> 20} MiB an image may have; remove it or re-export the dataset')

    def _load_raw_image(self, raw_idx: int) -> np.ndarray:
        name = self._image_names[raw_idx]
        try:
            data = self._read_bytes(name)
            with PIL.Image.open(io.BytesIO(data)) as im:
                self._check_declared_size(name, im.size)
                arr = np.asarray(_to_dataset_mode(im), dtype=np.uint8)
        except GanPruneError:
            raise
        except (OSError, ValueError, EOFError, SyntaxError, KeyError, IndexError,
                PIL.Image.DecompressionBombError) as e:
            # Decoders of malformed files raise a wide range of types; each means "this file is unreadable".
            raise GanPruneError(f'cannot read image {name} in dataset {self.path}: {type(e).__name__}: {e}; '
                                f'fix or remove the file') from e
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def _check_declared_size(self, name: str, size: tuple[int, int]) -> None:
        """Refuse from the header alone, before decoding: an image bigger than the bound or than the dataset."""
        width, height = size
        expected = self.image_shape
        if expected is not None and (height, width) != tuple(expected[1:]):
            raise GanPruneError(f'image {name} in dataset {self.path} is {width}x{height} but the dataset is '
                                f'{expected[2]}x{expected[1]}; make all images the same size')
        if width * height > MAX_IMAGE_PIXELS:
            raise GanPruneError(f'image {name} in dataset {self.path} declares {width}x{height} pixels, more than '
                                f'the {MAX_IMAGE_PIXELS} allowed; fix or remove the file')

    def _load_labels(self) -> np.ndarray | None:
        if LABELS_FILE not in self._all_names:
            return None
        try:
            meta = json.loads(self._read_bytes(LABELS_FILE).decode('utf-8'))
        except ValueError as e:
            raise GanPruneError(f'{LABELS_FILE} in {self.path} is not valid JSON: {e}') from e
        entries = meta.get('labels') if isinstance(meta, dict) else None
        if entries is None:
            return None
        table = {str(name).replace('\\', '/'): label for name, label in entries}
        missing = [n for n in self._image_names if n not in table]
        if missing:
            raise GanPruneError(f'{LABELS_FILE} in {self.path} has no label for {missing[0]} '
                                f'({len(missing)} images unlabelled); label every image or drop {LABELS_FILE}')
        labels = [table[n] for n in self._image_names]
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels):
            classes = np.asarray(labels, dtype=np.int64)
            if classes.min() < 0:
                raise GanPruneError(f'{LABELS_FILE} in {self.path} has a negative class label; classes start at 0')
            # The class count comes from the whole file, so a max_size subset keeps the full label_dim.
            num_classes = int(max(int(v) for v in table.values())) + 1
            onehot = np.zeros([len(classes), num_classes], dtype=np.float32)
            onehot[np.arange(len(classes)), classes] = 1
            return onehot
        try:
            arr = np.asarray(labels, dtype=np.float32)
        except ValueError as e:
            raise GanPruneError(f'{LABELS_FILE} in {self.path}: labels must be ints or equal-length lists of '
                                f'floats ({e})') from e
        return arr.reshape(len(labels), -1)

    # -- Dataset protocol

    def __len__(self) -> int:
        return len(self._image_names) * (2 if self._xflip else 1)

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self._image_names)
        raw_idx, flip = idx % n, idx >= n
        image = self._load_raw_image(raw_idx)
        if list(image.shape) != self.image_shape:
            raise GanPruneError(f'image {self._image_names[raw_idx]} in {self.path} has shape '
                                f'{list(image.shape)} but the dataset is {self.image_shape} (C, H, W); '
                                f'make all images the same size and colour mode')
        if flip:
            image = np.ascontiguousarray(image[:, :, ::-1])
        return image, self.get_label(idx)

    def get_label(self, idx: int) -> np.ndarray:
        if self._labels is None:
            return np.zeros([0], dtype=np.float32)
        return self._labels[idx % len(self._image_names)].copy()

    @property
    def image_names(self) -> list[str]:
        return list(self._image_names)

    def dataset_kwargs(self) -> dict:
        """The snapshot's `training_set_kwargs` (plain dict, NVIDIA's calc_metrics.py reads it)."""
        return dict(class_name=NVIDIA_DATASET_CLASS, path=os.path.abspath(self.path), use_labels=self._use_labels,
                    max_size=len(self._image_names), xflip=self._xflip, resolution=self.resolution)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state['_zip'] = None  # a ZipFile cannot cross process boundaries; each worker reopens it
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pylint: disable=broad-except
            pass


# ------------------------------------------------------------------------------------------------------------
# Writing datasets (tests, tools)

def write_dataset_zip(path: str, images: Iterable, labels: Sequence | None = None,
                      extra_entries: dict[str, bytes] | None = None) -> str:
    """Write images (uint8 arrays HWC or HW, or PIL images) as a StyleGAN2-ADA dataset zip, atomically.

    `labels`, if given, holds one int class or one list of floats per image and goes to dataset.json.
    Names follow StyleGAN2-ADA's dataset tool: `00000/img00000000.png`. `extra_entries` (name -> bytes) are
    stored as they are, e.g. per-image masks; readers ignore entries that are not images. Returns `path`.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    labels = None if labels is None else list(labels)

    def write(f) -> None:
        names = []
        with zipfile.ZipFile(f, 'w', compression=zipfile.ZIP_STORED) as zf:
            for i, image in enumerate(images):
                im = image if isinstance(image, PIL.Image.Image) else _array_to_pil(np.asarray(image))
                buf = io.BytesIO()
                im.save(buf, format='PNG', compress_level=0)
                name = f'{i // 1000:05d}/img{i:08d}.png'
                zf.writestr(name, buf.getvalue())
                names.append(name)
            if labels is not None:
                if len(labels) != len(names):
                    raise GanPruneError(f'{len(labels)} labels for {len(names)} images; give one label per image')
                entries = [[n, _plain_label(v)] for n, v in zip(names, labels)]
                zf.writestr(LABELS_FILE, json.dumps({'labels': entries}))
            for name, data in (extra_entries or {}).items():
                zf.writestr(name, data)

    return atomic_write(path, write)


def _to_dataset_mode(im: PIL.Image.Image) -> PIL.Image.Image:
    """Grayscale-like modes become 'L', everything else 'RGB' (as StyleGAN2-ADA's dataset tool stores them)."""
    if im.mode in ('L', 'I;16', 'I', 'F', 'LA', '1'):
        return im.convert('L')
    return im if im.mode == 'RGB' else im.convert('RGB')


def _array_to_pil(arr: np.ndarray) -> PIL.Image.Image:
    if arr.dtype != np.uint8:
        raise GanPruneError(f'dataset images must be uint8, got {arr.dtype}')
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return PIL.Image.fromarray(arr, 'L')
    if arr.ndim == 3 and arr.shape[2] == 3:
        return PIL.Image.fromarray(arr, 'RGB')
    raise GanPruneError(f'dataset images must be HxW or HxWx1 or HxWx3, got shape {list(arr.shape)}')


def _plain_label(v):
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    return [float(x) for x in np.asarray(v, dtype=np.float64).reshape(-1)]


# ------------------------------------------------------------------------------------------------------------
# Sampling order that survives a restart

class ResumableSampler(torch.utils.data.Sampler):
    """An endless, reshuffled-every-epoch index stream, split across ranks, that can start at any position.

    The global stream is epoch after epoch of permutations of range(n) (epoch e uses seed (seed, e)). Global
    step k uses stream items [k * B, (k + 1) * B) with B = batch_per_rank * world_size; rank r takes the
    r-th slice of batch_per_rank. `start_step` skips steps already trained, so resuming is exact.
    """

    def __init__(self, n: int, batch_per_rank: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 start_step: int = 0, shuffle: bool = True):
        assert n > 0 and batch_per_rank > 0 and 0 <= rank < world_size
        self.n, self.batch_per_rank, self.rank, self.world_size = n, batch_per_rank, rank, world_size
        self.seed, self.start_step, self.shuffle = seed, start_step, shuffle
        self._perm_cache: tuple[int, np.ndarray] | None = None

    def _perm(self, epoch: int) -> np.ndarray:
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            perm = (np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle
                    else np.arange(self.n))
            self._perm_cache = (epoch, perm)
        return self._perm_cache[1]

    def index_at(self, position: int) -> int:
        return int(self._perm(position // self.n)[position % self.n])

    def __iter__(self) -> Iterator[int]:
        step = self.start_step
        global_batch = self.batch_per_rank * self.world_size
        while True:
            first = step * global_batch + self.rank * self.batch_per_rank
            for position in range(first, first + self.batch_per_rank):
                yield self.index_at(position)
            step += 1


# ------------------------------------------------------------------------------------------------------------
# Errors from loader workers

class _LoadFailure:
    """What a loader worker hands back instead of a batch when an item failed: the one-line message.

    Passing the failure as data (rather than raising in the worker) keeps it one line: the DataLoader would
    otherwise re-raise it in the main process with the worker's traceback folded into the message.
    """

    def __init__(self, message: str):
        self.message = message


class _FailureReportingDataset(torch.utils.data.Dataset):
    """Wraps a dataset for a DataLoader: an item that fails becomes a _LoadFailure naming the file."""

    def __init__(self, dataset: 'ImageDataset'):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int):
        try:
            return self.dataset[idx]
        except GanPruneError as e:
            return _LoadFailure(str(e))
        except Exception as e:  # pylint: disable=broad-except  # anything else still names the item
            names = self.dataset.image_names
            return _LoadFailure(f'reading image {names[idx % len(names)]} in dataset {self.dataset.path} failed: '
                                f'{type(e).__name__}: {e}'.replace('\n', ' '))


def _collate_or_failure(items: list):
    """default_collate, unless an item failed: then the batch is that failure."""
    for item in items:
        if isinstance(item, _LoadFailure):
            return item
    return torch.utils.data.default_collate(items)


# ------------------------------------------------------------------------------------------------------------
# Batch sources used by the loop

images_to_float = uint8_to_float


class RealImageSource:
    """Endless batches of real images from an ImageDataset, on `device`, with a restorable position."""

    def __init__(self, dataset: ImageDataset, batch_size: int, device: torch.device | str = 'cpu', rank: int = 0,
                 world_size: int = 1, seed: int = 0, workers: int = 0):
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.rank, self.world_size, self.seed, self.workers = rank, world_size, seed, int(workers)
        self.steps_done = 0  # batches handed out: the whole position state
        self._iterator: Iterator | None = None
        self.resolution, self.num_channels, self.label_dim = dataset.resolution, dataset.num_channels, dataset.label_dim

    def _make_iterator(self) -> Iterator:
        sampler = ResumableSampler(len(self.dataset), self.batch_size, self.rank, self.world_size, self.seed,
                                   start_step=self.steps_done)
        # A private generator: creating a loader iterator otherwise draws its worker seed from the global RNG,
        # and a resumed run (which creates its iterator at a different step) would then diverge.
        loader = torch.utils.data.DataLoader(_FailureReportingDataset(self.dataset), batch_size=self.batch_size,
                                             sampler=sampler, collate_fn=_collate_or_failure,
                                             num_workers=self.workers, pin_memory=self.device.type == 'cuda',
                                             prefetch_factor=2 if self.workers > 0 else None,
                                             persistent_workers=False,
                                             generator=torch.Generator().manual_seed(self.seed))
        return iter(loader)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(images float32 [N, C, H, W] in [-1, 1], labels float32 [N, label_dim]), both on the device."""
        if self._iterator is None:
            self._iterator = self._make_iterator()
        batch = next(self._iterator)
        if isinstance(batch, _LoadFailure):
            self.close()  # the caller ends with this error: stop the workers now, not when the iterator is collected
            raise GanPruneError(batch.message)
        images, labels = batch
        self.steps_done += 1
        images = images_to_float(images.to(self.device, non_blocking=True))
        return images, labels.to(self.device, non_blocking=True).to(torch.float32)

    def sample_labels(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Labels of n random dataset images (conditioning for generated images); [n, 0] if unlabelled."""
        if self.label_dim == 0:
            return torch.zeros([n, 0], device=self.device)
        idx = torch.randint(len(self.dataset), [n], generator=generator).tolist()
        labels = np.stack([self.dataset.get_label(i) for i in idx])
        return torch.from_numpy(labels).to(self.device)

    def state_dict(self) -> dict:
        return {'kind': 'dataset', 'steps_done': self.steps_done}

    def load_state_dict(self, state: dict) -> None:
        if state.get('kind') != 'dataset':
            raise GanPruneError('the resume checkpoint was made with a different data source; resume with the '
                                'same --data (or --data-free) as the original run')
        self.steps_done = int(state['steps_done'])
        self._iterator = None

    def close(self) -> None:
        """Stop the loader's worker processes now. Left to garbage collection, they outlive an iterator that an
        exception's traceback still references, and torch keeps watching their process ids (SIGCHLD handler)."""
        iterator, self._iterator = self._iterator, None
        shutdown = getattr(iterator, '_shutdown_workers', None)  # torch's multi-process iterator; absent in-process
        if shutdown is not None:
            shutdown()


class TeacherSampleDataset:
    """Data-free training: teacher samples stand in for the real images (for users without the dataset).

    Each batch is `G_teacher(z, c)` with fresh Gaussian z (and uniformly drawn one-hot classes for a
    conditional teacher), quantised to 8-bit levels like real data so that D cannot tell them apart by
    their value grid. Randomness comes from a private generator plus the global RNG (random noise inputs),
    both of which the resume checkpoint stores.
    """

    def __init__(self, G_teacher: torch.nn.Module, batch_size: int, device: torch.device | str = 'cpu',
                 seed: int = 0, truncation_psi: float = 1.0, noise_mode: str = 'random', quantize: bool = True):
        self.G = G_teacher
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.truncation_psi, self.noise_mode, self.quantize = float(truncation_psi), noise_mode, bool(quantize)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.resolution, self.num_channels = int(G_teacher.img_resolution), int(G_teacher.img_channels)
        self.label_dim = int(G_teacher.c_dim)
        self.steps_done = 0

    def sample_labels(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniformly drawn one-hot classes for a conditional teacher; [n, 0] otherwise."""
        if self.label_dim == 0:
            return torch.zeros([n, 0], device=self.device)
        classes = torch.randint(self.label_dim, [n], generator=generator or self.generator)
        return torch.nn.functional.one_hot(classes, self.label_dim).to(torch.float32).to(self.device)

    @torch.no_grad()
    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.randn([self.batch_size, self.G.z_dim], generator=self.generator).to(self.device)
        c = self.sample_labels(self.batch_size)
        images = self.G(z, c, truncation_psi=self.truncation_psi, noise_mode=self.noise_mode, force_fp32=True)
        images = images.to(torch.float32)
        if self.quantize:
            images = images_to_float(float_to_uint8(images))
        self.steps_done += 1
        return images, c

    def state_dict(self) -> dict:
        return {'kind': 'teacher', 'steps_done': self.steps_done, 'generator': self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if state.get('kind') != 'teacher':
            raise GanPruneError('the resume checkpoint was made with a different data source; resume with the '
                                'same --data (or --data-free) as the original run')
        self.steps_done = int(state['steps_done'])
        self.generator.set_state(state['generator'])

    def close(self) -> None:
        pass

