"""Common corruptions (Hendrycks & Dietterich, "Benchmarking neural network robustness to common
corruptions and perturbations", ICLR 2019) as Tiny-ImageNet-C defines them, computed on whole
batches in torch on any device: robustness.py --corruptions.

The formulas and the 64 px constants are those of the authors' make_tinyimagenet_c.py
(github.com/hendrycks/robustness, ImageNet-C/create_c/, at commit 8190fe3; Apache-2.0), where
each function corrupts one PIL image with numpy, scipy, scikit-image, OpenCV and ImageMagick.
Here every corruption takes x, a (B, 3, 64, 64) float batch in [0, 1], and a torch.Generator on
x's device, and returns the corrupted batch in [0, 1]; `corrupt` then stores it as uint8 by
truncation, as the script's np.uint8 does. Where this differs from the script, it says so at
the function. frost blends in the authors' five frost photographs, shrunk as the script shrinks
them (assets/frost, made by assets/frost/derive.py). Not reproduced: the script saves every corrupted image as JPEG (quality 85), which
adds a mild JPEG artefact to all 15 corruptions of the released set.

    x_uint8 = corrupt(x_uint8, "fog", 3, torch.Generator().manual_seed(0))   # (B, 64, 64, 3) uint8
"""
import functools
import math
import os
import warnings
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# ---------------------------------------------------------------- the constants of the 64 px script, by severity 1-5

GAUSSIAN_NOISE = (0.04, 0.08, 0.12, 0.15, 0.18)  # std on [0, 1]
SHOT_NOISE = (250, 100, 50, 30, 15)  # photons per unit intensity
IMPULSE_NOISE = (0.01, 0.02, 0.05, 0.08, 0.14)  # share of values set to 0 or 1
SPECKLE_NOISE = (0.15, 0.2, 0.25, 0.3, 0.35)
DEFOCUS_BLUR = ((0.5, 0.6), (1, 0.1), (1.5, 0.1), (2.5, 0.01), (3, 0.1))  # disk radius, its anti-alias sigma
GLASS_BLUR = ((0.1, 1, 1), (0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.9, 2, 2))  # sigma, max offset, iterations
MOTION_BLUR = ((10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3))  # ImageMagick's radius, sigma
ZOOM_BLUR = (7, 12, 16, 21, 26)  # zoom factors 1.00, 1.01, ...: np.arange(1, 1.06 ... 1.26, 0.01)'s lengths
SNOW = ((0.1, 0.2, 1, 0.6, 8, 3, 0.8), (0.1, 0.2, 1, 0.5, 10, 4, 0.8), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6))  # mean, std, zoom, threshold, radius, sigma, blend
FOG = ((0.4, 3), (0.7, 3), (1, 2.5), (1.5, 2), (2, 1.75))  # strength, the fractal's decay
BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)  # added to HSV's value
CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)  # the factor on the deviation from each channel's mean
ELASTIC = tuple((64 * a, 64 * s, 64 * j) for a, s, j in ((0, 0, 0.08), (0.05, 0.3, 0.06), (0.1, 0.08, 0.06),
                                                         (0.1, 0.03, 0.03), (0.16, 0.03, 0.02)))  # alpha, sigma, affine jitter
FROST = ((1, 0.3), (0.9, 0.4), (0.8, 0.45), (0.75, 0.5), (0.7, 0.55))  # the image's weight, the frost's
FROST_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "frost")  # how they were made: derive.py there
PIXELATE = (0.9, 0.8, 0.7, 0.6, 0.5)  # the side kept, as a share of 64
JPEG_QUALITY = (65, 58, 50, 40, 25)
GAUSSIAN_BLUR = (0.5, 0.75, 1, 1.25, 1.5)


# ---------------------------------------------------------------- helpers


def gaussian_kernel_1d(sigma, radius, device):
    """scipy's (and scikit-image's) Gaussian: exp(-i²/2σ²) over [-radius, radius], summing to 1."""
    i = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    kernel = torch.exp(-(i**2) / (2 * sigma**2))
    return (kernel / kernel.sum()).float()


