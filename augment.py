"""Augmentation of whole batches on the model's device, each image with its own random draws
and no per-image Python: RandAugment, TrivialAugmentWide and AutoAugment (ImageNet policy) on
uint8 images, random erasing on normalised ones, MixUp / CutMix with soft targets.

    python train.py --randaugment 2,9 --random-erase 0.25 --mixup 0.8 --cutmix 1.0
    python train.py --recipe vit-small-data --model vit     # AutoAugment, erasing, MixUp/CutMix, repeats

    rounds = rand_augment(len(x), torch.Generator().manual_seed(0), 64)   # (B, H, W, 3) uint8 x
    x = apply_policy(x, rounds)

The policies use the operations, magnitude ranges and sampling of torchvision.transforms.v2
(torchvision 0.29, `_auto_augment.py`), with its default nearest interpolation and fill 0, and
every operation gives the pixels that `torchvision.transforms.v2.functional` gives for the same
image and magnitude (tests/test_augment.py checks each one). How a batch is done: every image
draws its operation and magnitude on the host (a CPU generator seeded by seed, epoch and
step, so nothing waits for the device); the batch is sorted by operation, each operation runs
once on its contiguous block of images with per-image magnitudes, and the block order is undone.
"""
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# torchvision (equalize, MixUp, CutMix) is imported where it is used: importing it costs ~1.6 s of
# every script's start-up, and runs without those augmentations never need it.

# The operations, in the order the batch is sorted by (the geometric ones adjacent, so that one
# gather does them all).
OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
       "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert")
OP_INDEX = {name: index for index, name in enumerate(OPS)}
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
MAGNITUDE_BINS = 31  # RandAugment's and TrivialAugmentWide's


def _standard_space(num_bins, size):
    """RandAugment's and AutoAugment's magnitudes (torchvision's _AUGMENTATION_SPACE):
    {op: (magnitudes, signed)}, magnitudes None for the operations without one."""
    return {
        "Identity": (None, False),
        "ShearX": (torch.linspace(0.0, 0.3, num_bins), True),
        "ShearY": (torch.linspace(0.0, 0.3, num_bins), True),
        "TranslateX": (torch.linspace(0.0, 150.0 / 331.0 * size, num_bins), True),
        "TranslateY": (torch.linspace(0.0, 150.0 / 331.0 * size, num_bins), True),
        "Rotate": (torch.linspace(0.0, 30.0, num_bins), True),
        "Brightness": (torch.linspace(0.0, 0.9, num_bins), True),
        "Color": (torch.linspace(0.0, 0.9, num_bins), True),
        "Contrast": (torch.linspace(0.0, 0.9, num_bins), True),
        "Sharpness": (torch.linspace(0.0, 0.9, num_bins), True),
        "Posterize": ((8 - (torch.arange(num_bins) / ((num_bins - 1) / 4))).round().int(), False),
        "Solarize": (torch.linspace(1.0, 0.0, num_bins), False),
        "AutoContrast": (None, False),
        "Equalize": (None, False),
    }


def _wide_space(num_bins, size):
    """TrivialAugmentWide's wider magnitudes."""
    return {
        "Identity": (None, False),
        "ShearX": (torch.linspace(0.0, 0.99, num_bins), True),
        "ShearY": (torch.linspace(0.0, 0.99, num_bins), True),
        "TranslateX": (torch.linspace(0.0, 32.0, num_bins), True),
        "TranslateY": (torch.linspace(0.0, 32.0, num_bins), True),
        "Rotate": (torch.linspace(0.0, 135.0, num_bins), True),
        "Brightness": (torch.linspace(0.0, 0.99, num_bins), True),
        "Color": (torch.linspace(0.0, 0.99, num_bins), True),
        "Contrast": (torch.linspace(0.0, 0.99, num_bins), True),
        "Sharpness": (torch.linspace(0.0, 0.99, num_bins), True),
        "Posterize": ((8 - (torch.arange(num_bins) / ((num_bins - 1) / 6))).round().int(), False),
        "Solarize": (torch.linspace(1.0, 0.0, num_bins), False),
        "AutoContrast": (None, False),
        "Equalize": (None, False),
    }


