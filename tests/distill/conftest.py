"""Shared distillation test fixtures."""
import pytest
import torch
import torch.nn.functional as F


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
