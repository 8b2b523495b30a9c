"""StyleGAN2-ADA datasets (zip / folder, labels, x-flips), resumable sampling and the data-free teacher source."""
import json
import os

import numpy as np
import PIL.Image
import pytest
import torch

from gan_prune.data.datasets import (ImageDataset, RealImageSource, ResumableSampler, TeacherSampleDataset,
                                    float_to_uint8, images_to_float, write_dataset_zip)
from gan_prune.errors import GanPruneError


def random_images(n, res=8, channels=3, seed=0):
    shape = (n, res, res, channels) if channels > 1 else (n, res, res)
    return np.random.RandomState(seed).randint(0, 256, shape, dtype=np.uint8)


def test_zip_roundtrip_with_class_labels(tmp_path):
    images = random_images(5)
    path = write_dataset_zip(tmp_path / 'set.zip', images, labels=[0, 2, 1, 2, 0])
    assert sorted(os.listdir(tmp_path)) == ['set.zip']  # no temp file left behind
    ds = ImageDataset(path, use_labels=True)
    assert len(ds) == 5 and ds.name == 'set' and ds.resolution == 8 and ds.num_channels == 3
    assert ds.image_shape == [3, 8, 8] and ds.label_dim == 3 and ds.has_labels
    image, label = ds[3]
    assert image.dtype == np.uint8 and image.shape == (3, 8, 8)
    np.testing.assert_array_equal(image, images[3].transpose(2, 0, 1))
    assert label.dtype == np.float32
    np.testing.assert_array_equal(label, [0, 0, 1])


def test_without_labels_label_dim_is_zero(tmp_path):
    path = write_dataset_zip(tmp_path / 'set.zip', random_images(3), labels=[1, 0, 1])
    ds = ImageDataset(path)
    assert ds.label_dim == 0 and not ds.has_labels and ds[0][1].shape == (0,)


def test_folder_with_float_labels_and_grayscale(tmp_path):
    images = random_images(4, res=16, channels=1)
    os.makedirs(tmp_path / 'sub')
    names = []
    for i, im in enumerate(images):
        name = f'sub/{i}.png' if i % 2 else f'{i}.png'
        PIL.Image.fromarray(im, 'L').save(tmp_path / name)
        names.append(name)
    (tmp_path / 'notes.txt').write_text('not an image')
    labels = [[n, [float(i), 0.5]] for i, n in enumerate(names)]
    (tmp_path / 'dataset.json').write_text(json.dumps({'labels': labels}))
    ds = ImageDataset(str(tmp_path), use_labels=True, resolution=16)
    assert len(ds) == 4 and ds.num_channels == 1 and ds.label_dim == 2
    by_name = dict(zip(ds.image_names, range(len(ds))))
    image, label = ds[by_name['sub/3.png']]
    np.testing.assert_array_equal(image[0], images[3])
    np.testing.assert_allclose(label, [3.0, 0.5])


def test_xflip_doubles_with_mirrored_second_half(tmp_path):
    images = random_images(3)
    ds = ImageDataset(write_dataset_zip(tmp_path / 'set.zip', images), xflip=True)
    assert len(ds) == 6
    np.testing.assert_array_equal(ds[4][0], images[1].transpose(2, 0, 1)[:, :, ::-1])
    np.testing.assert_array_equal(ds[1][0], images[1].transpose(2, 0, 1))


def test_max_size_keeps_a_deterministic_subset(tmp_path):
    path = write_dataset_zip(tmp_path / 'set.zip', random_images(10))
    a = ImageDataset(path, max_size=4, random_seed=1)
    b = ImageDataset(path, max_size=4, random_seed=1)
    assert len(a) == 4 and a.image_names == b.image_names
    assert set(a.image_names) <= set(ImageDataset(path).image_names)
    assert a.dataset_kwargs()['max_size'] == 4 and a.dataset_kwargs()['class_name'].endswith('ImageFolderDataset')