# torchvision's AutoAugmentPolicy.IMAGENET: 25 sub-policies of two (op, probability, magnitude bin).
IMAGENET_POLICY = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)), (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)), (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)), (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)), (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)), (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)), (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)), (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)), (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)), (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)


# ---------------------------------------------------------------- drawing the operations

class Space:
    """A policy's magnitudes: table[op, bin] (float64, torchvision's float(magnitudes[bin])),
    which operations are signed and which ones the policy draws from; and, built once per
    device, where each output pixel of each geometric operation, bin and sign comes from."""

    def __init__(self, magnitudes, size):
        self.size = size
        self.ops = torch.tensor([OP_INDEX[name] for name in magnitudes])
        self.num_bins = max(len(values) for values, _ in magnitudes.values() if values is not None)
        self.table = torch.zeros(len(OPS), self.num_bins, dtype=torch.float64)
        self.signed = torch.zeros(len(OPS), dtype=torch.bool)
        for name, (values, signed) in magnitudes.items():
            if values is not None:
                self.table[OP_INDEX[name]] = values.double()
                self.signed[OP_INDEX[name]] = signed
        self._source_maps = {}

    def magnitude(self, op, magnitude_bin, negative):
        value = self.table[op, magnitude_bin]
        return torch.where(negative, -value, value)

    def source_maps(self, device):
        """(geometric op, bin, sign, H * W): 1 + the flat index of the pixel that each output
        pixel takes, 0 where it falls outside (filled with 0). Made by torchvision's own
        arithmetic, the inverse affine matrix, the sampling grid, then grid_sample in nearest
        mode, run once on an image whose pixels are their own numbers: the map is exactly the
        one grid_sample would use, and applying it is one gather per image."""
        if device not in self._source_maps:
            shape = (len(GEOMETRIC), self.num_bins, 2)
            op = (OP_INDEX[GEOMETRIC[0]] + torch.arange(shape[0])).view(-1, 1, 1).expand(shape).flatten()
            magnitude_bin = torch.arange(shape[1]).view(1, -1, 1).expand(shape).flatten()
            negative = torch.tensor([False, True]).view(1, 1, 2).expand(shape).flatten()
            theta = _inverse_matrices(op, self.magnitude(op, magnitude_bin, negative), self.size).float()
            pixels = self.size * self.size
            numbers = torch.arange(1, pixels + 1, dtype=torch.float32).view(1, 1, self.size, self.size)
            source = F.grid_sample(numbers.expand(len(theta), -1, -1, -1), _sampling_grids(theta, self.size),
                                   mode="nearest", padding_mode="zeros", align_corners=False)
            # Made on the CPU for every device: a GPU's TF32 matmul would move the grid by more
            # than a rounding, and the pixels would no longer be torchvision's.
            self._source_maps[device] = source.view(*shape, pixels).long().to(device)
        return self._source_maps[device]


@functools.cache
def magnitude_space(kind, num_bins, size):
    """The Space of "standard" (RandAugment), "wide" (TrivialAugmentWide) or "autoaugment"
    (the standard magnitudes in 10 bins, and Invert) for images of `size`."""
    magnitudes = _wide_space(num_bins, size) if kind == "wide" else _standard_space(num_bins, size)
    if kind == "autoaugment":  # (its sub-policies name their operations: Invert, never Identity)
        magnitudes = {**{k: v for k, v in magnitudes.items() if k != "Identity"}, "Invert": (None, False)}
    return Space(magnitudes, size)


@dataclass
class Round:
    """One operation per image: its index in OPS, its magnitude bin and sign in `space`."""

    op: torch.Tensor
    magnitude_bin: torch.Tensor
    negative: torch.Tensor
    space: Space

    @property
    def magnitude(self):
        """float64, as torchvision's float(magnitudes[bin]), negated; 0 where the op has none."""
        return self.space.magnitude(self.op, self.magnitude_bin, self.negative)


def _round(op, magnitude_bin, space, generator):
    """The round, each signed magnitude negated with probability 1/2 (torchvision's
    `torch.rand(()) <= 0.5`)."""
    negative = space.signed[op] & (torch.rand(len(op), generator=generator) <= 0.5)
    return Round(op, magnitude_bin, negative, space)


