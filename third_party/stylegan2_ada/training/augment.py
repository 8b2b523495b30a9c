"""Adaptive discriminator augmentation (ADA) pipeline with the interface of stylegan2-ada-pytorch.

The augmentations follow the ADA paper (Karras et al., "Training Generative Adversarial Networks with Limited
Data", 2020, appendix B). Every augmentation is applied to each image independently with probability
`strength * p`, where `strength` is the constructor argument of that augmentation and `p` is the buffer that
the training loop adjusts:
- pixel blitting: x-flip, 90-degree rotations, integer translation;
- general geometric: isotropic scaling, rotation, anisotropic scaling, fractional translation;
- color: brightness, contrast, luma flip, hue rotation, saturation;
- image-space filtering: four frequency bands amplified or attenuated independently;
- corruptions: additive Gaussian noise, cutout.
The pixel-blitting augmentations form one integer matrix per image, applied as an exact pixel gather (so an
x-flip is exactly a flip). The general geometric augmentations form one matrix per image, applied once by
bilinear sampling (grid_sample) of a reflect-padded, 2x-upsampled image; the 12-tap wavelet low-pass `Hz_geom`
upsamples and downsamples it, so the resampling adds little aliasing. All color augmentations form one 4x4
matrix per image. Every step is differentiable with respect to the images.

This module's source travels inside network pickles, so it imports only numpy, torch and torch_utils.
"""

import math

import numpy as np
import torch
from torch_utils import misc
from torch_utils import persistence
from torch_utils.ops import upfirdn2d
from torch_utils.ops import grid_sample_gradfix
from torch_utils.ops import conv2d_gradfix

#----------------------------------------------------------------------------
# Filters, computed rather than tabulated.


def _daubechies_family_lowpass(num_vanishing_moments, least_asymmetric=True):
    """Orthogonal wavelet low-pass of length 2N, normalised to sum 1 (symlet, or Daubechies' minimum phase).

    Spectral factorisation: |H|^2 = cos^2N(w/2) * P(sin^2(w/2)) with P(y) = sum_k C(N-1+k, k) y^k. Each root of
    P gives a reciprocal pair of zeros in z; choosing one zero per pair gives a valid filter. The symlet is the
    choice whose phase is closest to linear; the result is oriented with its energy in the first half.
    """
    n = num_vanishing_moments
    y_roots = np.roots([math.comb(n - 1 + k, k) for k in range(n)][::-1])
    # Keep complex-conjugate roots together so that the filter stays real.
    groups, remaining = [], list(y_roots)
    while remaining:
        y = remaining.pop(0)
        if abs(y.imag) > 1e-9:
            j = min(range(len(remaining)), key=lambda idx: abs(remaining[idx] - np.conj(y)))
            groups.append([y, remaining.pop(j)])
        else:
            groups.append([complex(y.real, 0)])

    freqs = np.linspace(1e-3, np.pi - 1e-3, 512)
    basis = np.exp(-1j * freqs[:, None] * np.arange(2 * n)[None, :])
    best_err, best = None, None
    for choice in range(2 ** len(groups)):
        h = np.ones(1, dtype=np.complex128)
        for _ in range(n):
            h = np.convolve(h, [1, 1])
        for group_idx, group in enumerate(groups):
            inside = (choice >> group_idx) & 1 == 0
            for y in group:
                z_pair = sorted(np.roots([1, -(2 - 4 * y), 1]), key=abs)
                h = np.convolve(h, [1, -(z_pair[0] if inside else z_pair[1])])
        h = h.real / h.real.sum()
        if not least_asymmetric:
            if choice == 0:
                best = h
            continue
        response = basis @ h
        phase = np.unwrap(np.angle(response))
        design = np.stack([freqs, np.ones_like(freqs)], axis=1)
        residual = phase - design @ np.linalg.lstsq(design, phase, rcond=None)[0]
        err = float(np.sum(residual ** 2 * np.abs(response) ** 2))
        if best_err is None or err < best_err - 1e-12:
            best_err, best = err, h
    taps = np.arange(len(best))
    if np.sum(taps * best ** 2) / np.sum(best ** 2) > (len(best) - 1) / 2:
        best = best[::-1]
    return np.ascontiguousarray(best)


def _upsample_taps(f, factor):
    out = np.zeros((len(f) - 1) * factor + 1)
    out[::factor] = f
    return out