@pytest.mark.parametrize('case', ['missing', 'resolution', 'labels', 'nonsquare', 'empty', 'mixed'])
def test_bad_datasets_raise_one_line_errors(tmp_path, case):
    if case == 'missing':
        path, kwargs = tmp_path / 'nope.zip', {}
    elif case == 'resolution':
        path, kwargs = write_dataset_zip(tmp_path / 's.zip', random_images(2)), {'resolution': 16}
    elif case == 'labels':
        path, kwargs = write_dataset_zip(tmp_path / 's.zip', random_images(2)), {'use_labels': True}
    elif case == 'nonsquare':
        path, kwargs = write_dataset_zip(tmp_path / 's.zip', [np.zeros((4, 6, 3), np.uint8)]), {}
    elif case == 'empty':
        os.makedirs(tmp_path / 'empty')
        path, kwargs = tmp_path / 'empty', {}
    else:
        path = write_dataset_zip(tmp_path / 's.zip', [np.zeros((8, 8, 3), np.uint8), np.zeros((4, 4, 3), np.uint8)])
        with pytest.raises(GanPruneError) as e:
            ImageDataset(path)[1]
        assert '\n' not in str(e.value)
        return
    with pytest.raises(GanPruneError) as e:
        ImageDataset(str(path), **kwargs)
    assert '\n' not in str(e.value)


def test_write_dataset_zip_replaces_atomically_and_checks_labels(tmp_path):
    path = tmp_path / 's.zip'
    write_dataset_zip(path, random_images(2))
    write_dataset_zip(path, random_images(3))
    assert len(ImageDataset(path)) == 3
    with pytest.raises(GanPruneError):
        write_dataset_zip(tmp_path / 't.zip', random_images(2), labels=[0])
    assert sorted(os.listdir(tmp_path)) == ['s.zip']


def test_sampler_splits_ranks_and_restarts_exactly():
    n, per_rank = 7, 2
    full = ResumableSampler(n, per_rank, seed=3, world_size=1)
    stream = [i for _, i in zip(range(40), iter(full))]
    # Every epoch of 7 positions is a permutation.
    assert sorted(stream[:7]) == list(range(7)) and sorted(stream[7:14]) == list(range(7))
    ranks = [ResumableSampler(n, per_rank, rank=r, world_size=2, seed=3) for r in range(2)]
    its = [iter(s) for s in ranks]
    interleaved = []
    for _ in range(5):
        for it in its:
            interleaved += [next(it) for _ in range(per_rank)]
    assert interleaved == [full.index_at(p) for p in range(20)]
    late = ResumableSampler(n, per_rank, seed=3, start_step=6)
    assert [i for _, i in zip(range(4), iter(late))] == stream[12:16]