def rand_augment(batch, generator, size, num_ops=2, magnitude=9, num_bins=MAGNITUDE_BINS):
    """RandAugment(num_ops, magnitude): num_ops rounds, each image drawing one of the 14
    operations uniformly, all at magnitude bin `magnitude` of `num_bins`."""
    space = magnitude_space("standard", num_bins, size)
    rounds = []
    for _ in range(num_ops):
        op = space.ops[torch.randint(len(space.ops), (batch,), generator=generator)]
        rounds.append(_round(op, torch.full((batch,), magnitude), space, generator))
    return rounds


def trivial_augment_wide(batch, generator, size, num_bins=MAGNITUDE_BINS):
    """TrivialAugmentWide: one operation of 14 per image, at a uniform magnitude bin."""
    space = magnitude_space("wide", num_bins, size)
    op = space.ops[torch.randint(len(space.ops), (batch,), generator=generator)]
    return [_round(op, torch.randint(num_bins, (batch,), generator=generator), space, generator)]


# IMAGENET_POLICY as tensors, [position in the sub-policy, sub-policy]: op, probability, bin.
_POLICY_OPS = torch.tensor([[OP_INDEX[sub[k][0]] for sub in IMAGENET_POLICY] for k in range(2)])
_POLICY_PROBABILITIES = torch.tensor([[sub[k][1] for sub in IMAGENET_POLICY] for k in range(2)], dtype=torch.float64)
_POLICY_BINS = torch.tensor([[sub[k][2] or 0 for sub in IMAGENET_POLICY] for k in range(2)])


def auto_augment(batch, generator, size):
    """AutoAugment, ImageNet policy: a sub-policy of 25 per image, each of its two operations
    applied with its probability (torchvision: `torch.rand(()) <= p`) at its bin of 10."""
    space = magnitude_space("autoaugment", 10, size)
    policy = torch.randint(len(IMAGENET_POLICY), (batch,), generator=generator)
    rounds = []
    for position in range(2):
        applied = torch.rand(batch, generator=generator, dtype=torch.float64) <= _POLICY_PROBABILITIES[position][policy]
        op = torch.where(applied, _POLICY_OPS[position][policy], OP_INDEX["Identity"])
        rounds.append(_round(op, torch.where(applied, _POLICY_BINS[position][policy], 0), space, generator))
    return rounds


POLICIES = {"randaugment": rand_augment, "trivialaugment": trivial_augment_wide, "autoaugment": auto_augment}


# ---------------------------------------------------------------- the operations, batched

def _per_image(values, like):
    """Host float64 values, one per image, as float32 on the images' device, ready to broadcast.
    float64 on the host, as torchvision computes in Python floats; float32 where torchvision's
    kernels take them (a float scalar on a float32 tensor is used in float32)."""
    return values.float().to(like.device, non_blocking=True).view(-1, 1, 1, 1)


def _blend(image1, image2, ratio):
    """torchvision's _blend with a per-image ratio: image1 * r + image2 * (1 - r), clamped and
    truncated to uint8. torchvision's `add_(image2, alpha=1 - r)` is one fused multiply-add;
    addcmul rounds the same way (checked op by op against torchvision in the tests)."""
    scaled = image1.float().mul_(_per_image(ratio, image1))
    return torch.addcmul(scaled, image2, _per_image(1.0 - ratio, image1)).clamp_(0, 255).to(torch.uint8)


def _grayscale(image):
    """torchvision's _rgb_to_grayscale_image (the same operations, so the same rounding), floored."""
    r, g, b = image.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3).floor_()


def brightness(image, magnitude):
    return image.float().mul_(_per_image(1.0 + magnitude, image)).clamp_(0, 255).to(torch.uint8)


def color(image, magnitude):
    return _blend(image, _grayscale(image), 1.0 + magnitude)


def contrast(image, magnitude):
    return _blend(image, _grayscale(image).mean(dim=(-3, -2, -1), keepdim=True), 1.0 + magnitude)


