"""training.augment.AugmentPipe: interface (spec section 3.2), filters, and the behaviour of each augmentation."""
import inspect
import pickle

import numpy as np
import pytest
import torch

from torch_utils import persistence
from training import augment
from training.augment import AugmentPipe

ALL_ON = dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1, brightness=1, contrast=1,
              lumaflip=1, hue=1, saturation=1, imgfilter=1, noise=1, cutout=1)


def smooth_images(n=4, c=3, size=32, seed=0):
    """Band-limited images: resampling them changes little, so geometric results can be checked closely."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, c, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode='bicubic', align_corners=False)


def test_constructor_signature_attrs_and_buffers():
    params = inspect.signature(AugmentPipe.__mro__[1].__init__).parameters
    assert list(params)[1:] == [
        'xflip', 'rotate90', 'xint', 'xint_max', 'scale', 'rotate', 'aniso', 'xfrac', 'scale_std', 'rotate_max',
        'aniso_std', 'xfrac_std', 'brightness', 'contrast', 'lumaflip', 'hue', 'saturation', 'brightness_std',
        'contrast_std', 'hue_max', 'saturation_std', 'imgfilter', 'imgfilter_bands', 'imgfilter_std', 'noise',
        'cutout', 'noise_std', 'cutout_size']
    assert params['xint_max'].default == 0.125 and params['imgfilter_bands'].default == [1, 1, 1, 1]
    pipe = AugmentPipe(xflip=1, imgfilter_bands=(1, 0, 1, 1))
    assert persistence.is_persistent(pipe)
    for name in list(params)[1:]:
        value = getattr(pipe, name)
        if name == 'imgfilter_bands':
            assert value == [1, 0, 1, 1] and type(value) is list
        else:
            assert type(value) is float, name
    buffers = [(n, tuple(b.shape)) for n, b in pipe.named_buffers()]
    assert buffers == [('p', ()), ('Hz_geom', (12,)), ('Hz_fbank', (4, 43))]
    assert float(pipe.p) == 1.0
    assert list(pipe.parameters()) == []


def test_augment_module_imports_only_original_environment_names():
    import ast
    tree = ast.parse(inspect.getsource(augment))
    allowed_modules = {'math', 'numpy', 'torch'}
    allowed_from = {'torch_utils': {'misc', 'persistence'},
                    'torch_utils.ops': {'upfirdn2d', 'grid_sample_gradfix', 'conv2d_gradfix'}}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert all(alias.name in allowed_modules for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.module in allowed_from and {a.name for a in node.names} <= allowed_from[node.module]


def test_wavelet_filters_are_valid_orthogonal_lowpass():
    for moments in (2, 6):
        h = augment._daubechies_family_lowpass(moments) * np.sqrt(2)  # orthonormal scaling
        assert len(h) == 2 * moments
        assert h.sum() == pytest.approx(np.sqrt(2))
        for shift in range(1, moments):
            assert np.dot(h[:-2 * shift], h[2 * shift:]) == pytest.approx(0, abs=1e-12)
        assert np.dot(h, h) == pytest.approx(1)
        alternating = h * (-1.0) ** np.arange(len(h))
        for k in range(moments):  # vanishing moments of the matching high-pass
            assert np.sum(alternating * np.arange(len(h)) ** k) == pytest.approx(0, abs=1e-8)
    # db2 / sym2 in closed form, normalised to sum 1.
    s3 = np.sqrt(3)
    assert augment._daubechies_family_lowpass(2) == pytest.approx(np.array([1 + s3, 3 + s3, 3 - s3, 1 - s3]) / 8)


def test_filter_bank_partitions_the_spectrum():
    bank = augment._octave_filter_bank()
    assert bank.shape == (4, 43)
    impulse = np.zeros(43)
    impulse[21] = 1
    assert np.abs(bank.sum(axis=0) - impulse).max() < 1e-12
    assert np.abs(bank - bank[:, ::-1]).max() < 1e-12  # symmetric, zero phase
    freqs = np.linspace(0, np.pi, 257)
    response = np.abs(np.exp(-1j * freqs[:, None] * np.arange(43)[None, :]) @ bank.T)  # [freq, band]
    edges = [0, np.pi / 8, np.pi / 4, np.pi / 2, np.pi]
    for band, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        centre = np.argmin(np.abs(freqs - (lo + hi) / 2))
        assert response[centre].argmax() == band


def test_buffers_match_the_reference_snapshot(golden_dir):
    """The reference's AugmentPipe buffers in snapshot_format_res32.pkl equal what the constructor computes."""
    class _State(dict):
        pass

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ('torch_utils.persistence', '_reconstruct_persistent_obj'):
                return _State
            if (module, name) == ('dnnlib.util', 'EasyDict'):
                return dict
            return super().find_class(module, name)

    with open(golden_dir / 'snapshot_format_res32.pkl', 'rb') as f:
        data = Unpickler(f).load()
    meta = data['augment_pipe']
    assert meta['class_name'] == 'AugmentPipe'
    state = meta['state']
    pipe = AugmentPipe(**state['_init_kwargs'])
    ref_buffers = state['_buffers']
    assert set(ref_buffers) == {'p', 'Hz_geom', 'Hz_fbank'}
    assert torch.allclose(pipe.Hz_geom, ref_buffers['Hz_geom'], rtol=0, atol=1e-7)
    assert torch.allclose(pipe.Hz_fbank, ref_buffers['Hz_fbank'], rtol=0, atol=1e-7)
    for key, value in state.items():
        if not key.startswith('_') and key != 'training':
            assert getattr(pipe, key) == value, key
    # The snapshot's state drops straight into this class.
    loaded = AugmentPipe.__new__(AugmentPipe)
    loaded.__setstate__(dict(state))
    out = loaded(smooth_images(2))
    assert out.shape == (2, 3, 32, 32)


