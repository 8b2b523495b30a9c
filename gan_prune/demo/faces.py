"""Procedural cartoon faces with content masks: the data the bundled teacher is trained on.

Each image is drawn at 4x its final size with PIL and box-filtered down, so edges are anti-aliased. Its content
mask marks what a face parser would call content: skin, hair, eyes, brows, mouth, ears, glasses; background
and clothes are not content (the COI rule of method.md section 2: class not in {background, cloth}).
Everything is a pure function of (seed, index): the same call gives the same image on every machine.
"""
from __future__ import annotations

import numpy as np
import PIL.Image
import PIL.ImageDraw

SUPERSAMPLE = 4

SKIN = [(255, 224, 196), (241, 194, 155), (224, 172, 125), (198, 134, 90), (141, 85, 54), (96, 60, 40)]
HAIR = [(20, 18, 18), (70, 45, 25), (120, 80, 40), (200, 160, 90), (180, 70, 30), (150, 150, 150), (40, 60, 160)]
IRIS = [(70, 40, 20), (40, 90, 160), (40, 120, 60), (30, 30, 30)]
LIPS = [(180, 60, 70), (150, 50, 50), (200, 90, 100), (120, 40, 40)]


def _jitter(rng: np.random.RandomState, color: tuple, amount: int = 18) -> tuple:
    return tuple(int(np.clip(c + rng.randint(-amount, amount + 1), 0, 255)) for c in color)


def _random_color(rng: np.random.RandomState) -> tuple:
    return tuple(int(c) for c in rng.randint(0, 256, size=3))