def pad_indices(size, pad, mode, device):
    """The source index of each position of an axis of `size` padded by `pad` on both sides:
    'edge' (OpenCV's replicate, scipy's nearest), 'reflect101' (OpenCV's default, torch's reflect:
    dcb|abcd|cba) or 'symmetric' (scipy's reflect: cba|abc|cba, folded again as often as needed)."""
    i = torch.arange(-pad, size + pad, device=device)
    if mode == "edge":
        return i.clamp(0, size - 1)
    period = 2 * size - (2 if mode == "reflect101" else 0)
    i = i.remainder(period)
    return torch.where(i < size, i, period - i - (0 if mode == "reflect101" else 1))


def separable_blur(x, kernel, mode):
    """x (B, C, H, W) convolved with the 1-D kernel along rows and columns, borders as pad_indices."""
    radius, channels = len(kernel) // 2, x.shape[1]
    rows = pad_indices(x.shape[2], radius, mode, x.device)
    cols = pad_indices(x.shape[3], radius, mode, x.device)
    x = x[:, :, rows][:, :, :, cols]
    weight = kernel.to(x.dtype)
    x = F.conv2d(x, weight.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return F.conv2d(x, weight.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)


def skimage_gaussian(x, sigma, mode="edge", truncate=4.0):
    """skimage.filters.gaussian on each channel (scipy's gaussian_filter: radius int(truncate·σ + 0.5);
    its default mode 'nearest' is 'edge' here)."""
    radius = int(truncate * sigma + 0.5)
    if radius == 0:
        return x
    return separable_blur(x, gaussian_kernel_1d(sigma, radius, x.device), mode)


def bilinear_at(x, rows, cols):
    """x (B, C, H, W) sampled at float coordinates rows, cols (B, H', W') that lie in
    [0, H-1] x [0, W-1] (fold or clamp them first), bilinearly."""
    height, width = x.shape[2:]
    r0, c0 = rows.floor().clamp(0, height - 1), cols.floor().clamp(0, width - 1)
    fr, fc = (rows - r0).unsqueeze(1), (cols - c0).unsqueeze(1)
    r0, c0 = r0.long(), c0.long()
    r1, c1 = (r0 + 1).clamp(max=height - 1), (c0 + 1).clamp(max=width - 1)
    flat = x.flatten(2)

    def at(r, c):
        index = (r * width + c).flatten(1).unsqueeze(1).expand(-1, x.shape[1], -1)
        return flat.gather(2, index).view(x.shape[0], x.shape[1], *rows.shape[1:])

    top = at(r0, c0) * (1 - fc) + at(r0, c1) * fc
    bottom = at(r1, c0) * (1 - fc) + at(r1, c1) * fc
    return top * (1 - fr) + bottom * fr


def clipped_zoom(x, factor):
    """The script's clipped_zoom: the centre ceil(64/factor) square scaled by `factor` with
    scipy.ndimage.zoom(order=1) (bilinear through the corner pixels' centres) to round(side·factor),
    then the top-left 64x64 (the script trims (out-64)//2 = 0 pixels for every factor used)."""
    size = x.shape[-1]
    side = math.ceil(size / factor)
    top = (size - side) // 2
    crop = x[..., top : top + side, top : top + side]
    zoomed = F.interpolate(crop, size=round(side * factor), mode="bilinear", align_corners=True)
    trim = (zoomed.shape[-1] - size) // 2
    return zoomed[..., trim : trim + size, trim : trim + size]


def motion_blur_kernel(radius, sigma, angles):
    """ImageMagick's MotionBlurImage (MagickCore/effect.c): 2·ceil(radius)+1 taps of a one-sided
    Gaussian exp(-i²/2σ²) (normalised), tap i at column offset ceil(i·cos θ - 0.5) and row offset
    ceil(i·sin θ - 0.5). Returns (weights (taps,), row offsets (B, taps), column offsets (B, taps))."""
    taps = torch.arange(2 * math.ceil(radius) + 1, dtype=torch.float64, device=angles.device)
    weights = torch.exp(-(taps**2) / (2 * sigma**2))
    theta = torch.deg2rad(angles.double())[:, None]
    rows = torch.ceil(taps * torch.sin(theta) - 0.5).long()
    cols = torch.ceil(taps * torch.cos(theta) - 0.5).long()
    return (weights / weights.sum()).float(), rows, cols


def motion_blur_with(x, radius, sigma, angles):
    """Each image of x blurred along its own angle (degrees), reads past the border clamped to it
    (ImageMagick's default virtual pixels)."""
    weights, row_offsets, col_offsets = motion_blur_kernel(radius, sigma, angles)
    batch, channels, height, width = x.shape
    r = torch.arange(height, device=x.device)
    c = torch.arange(width, device=x.device)
    flat = x.flatten(2)
    out = torch.zeros_like(x)
    for tap in range(len(weights)):
        rows = (r[None, :] + row_offsets[:, tap, None]).clamp(0, height - 1)  # (B, H)
        cols = (c[None, :] + col_offsets[:, tap, None]).clamp(0, width - 1)  # (B, W)
        index = (rows[:, :, None] * width + cols[:, None, :]).flatten(1).unsqueeze(1).expand(-1, channels, -1)
        out += weights[tap] * flat.gather(2, index).view_as(x)
    return out


def uniform(low, high, shape, generator, device):
    return torch.rand(shape, generator=generator, device=device) * (high - low) + low


# ---------------------------------------------------------------- noise


def gaussian_noise(x, severity, generator):
    noise = torch.randn(x.shape, generator=generator, device=x.device)
    return (x + noise * GAUSSIAN_NOISE[severity - 1]).clamp(0, 1)


def shot_noise(x, severity, generator):
    photons = SHOT_NOISE[severity - 1]
    return (torch.poisson(x * photons, generator=generator) / photons).clamp(0, 1)


def impulse_noise(x, severity, generator):
    """scikit-image's random_noise(mode='s&p'): each value (pixel and channel alike) replaced with
    probability `amount`, by 1 or 0 with equal odds."""
    replaced = torch.rand(x.shape, generator=generator, device=x.device) < IMPULSE_NOISE[severity - 1]
    salt = torch.rand(x.shape, generator=generator, device=x.device) < 0.5
    return torch.where(replaced, salt.to(x.dtype), x)


def speckle_noise(x, severity, generator):
    noise = torch.randn(x.shape, generator=generator, device=x.device)
    return (x + x * noise * SPECKLE_NOISE[severity - 1]).clamp(0, 1)


# ---------------------------------------------------------------- blur


def disk_kernel(radius, alias_blur, device):
    """The script's disk(): a 17x17 disk (x² + y² <= r²) summing to 1, then blurred by OpenCV's
    3x3 Gaussian of sigma alias_blur (borders reflect101), not normalised again."""
    grid = torch.arange(-8, 9, dtype=torch.float64, device=device)
    disk = ((grid[:, None] ** 2 + grid[None, :] ** 2) <= radius**2).double()
    disk = (disk / disk.sum())[None, None]
    return separable_blur(disk, gaussian_kernel_1d(alias_blur, 1, device).double(), "reflect101")[0, 0].float()


def defocus_blur(x, severity, generator):
    """cv2.filter2D of each channel with the disk (borders reflect101)."""
    kernel = disk_kernel(*DEFOCUS_BLUR[severity - 1], x.device)
    padded = F.pad(x, (8, 8, 8, 8), mode="reflect")
    return F.conv2d(padded, kernel.expand(3, 1, 17, 17).to(x.dtype), groups=3).clamp(0, 1)


def glass_blur(x, severity, generator):
    """Blur, store as uint8, shuffle locally, blur again. The shuffle is the script's exactly: it
    visits the pixels from the bottom right, row by row, and copies into each the pixel at a random
    offset in [-d, d-1] (its tuple "swap" of numpy views copies one way), one image position at a
    time for the whole batch (the order matters: a pixel copied may be copied again)."""
    sigma, delta, iterations = GLASS_BLUR[severity - 1]
    x = torch.floor(skimage_gaussian(x.double(), sigma) * 255)  # np.uint8 truncates float64, as here
    size = x.shape[-1]
    positions = [(h, w) for h in range(size - delta, delta, -1) for w in range(size - delta, delta, -1)]
    offsets = torch.randint(-delta, delta, (iterations, len(positions), x.shape[0], 2), generator=generator, device=x.device)
    return skimage_gaussian(shuffle_locally(x, positions, offsets) / 255, sigma).clamp(0, 1).to(torch.float32)


def shuffle_locally(x, positions, offsets):
    """x[b, :, h, w] = x[b, :, h + dy, w + dx] for each position in order, offsets (iterations,
    positions, B, 2) holding (dx, dy) as the script draws them."""
    x = x.clone()
    images = torch.arange(x.shape[0], device=x.device)
    for step in offsets:
        for (h, w), offset in zip(positions, step):
            x[:, :, h, w] = x[images, :, h + offset[:, 1], w + offset[:, 0]]
    return x


def motion_blur(x, severity, generator):
    """ImageMagick's motion blur along an angle drawn from U(-45°, 45°) for each image, rounded to
    whole levels as ImageMagick's 8-bit output is (it blurs the uint8 image in floats)."""
    radius, sigma = MOTION_BLUR[severity - 1]
    angles = uniform(-45, 45, (x.shape[0],), generator, x.device)
    return torch.round(motion_blur_with(x, radius, sigma, angles).clamp(0, 1) * 255) / 255  # ImageMagick's 8-bit result


def zoom_blur(x, severity, generator):
    """The mean of the image and its zooms by 1.00, 1.01, ... (the first, 1.00, is the image
    again: the script counts it twice)."""
    factors = [1 + 0.01 * step for step in range(ZOOM_BLUR[severity - 1])]
    out = x.clone()
    for factor in factors:
        out += clipped_zoom(x, factor)
    return (out / (len(factors) + 1)).clamp(0, 1)


def gaussian_blur(x, severity, generator):
    return skimage_gaussian(x, GAUSSIAN_BLUR[severity - 1]).clamp(0, 1)


# ---------------------------------------------------------------- weather


def snow(x, severity, generator):
    """A layer of snowflakes: Gaussian noise per pixel, zoomed, thresholded, stored as uint8 and
    motion-blurred along an angle from U(-135°, -45°); the image greyed towards a brightened copy,
    the layer added to it once upright and once turned 180°."""
    mean, std, zoom, threshold, radius, sigma, blend = SNOW[severity - 1]
    batch, _, height, width = x.shape
    layer = torch.randn((batch, 1, height, width), generator=generator, device=x.device) * std + mean
    layer = clipped_zoom(layer, zoom)
    layer = torch.floor(torch.where(layer < threshold, 0, layer).clamp(0, 1) * 255) / 255
    angles = uniform(-135, -45, (batch,), generator, x.device)
    layer = torch.round(motion_blur_with(layer, radius, sigma, angles) * 255) / 255  # ImageMagick's 8-bit result
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)  # OpenCV's RGB2GRAY
    x = blend * x + (1 - blend) * torch.maximum(x, gray * 1.5 + 0.5)
    return (x + layer + layer.flip(2, 3)).clamp(0, 1)