def _octave_filter_bank(num_bands=4, size=43):
    """1-D filters splitting the spectrum into octaves: [0, pi/8], [pi/8, pi/4], [pi/4, pi/2], [pi/2, pi].

    Built from the symmetric half-band low-pass lo2 = h * reverse(h) of the 4-tap symlet h and its complement
    hi2 = delta - lo2. The bands sum to a unit impulse, and for white input the power of band i is the
    band's passband ([0, pi/8], ...) is where its response is the largest of the four.
    """
    h = _daubechies_family_lowpass(2)
    lo2 = np.convolve(h, h[::-1])
    hi2 = -lo2
    hi2[len(hi2) // 2] += 1
    bands = []
    for band in range(num_bands):  # counted from the low end
        # Octave `depth` below the top: low-pass `depth` times (each stage stretched 2x), then the band's
        # high-pass stretched to that octave. The lowest band is the remaining low-pass.
        depth = min(num_bands - 1 - band, num_bands - 2)
        f = np.ones(1)
        for k in range(depth):
            f = np.convolve(f, _upsample_taps(lo2, 2 ** k))
        f = np.convolve(f, _upsample_taps(hi2 if band > 0 else lo2, 2 ** depth))
        bands.append(f)
    bank = np.zeros([num_bands, size])
    for i, f in enumerate(bands):
        pad = (size - len(f)) // 2
        bank[i, pad:pad + len(f)] = f
    return bank


def _reflect_index(index, size):
    """Mirror integer indices into [0, size) without repeating the edge pixel (the 'reflect' padding rule)."""
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * size - 2
    index = torch.remainder(index, period)
    return torch.where(index >= size, period - index, index)

#----------------------------------------------------------------------------
# Per-sample homogeneous matrices. Arguments are tensors of shape [N] (or Python numbers).


def _matrix(rows, like):
    rows = [[torch.as_tensor(v, dtype=torch.float32, device=like.device).expand(like.shape[0]) for v in row]
            for row in rows]
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def _translate2d(tx, ty, like):
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], like)


def _scale2d(sx, sy, like):
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], like)


def _rotate2d(theta, like):
    c, s = torch.cos(theta), torch.sin(theta)
    return _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]], like)


def _translate3d(t, like):
    return _matrix([[1, 0, 0, t], [0, 1, 0, t], [0, 0, 1, t], [0, 0, 0, 1]], like)


def _scale3d(s, like):
    return _matrix([[s, 0, 0, 0], [0, s, 0, 0], [0, 0, s, 0], [0, 0, 0, 1]], like)