def test_real_image_source_resumes_at_the_same_batch(tmp_path):
    ds = ImageDataset(write_dataset_zip(tmp_path / 's.zip', random_images(5)), xflip=True)
    src = RealImageSource(ds, batch_size=3, seed=1)
    rng = torch.get_rng_state()
    first = [src.next()[0] for _ in range(3)]
    assert torch.equal(rng, torch.get_rng_state())  # batches never draw from the global RNG
    assert first[0].shape == (3, 3, 8, 8) and first[0].dtype == torch.float32
    assert first[0].min() >= -1 and first[0].max() <= 1
    state = src.state_dict()
    expected = [src.next()[0] for _ in range(4)]
    again = RealImageSource(ds, batch_size=3, seed=1)
    again.load_state_dict(state)
    for a, b in zip(expected, [again.next()[0] for _ in range(4)]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert src.sample_labels(2).shape == (2, 0)


def test_uint8_float_conversions_roundtrip():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    torch.testing.assert_close(float_to_uint8(images_to_float(x)), x, rtol=0, atol=0)


class _ConstantishG(torch.nn.Module):
    """Generator stand-in: image = tanh(z mean) everywhere; noise draws from the global RNG like real G."""
    z_dim, c_dim, img_resolution, img_channels = 4, 3, 8, 3

    def forward(self, z, c, truncation_psi=1, noise_mode='random', force_fp32=False):
        noise = torch.randn([z.shape[0], 1, 8, 8]) * 0.1 if noise_mode == 'random' else 0
        return torch.tanh(z.mean(1)).view(-1, 1, 1, 1).expand(-1, 3, 8, 8) + noise + c.sum(1).view(-1, 1, 1, 1) * 0


def test_teacher_source_is_quantised_conditional_and_resumable():
    torch.manual_seed(0)
    src = TeacherSampleDataset(_ConstantishG(), batch_size=4, seed=5)
    img, c = src.next()
    assert img.shape == (4, 3, 8, 8) and c.shape == (4, 3)
    torch.testing.assert_close(c.sum(1), torch.ones(4))  # one-hot classes
    levels = (img + 1) * 127.5
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)  # 8-bit grid like real data
    state, rng = src.state_dict(), torch.get_rng_state()
    expected = src.next()[0]
    other = TeacherSampleDataset(_ConstantishG(), batch_size=4, seed=99)
    other.load_state_dict(state)
    torch.set_rng_state(rng)
    torch.testing.assert_close(other.next()[0], expected, rtol=0, atol=0)
    with pytest.raises(GanPruneError):
        other.load_state_dict({'kind': 'dataset', 'steps_done': 0})


def test_loader_worker_processes_give_the_same_batches(tmp_path):
    ds = ImageDataset(write_dataset_zip(tmp_path / 's.zip', random_images(6)))
    in_process = RealImageSource(ds, batch_size=2, seed=4, workers=0)
    with_worker = RealImageSource(ds, batch_size=2, seed=4, workers=1)  # the dataset (and its zip) is pickled
    try:
        for _ in range(4):
            torch.testing.assert_close(in_process.next()[0], with_worker.next()[0], rtol=0, atol=0)
    finally:
        with_worker.close()


# -- one bad image: one line naming the file, in the main process or in a loader worker

def _png_bytes(array: np.ndarray) -> bytes:
    import io
    buf = io.BytesIO()
    PIL.Image.fromarray(array).save(buf, format='PNG')
    return buf.getvalue()