def plasma_fractal(batch, decay, generator, device, size=64):
    """The script's diamond-square height map (one per image), scaled to [0, 1]: at each level the
    new points are the mean of their neighbours (wrapping around) plus wibble·U(-wibble, wibble),
    wibble starting at 100 and divided by `decay` each level."""
    heights = torch.zeros((batch, size, size), dtype=torch.float64, device=device)
    step, wibble = size, 100.0

    def wibbled_mean(total):
        return total / 4 + wibble * (torch.rand(total.shape, generator=generator, device=device, dtype=torch.float64) * 2 - 1) * wibble

    while step >= 2:
        half = step // 2
        corners = heights[:, 0::step, 0::step]
        squares = corners + corners.roll(-1, 1)
        squares = squares + squares.roll(-1, 2)
        heights[:, half::step, half::step] = wibbled_mean(squares)
        centres, corners = heights[:, half::step, half::step], heights[:, 0::step, 0::step]
        heights[:, 0::step, half::step] = wibbled_mean(centres + centres.roll(1, 1) + corners + corners.roll(-1, 2))
        heights[:, half::step, 0::step] = wibbled_mean(centres + centres.roll(1, 2) + corners + corners.roll(-1, 1))
        step, wibble = half, wibble / decay
    heights -= heights.amin(dim=(1, 2), keepdim=True)
    return (heights / heights.amax(dim=(1, 2), keepdim=True)).float()