def test_p_zero_is_identity():
    pipe = AugmentPipe(**ALL_ON)
    pipe.p.zero_()
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(pipe(x), x)


def test_xflip_with_p_one_flips_exactly():
    pipe = AugmentPipe(xflip=1)
    x = torch.randn(16, 3, 8, 12)
    torch.manual_seed(0)
    y = pipe(x)
    flipped = [torch.equal(y[i], x[i].flip(2)) for i in range(16)]
    unchanged = [torch.equal(y[i], x[i]) for i in range(16)]
    assert all(f != u for f, u in zip(flipped, unchanged))
    assert 0 < sum(flipped) < 16  # each image is flipped with probability 1/2
    assert torch.equal(pipe(x, debug_percentile=0.75), x.flip(3))
    assert torch.equal(pipe(x, debug_percentile=0.25), x)


def test_rotate90_and_integer_translation_are_exact():
    x = torch.randn(2, 3, 8, 8)
    quarter = AugmentPipe(rotate90=1)(x, debug_percentile=0.3)  # one quarter turn
    assert any(torch.equal(quarter, torch.rot90(x, k, dims=(2, 3))) for k in (1, 3))
    assert torch.equal(AugmentPipe(rotate90=1)(x, debug_percentile=0.6), torch.rot90(x, 2, dims=(2, 3)))
    shifted = AugmentPipe(xint=1, xint_max=0.25)(x, debug_percentile=1.0)  # +2 pixels in x and y
    assert torch.equal(shifted[:, :, 2:, 2:], x[:, :, :-2, :-2])
    assert torch.equal(shifted[:, :, 2:, 0], x[:, :, :-2, 2])  # mirrored border (reflect padding)


def test_general_geometric_rotation_matches_exact_half_turn():
    x = smooth_images()
    # debug_percentile 0.75 turns each of the two rotations by +90 degrees: a half turn in total.
    y = AugmentPipe(rotate=1)(x, debug_percentile=0.75)
    interior = (slice(None), slice(None), slice(4, -4), slice(4, -4))
    err = (y - x.flip(2, 3))[interior].abs().max()
    assert float(err) < 0.02 * float(x.abs().max())


def _wave(x_coord, y_coord):
    """A smooth test pattern evaluated at pixel-centre coordinates (origin at the image centre)."""
    pattern = torch.cos(2 * np.pi * x_coord / 16 + 0.3) * torch.sin(2 * np.pi * y_coord / 20 + 0.5)
    return pattern[None, None].repeat(2, 3, 1, 1)


def test_general_geometric_scaling_and_translation_are_unbiased():
    u = torch.arange(32) + 0.5 - 16
    ux, uy = u[None, :], u[:, None]
    x = _wave(ux, uy)
    interior = (slice(None), slice(None), slice(4, -4), slice(4, -4))
    assert torch.equal(AugmentPipe(scale=1, scale_std=1)(x, debug_percentile=0.5), x)  # median draw: scale 1
    zoomed = AugmentPipe(scale=1, scale_std=1)(x, debug_percentile=0.8413447)  # +1 sigma: 2x zoom
    assert float((zoomed - _wave(ux / 2, uy / 2))[interior].abs().max()) < 0.02
    for shift in (1.0, 0.5):  # +1 sigma of xfrac_std = shift / width
        moved = AugmentPipe(xfrac=1, xfrac_std=shift / 32)(x, debug_percentile=0.8413447)
        assert float((moved - _wave(ux - shift, uy - shift))[interior].abs().max()) < 0.02


