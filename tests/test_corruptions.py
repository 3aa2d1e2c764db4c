"""corruptions.py against independent references: each corruption of Tiny-ImageNet-C written
again here, image by image, in numpy with scipy and PIL (what the authors' script used, but for
ImageMagick and OpenCV, whose formulas are written out from their definitions), fed the same
random numbers (drawn from the same seeded torch.Generator in the documented order), at every
severity.

Tolerance: the stored uint8 images agree within 1 level everywhere (the kit computes in float32
and the references in float64, and storing truncates as np.uint8 does, so a value within 1e-5 of
a whole level can land on either side), and on average within 0.05 levels; the PIL-based ones
(pixelate, JPEG) within PIL's own fixed-point rounding, stated at each."""
import colorsys
import io
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from corruptions import (BRIGHTNESS, CONTRAST, CORRUPTIONS, DEFOCUS_BLUR, ELASTIC, EXTRA, FOG, FROST, FROST_DIR, GAUSSIAN_BLUR,
                         GAUSSIAN_NOISE, GLASS_BLUR, IMPULSE_NOISE, JPEG_QUALITY, MOTION_BLUR, PIXELATE, SEVERITIES,
                         SHOT_NOISE, SNOW, SPECKLE_NOISE, ZOOM_BLUR, corrupt)

SEED = 3


@pytest.fixture(scope="module")
def images():
    """Three 64x64 images with edges, smooth regions, saturated and black pixels."""
    rng = np.random.default_rng(0)
    grid = np.linspace(0, 1, 64)
    smooth = np.stack([np.outer(grid, np.ones(64)), np.outer(np.ones(64), grid), np.outer(grid, grid)], axis=-1)
    blocks = np.kron(rng.random((8, 8, 3)), np.ones((8, 8, 1)))
    edges = np.zeros((64, 64, 3))
    edges[16:48, 20:40] = (1.0, 0.5, 0.0)
    edges[:, :4] = 1.0
    return torch.from_numpy(np.round(np.stack([smooth, blocks, edges]) * 255).astype(np.uint8))


def generator():
    return torch.Generator().manual_seed(SEED)


def as_float(x_uint8):
    """What every corruption sees: (B, H, W, 3) in [0, 1], float64 for the references."""
    return (x_uint8.float() / 255).double().numpy()


def stored(reference):
    """The reference's float images in [0, 1] as the script stores them: np.uint8 of x·255."""
    return np.uint8(np.clip(reference, 0, 1) * 255 + 1e-4)


def assert_matches(ours, reference, max_levels=1, mean_levels=0.05):
    difference = np.abs(ours.numpy().astype(int) - reference.astype(int))
    assert difference.max() <= max_levels and difference.mean() <= mean_levels, (difference.max(), difference.mean())


def draws(shape_maker):
    """The random numbers the kit draws, drawn again from the same seed in the same order."""
    g = generator()
    return shape_maker(g)


# ---------------------------------------------------------------- the references' own building blocks


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


# ---------------------------------------------------------------- noise


def test_gaussian_noise(images):
    for severity in SEVERITIES:
        noise = draws(lambda g: torch.randn((3, 3, 64, 64), generator=g)).permute(0, 2, 3, 1).double().numpy()
        reference = as_float(images) + noise * GAUSSIAN_NOISE[severity - 1]
        assert_matches(corrupt(images, "gaussian_noise", severity, generator()), stored(reference))


def test_shot_noise(images):
    for severity in SEVERITIES:
        photons = SHOT_NOISE[severity - 1]
        x = images.permute(0, 3, 1, 2).float() / 255
        counts = draws(lambda g: torch.poisson(x * photons, generator=g)).permute(0, 2, 3, 1).double().numpy()
        assert_matches(corrupt(images, "shot_noise", severity, generator()), stored(counts / photons))


def test_impulse_noise(images):
    for severity in SEVERITIES:
        def both(g):
            return torch.rand((3, 3, 64, 64), generator=g), torch.rand((3, 3, 64, 64), generator=g)

        flip, salt = (u.permute(0, 2, 3, 1).double().numpy() for u in draws(both))
        reference = np.where(flip < IMPULSE_NOISE[severity - 1], (salt < 0.5).astype(float), as_float(images))
        assert_matches(corrupt(images, "impulse_noise", severity, generator()), stored(reference))