@functools.cache
def frost_images(device):
    """The five frost photographs as the script uses them (shrunk to 0.3), on the device: ((5, 3,
    H, W) uint8, padded to the largest, and each one's (height, width))."""
    images = [torch.from_numpy(np.array(Image.open(os.path.join(FROST_DIR, f"frost{index}.png")).convert("RGB")))
              for index in range(1, 6)]
    sizes = torch.tensor([image.shape[:2] for image in images])
    height, width = sizes.max(dim=0).values.tolist()
    stacked = torch.zeros((5, 3, height, width), dtype=torch.uint8)
    for index, image in enumerate(images):
        stacked[index, :, : image.shape[0], : image.shape[1]] = image.permute(2, 0, 1)
    return stacked.to(device), sizes.to(device)


def frost(x, severity, generator):
    """One of the five frost images for each image (U{0..4}), a random 64x64 crop of it (top row in
    [0, H-64), left column in [0, W-64)), blended: clip(a·image + b·frost) on the 0-255 scale."""
    weight, frost_weight = FROST[severity - 1]
    stacked, sizes = frost_images(x.device)
    batch, _, size, _ = x.shape
    which = torch.randint(0, 5, (batch,), generator=generator, device=x.device)
    limits = sizes[which] - size  # (B, 2)
    starts = (torch.rand((batch, 2), generator=generator, device=x.device) * limits).floor().long()
    rows = starts[:, 0, None] + torch.arange(size, device=x.device)
    cols = starts[:, 1, None] + torch.arange(size, device=x.device)
    crops = stacked[which[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (B, 64, 64, 3)
    frost_255 = crops.permute(0, 3, 1, 2).to(x.dtype)
    return ((weight * x * 255 + frost_weight * frost_255).clamp(0, 255) / 255)


def fog(x, severity, generator):
    """A fractal haze, the same on the three channels, added and the image scaled back by
    max/(max + strength), max being the image's brightest value before the fog."""
    strength, decay = FOG[severity - 1]
    brightest = x.amax(dim=(1, 2, 3), keepdim=True)
    x = x + strength * plasma_fractal(x.shape[0], decay, generator, x.device).unsqueeze(1)
    return (x * brightest / (brightest + strength)).clamp(0, 1)


def brightness(x, severity, generator):
    """HSV's value raised by c (scikit-image's rgb2hsv and hsv2rgb), in closed form: hue and
    saturation kept, every channel scales with the value; a black pixel (saturation 0) turns grey."""
    value = x.amax(dim=1, keepdim=True)
    raised = (value + BRIGHTNESS[severity - 1]).clamp(0, 1)
    return torch.where(value > 0, x * raised / value.clamp(min=1e-12), raised).clamp(0, 1)


# ---------------------------------------------------------------- digital


def contrast(x, severity, generator):
    means = x.mean(dim=(2, 3), keepdim=True)
    return ((x - means) * CONTRAST[severity - 1] + means).clamp(0, 1)


def affine_to_points(source, target):
    """The affine map (B, 2, 3) that takes the 3 source points (3, 2) to the target points (B, 3, 2),
    as cv2.getAffineTransform, in (x, y) = (column, row)."""
    ones = torch.ones(3, 1, dtype=torch.float64, device=target.device)
    system = torch.cat([source.double(), ones], dim=1)  # (3, 3): [x y 1]
    return torch.linalg.solve(system, target.double()).transpose(1, 2)  # rows: [a b c], [d e f]


def elastic_transform(x, severity, generator):
    """A random affine warp (the three points (53, 53), (53, 11), (11, 11) moved by U(-j, j);
    cv2.warpAffine, bilinear, borders reflect101), then a displacement field per axis:
    U(-1, 1) smoothed by a Gaussian of sigma s (truncated at 3 sigma, borders symmetric) times
    alpha, sampled bilinearly with symmetric borders (scipy's map_coordinates, order 1, 'reflect')."""
    alpha, sigma, jitter = ELASTIC[severity - 1]
    batch, _, size, _ = x.shape
    source = torch.tensor([[53.0, 53.0], [53.0, 11.0], [11.0, 11.0]], device=x.device)
    target = source + uniform(-jitter, jitter, (batch, 3, 2), generator, x.device)
    forward = affine_to_points(source, target)
    inverse = torch.linalg.inv(torch.cat([forward, forward.new_tensor([0, 0, 1]).expand(batch, 1, 3)], dim=1))[:, :2]
    grid = torch.arange(size, dtype=torch.float64, device=x.device)
    cols, rows = grid[None, None, :].expand(batch, size, size), grid[None, :, None].expand(batch, size, size)
    source_cols = inverse[:, 0, 0, None, None] * cols + inverse[:, 0, 1, None, None] * rows + inverse[:, 0, 2, None, None]
    source_rows = inverse[:, 1, 0, None, None] * cols + inverse[:, 1, 1, None, None] * rows + inverse[:, 1, 2, None, None]
    x = bilinear_reflect101(x, source_rows.float(), source_cols.float())
    fields = []
    for _ in range(2):  # dx, then dy, as the script draws them
        field = uniform(-1, 1, (batch, 1, size, size), generator, x.device)
        fields.append(alpha * skimage_gaussian(field, sigma, mode="symmetric", truncate=3)[:, 0])
    rows = fold_symmetric(grid.float()[None, :, None] + fields[1], size)
    cols = fold_symmetric(grid.float()[None, None, :] + fields[0], size)
    return bilinear_at(x, rows, cols).clamp(0, 1)


def fold_symmetric(coordinate, size):
    """A coordinate folded into [-0.5, size - 0.5] by mirroring about the pixel edges (scipy's
    'reflect'), then clamped to [0, size - 1] (between the last centre and the edge, the mirrored
    neighbour is the pixel itself)."""
    period = 2 * size
    folded = (coordinate + 0.5).remainder(period)
    folded = torch.where(folded < size, folded, period - folded) - 0.5
    return folded.clamp(0, size - 1)


def bilinear_reflect101(x, rows, cols):
    """Bilinear sampling whose neighbours outside the image are mirrored without repeating the
    edge (OpenCV's BORDER_REFLECT_101), as warpAffine reads them."""
    size = x.shape[-1]
    padded = x[:, :, pad_indices(size, size, "reflect101", x.device)][:, :, :, pad_indices(size, size, "reflect101", x.device)]
    return bilinear_at(padded, (rows + size).clamp(0, 3 * size - 1), (cols + size).clamp(0, 3 * size - 1))


@functools.cache
def box_weights(in_size, out_size, device):
    """The (out, in) matrix of PIL's BOX resampling along one axis (Resample.c precompute_coeffs):
    output pixel i averages the input pixels whose centres lie within half its (scaled) width of
    its centre."""
    scale = in_size / out_size
    support = 0.5 * max(scale, 1.0)
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    for i in range(out_size):
        centre = (i + 0.5) * scale
        first, last = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), in_size)
        for j in range(first, last):
            distance = (j - centre + 0.5) / max(scale, 1.0)
            weights[i, j] = 1.0 if -0.5 < distance <= 0.5 else 0.0
    return (weights / weights.sum(dim=1, keepdim=True)).float().to(device)


