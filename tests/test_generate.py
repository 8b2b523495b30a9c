"""generate: seeds, latents and pixels follow the original generate.py conventions; files, grid, CLI."""
import os

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

from gan_prune import save_network_pkl
from gan_prune.errors import GanPruneError
from gan_prune.generate import (class_label, generate_images, make_grid, parse_seeds, seed_latent, to_uint8,
                                write_png)


def small_snapshot(path, c_dim=0, img_channels=3):
    from training import networks
    torch.manual_seed(0)
    G = networks.Generator(z_dim=16, c_dim=c_dim, w_dim=16, img_resolution=16, img_channels=img_channels,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=128, channel_max=16)).eval()
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith('noise_strength'):
                p.fill_(0.3)
    G.requires_grad_(False)
    D = networks.Discriminator(c_dim=c_dim, img_resolution=16, img_channels=img_channels, channel_base=128,
                               channel_max=16).eval().requires_grad_(False)
    save_network_pkl(dict(G=G, G_ema=G, D=D, training_set_kwargs=None, augment_pipe=None), path)
    return G


def reference_image(G, seed, psi=1.0, noise_mode='const', class_idx=None):
    """The original tool's recipe, written out from the spec."""
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim))
    label = torch.zeros([1, G.c_dim])
    if G.c_dim:
        label[:, class_idx] = 1
    with torch.no_grad():
        img = G(z, label, truncation_psi=psi, noise_mode=noise_mode)
    return (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].numpy()


def test_parse_seeds():
    assert parse_seeds('0-3') == [0, 1, 2, 3]
    assert parse_seeds('5, 1,7-8') == [5, 1, 7, 8]
    for bad in ('a', '3-1', '', '1-2-3'):
        with pytest.raises(GanPruneError):
            parse_seeds(bad)


def test_latent_and_label_conventions():
    z = seed_latent(42, 8)
    assert z.dtype == torch.float64 and torch.equal(z, torch.from_numpy(np.random.RandomState(42).randn(1, 8)))
    assert class_label(0, None).shape == (1, 0)
    assert class_label(3, 2).tolist() == [[0, 0, 1]]
    with pytest.raises(GanPruneError, match='--class'):
        class_label(3, None)
    with pytest.raises(GanPruneError, match='out of range'):
        class_label(3, 3)


def test_to_uint8_rounding_and_clamp():
    img = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0]).view(1, 1, 1, 5)
    assert to_uint8(img).reshape(-1).tolist() == [0, 0, 128, 255, 255]


def test_generate_seeds_writes_reference_pixels(tmp_path):
    src = tmp_path / 'net.pkl'
    G = small_snapshot(src)
    outdir = tmp_path / 'out'
    paths = generate_images(str(src), str(outdir), seeds=[0, 3, 12], truncation_psi=0.7, device='cpu')
    assert [os.path.basename(p) for p in paths] == ['seed0000.png', 'seed0003.png', 'seed0012.png', 'grid.png']
    for seed in (0, 3, 12):
        png = np.array(PIL.Image.open(outdir / f'seed{seed:04d}.png'))
        assert png.shape == (16, 16, 3)
        assert np.array_equal(png, reference_image(G, seed, psi=0.7))
    grid = np.array(PIL.Image.open(outdir / 'grid.png'))
    assert grid.shape == (32, 32, 3)
    assert np.array_equal(grid[16:, :16], reference_image(G, 12, psi=0.7))
    assert not [f for f in os.listdir(outdir) if f.endswith('.tmp')]


def test_random_noise_mode_is_reproducible_and_differs(tmp_path):
    src = tmp_path / 'net.pkl'
    small_snapshot(src)
    a = generate_images(str(src), str(tmp_path / 'a'), seeds=[1], noise_mode='random', grid=False)
    b = generate_images(str(src), str(tmp_path / 'b'), seeds=[1], noise_mode='random', grid=False)
    c = generate_images(str(src), str(tmp_path / 'c'), seeds=[1], noise_mode='const', grid=False)
    load = lambda p: np.array(PIL.Image.open(p[0]))  # noqa: E731
    assert np.array_equal(load(a), load(b)) and not np.array_equal(load(a), load(c))


def test_conditional_and_grayscale(tmp_path):
    src = tmp_path / 'cond.pkl'
    G = small_snapshot(src, c_dim=4, img_channels=1)
    with pytest.raises(GanPruneError, match='--class'):
        generate_images(str(src), str(tmp_path / 'o'), seeds=[0])
    paths = generate_images(str(src), str(tmp_path / 'o'), seeds=[2], class_idx=3)
    png = np.array(PIL.Image.open(paths[0]))
    assert png.shape == (16, 16) and np.array_equal(png, reference_image(G, 2, class_idx=3)[..., 0])


def test_projected_w(tmp_path):
    src = tmp_path / 'net.pkl'
    G = small_snapshot(src)
    ws = G.mapping(torch.randn(2, 16), None).numpy()
    np.savez(tmp_path / 'w.npz', w=ws)
    paths = generate_images(str(src), str(tmp_path / 'o'), projected_w=str(tmp_path / 'w.npz'), grid=False)
    assert [os.path.basename(p) for p in paths] == ['proj00.png', 'proj01.png']
    np.savez(tmp_path / 'bad.npz', w=ws[:, :3])
    with pytest.raises(GanPruneError, match='projected W'):
        generate_images(str(src), str(tmp_path / 'o'), projected_w=str(tmp_path / 'bad.npz'))


def test_student_renders_like_teacher_at_ratio_zero(tmp_path):
    from gan_prune.prune.pipeline import prune
    src, student = tmp_path / 'net.pkl', tmp_path / 'student.pkl'
    small_snapshot(src)
    prune(str(src), str(student), ratio=0.0, criterion='random', log=None)
    a = generate_images(str(src), str(tmp_path / 't'), seeds=[0, 1], grid=False)
    b = generate_images(str(student), str(tmp_path / 's'), seeds=[0, 1], grid=False)
    for pa, pb in zip(a, b):
        assert np.array_equal(np.array(PIL.Image.open(pa)), np.array(PIL.Image.open(pb)))


def test_grid_layout_and_png_writing(tmp_path):
    imgs = [np.full((2, 3, 3), i, np.uint8) for i in range(5)]
    grid = make_grid(imgs)
    assert grid.shape == (4, 9, 3) and grid[3, 3, 0] == 4 and grid[3, 6, 0] == 0  # 3 columns, 2 rows
    write_png(imgs[1], str(tmp_path / 'x.png'))
    assert np.array_equal(np.array(PIL.Image.open(tmp_path / 'x.png')), imgs[1])


def test_cli_generate(tmp_path):
    from gan_prune.cli import cli
    src = tmp_path / 'net.pkl'
    G = small_snapshot(src)
    res = CliRunner().invoke(cli, ['generate', '--pkl', str(src), '--seeds', '4-5', '--outdir', str(tmp_path / 'g'),
                                   '--trunc', '0.5', '--device', 'cpu'])
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(tmp_path / 'g')) == ['grid.png', 'seed0004.png', 'seed0005.png']
    assert np.array_equal(np.array(PIL.Image.open(tmp_path / 'g' / 'seed0005.png')), reference_image(G, 5, psi=0.5))