def test_speckle_noise(images):
    for severity in SEVERITIES:
        noise = draws(lambda g: torch.randn((3, 3, 64, 64), generator=g)).permute(0, 2, 3, 1).double().numpy()
        x = as_float(images)
        assert_matches(corrupt(images, "speckle_noise", severity, generator()), stored(x + x * noise * SPECKLE_NOISE[severity - 1]))


# ---------------------------------------------------------------- blur


def disk(radius, alias_blur):
    """The script's disk(), with cv2.GaussianBlur((3, 3), sigma) written out (borders reflect101)."""
    grid = np.arange(-8, 9)
    x, y = np.meshgrid(grid, grid)
    aliased = ((x**2 + y**2) <= radius**2).astype(np.float64)
    aliased /= aliased.sum()
    taps = np.exp(-np.arange(-1, 2) ** 2 / (2 * alias_blur**2))
    taps /= taps.sum()
    return correlate_each_channel(aliased[..., None], np.outer(taps, taps), "reflect")[..., 0]


def test_defocus_blur(images):
    for severity in SEVERITIES:
        kernel = disk(*DEFOCUS_BLUR[severity - 1])
        reference = np.stack([correlate_each_channel(image, kernel, "reflect") for image in as_float(images)])
        assert_matches(corrupt(images, "defocus_blur", severity, generator()), stored(reference))


def test_glass_blur_copies_pixels_as_the_scripts_sequential_loop_does(images):
    """Mean tolerance 0.5 levels: the script truncates the first blur to uint8, and where that blur
    lands exactly on a level (a linear ramp stays one), float64 summation order picks the side:
    scipy's and the kit's differ there by 1 level, which the shuffle moves and the second blur spreads."""
    for severity in SEVERITIES:
        sigma, delta, iterations = GLASS_BLUR[severity - 1]
        positions = [(h, w) for h in range(64 - delta, delta, -1) for w in range(64 - delta, delta, -1)]
        offsets = draws(lambda g: torch.randint(-delta, delta, (iterations, len(positions), 3, 2), generator=g)).numpy()
        references = []
        for b, image in enumerate(as_float(images)):
            x = np.uint8(gaussian(image, sigma) * 255)
            for iteration in range(iterations):
                for index, (h, w) in enumerate(positions):  # the script's loop, its one-way "swap" included
                    dx, dy = offsets[iteration, index, b]
                    x[h, w], x[h + dy, w + dx] = x[h + dy, w + dx], x[h, w]
            references.append(gaussian(x / 255.0, sigma))
        assert_matches(corrupt(images, "glass_blur", severity, generator()), stored(np.stack(references)), mean_levels=0.5)


def test_motion_blur(images):
    for severity in SEVERITIES:
        radius, sigma = MOTION_BLUR[severity - 1]
        angles = draws(lambda g: torch.rand((3,), generator=g) * 90 - 45).tolist()
        reference = np.stack([imagemagick_motion_blur(image, radius, sigma, angle)
                              for image, angle in zip(as_float(images), angles)])
        assert_matches(corrupt(images, "motion_blur", severity, generator()), stored(reference))


def test_zoom_blur(images):
    for severity in SEVERITIES:
        factors = np.arange(1, [1.06, 1.11, 1.16, 1.21, 1.26][severity - 1], 0.01)  # the script's own
        assert len(factors) == ZOOM_BLUR[severity - 1]
        references = []
        for image in as_float(images).astype(np.float32):
            out = np.zeros_like(image)
            for factor in factors:
                out += clipped_zoom(image, factor)
            references.append((image + out) / (len(factors) + 1))
        assert_matches(corrupt(images, "zoom_blur", severity, generator()), stored(np.stack(references)))


def test_gaussian_blur(images):
    for severity in SEVERITIES:
        reference = np.stack([gaussian(image, GAUSSIAN_BLUR[severity - 1]) for image in as_float(images)])
        assert_matches(corrupt(images, "gaussian_blur", severity, generator()), stored(reference))