def _background(rng: np.random.RandomState, size: int) -> PIL.Image.Image:
    """A gradient, stripes, or dots in random colours."""
    c0, c1 = np.array(_random_color(rng), np.float32), np.array(_random_color(rng), np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    kind = rng.randint(3)
    if kind == 1:  # stripes
        period = rng.uniform(0.08, 0.25)
        t = (np.floor(t / period) % 2).astype(np.float32) * 0.8 + 0.1 * t
    elif kind == 2:  # dots on a gradient
        period = size * rng.uniform(0.1, 0.2)
        dots = (((xx * size) % period - period / 2) ** 2 + ((yy * size) % period - period / 2) ** 2) < (period / 4) ** 2
        t = np.where(dots, 1.0 - t, t * 0.6)
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    return PIL.Image.fromarray(img.clip(0, 255).astype(np.uint8), 'RGB')


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> list:
    return [cx - rx, cy - ry, cx + rx, cy + ry]


def draw_face(seed: int, index: int, resolution: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Image `index` of the dataset with `seed`: (uint8 [resolution, resolution, 3], uint8 mask {0, 255})."""
    rng = np.random.RandomState([seed % (2 ** 31), index % (2 ** 31)])
    S = resolution * SUPERSAMPLE
    img = _background(rng, S)
    mask = PIL.Image.new('L', (S, S), 0)
    di, dm = PIL.ImageDraw.Draw(img), PIL.ImageDraw.Draw(mask)

    def shape(kind: str, box, fill, content: bool = True, **kw) -> None:
        getattr(di, kind)(box, fill=fill, **kw)
        getattr(dm, kind)(box, fill=255 if content else 0, **{k: v for k, v in kw.items() if k != 'outline'})

    cx = S * (0.5 + rng.uniform(-0.08, 0.08))
    cy = S * (0.47 + rng.uniform(-0.06, 0.06))
    rx = S * rng.uniform(0.20, 0.27)
    ry = rx * rng.uniform(1.15, 1.4)
    skin = _jitter(rng, SKIN[rng.randint(len(SKIN))], 10)
    hair = _jitter(rng, HAIR[rng.randint(len(HAIR))])
    hair_style = rng.choice(['short', 'long', 'bald', 'bun'], p=[0.45, 0.35, 0.1, 0.1])

    if hair_style == 'long':  # hair behind the head, falling to the shoulders
        shape('rectangle', [cx - rx * 1.25, cy - ry * 0.4, cx + rx * 1.25, cy + ry * 1.3], hair)
    # neck, then clothes over its lower part (clothes are not content)
    shape('rectangle', [cx - rx * 0.38, cy + ry * 0.6, cx + rx * 0.38, cy + ry * 1.35], skin)
    cloth = _random_color(rng)
    shape('ellipse', _ellipse(cx, S * 1.08, rx * rng.uniform(1.6, 2.2), S * 0.22), cloth, content=False)
    # ears, face
    for side in (-1, 1):
        shape('ellipse', _ellipse(cx + side * rx * 0.98, cy + ry * 0.05, rx * 0.18, ry * 0.2), skin)
    shape('ellipse', _ellipse(cx, cy, rx, ry), skin)
    if hair_style in ('short', 'long', 'bun'):
        shape('chord', _ellipse(cx, cy - ry * 0.25, rx * 1.08, ry * 0.9), hair, start=180, end=360)
        if hair_style == 'bun':
            shape('ellipse', _ellipse(cx, cy - ry * 1.15, rx * 0.38, rx * 0.32), hair)
    # eyes with irises, brows
    eye_dx, eye_y = rx * rng.uniform(0.35, 0.48), cy + ry * rng.uniform(-0.12, 0.05)
    eye_r = rx * rng.uniform(0.13, 0.2)
    iris = _jitter(rng, IRIS[rng.randint(len(IRIS))])
    look = rng.uniform(-0.4, 0.4) * eye_r
    for side in (-1, 1):
        ex = cx + side * eye_dx
        shape('ellipse', _ellipse(ex, eye_y, eye_r, eye_r * 0.75), (250, 250, 250))
        shape('ellipse', _ellipse(ex + look, eye_y, eye_r * 0.5, eye_r * 0.5), iris)
        shape('ellipse', _ellipse(ex + look, eye_y, eye_r * 0.22, eye_r * 0.22), (10, 10, 10))
        brow_y = eye_y - eye_r * rng.uniform(1.3, 1.9)
        tilt = rng.uniform(-0.4, 0.4) * eye_r * side
        shape('line', [ex - eye_r, brow_y + tilt, ex + eye_r, brow_y - tilt], hair, width=max(1, int(eye_r * 0.35)))
    if rng.rand() < 0.2:  # glasses
        frame = _random_color(rng)
        for side in (-1, 1):
            di.ellipse(_ellipse(cx + side * eye_dx, eye_y, eye_r * 1.5, eye_r * 1.3), outline=frame,
                       width=max(1, int(eye_r * 0.25)))
    # nose and mouth
    nose_y = cy + ry * rng.uniform(0.15, 0.3)
    shade = tuple(int(c * 0.8) for c in skin)
    shape('line', [cx, eye_y + eye_r, cx - rx * 0.08, nose_y, cx + rx * 0.05, nose_y], shade,
          width=max(1, int(rx * 0.05)))
    mouth_y, mouth_w = cy + ry * rng.uniform(0.45, 0.6), rx * rng.uniform(0.3, 0.55)
    lips = _jitter(rng, LIPS[rng.randint(len(LIPS))])
    if rng.rand() < 0.5:  # smile
        shape('arc', _ellipse(cx, mouth_y - mouth_w * 0.4, mouth_w, mouth_w * 0.6), lips, start=20, end=160,
              width=max(1, int(rx * 0.08)))
    else:  # open mouth
        shape('ellipse', _ellipse(cx, mouth_y, mouth_w * 0.6, mouth_w * rng.uniform(0.2, 0.45)), lips)

    small = img.resize((resolution, resolution), PIL.Image.Resampling.BOX)
    small_mask = mask.resize((resolution, resolution), PIL.Image.Resampling.BOX)
    return np.asarray(small, np.uint8), ((np.asarray(small_mask) >= 128) * 255).astype(np.uint8)


def make_faces(num: int, seed: int = 0, resolution: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """`num` images [N, H, W, 3] and masks [N, H, W] (uint8; mask 255 = content)."""
    pairs = [draw_face(seed, i, resolution) for i in range(num)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


MASKS_ENTRY = 'content_masks.npy'  # inside the dataset zip; ignored by dataset readers (not an image)


def write_faces_zip(path: str, num: int, seed: int = 0, resolution: int = 32) -> str:
    """Write `num` faces as a StyleGAN2-ADA dataset zip with a `content_masks.npy` entry [N, H, W], atomically."""
    import io

    from gan_prune.data.datasets import write_dataset_zip
    images, masks = make_faces(num, seed, resolution)
    buf = io.BytesIO()
    np.save(buf, masks)
    return write_dataset_zip(path, images, extra_entries={MASKS_ENTRY: buf.getvalue()})


def read_masks(path: str) -> np.ndarray:
    """The content masks [N, H, W] (uint8, 255 = content) stored in a dataset zip by write_faces_zip."""
    import io
    import zipfile
    with zipfile.ZipFile(path) as zf:
        return np.load(io.BytesIO(zf.read(MASKS_ENTRY)))