def _rotate3d(axis, theta, like):
    # Rodrigues' rotation about a unit axis.
    vx, vy, vz = axis
    c, s = torch.cos(theta), torch.sin(theta)
    cc = 1 - c
    return _matrix([
        [vx * vx * cc + c,      vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
        [vy * vx * cc + vz * s, vy * vy * cc + c,      vy * vz * cc - vx * s, 0],
        [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c,      0],
        [0, 0, 0, 1]], like)

#----------------------------------------------------------------------------


@persistence.persistent_class
class AugmentPipe(torch.nn.Module):
    def __init__(self,
        xflip=0, rotate90=0, xint=0, xint_max=0.125,
        scale=0, rotate=0, aniso=0, xfrac=0, scale_std=0.2, rotate_max=1, aniso_std=0.2, xfrac_std=0.125,
        brightness=0, contrast=0, lumaflip=0, hue=0, saturation=0,
        brightness_std=0.2, contrast_std=0.5, hue_max=1, saturation_std=1,
        imgfilter=0, imgfilter_bands=[1,1,1,1], imgfilter_std=1,
        noise=0, cutout=0, noise_std=0.1, cutout_size=0.5,
    ):
        super().__init__()
        self.register_buffer('p', torch.ones([]))  # Overall multiplier for augmentation probability.

        # Pixel blitting.
        self.xflip = float(xflip)               # Probability multiplier for x-flip.
        self.rotate90 = float(rotate90)         # Probability multiplier for 90 degree rotations.
        self.xint = float(xint)                 # Probability multiplier for integer translation.
        self.xint_max = float(xint_max)         # Range of integer translation, relative to image dimensions.

        # General geometric transformations.
        self.scale = float(scale)               # Probability multiplier for isotropic scaling.
        self.rotate = float(rotate)             # Probability multiplier for arbitrary rotation.
        self.aniso = float(aniso)               # Probability multiplier for anisotropic scaling.
        self.xfrac = float(xfrac)               # Probability multiplier for fractional translation.
        self.scale_std = float(scale_std)       # Log2 standard deviation of isotropic scaling.
        self.rotate_max = float(rotate_max)     # Range of arbitrary rotation, 1 = full circle.
        self.aniso_std = float(aniso_std)       # Log2 standard deviation of anisotropic scaling.
        self.xfrac_std = float(xfrac_std)       # Std. dev. of fractional translation, relative to image dimensions.

        # Color transformations.
        self.brightness = float(brightness)     # Probability multiplier for brightness.
        self.contrast = float(contrast)         # Probability multiplier for contrast.
        self.lumaflip = float(lumaflip)         # Probability multiplier for luma flip.
        self.hue = float(hue)                   # Probability multiplier for hue rotation.
        self.saturation = float(saturation)     # Probability multiplier for saturation.
        self.brightness_std = float(brightness_std) # Standard deviation of brightness.
        self.contrast_std = float(contrast_std)     # Log2 standard deviation of contrast.
        self.hue_max = float(hue_max)               # Range of hue rotation, 1 = full circle.
        self.saturation_std = float(saturation_std) # Log2 standard deviation of saturation.

        # Image-space filtering.
        self.imgfilter = float(imgfilter)               # Probability multiplier for image-space filtering.
        self.imgfilter_bands = list(imgfilter_bands)    # Probability multipliers for individual frequency bands.
        self.imgfilter_std = float(imgfilter_std)       # Log2 standard deviation of image-space filter amplification.

        # Image-space corruptions.
        self.noise = float(noise)               # Probability multiplier for additive RGB noise.
        self.cutout = float(cutout)             # Probability multiplier for cutout.
        self.noise_std = float(noise_std)       # Standard deviation of additive RGB noise.
        self.cutout_size = float(cutout_size)   # Size of the cutout rectangle, relative to image dimensions.

        # Geometric resampling filter: 12-tap symlet low-pass (sum 1).
        self.register_buffer('Hz_geom', torch.as_tensor(_daubechies_family_lowpass(6), dtype=torch.float32))
        # Octave filter bank for image-space filtering, one band per row.
        self.register_buffer('Hz_fbank', torch.as_tensor(_octave_filter_bank(), dtype=torch.float32))

    #------------------------------------------------------------------------
    # Random draws. With debug_percentile every draw is replaced by that quantile and every augmentation is
    # applied, which makes the output deterministic (useful for inspecting one augmentation at a time).

    def _uniform(self, shape, images, debug_percentile):
        if debug_percentile is not None:
            return torch.full(shape, float(debug_percentile), device=images.device)
        return torch.rand(shape, device=images.device)

    def _normal(self, shape, images, debug_percentile):
        if debug_percentile is not None:
            q = torch.full(shape, float(debug_percentile), device=images.device).clamp(1e-6, 1 - 1e-6)
            return torch.erfinv(q * 2 - 1) * math.sqrt(2)
        return torch.randn(shape, device=images.device)

    def _gate(self, value, identity, prob, debug_percentile):
        """Per sample (leading dim): keep `value` with probability `prob`, else use the identity value."""
        if debug_percentile is not None:
            return value
        shape = [value.shape[0]] + [1] * (value.ndim - 1)
        keep = torch.rand(shape, device=value.device) < torch.as_tensor(prob, device=value.device)
        return torch.where(keep, value, torch.as_tensor(identity, dtype=value.dtype, device=value.device))

    #------------------------------------------------------------------------

    def forward(self, images, debug_percentile=None):
        assert isinstance(images, torch.Tensor) and images.ndim == 4
        batch_size, num_channels, height, width = images.shape
        device = images.device
        dp = debug_percentile
        like = images.new_empty([batch_size])  # carries batch size and device for the matrix builders
        p = self.p.to(device=device, dtype=torch.float32)

        # ---- Geometric. Matrices map output pixel coordinates to input coordinates (pixel units, origin at the
        # image centre); each is built by right-multiplying the inverse of every forward step in order.
        # Pixel blitting (flips, quarter turns, whole-pixel shifts) is kept apart from the general transforms
        # and applied as an exact pixel gather; the general ones need resampling.
        B_inv = torch.eye(3, device=device).unsqueeze(0).repeat([batch_size, 1, 1])

        if self.xflip > 0:
            i = torch.floor(self._uniform([batch_size], images, dp) * 2).clamp(max=1)
            i = self._gate(i, 0, self.xflip * p, dp)
            B_inv = B_inv @ _scale2d(1 - 2 * i, 1, like)

        if self.rotate90 > 0:
            i = torch.floor(self._uniform([batch_size], images, dp) * 4).clamp(max=3)
            i = self._gate(i, 0, self.rotate90 * p, dp)
            B_inv = B_inv @ _rotate2d(-np.pi / 2 * i, like).round()  # quarter turns are exact integer matrices

        if self.xint > 0:
            t = (self._uniform([batch_size, 2], images, dp) * 2 - 1) * self.xint_max
            t = self._gate(t, 0, self.xint * p, dp)
            B_inv = B_inv @ _translate2d(-torch.round(t[:, 0] * width), -torch.round(t[:, 1] * height), like)

        if not torch.equal(B_inv, torch.eye(3, device=device).expand_as(B_inv)):
            images = self._apply_blit(images, B_inv)

        G_inv = torch.eye(3, device=device).unsqueeze(0).repeat([batch_size, 1, 1])

        if self.scale > 0:
            s = torch.exp2(self._normal([batch_size], images, dp) * self.scale_std)
            s = self._gate(s, 1, self.scale * p, dp)
            G_inv = G_inv @ _scale2d(1 / s, 1 / s, like)

        # Rotation is applied twice (before and after anisotropic scaling); each with probability chosen so
        # that at least one of them happens with probability rotate * p.
        p_rot = 1 - torch.sqrt((1 - self.rotate * p).clamp(0, 1))
        if self.rotate > 0:
            theta = (self._uniform([batch_size], images, dp) * 2 - 1) * np.pi * self.rotate_max
            theta = self._gate(theta, 0, p_rot, dp)
            G_inv = G_inv @ _rotate2d(-theta, like)

        if self.aniso > 0:
            s = torch.exp2(self._normal([batch_size], images, dp) * self.aniso_std)
            s = self._gate(s, 1, self.aniso * p, dp)
            G_inv = G_inv @ _scale2d(1 / s, s, like)

        if self.rotate > 0:
            theta = (self._uniform([batch_size], images, dp) * 2 - 1) * np.pi * self.rotate_max
            theta = self._gate(theta, 0, p_rot, dp)
            G_inv = G_inv @ _rotate2d(-theta, like)

        if self.xfrac > 0:
            t = self._normal([batch_size, 2], images, dp) * self.xfrac_std
            t = self._gate(t, 0, self.xfrac * p, dp)
            G_inv = G_inv @ _translate2d(-t[:, 0] * width, -t[:, 1] * height, like)

        if not torch.equal(G_inv, torch.eye(3, device=device).expand_as(G_inv)):
            images = self._apply_geometric(images, G_inv)

        # ---- Color: one 4x4 matrix acting on homogeneous RGB.
        C = torch.eye(4, device=device).unsqueeze(0).repeat([batch_size, 1, 1])
        luma_axis = (1 / math.sqrt(3),) * 3
        v = torch.tensor(luma_axis + (0,), device=device)
        v_outer = torch.outer(v, v)

        if self.brightness > 0:
            b = self._normal([batch_size], images, dp) * self.brightness_std
            b = self._gate(b, 0, self.brightness * p, dp)
            C = _translate3d(b, like) @ C

        if self.contrast > 0:
            c = torch.exp2(self._normal([batch_size], images, dp) * self.contrast_std)
            c = self._gate(c, 1, self.contrast * p, dp)
            C = _scale3d(c, like) @ C

        if self.lumaflip > 0:
            i = torch.floor(self._uniform([batch_size, 1, 1], images, dp) * 2).clamp(max=1)
            i = self._gate(i, 0, self.lumaflip * p, dp)
            C = (torch.eye(4, device=device) - 2 * v_outer * i) @ C  # Householder reflection of the luma axis

        if self.hue > 0 and num_channels > 1:
            theta = (self._uniform([batch_size], images, dp) * 2 - 1) * np.pi * self.hue_max
            theta = self._gate(theta, 0, self.hue * p, dp)
            C = _rotate3d(luma_axis, theta, like) @ C

        if self.saturation > 0 and num_channels > 1:
            s = torch.exp2(self._normal([batch_size, 1, 1], images, dp) * self.saturation_std)
            s = self._gate(s, 1, self.saturation * p, dp)
            C = (v_outer + (torch.eye(4, device=device) - v_outer) * s) @ C

        if not torch.equal(C, torch.eye(4, device=device).expand_as(C)):
            images = self._apply_color(images, C)

        # ---- Image-space filtering.
        if self.imgfilter > 0:
            images = self._apply_imgfilter(images, p, dp)

        # ---- Corruptions.
        if self.noise > 0:
            sigma = self._normal([batch_size, 1, 1, 1], images, dp).abs() * self.noise_std
            sigma = self._gate(sigma, 0, self.noise * p, dp)
            images = images + torch.randn_like(images) * sigma.to(images.dtype)

        if self.cutout > 0:
            size = torch.full([batch_size, 2, 1, 1, 1], self.cutout_size, device=device)
            size = self._gate(size, 0, self.cutout * p, dp)
            center = self._uniform([batch_size, 2, 1, 1, 1], images, dp)
            coord_x = (torch.arange(width, device=device) + 0.5) / width
            coord_y = (torch.arange(height, device=device) + 0.5) / height
            outside_x = ((coord_x.reshape(1, 1, 1, -1) - center[:, 0]).abs() >= size[:, 0] / 2)
            outside_y = ((coord_y.reshape(1, 1, -1, 1) - center[:, 1]).abs() >= size[:, 1] / 2)
            mask = torch.logical_or(outside_x, outside_y).to(images.dtype)
            images = images * mask

        return images

    #------------------------------------------------------------------------

    def _apply_blit(self, images, B_inv):
        """Exact gather for integer transforms; source pixels outside the image are mirrored (like reflect padding)."""
        batch_size, num_channels, height, width = images.shape
        device = images.device
        ys = torch.arange(height, device=device, dtype=torch.float32) + 0.5 - height / 2
        xs = torch.arange(width, device=device, dtype=torch.float32) + 0.5 - width / 2
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing='ij')
        points = torch.stack([grid_x, grid_y, torch.ones_like(grid_x)], dim=-1).reshape(-1, 3)  # [P, 3]
        src = points @ B_inv.transpose(1, 2)  # [N, P, 3]
        src_x = _reflect_index(torch.round(src[..., 0] + width / 2 - 0.5).long(), width)
        src_y = _reflect_index(torch.round(src[..., 1] + height / 2 - 0.5).long(), height)
        index = (src_y * width + src_x).unsqueeze(1).expand(batch_size, num_channels, height * width)
        images = images.reshape(batch_size, num_channels, height * width).gather(2, index)
        return images.reshape(batch_size, num_channels, height, width)

    def _apply_geometric(self, images, G_inv):
        batch_size, num_channels, height, width = images.shape
        device = images.device
        Hz = self.Hz_geom.to(device=device, dtype=torch.float32)
        taps = Hz.shape[0]

        # How far outside the image the output corners reach, so reflection padding can supply those pixels
        # (plus a margin for the resampling filter).
        half = torch.tensor([width / 2, height / 2], device=device)
        corners = torch.tensor([[-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], dtype=torch.float32, device=device)
        corners = corners * torch.tensor([width / 2, height / 2, 1], device=device)
        mapped = (G_inv @ corners.t()).transpose(1, 2)[..., :2].reshape(-1, 2)  # [N*4, 2]
        margin = taps // 4 + 1
        lo = (-half - mapped.min(dim=0).values).ceil() + margin
        hi = (mapped.max(dim=0).values - half).ceil() + margin
        pad_x0, pad_y0 = [int(v) for v in lo.clamp(min=0).tolist()]
        pad_x1, pad_y1 = [int(v) for v in hi.clamp(min=0).tolist()]
        pad_x0, pad_x1 = min(pad_x0, width - 1), min(pad_x1, width - 1)
        pad_y0, pad_y1 = min(pad_y0, height - 1), min(pad_y1, height - 1)
        images = torch.nn.functional.pad(images, [pad_x0, pad_x1, pad_y0, pad_y1], mode='reflect')

        # 2x upsampling with the wavelet low-pass; the padded image keeps its extent in original pixel units.
        images = upfirdn2d.upsample2d(x=images, f=Hz, up=2)

        # The wavelet is not exactly symmetric, so each resampling pass delays the content by
        # `delay` original pixels (its centroid relative to the centre tap, halved at the 2x rate): the
        # upsampled image holds X(pos - delay) and the downsampling reads the 2x result at (p - delay).
        # Sampling at G_inv (q + delay) + delay therefore yields exactly X(G_inv p).
        taps_pos = torch.arange(taps, device=device, dtype=torch.float32)
        delay = float(((taps_pos * Hz).sum() / Hz.sum() - (taps - 1) / 2) / 2)

        # Sampling grid at twice the output resolution, in original pixel units around the image centre.
        ys = (torch.arange(2 * height, device=device, dtype=torch.float32) + 0.5) / 2 - height / 2 + delay
        xs = (torch.arange(2 * width, device=device, dtype=torch.float32) + 0.5) / 2 - width / 2 + delay
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing='ij')
        points = torch.stack([grid_x, grid_y, torch.ones_like(grid_x)], dim=-1).reshape(-1, 3)  # [P, 3]
        src = (points @ G_inv.transpose(1, 2))[..., :2] + delay  # [N, P, 2]
        # Normalised coordinates of the padded image (align_corners=False: edges at -1 and +1).
        ext_x0, ext_x1 = -width / 2 - pad_x0, width / 2 + pad_x1
        ext_y0, ext_y1 = -height / 2 - pad_y0, height / 2 + pad_y1
        norm_x = (src[..., 0] - ext_x0) / (ext_x1 - ext_x0) * 2 - 1
        norm_y = (src[..., 1] - ext_y0) / (ext_y1 - ext_y0) * 2 - 1
        grid = torch.stack([norm_x, norm_y], dim=-1).reshape(batch_size, 2 * height, 2 * width, 2)
        images = grid_sample_gradfix.grid_sample(images, grid.to(images.dtype))

        # Back to the original resolution.
        images = upfirdn2d.downsample2d(x=images, f=Hz, down=2)
        return images

    def _apply_color(self, images, C):
        batch_size, num_channels, height, width = images.shape
        C = C.to(images.dtype)
        flat = images.reshape(batch_size, num_channels, height * width)
        if num_channels == 3:
            flat = C[:, :3, :3] @ flat + C[:, :3, 3:]
        elif num_channels == 1:
            # Grey images: the matrix applied to (g, g, g), averaged back to one channel.
            C = C[:, :3, :].mean(dim=1, keepdim=True)
            flat = flat * C[:, :, :3].sum(dim=2, keepdim=True) + C[:, :, 3:]
        else:
            raise ValueError('Color augmentations need images with 1 or 3 channels')
        return flat.reshape(batch_size, num_channels, height, width)

    def _apply_imgfilter(self, images, p, dp):
        batch_size, num_channels, height, width = images.shape
        num_bands, taps = self.Hz_fbank.shape
        device = images.device
        gains = torch.ones([batch_size, num_bands], device=device)
        for band, band_strength in enumerate(self.imgfilter_bands):
            if band_strength > 0:
                g = torch.exp2(self._normal([batch_size], images, dp) * self.imgfilter_std)
                g = self._gate(g, 1, self.imgfilter * band_strength * p, dp)
                gains = torch.cat([gains[:, :band], g.unsqueeze(1), gains[:, band + 1:]], dim=1)
        if torch.all(gains == 1):
            return images
        # Keep the power of white noise: the 1-D kernel h = sum_i g_i band_i is scaled to unit norm, so the
        # separable 2-D filter h x h has unit norm too. Equal gains give h = impulse, i.e. no change.
        bank = self.Hz_fbank.to(device=device, dtype=torch.float32)
        kernel = gains @ bank  # [N, taps]
        kernel = kernel / kernel.norm(dim=1, keepdim=True)
        kernel = kernel.to(images.dtype).repeat_interleave(num_channels, dim=0)  # [N*C, taps]
        pad = taps // 2
        x = images.reshape(1, batch_size * num_channels, height, width)
        # The band filters are symmetric, so correlation equals convolution. Rows, then columns.
        x = torch.nn.functional.pad(x, [pad, pad, 0, 0], mode='reflect' if width > pad else 'replicate')
        x = conv2d_gradfix.conv2d(x, kernel.reshape(-1, 1, 1, taps), groups=batch_size * num_channels)
        x = torch.nn.functional.pad(x, [0, 0, pad, pad], mode='reflect' if height > pad else 'replicate')
        x = conv2d_gradfix.conv2d(x, kernel.reshape(-1, 1, taps, 1), groups=batch_size * num_channels)
        return x.reshape(batch_size, num_channels, height, width)