# ---------------------------------------------------------------- weather


def test_snow(images):
    for severity in SEVERITIES:
        mean, std, zoom, threshold, radius, sigma, blend = SNOW[severity - 1]

        def both(g):
            return torch.randn((3, 1, 64, 64), generator=g), torch.rand((3,), generator=g) * 90 - 135

        noise, angles = draws(both)
        references = []
        for image, field, angle in zip(as_float(images), noise[:, 0].double().numpy(), angles.tolist()):
            layer = clipped_zoom((field * std + mean)[..., None], zoom)
            layer[layer < threshold] = 0
            layer = (np.clip(layer, 0, 1) * 255).astype(np.uint8) / 255.0
            layer = imagemagick_motion_blur(layer, radius, sigma, angle)
            gray = (image @ np.array([0.299, 0.587, 0.114]))[..., None]
            x = blend * image + (1 - blend) * np.maximum(image, gray * 1.5 + 0.5)
            references.append(x + layer + np.rot90(layer, k=2))
        assert_matches(corrupt(images, "snow", severity, generator()), stored(np.stack(references)))


def test_frost_blends_a_random_crop_of_one_of_the_five_frost_images(images):
    frosts = [np.asarray(Image.open(os.path.join(FROST_DIR, f"frost{index}.png")).convert("RGB")).astype(float)
              for index in range(1, 6)]
    for severity in SEVERITIES:
        weight, frost_weight = FROST[severity - 1]

        def both(g):
            return torch.randint(0, 5, (3,), generator=g), torch.rand((3, 2), generator=g)

        which, where = draws(both)
        references = []
        for image, index, (u, v) in zip(images.numpy().astype(float), which.tolist(), where.tolist()):
            frost = frosts[index]
            top, left = int(u * (frost.shape[0] - 64)), int(v * (frost.shape[1] - 64))  # np.random.randint(0, H - 64)
            references.append(np.clip(weight * image + frost_weight * frost[top : top + 64, left : left + 64], 0, 255) / 255)
        assert_matches(corrupt(images, "frost", severity, generator()), stored(np.stack(references)))


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