def sharpness(image, magnitude):
    """torchvision's adjust_sharpness: a blend with the image smoothed by the 3x3 kernel
    [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, borders kept. torchvision rounds the float
    convolution; its exact value is an integer / 13, never within 1/26 of a tie, so the rounding
    is done in integers here (several times faster than a depthwise convolution of a few images)."""
    pixels = image.int()
    rows = pixels[..., :-2, :] + pixels[..., 1:-1, :] + pixels[..., 2:, :]
    neighbourhood = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:] + 4 * pixels[..., 1:-1, 1:-1]
    blurred = (2 * neighbourhood + 13).div_(26, rounding_mode="floor").float()
    output = image.float().contiguous()
    inner = output[..., 1:-1, 1:-1]
    inner.copy_(torch.addcmul(inner, blurred.sub_(inner), _per_image(1.0 - (1.0 + magnitude), image)))
    return output.clamp_(0, 255).to(torch.uint8)


def posterize(image, magnitude):
    bits = magnitude.long()
    mask = ((1 << bits) - 1) << (8 - bits)
    return image & mask.to(torch.uint8).to(image.device, non_blocking=True).view(-1, 1, 1, 1)


def solarize(image, magnitude):
    # torchvision compares the uint8 image with the float threshold 255 * m in float32.
    return torch.where(image >= _per_image(255.0 * magnitude, image), image.bitwise_not(), image)


def autocontrast(image, magnitude):
    """torchvision's autocontrast per image and channel, with torch.where where it indexes by a
    mask (a mask index is a host-device sync on CUDA)."""
    value = image.float()
    low, high = value.amin(dim=(-2, -1), keepdim=True), value.amax(dim=(-2, -1), keepdim=True)
    flat = high == low
    inv_scale = torch.where(flat, 1.0, (high - low).mul_(1.0 / 255))
    return value.sub_(torch.where(flat, 0.0, low)).div_(inv_scale).clamp_(0, 255).to(torch.uint8)


def invert(image, magnitude):
    return image.bitwise_not()


def geometric(image, round_):
    """ShearX/Y, TranslateX/Y and Rotate, as torchvision's affine and rotate run them (nearest,
    zeros outside), each image through its own operation's pixel map (Space.source_maps)."""
    maps = round_.space.source_maps(image.device)
    index = torch.stack([round_.op - OP_INDEX[GEOMETRIC[0]], round_.magnitude_bin, round_.negative.long()])
    source = maps[tuple(index.to(image.device, non_blocking=True))]  # (n, H * W)
    batch, channels, height, width = image.shape
    taken = image.reshape(batch, channels, height * width).gather(2, (source - 1).clamp_(min=0).unsqueeze(1).expand(-1, channels, -1))
    return torch.where(source.unsqueeze(1) > 0, taken, 0).view(batch, channels, height, width)


def _sampling_grids(theta, size):
    """torchvision's _affine_grid for (n, 2, 3) inverse matrices, output size = input size."""
    base = torch.empty(1, size, size, 3, device=theta.device)
    line = torch.linspace((1.0 - size) * 0.5, (size - 1.0) * 0.5, steps=size, device=theta.device)
    base[..., 0].copy_(line)
    base[..., 1].copy_(line.unsqueeze(-1))
    base[..., 2].fill_(1)
    rescaled = theta.transpose(1, 2).div_(torch.tensor([0.5 * size, 0.5 * size], device=theta.device))
    return base.view(1, size * size, 3).expand(len(theta), -1, -1).bmm(rescaled).view(-1, size, size, 2)


