"""Tiny-ImageNet-C's corruptions written again, image by image, in numpy with scipy and PIL, as
the authors' make_tinyimagenet_c.py computes them (OpenCV's and ImageMagick's operations written
out from their definitions, since neither is a dependency here): the reference that
tests/test_corruptions.py compares corruptions.py with, and the per-image pipeline that
benchmarks/corruptions_bench.py times it against.

Each reference takes one image (64, 64, 3) float64 in [0, 1], the severity and that image's
random numbers, and returns the corrupted float image (the script's output / 255, before
np.uint8). `draws(name, batch, generator)` draws those numbers as corruptions.py does (the same
torch calls in the same order), one dict per image, so both sides see the same randomness.
"""
import colorsys
import io
import math
import os

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from corruptions import FROST_DIR

# The script's constants by severity, copied from make_tinyimagenet_c.py (not imported from
# corruptions.py: a wrong constant there must fail the comparison).
GAUSSIAN_NOISE = [0.04, 0.08, .12, .15, .18]
SHOT_NOISE = [250, 100, 50, 30, 15]
IMPULSE_NOISE = [.01, .02, .05, .08, .14]
SPECKLE_NOISE = [.15, .2, 0.25, 0.3, 0.35]
DEFOCUS_BLUR = [(0.5, 0.6), (1, 0.1), (1.5, 0.1), (2.5, 0.01), (3, 0.1)]
GLASS_BLUR = [(0.1, 1, 1), (0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.9, 2, 2)]
MOTION_BLUR = [(10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)]
ZOOM_BLUR = [np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
             np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01)]
GAUSSIAN_BLUR = [.5, .75, 1, 1.25, 1.5]
SNOW = [(0.1, 0.2, 1, 0.6, 8, 3, 0.8), (0.1, 0.2, 1, 0.5, 10, 4, 0.8), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6)]
FROST = [(1, 0.3), (0.9, 0.4), (0.8, 0.45), (0.75, 0.5), (0.7, 0.55)]
FOG = [(.4, 3), (.7, 3), (1, 2.5), (1.5, 2), (2, 1.75)]
BRIGHTNESS = [.1, .2, .3, .4, .5]
CONTRAST = [.4, .3, .2, .1, 0.05]
IMSIZE = 64
ELASTIC = [(IMSIZE * 0, IMSIZE * 0, IMSIZE * 0.08), (IMSIZE * 0.05, IMSIZE * 0.3, IMSIZE * 0.06),
           (IMSIZE * 0.1, IMSIZE * 0.08, IMSIZE * 0.06), (IMSIZE * 0.1, IMSIZE * 0.03, IMSIZE * 0.03),
           (IMSIZE * 0.16, IMSIZE * 0.03, IMSIZE * 0.02)]
PIXELATE = [0.9, 0.8, 0.7, 0.6, 0.5]
JPEG_QUALITY = [65, 58, 50, 40, 25]

# ---------------------------------------------------------------- building blocks


def gaussian(image, sigma, mode="nearest", truncate=4.0):
    """skimage.filters.gaussian(multichannel=True): scipy's gaussian_filter over the two image axes."""
    sigmas = (sigma, sigma, 0) if image.ndim == 3 else (sigma, sigma)
    return ndimage.gaussian_filter(image, sigmas, mode=mode, truncate=truncate)


def correlate_each_channel(image, kernel, pad_mode):
    """OpenCV's filter2D on each channel: correlation with the kernel centred, borders np.pad's mode."""
    radius = kernel.shape[0] // 2
    padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode=pad_mode)
    out = np.zeros_like(image)
    for dy in range(kernel.shape[0]):
        for dx in range(kernel.shape[1]):
            out += kernel[dy, dx] * padded[dy : dy + image.shape[0], dx : dx + image.shape[1]]
    return out


def imagemagick_motion_blur(image, radius, sigma, angle):
    """MagickCore's MotionBlurImage: width 2·ceil(radius)+1 taps weighted exp(-i²/2σ²)/(√(2π)σ) and
    normalised, tap i read at column + ceil(i·cos θ - 0.5), row + ceil(i·sin θ - 0.5), the edge
    pixel repeated outside."""
    width = 2 * math.ceil(radius) + 1
    weights = np.array([math.exp(-(i * i) / (2 * sigma * sigma)) / (math.sqrt(2 * math.pi) * sigma) for i in range(width)])
    weights /= weights.sum()
    theta = math.radians(angle)
    padded = np.pad(image, ((width, width), (width, width), (0, 0)), mode="edge")
    out = np.zeros_like(image)
    for i in range(width):
        dx, dy = math.ceil(i * math.cos(theta) - 0.5), math.ceil(i * math.sin(theta) - 0.5)
        out += weights[i] * padded[width + dy : width + dy + 64, width + dx : width + dx + 64]
    return out


