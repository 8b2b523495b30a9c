"""The procedural face dataset: deterministic, masks mark content only, readable as a StyleGAN2-ADA dataset."""
import numpy as np

from gan_prune.demo import faces


def test_same_seed_same_images_other_seed_other_images():
    a_img, a_mask = faces.make_faces(4, seed=3)
    b_img, b_mask = faces.make_faces(4, seed=3)
    c_img, _ = faces.make_faces(4, seed=4)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert not np.array_equal(a_img, c_img)
    assert a_img.shape == (4, 32, 32, 3) and a_img.dtype == np.uint8


def test_masks_cover_face_not_background_or_clothes():
    _, masks = faces.make_faces(32, seed=0)
    assert set(np.unique(masks)) <= {0, 255}
    share = (masks > 0).mean(axis=(1, 2))
    assert np.all(share > 0.1) and np.all(share < 0.7)
    assert (masks[:, 0, :] == 0).mean() > 0.6      # top row: mostly background
    assert (masks[:, -1, :] == 0).mean() > 0.7     # bottom row: clothes and background
    assert (masks[:, 14:18, 14:18] > 0).mean() > 0.9  # image centre: the face


def test_zip_is_a_dataset_with_masks(tmp_path):
    from gan_prune.data.datasets import ImageDataset
    path = faces.write_faces_zip(str(tmp_path / 'f.zip'), 6, seed=1, resolution=16)
    ds = ImageDataset(path)
    assert len(ds) == 6 and ds.resolution == 16 and ds.num_channels == 3
    img, _ = ds[2]
    expected, mask = faces.draw_face(1, 2, 16)
    assert np.array_equal(img, expected.transpose(2, 0, 1))
    assert np.array_equal(faces.read_masks(path)[2], mask)
    assert not any(p.name.endswith('.partial.zip') for p in tmp_path.iterdir())