def _inverse_matrices(op, magnitude, size):
    """torchvision's _get_inverse_affine_matrix for each image's operation, in float64 on the
    host: shears about the corner (torchvision passes center=[0, 0]), translations by whole
    pixels (int(magnitude)), rotations about the centre (by -angle, as rotate passes it)."""
    zero = torch.zeros_like(magnitude)
    is_op = {name: op == OP_INDEX[name] for name in GEOMETRIC}
    shear = torch.deg2rad(torch.rad2deg(torch.atan(magnitude)))  # torchvision: shear=degrees(atan(m)), then radians
    shear_x = torch.where(is_op["ShearX"], shear, zero)
    shear_y = torch.where(is_op["ShearY"], shear, zero)
    angle = torch.where(is_op["Rotate"], torch.deg2rad(-(magnitude % 360)), zero)
    tx = torch.where(is_op["TranslateX"], magnitude.trunc(), zero)
    ty = torch.where(is_op["TranslateY"], magnitude.trunc(), zero)
    corner = torch.where(is_op["ShearX"] | is_op["ShearY"], -0.5 * size, 0.0)
    a = torch.cos(angle - shear_y) / torch.cos(shear_y)
    b = -(a * torch.tan(shear_x) + torch.sin(angle))
    c = torch.sin(angle - shear_y) / torch.cos(shear_y)
    d = torch.cos(angle) - c * torch.tan(shear_x)
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = corner - m0 * (corner + tx) - m1 * (corner + ty)
    m5 = corner - m3 * (corner + tx) - m4 * (corner + ty)
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=1).view(-1, 2, 3)


def equalize(image, magnitude):
    """torchvision's own batched histogram equalisation (it has no magnitude)."""
    from torchvision.transforms.v2.functional import equalize as torchvision_equalize

    return torchvision_equalize(image)


COLOUR_OPS = {"Brightness": brightness, "Color": color, "Contrast": contrast, "Sharpness": sharpness,
              "Posterize": posterize, "Solarize": solarize, "AutoContrast": autocontrast,
              "Equalize": equalize, "Invert": invert}


def apply_round(images, round_):
    """Each image of a (B, 3, H, W) uint8 batch through its own operation of the round: the
    batch sorted by operation, each operation once on its block, the blocks put back in order."""
    order = torch.argsort(round_.op, stable=True)
    ordered = Round(round_.op[order], round_.magnitude_bin[order], round_.negative[order], round_.space)
    ends = torch.bincount(ordered.op, minlength=len(OPS)).cumsum(0).tolist()  # on the host: no sync
    block = {name: slice(start, end) for name, start, end in zip(OPS, [0, *ends], ends)}
    sorted_images = images.index_select(0, order.to(images.device, non_blocking=True))
    geometric_block = slice(block[GEOMETRIC[0]].start, block[GEOMETRIC[-1]].stop)
    blocks = [sorted_images[block["Identity"]],
              geometric(sorted_images[geometric_block], Round(*(t[geometric_block] for t in (
                  ordered.op, ordered.magnitude_bin, ordered.negative)), round_.space))]
    magnitude = ordered.magnitude
    blocks += [COLOUR_OPS[name](sorted_images[block[name]], magnitude[block[name]])
               for name in OPS[OP_INDEX[GEOMETRIC[-1]] + 1:] if block[name].stop > block[name].start]
    unsort = torch.argsort(order).to(images.device, non_blocking=True)
    return torch.cat(blocks).index_select(0, unsort)  # (index_select: several times faster than index_copy_)


def apply_policy(images_nhwc, rounds):
    """A (B, H, W, 3) uint8 batch through the drawn rounds, in the same layout."""
    images = images_nhwc.permute(0, 3, 1, 2)
    for round_ in rounds:
        images = apply_round(images, round_)
    return images.permute(0, 2, 3, 1).contiguous()


# ---------------------------------------------------------------- random erasing

def erasing_boxes(batch, generator, height, width, probability, scale=(0.02, 0.33), ratio=(0.3, 3.3), attempts=10):
    """torchvision's RandomErasing.make_params for every image at once: with `probability`, the
    first of 10 (area, aspect) draws whose box fits, at a uniform position; (top, left, height,
    width) per image, height 0 where nothing is erased."""
    area = height * width
    erase_area = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(batch, attempts, generator=generator, dtype=torch.float64))
    log_ratio = torch.tensor(ratio, dtype=torch.float64).log()
    aspect = torch.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * torch.rand(batch, attempts, generator=generator, dtype=torch.float64))
    h = torch.sqrt(erase_area * aspect).round().long()
    w = torch.sqrt(erase_area / aspect).round().long()
    fits = (h < height) & (w < width)
    first = fits.long().argmax(dim=1, keepdim=True)  # the first attempt that fits
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    erased = fits.any(dim=1) & (torch.rand(batch, generator=generator) < probability)
    top = (torch.rand(batch, generator=generator, dtype=torch.float64) * (height - h + 1)).long()
    left = (torch.rand(batch, generator=generator, dtype=torch.float64) * (width - w + 1)).long()
    return torch.stack([top, left, torch.where(erased, h, 0), torch.where(erased, w, 0)], dim=1)