def _huge_png_header() -> bytes:
    """A well-formed small PNG file whose header declares 9000 x 9000 RGB pixels (its data is a few bytes)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))
    ihdr = struct.pack('>IIBBBBB', 9000, 9000, 8, 2, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(b'')) + chunk(b'IEND', b'')


def _folder_with_bad_image(folder, case: str) -> str:
    """Five good 8 px RGB images (0.png..4.png) and a bad one named 9-bad.png (sorted last)."""
    os.makedirs(folder)
    for i, image in enumerate(random_images(5)):
        PIL.Image.fromarray(image).save(folder / f'{i}.png')
    bad = folder / '9-bad.png'
    if case == 'size':
        bad.write_bytes(_png_bytes(random_images(1, res=16)[0]))
    elif case == 'mode':
        bad.write_bytes(_png_bytes(random_images(1, channels=1)[0]))
    elif case == 'corrupt':
        bad.write_bytes(_png_bytes(random_images(1)[0])[:60])
    elif case == 'devzero':
        os.symlink('/dev/zero', bad)
    elif case == 'huge':
        bad.write_bytes(_huge_png_header())
    return str(folder)


BAD_IMAGE_CASES = ['size', 'mode', 'corrupt', 'devzero', 'huge']


@pytest.mark.parametrize('case', BAD_IMAGE_CASES)
def test_bad_image_read_directly_names_the_file(tmp_path, case):
    ds = ImageDataset(_folder_with_bad_image(tmp_path / 'set', case))
    assert ds.image_names[-1] == '9-bad.png'
    with pytest.raises(GanPruneError) as e:
        ds[5]
    assert '9-bad.png' in str(e.value) and '\n' not in str(e.value)


@pytest.mark.parametrize('case', BAD_IMAGE_CASES)
def test_bad_first_image_fails_when_the_dataset_opens(tmp_path, case):
    folder = _folder_with_bad_image(tmp_path / 'set', case)
    os.rename(os.path.join(folder, '9-bad.png'), os.path.join(folder, '0-bad.png'))
    if case in ('size', 'mode'):
        return  # a first image of another size or mode is simply the dataset's shape
    with pytest.raises(GanPruneError) as e:
        ImageDataset(folder)
    assert '0-bad.png' in str(e.value) and '\n' not in str(e.value)


@pytest.mark.parametrize('workers', [0, 2])
@pytest.mark.parametrize('case', ['mode', 'devzero', 'huge'])
def test_bad_image_during_training_is_one_line_from_any_worker(tmp_path, case, workers):
    ds = ImageDataset(_folder_with_bad_image(tmp_path / 'set', case))
    src = RealImageSource(ds, batch_size=6, seed=0, workers=workers)  # every batch holds every image
    try:
        with pytest.raises(GanPruneError) as e:
            src.next()
    finally:
        src.close()
    message = str(e.value)
    assert '9-bad.png' in message and '\n' not in message and 'Traceback' not in message


def test_unexpected_error_in_a_worker_is_one_line_naming_the_file(tmp_path, monkeypatch):
    ds = ImageDataset(write_dataset_zip(tmp_path / 's.zip', random_images(4)))

    def broken(raw_idx):
        raise RuntimeError('decoder\nexploded')
    monkeypatch.setattr(ds, '_load_raw_image', broken)
    src = RealImageSource(ds, batch_size=2, seed=0, workers=1)
    with pytest.raises(GanPruneError) as e:
        src.next()
    assert src._iterator is None  # the failure stopped the worker
    assert 'RuntimeError' in str(e.value) and 'img0000000' in str(e.value) and '\n' not in str(e.value)


def test_zip_member_over_the_size_bound_is_refused_before_reading(tmp_path, monkeypatch):
    from gan_prune.data import datasets as data
    path = write_dataset_zip(tmp_path / 's.zip', random_images(2))
    ds = ImageDataset(path)
    monkeypatch.setattr(data, 'MAX_IMAGE_FILE_BYTES', 10)
    with pytest.raises(GanPruneError, match=r'img00000001\.png.*more than'):
        ds[1]


def test_fifo_in_a_folder_dataset_does_not_block(tmp_path):
    folder = _folder_with_bad_image(tmp_path / 'set', 'none')
    os.mkfifo(os.path.join(folder, '9-bad.png'))
    with pytest.raises(GanPruneError, match='not a regular file'):
        ImageDataset(folder)[5]


def test_each_process_opens_its_own_zip(tmp_path, monkeypatch):
    ds = ImageDataset(write_dataset_zip(tmp_path / 's.zip', random_images(3)))
    parent = ds._get_zip()
    assert ds._get_zip() is parent
    monkeypatch.setattr(os, 'getpid', lambda: -1)  # as in a forked loader worker
    assert ds._get_zip() is not parent


def test_two_forked_workers_read_a_zip_without_interfering(tmp_path):
    # Forked workers once shared the parent's open zip file and its read position: reads interleaved and
    # failed now and then (EOFError with an empty message, BadZipFile "File name in directory ... differ").
    ds = ImageDataset(write_dataset_zip(tmp_path / 's.zip', random_images(24, res=32)), xflip=True)
    ds[0]  # the main process has the zip open before the workers fork
    expected = RealImageSource(ds, batch_size=8, seed=2, workers=0)
    workers = RealImageSource(ds, batch_size=8, seed=2, workers=2)
    try:
        for _ in range(24):
            torch.testing.assert_close(workers.next()[0], expected.next()[0], rtol=0, atol=0)
    finally:
        workers.close()