def test_color_transforms():
    gray = torch.rand(2, 1, 8, 8).repeat(1, 3, 1, 1) * 2 - 1
    b = AugmentPipe(brightness=1)(gray, debug_percentile=0.8413447)  # +1 sigma: +0.2
    assert torch.allclose(b, gray + 0.2, atol=1e-5)
    c = AugmentPipe(contrast=1)(gray, debug_percentile=0.8413447)  # +1 sigma: x 2**0.5
    assert torch.allclose(c, gray * 2 ** 0.5, atol=1e-5)
    flip = AugmentPipe(lumaflip=1)(gray, debug_percentile=0.9)
    assert torch.allclose(flip, -gray, atol=1e-5)
    for kind in ('hue', 'saturation'):  # grey stays grey
        out = AugmentPipe(**{kind: 1})(gray, debug_percentile=0.9)
        assert torch.allclose(out, gray, atol=1e-5)
    rgb = torch.rand(2, 3, 8, 8) * 2 - 1
    desat = AugmentPipe(saturation=1, saturation_std=30)(rgb, debug_percentile=1e-6)
    assert torch.allclose(desat, rgb.mean(dim=1, keepdim=True).expand_as(rgb), atol=1e-4)
    hue = AugmentPipe(hue=1)(rgb, debug_percentile=0.9)
    assert torch.allclose(hue.mean(dim=1), rgb.mean(dim=1), atol=1e-5)  # rotation about the luma axis
    assert torch.allclose(hue.norm(dim=1), rgb.norm(dim=1), atol=1e-5)
    assert not torch.allclose(hue, rgb, atol=1e-2)
    mono = AugmentPipe(brightness=1, contrast=1)(gray[:, :1], debug_percentile=0.8413447)
    assert torch.allclose(mono, (gray[:, :1] + 0.2) * 2 ** 0.5, atol=1e-5)  # brightness, then contrast


def test_imgfilter():
    x = smooth_images()
    same = AugmentPipe(imgfilter=1, imgfilter_std=1)(x, debug_percentile=0.8)  # equal gains normalise to 1
    assert torch.allclose(same, x, atol=1e-5)
    noise = torch.randn(4, 3, 64, 64)
    pipe = AugmentPipe(imgfilter=1, imgfilter_bands=[0, 0, 0, 1])
    boosted = pipe(noise, debug_percentile=0.97)  # highest band amplified, then power-normalised
    diff_energy = lambda t: float(t.diff(dim=3).square().mean())  # noqa: E731
    assert diff_energy(boosted) > 1.1 * diff_energy(noise)
    assert float(boosted.square().mean()) == pytest.approx(float(noise.square().mean()), rel=0.1)


def test_noise_and_cutout():
    x = torch.zeros(2, 3, 32, 32)
    noisy = AugmentPipe(noise=1)(x, debug_percentile=0.8413447)  # |N(0,1)| at the 84th percentile: sigma 0.1
    assert float(noisy.std()) == pytest.approx(0.1, rel=0.1)
    ones = torch.ones(2, 3, 32, 32)
    cut = AugmentPipe(cutout=1)(ones, debug_percentile=0.5)  # centred 16x16 square
    assert float((cut == 0).float().sum()) == 2 * 3 * 16 * 16
    assert torch.equal(cut[:, :, 8:24, 8:24], torch.zeros(2, 3, 16, 16))


@pytest.mark.parametrize('shape', [(4, 3, 32, 32), (3, 1, 16, 24)])
def test_full_pipeline_shape_dtype_and_gradients(shape):
    torch.manual_seed(1)
    pipe = AugmentPipe(**ALL_ON)
    x = torch.randn(*shape, requires_grad=True)
    y = pipe(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    (grad,) = torch.autograd.grad(y.square().sum(), [x])
    assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0
    noiseless = AugmentPipe(**dict(ALL_ON, noise=0))
    for dp in (0.0, 0.5, 1.0):
        out = noiseless(x.detach(), debug_percentile=dp)
        assert out.shape == x.shape and torch.isfinite(out).all()
        assert torch.equal(out, noiseless(x.detach(), debug_percentile=dp))  # debug mode is deterministic


def test_probability_scales_with_p():
    x = torch.randn(400, 1, 4, 4)
    pipe = AugmentPipe(brightness=1)
    pipe.p.fill_(0.25)
    torch.manual_seed(2)
    changed = (pipe(x) != x).flatten(1).any(dim=1).float().mean()
    assert 0.17 < float(changed) < 0.33