def box_resize(x_255, size):
    """PIL's resize(BOX) of uint8 values: rows, then columns, each pass rounded to uint8."""
    rows = box_weights(x_255.shape[-1], size, x_255.device)
    x_255 = torch.floor(torch.einsum("ij,bchj->bchi", rows, x_255) + 0.5).clamp(0, 255)
    columns = box_weights(x_255.shape[-2], size, x_255.device)
    return torch.floor(torch.einsum("ij,bcjw->bciw", columns, x_255) + 0.5).clamp(0, 255)


def pixelate(x, severity, generator):
    """PIL's BOX resize down to int(64c) pixels a side and back up, on the uint8 image."""
    size = x.shape[-1]
    x_255 = torch.round(x * 255)
    return box_resize(box_resize(x_255, int(size * PIXELATE[severity - 1])), size) / 255


def jpeg_compression(x, severity, generator):
    """Encoded and decoded by libjpeg through torchvision (4:2:0 chroma, as PIL's default), on the
    CPU (torchvision's GPU codec is CUDA's own)."""
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs for TorchCodec's, still shipping them
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import decode_jpeg, encode_jpeg

        images = list(torch.round(x * 255).to("cpu", torch.uint8).unbind(0))
        decoded = decode_jpeg(encode_jpeg(images, quality=JPEG_QUALITY[severity - 1]))
    return torch.stack(decoded).to(x.device, x.dtype) / 255