def test_fog(images):
    for severity in SEVERITIES:
        strength, decay = FOG[severity - 1]
        g, levels = generator(), [64 // 2**k for k in range(6)]  # the kit draws each level's three sets for the batch
        batches = [torch.rand((3, 64 // step, 64 // step), generator=g, dtype=torch.float64).numpy()
                   for step in levels for _ in range(3)]
        references = []
        for b, image in enumerate(as_float(images)):
            queue = [batch[b] for batch in batches]
            fractal = plasma_fractal(lambda shape: queue.pop(0).reshape(shape), decay)
            brightest = image.max()
            references.append((image + strength * fractal[..., None]) * brightest / (brightest + strength))
        assert_matches(corrupt(images, "fog", severity, generator()), stored(np.stack(references)))


def test_brightness_raises_hsv_value_as_colorsys_does(images):
    for severity in SEVERITIES:
        references = []
        for image in as_float(images):
            hsv = [colorsys.rgb_to_hsv(*pixel) for pixel in image.reshape(-1, 3)]
            rgb = [colorsys.hsv_to_rgb(h, s, min(v + BRIGHTNESS[severity - 1], 1.0)) for h, s, v in hsv]
            references.append(np.array(rgb).reshape(64, 64, 3))
        assert_matches(corrupt(images, "brightness", severity, generator()), stored(np.stack(references)))


# ---------------------------------------------------------------- digital


def test_contrast(images):
    for severity in SEVERITIES:
        x = as_float(images)
        means = x.mean(axis=(1, 2), keepdims=True)
        assert_matches(corrupt(images, "contrast", severity, generator()), stored((x - means) * CONTRAST[severity - 1] + means))


def warp_affine(image, matrix):
    """cv2.warpAffine(image, M, (64, 64), borderMode=BORDER_REFLECT_101), bilinear: each output
    pixel reads the input at M⁻¹(column, row), neighbours outside mirrored without the edge."""
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    padded = np.pad(image, ((64, 64), (64, 64), (0, 0)), mode="reflect")
    out = np.zeros_like(image)
    for row in range(64):
        for col in range(64):
            x, y = inverse @ np.array([col, row, 1.0])
            x0, y0 = math.floor(x), math.floor(y)
            fx, fy = x - x0, y - y0
            patch = padded[y0 + 64 : y0 + 66, x0 + 64 : x0 + 66]
            out[row, col] = (patch[0, 0] * (1 - fx) * (1 - fy) + patch[0, 1] * fx * (1 - fy)
                             + patch[1, 0] * (1 - fx) * fy + patch[1, 1] * fx * fy)
    return out


def test_elastic_transform(images):
    for severity in SEVERITIES:
        alpha, sigma, jitter = ELASTIC[severity - 1]

        def three(g):
            return (torch.rand((3, 3, 2), generator=g) * 2 * jitter - jitter, torch.rand((3, 1, 64, 64), generator=g) * 2 - 1,
                    torch.rand((3, 1, 64, 64), generator=g) * 2 - 1)

        moves, fields_x, fields_y = (t.double().numpy() for t in draws(three))
        source = np.array([[53.0, 53.0], [53.0, 11.0], [11.0, 11.0]])
        references = []
        for b, image in enumerate(as_float(images)):
            matrix = np.linalg.solve(np.hstack([source, np.ones((3, 1))]), source + moves[b]).T  # cv2.getAffineTransform
            warped = warp_affine(image, matrix)
            dx = gaussian(fields_x[b, 0], sigma, mode="reflect", truncate=3) * alpha if sigma else 0 * fields_x[b, 0]
            dy = gaussian(fields_y[b, 0], sigma, mode="reflect", truncate=3) * alpha if sigma else 0 * fields_y[b, 0]
            x, y, z = np.meshgrid(np.arange(64), np.arange(64), np.arange(3))
            indices = (y + dy[..., None]).reshape(-1, 1), (x + dx[..., None]).reshape(-1, 1), z.reshape(-1, 1)
            references.append(ndimage.map_coordinates(warped, indices, order=1, mode="reflect").reshape(64, 64, 3))
        assert_matches(corrupt(images, "elastic_transform", severity, generator()), stored(np.stack(references)))


def test_pixelate_is_pils_box_resize_down_and_up(images):
    """Within 1 level (PIL's fixed-point weights against float ones) on at most 1% of the values."""
    for severity in SEVERITIES:
        side = int(64 * PIXELATE[severity - 1])
        reference = np.stack([np.asarray(Image.fromarray(image).resize((side, side), Image.BOX).resize((64, 64), Image.BOX))
                              for image in images.numpy()])
        assert_matches(corrupt(images, "pixelate", severity, generator()), reference, mean_levels=0.01)


def test_jpeg_compression_is_pils_jpeg_at_the_scripts_quality(images):
    """torchvision's libjpeg against PIL's, both 4:2:0 with the standard tables scaled by the
    quality: the same codec, so within 2 levels (their IDCT and upsampling may round apart)."""
    for severity in SEVERITIES:
        references = []
        for image in images.numpy():
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, "JPEG", quality=JPEG_QUALITY[severity - 1])
            references.append(np.asarray(Image.open(buffer).convert("RGB")))
        assert_matches(corrupt(images, "jpeg_compression", severity, generator()), np.stack(references), max_levels=2, mean_levels=0.2)


# ---------------------------------------------------------------- the whole


def test_the_benchmark_is_the_papers_fifteen():
    assert list(CORRUPTIONS) == ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
                                 "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
                                 "jpeg_compression"]


def test_every_corruption_is_reproducible_from_its_seed_and_keeps_the_batch_shape(images):
    for name in [*CORRUPTIONS, *EXTRA]:
        first = corrupt(images, name, 3, torch.Generator().manual_seed(1))
        assert first.shape == images.shape and first.dtype == torch.uint8
        assert torch.equal(first, corrupt(images, name, 3, torch.Generator().manual_seed(1))), name