def clipped_zoom(image, factor):
    """The script's clipped_zoom, with scipy's zoom."""
    side = int(np.ceil(image.shape[0] / factor))
    top = (image.shape[0] - side) // 2
    zoomed = ndimage.zoom(image[top : top + side, top : top + side], (factor, factor, 1), order=1)
    trim = (zoomed.shape[0] - image.shape[0]) // 2
    return zoomed[trim : trim + image.shape[0], trim : trim + image.shape[0]]


def disk(radius, alias_blur):
    """The script's disk(), with cv2.GaussianBlur((3, 3), sigma) written out (borders reflect101)."""
    grid = np.arange(-8, 9)
    x, y = np.meshgrid(grid, grid)
    aliased = ((x**2 + y**2) <= radius**2).astype(np.float64)
    aliased /= aliased.sum()
    taps = np.exp(-np.arange(-1, 2) ** 2 / (2 * alias_blur**2))
    taps /= taps.sum()
    return correlate_each_channel(aliased[..., None], np.outer(taps, taps), "reflect")[..., 0]


def plasma_fractal(uniform, decay, mapsize=64):
    """The script's diamond-square, its np.random.uniform(-w, w) replaced by uniform(shape) in [0, 1)."""
    maparray = np.zeros((mapsize, mapsize))
    stepsize, wibble = mapsize, 100.0

    def wibbledmean(array):
        return array / 4 + wibble * (uniform(array.shape) * 2 * wibble - wibble)

    while stepsize >= 2:
        half = stepsize // 2
        cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
        squareaccum += np.roll(squareaccum, shift=-1, axis=1)
        maparray[half:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(squareaccum)
        drgrid = maparray[half:mapsize:stepsize, half:mapsize:stepsize]
        ulgrid = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        ltsum = drgrid + np.roll(drgrid, 1, axis=0) + ulgrid + np.roll(ulgrid, -1, axis=1)
        maparray[0:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(ltsum)
        ttsum = drgrid + np.roll(drgrid, 1, axis=1) + ulgrid + np.roll(ulgrid, -1, axis=0)
        maparray[half:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(ttsum)
        stepsize //= 2
        wibble /= decay
    maparray -= maparray.min()
    return maparray / maparray.max()


def warp_affine(image, matrix):
    """cv2.warpAffine(image, M, (64, 64), borderMode=BORDER_REFLECT_101), bilinear: each output
    pixel reads the input at M⁻¹(column, row), neighbours outside mirrored without the edge."""
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    padded = np.pad(image, ((64, 64), (64, 64), (0, 0)), mode="reflect")
    cols, rows = np.meshgrid(np.arange(64.0), np.arange(64.0))
    x = inverse[0, 0] * cols + inverse[0, 1] * rows + inverse[0, 2]
    y = inverse[1, 0] * cols + inverse[1, 1] * rows + inverse[1, 2]
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    at = lambda r, c: padded[r + 64, c + 64]  # noqa: E731
    return (at(y0, x0) * (1 - fx) * (1 - fy) + at(y0, x0 + 1) * fx * (1 - fy)
            + at(y0 + 1, x0) * (1 - fx) * fy + at(y0 + 1, x0 + 1) * fx * fy)


def frost_images():
    return [np.asarray(Image.open(os.path.join(FROST_DIR, f"frost{index}.png")).convert("RGB")).astype(float)
            for index in range(1, 6)]


# ---------------------------------------------------------------- the random numbers, as corruptions.py draws them


def per_image(**batched):
    """{name: tensor (B, ...)} -> [{name: numpy array (...)} for each image]."""
    arrays = {name: value.double().numpy() for name, value in batched.items()}
    return [{name: value[b] for name, value in arrays.items()} for b in range(len(next(iter(arrays.values()))))]


def draws(name, x, severity, generator):
    """This batch's random numbers for one corruption, image by image: x is the (B, 3, 64, 64)
    float32 batch corruptions.py corrupts (shot noise's Poisson draws depend on it)."""
    batch, shape = x.shape[0], x.shape
    if name in ("gaussian_noise", "speckle_noise"):
        return per_image(noise=torch.randn(shape, generator=generator).permute(0, 2, 3, 1))
    if name == "shot_noise":
        return per_image(counts=torch.poisson(x * SHOT_NOISE[severity - 1], generator=generator).permute(0, 2, 3, 1))
    if name == "impulse_noise":
        flip = torch.rand(shape, generator=generator).permute(0, 2, 3, 1)
        return per_image(flip=flip, salt=torch.rand(shape, generator=generator).permute(0, 2, 3, 1))
    if name == "glass_blur":
        _, delta, iterations = GLASS_BLUR[severity - 1]
        positions = (64 - 2 * delta) ** 2
        offsets = torch.randint(-delta, delta, (iterations, positions, batch, 2), generator=generator)
        return per_image(offsets=offsets.permute(2, 0, 1, 3))
    if name == "motion_blur":
        return per_image(angle=torch.rand((batch,), generator=generator) * 90 - 45)
    if name == "snow":
        noise = torch.randn((batch, 1, 64, 64), generator=generator)
        return per_image(noise=noise[:, 0], angle=torch.rand((batch,), generator=generator) * 90 - 135)
    if name == "frost":
        which = torch.randint(0, 5, (batch,), generator=generator)
        return per_image(which=which, where=torch.rand((batch, 2), generator=generator))
    if name == "fog":
        levels = [torch.rand((batch, 64 // step, 64 // step), generator=generator, dtype=torch.float64)
                  for step in (64, 32, 16, 8, 4, 2) for _ in range(3)]  # each level: squares, then two diamonds
        return per_image(**{f"level{index}": level for index, level in enumerate(levels)})
    if name == "elastic_transform":
        jitter = ELASTIC[severity - 1][2]
        moves = torch.rand((batch, 3, 2), generator=generator) * 2 * jitter - jitter
        field_x = torch.rand((batch, 1, 64, 64), generator=generator) * 2 - 1
        return per_image(moves=moves, field_x=field_x[:, 0], field_y=(torch.rand((batch, 1, 64, 64), generator=generator) * 2 - 1)[:, 0])
    return [{} for _ in range(batch)]  # deterministic


# ---------------------------------------------------------------- the corruptions


def gaussian_noise(image, severity, draw):
    return image + draw["noise"] * GAUSSIAN_NOISE[severity - 1]


def shot_noise(image, severity, draw):
    return draw["counts"] / SHOT_NOISE[severity - 1]


def impulse_noise(image, severity, draw):
    return np.where(draw["flip"] < IMPULSE_NOISE[severity - 1], (draw["salt"] < 0.5).astype(float), image)


def speckle_noise(image, severity, draw):
    return image + image * draw["noise"] * SPECKLE_NOISE[severity - 1]


def defocus_blur(image, severity, draw):
    return correlate_each_channel(image, disk(*DEFOCUS_BLUR[severity - 1]), "reflect")


def glass_blur(image, severity, draw):
    sigma, delta, iterations = GLASS_BLUR[severity - 1]
    positions = [(h, w) for h in range(64 - delta, delta, -1) for w in range(64 - delta, delta, -1)]
    x = np.uint8(gaussian(image, sigma) * 255)
    for iteration in range(iterations):
        for index, (h, w) in enumerate(positions):  # the script's loop, its one-way "swap" of views included
            dx, dy = draw["offsets"][iteration, index].astype(int)
            x[h, w], x[h + dy, w + dx] = x[h + dy, w + dx], x[h, w]
    return gaussian(x / 255.0, sigma)


def motion_blur(image, severity, draw):
    """ImageMagick returns whole levels: the script's motion_blur returns its uint8 result."""
    return np.round(imagemagick_motion_blur(image, *MOTION_BLUR[severity - 1], float(draw["angle"])) * 255) / 255


def zoom_blur(image, severity, draw):
    factors = ZOOM_BLUR[severity - 1]
    image = image.astype(np.float32)
    out = np.zeros_like(image)
    for factor in factors:
        out += clipped_zoom(image, factor)
    return (image + out) / (len(factors) + 1)


def gaussian_blur(image, severity, draw):
    return gaussian(image, GAUSSIAN_BLUR[severity - 1])


def snow(image, severity, draw):
    mean, std, zoom, threshold, radius, sigma, blend = SNOW[severity - 1]
    layer = clipped_zoom((draw["noise"] * std + mean)[..., None], zoom)
    layer[layer < threshold] = 0
    layer = (np.clip(layer, 0, 1) * 255).astype(np.uint8) / 255.0
    layer = np.round(imagemagick_motion_blur(layer, radius, sigma, float(draw["angle"])) * 255) / 255  # (8-bit PNG back)
    gray = (image @ np.array([0.299, 0.587, 0.114]))[..., None]
    x = blend * image + (1 - blend) * np.maximum(image, gray * 1.5 + 0.5)
    return x + layer + np.rot90(layer, k=2)


FROSTS = []


def frost(image, severity, draw):
    FROSTS[:] = FROSTS or frost_images()
    weight, frost_weight = FROST[severity - 1]
    picture = FROSTS[int(draw["which"])]
    top, left = int(draw["where"][0] * (picture.shape[0] - 64)), int(draw["where"][1] * (picture.shape[1] - 64))
    return np.clip(weight * image * 255 + frost_weight * picture[top : top + 64, left : left + 64], 0, 255) / 255


def fog(image, severity, draw):
    strength, decay = FOG[severity - 1]
    queue = [draw[f"level{index}"] for index in range(18)]
    fractal = plasma_fractal(lambda shape: queue.pop(0).reshape(shape), decay)
    brightest = image.max()
    return (image + strength * fractal[..., None]) * brightest / (brightest + strength)


def brightness(image, severity, draw):
    hsv = [colorsys.rgb_to_hsv(*pixel) for pixel in image.reshape(-1, 3)]
    return np.array([colorsys.hsv_to_rgb(h, s, min(v + BRIGHTNESS[severity - 1], 1.0)) for h, s, v in hsv]).reshape(64, 64, 3)


def contrast(image, severity, draw):
    means = image.mean(axis=(0, 1), keepdims=True)
    return (image - means) * CONTRAST[severity - 1] + means


def elastic_transform(image, severity, draw):
    alpha, sigma, _ = ELASTIC[severity - 1]
    source = np.array([[53.0, 53.0], [53.0, 11.0], [11.0, 11.0]])
    matrix = np.linalg.solve(np.hstack([source, np.ones((3, 1))]), source + draw["moves"]).T  # cv2.getAffineTransform
    warped = warp_affine(image, matrix)
    dx = gaussian(draw["field_x"], sigma, mode="reflect", truncate=3) * alpha
    dy = gaussian(draw["field_y"], sigma, mode="reflect", truncate=3) * alpha
    x, y, z = np.meshgrid(np.arange(64), np.arange(64), np.arange(3))
    indices = (y + dy[..., None]).reshape(-1, 1), (x + dx[..., None]).reshape(-1, 1), z.reshape(-1, 1)
    return ndimage.map_coordinates(warped, indices, order=1, mode="reflect").reshape(64, 64, 3)


def pixelate(image, severity, draw):
    side = int(64 * PIXELATE[severity - 1])
    pil = Image.fromarray(np.uint8(np.round(image * 255)))
    return np.asarray(pil.resize((side, side), Image.BOX).resize((64, 64), Image.BOX)) / 255


def jpeg_compression(image, severity, draw):
    buffer = io.BytesIO()
    Image.fromarray(np.uint8(np.round(image * 255))).save(buffer, "JPEG", quality=JPEG_QUALITY[severity - 1])
    return np.asarray(Image.open(buffer).convert("RGB")) / 255


REFERENCES = {function.__name__: function for function in (
    gaussian_noise, shot_noise, impulse_noise, defocus_blur, glass_blur, motion_blur, zoom_blur, snow, frost, fog,
    brightness, contrast, elastic_transform, pixelate, jpeg_compression, speckle_noise, gaussian_blur)}


def reference_batch(x_uint8, name, severity, generator):
    """The reference over a (B, 64, 64, 3) uint8 batch, image by image, stored as the script stores
    it (np.uint8 of x·255, a hair above to absorb float noise): what corrupt() is compared with."""
    x = x_uint8.permute(0, 3, 1, 2).float() / 255
    images = (x_uint8.float() / 255).double().numpy()
    out = [REFERENCES[name](image, severity, draw) for image, draw in zip(images, draws(name, x, severity, generator))]
    return np.uint8(np.clip(np.stack(out), 0, 1) * 255 + 1e-4)