# ---------------------------------------------------------------- the benchmark

CORRUPTIONS = {  # the 15 of Tiny-ImageNet-C, in the paper's order: noise, blur, weather, digital
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur, "glass_blur": glass_blur, "motion_blur": motion_blur, "zoom_blur": zoom_blur,
    "snow": snow, "frost": frost, "fog": fog, "brightness": brightness,
    "contrast": contrast, "elastic_transform": elastic_transform, "pixelate": pixelate, "jpeg_compression": jpeg_compression,
}
EXTRA = {"speckle_noise": speckle_noise, "gaussian_blur": gaussian_blur}  # of the paper's 4 held-out ones
FAMILIES = {"noise": ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"),
            "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur"),
            "weather": ("snow", "frost", "fog", "brightness"),
            "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression")}
SEVERITIES = (1, 2, 3, 4, 5)


def corrupt(x_uint8, name, severity, generator):
    """(B, H, W, 3) uint8 -> the same corrupted, stored as uint8 by truncation (np.uint8 of the
    script's float output)."""
    x = x_uint8.permute(0, 3, 1, 2).float() / 255
    corrupted = {**CORRUPTIONS, **EXTRA}[name](x, severity, generator)
    return torch.floor(corrupted * 255 + 1e-4).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def parse_corruptions(text):
    """--corruptions: 'all' (the 15), or a comma list of names (the 15 and the extra ones)."""
    if text == "all":
        return list(CORRUPTIONS)
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in CORRUPTIONS and name not in EXTRA]
    if unknown or not names:
        raise ValueError(f"unknown corruption {unknown[0] if unknown else repr(text)}: choose from all, "
                         f"{', '.join([*CORRUPTIONS, *EXTRA])}")
    return names


