"""Shared distillation test fixtures."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

TINY_RES = 16  # image size of the tiny networks in `files`


class TinyEmbedder(torch.nn.Module):
    """A 6-d feature extractor small enough to train through in tests."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, stride=2)

    def forward(self, x):
        return F.adaptive_avg_pool2d(torch.tanh(self.conv(x)), 1).flatten(1)


@pytest.fixture(scope='session')
def save_tiny_embedder():
    """save_tiny_embedder(path, seed) writes a TorchScript TinyEmbedder initialised from `seed`; returns the path."""
    def save(path, seed: int = 0) -> str:
        torch.manual_seed(seed)
        torch.jit.script(TinyEmbedder()).save(str(path))
        return str(path)
    return save


@pytest.fixture(scope='module')
def files(tmp_path_factory, save_tiny_embedder):
    """Teacher / student pickles (16 px, 16 and 8 channels), a 12-image dataset and a tiny TorchScript embedder
    for DiME: the inputs of the short distillation runs (CPU and CUDA)."""
    import dnnlib
    import gan_prune
    from training import networks
    from gan_prune.data.datasets import write_dataset_zip
    d = tmp_path_factory.mktemp('distill_files')
    E = dnnlib.EasyDict

    def generator(cmax, seed):
        torch.manual_seed(seed)
        return networks.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=TINY_RES, img_channels=3,
                                  mapping_kwargs=E(num_layers=2),
                                  synthesis_kwargs=E(channel_base=TINY_RES * cmax, channel_max=cmax)).eval()

    G_t = generator(16, 0)
    with torch.no_grad():
        for name, p in G_t.named_parameters():
            if name.endswith('noise_strength'):
                p.fill_(0.1)
    torch.manual_seed(1)
    D_t = networks.Discriminator(c_dim=0, img_resolution=TINY_RES, img_channels=3, channel_base=TINY_RES * 16,
                                 channel_max=16, epilogue_kwargs=E(mbstd_group_size=4)).eval()
    G_s = generator(8, 2)
    G_s.mapping.load_state_dict(G_t.mapping.state_dict())
    gan_prune.save_network_pkl(dict(G=G_t, D=D_t, G_ema=G_t), d / 'teacher.pkl')
    gan_prune.save_network_pkl(dict(G=G_s, D=D_t, G_ema=G_s), d / 'student.pkl')
    images = np.random.RandomState(0).randint(0, 256, (12, TINY_RES, TINY_RES, 3), dtype=np.uint8)
    write_dataset_zip(d / 'data.zip', images)
    save_tiny_embedder(d / 'embed.pt', seed=3)
    return d