def erase(images, boxes):
    """Zero (the mean colour, after normalisation) inside each image's box; (B, C, H, W)."""
    boxes = boxes.to(images.device, non_blocking=True)
    top, left, h, w = (boxes[:, k].view(-1, 1, 1) for k in range(4))
    rows = torch.arange(images.shape[-2], device=images.device).view(1, -1, 1)
    cols = torch.arange(images.shape[-1], device=images.device).view(1, 1, -1)
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    return images.masked_fill(inside.unsqueeze(1), 0.0)


# ---------------------------------------------------------------- MixUp / CutMix

@dataclass(frozen=True)
class Mixing:
    """--mixup A --cutmix A --mix-prob P --mix-switch-prob P, as timm's Mixup: on a batch, with
    probability mix_prob, CutMix (with probability switch_prob when both are on) or MixUp."""

    mixup: float = 0.0
    cutmix: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5

    @property
    def enabled(self):
        return self.prob > 0 and (self.mixup > 0 or self.cutmix > 0)


def mix(images, labels, num_classes, mixing, generator, seed):
    """Soft targets (B, num_classes) for a normalised (B, C, H, W) batch, mixed with the batch
    rolled by one (torchvision's MixUp / CutMix, which draw from the global CPU generator: run
    here with it seeded from `seed`, and its state restored after)."""
    use_mix = torch.rand((), generator=generator).item() < mixing.prob
    use_cutmix = mixing.cutmix > 0 and (mixing.mixup == 0 or torch.rand((), generator=generator).item() < mixing.switch_prob)
    if not use_mix:
        return images, F.one_hot(labels, num_classes).float()
    from torchvision.transforms.v2 import CutMix, MixUp

    transform = (CutMix(alpha=mixing.cutmix, num_classes=num_classes) if use_cutmix
                 else MixUp(alpha=mixing.mixup, num_classes=num_classes))
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # the CPU generator only: torch.manual_seed would reseed the GPUs
        return transform(images, labels)


# ---------------------------------------------------------------- a training batch

@dataclass(frozen=True)
class Augmentation:
    """What a training batch goes through after the notebook's crop and flip: a policy
    ("randaugment", "trivialaugment", "autoaugment" or None) on the uint8 images, random
    erasing with probability `erase` after normalisation, MixUp / CutMix; and `repeat`:
    each image K times per epoch (repeated augmentation, in data.BatchLoader's order)."""

    policy: str = None
    randaugment: tuple = (2, 9)  # RandAugment's num_ops, magnitude (of 31 bins)
    erase: float = 0.0
    mixing: Mixing = Mixing()
    repeat: int = 1

    @property
    def shuffles_batches(self):
        """Mixing pairs neighbours, and repeated copies are read side by side: both need the
        batch in a random order."""
        return self.mixing.enabled or self.repeat > 1

    def draw_policy(self, batch, generator, size):
        if self.policy == "randaugment":
            return rand_augment(batch, generator, size, *self.randaugment)
        return POLICIES[self.policy](batch, generator, size)


# The random streams of a training batch: each use draws from its own generator.
SHUFFLE, POLICY, ERASING, MIXING, MIXING_TORCHVISION = range(5)


def stream_seed(seed, epoch, step, stream):
    """The seed of one use (stream) at one (seed, epoch, step): every draw is a function of them."""
    return (((seed * 1_000_003 + epoch) * 1_000_003 + step) * 8 + stream) % 2**63


def host_generator(seed, epoch, step, stream):
    """A CPU generator for one stream of one step: the draws are made on the host, so they are
    the same on every device and nothing waits for the device."""
    return torch.Generator().manual_seed(stream_seed(seed, epoch, step, stream))