def setting_seed(seed, name, severity, first_image):
    """The generator's seed for one batch of one setting: the same run after run and process
    after process (Python's hash() of a string is not), independent of the other settings."""
    return zlib.crc32(f"{seed}/{name}/{severity}/{first_image}".encode())


# ---------------------------------------------------------------- the paper's figures


def errors_by_corruption(rows):
    """{corruption: [top-1 error at each severity, by severity]} and the clean error, from one
    checkpoint's rows ({"corruption", "severity", "top1"}; the clean one named "clean")."""
    clean = next(1 - row["top1"] for row in rows if row["corruption"] == "clean")
    errors = {}
    for row in sorted((row for row in rows if row["corruption"] != "clean"), key=lambda row: row["severity"]):
        errors.setdefault(row["corruption"], []).append(1 - row["top1"])
    return errors, clean


def ratio(part, whole):
    """part / whole, or NaN where the baseline has no error to divide by (it is then undefined)."""
    return part / whole if whole else math.nan


def settings_of(rows):
    return {(row["corruption"], row["severity"]) for row in rows}


def corruption_summary(rows, baseline_rows=None):
    """The paper's figures for one checkpoint: each corruption's error averaged over severities
    (its CE, unnormalised) and their mean; with a baseline's rows, also CE_c = Σ_s E_s,c / Σ_s
    E_s,c(baseline), mCE = their mean, and relative mCE = the mean over c of
    Σ_s (E_s,c - E_clean) / Σ_s (E_s,c(baseline) - E_clean(baseline)) (1.0: the baseline's)."""
    errors, clean = errors_by_corruption(rows)
    summary = {"clean_error": clean, "ce": {name: sum(values) / len(values) for name, values in errors.items()}}
    summary["mean_ce"] = sum(summary["ce"].values()) / len(summary["ce"])
    if baseline_rows is not None:
        base_errors, base_clean = errors_by_corruption(baseline_rows)
        if settings_of(baseline_rows) != settings_of(rows):
            raise ValueError("the baseline was not measured on the same corruptions and severities")
        normalised = {name: ratio(sum(values), sum(base_errors[name])) for name, values in errors.items()}
        relative = {name: ratio(sum(e - clean for e in values), sum(e - base_clean for e in base_errors[name]))
                    for name, values in errors.items()}
        summary.update(normalised_ce=normalised, mce=sum(normalised.values()) / len(normalised),
                       relative_mce=sum(relative.values()) / len(relative))
    return summary
