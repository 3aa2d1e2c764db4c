"""The batch augmentations: every operation gives torchvision.transforms.v2.functional's pixels,
the policies draw what torchvision's draw, random erasing / MixUp / CutMix / repeated
augmentation do what their papers and torchvision say, and the loader's draws are a function of
(seed, epoch, step) that N ranks share."""
import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms.v2 import InterpolationMode

import augment
import train
import train_flags
from augment import OP_INDEX, OPS, Augmentation, Mixing
from data import BatchLoader

NEAREST = InterpolationMode.NEAREST


def images(n=24, seed=0):
    """(n, 3, 64, 64) uint8 with what real photos have: noise, smooth gradients, low contrast,
    grey (R = G = B) and flat images (autocontrast's and equalize's special cases)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, 256, (n, 3, 64, 64), generator=g, dtype=torch.uint8)
    ramp = torch.linspace(0, 1, 64)
    smooth = (ramp[None, None, :, None] * ramp[None, None, None, :] * torch.rand(n, 3, 1, 1, generator=g) * 255)
    x = torch.where(torch.arange(n).view(-1, 1, 1, 1) % 2 == 0, noise, smooth.to(torch.uint8))
    x[1] = x[1] // 8 + 100  # low contrast
    x[3] = x[3, :1].expand(3, -1, -1)  # grey
    x[5] = 77  # flat
    return x


def torchvision_op(image, name, magnitude):
    """What torchvision.transforms.v2._AutoAugmentBase._apply_image_or_video_transform does (0.29)."""
    if name in ("ShearX", "ShearY"):
        shear = math.degrees(math.atan(magnitude))
        return TF.affine(image, angle=0.0, translate=[0, 0], scale=1.0, interpolation=NEAREST, center=[0, 0],
                         shear=[shear, 0.0] if name == "ShearX" else [0.0, shear])
    if name in ("TranslateX", "TranslateY"):
        shift = [int(magnitude), 0] if name == "TranslateX" else [0, int(magnitude)]
        return TF.affine(image, angle=0.0, translate=shift, scale=1.0, interpolation=NEAREST, shear=[0.0, 0.0])
    return {
        "Identity": lambda: image,
        "Rotate": lambda: TF.rotate(image, angle=magnitude, interpolation=NEAREST),
        "Brightness": lambda: TF.adjust_brightness(image, 1.0 + magnitude),
        "Color": lambda: TF.adjust_saturation(image, 1.0 + magnitude),
        "Contrast": lambda: TF.adjust_contrast(image, 1.0 + magnitude),
        "Sharpness": lambda: TF.adjust_sharpness(image, 1.0 + magnitude),
        "Posterize": lambda: TF.posterize(image, int(magnitude)),
        "Solarize": lambda: TF.solarize(image, 255.0 * magnitude),
        "AutoContrast": lambda: TF.autocontrast(image),
        "Equalize": lambda: TF.equalize(image),
        "Invert": lambda: TF.invert(image),
    }[name]()


WIDE = augment.magnitude_space("wide", 31, 64)  # the widest magnitudes: TrivialAugmentWide's
SPACES = {"wide": WIDE, "standard": augment.magnitude_space("standard", 31, 64),
          "autoaugment": augment.magnitude_space("autoaugment", 10, 64)}


def draws(name, n, seed, space=WIDE):
    """A round of `name` for n images over the space's whole range of bins, either sign."""
    g = torch.Generator().manual_seed(seed)
    op = torch.full((n,), OP_INDEX[name])
    return augment._round(op, torch.randint(space.num_bins, (n,), generator=g), space, g)


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("name", OPS)
def test_each_operation_gives_torchvisions_pixels(name, space):
    x = images()
    round_ = draws(name, len(x), seed=OP_INDEX[name], space=SPACES[space])
    if name == "Rotate" and space == "wide":  # torchvision's fast paths: bin 20 is 90 degrees (-90: 270), bin 0 is 0
        round_.magnitude_bin[:4], round_.negative[:4] = torch.tensor([20, 20, 0, 0]), torch.tensor([False, True, False, True])
    ours = augment.apply_round(x, round_)
    for image, result, m in zip(x, ours, round_.magnitude.tolist()):
        assert torch.equal(result, torchvision_op(image, name, m)), (name, m)


def test_the_policies_tables_are_torchvisions():
    """The magnitude spaces and the ImageNet sub-policies, read off torchvision's own classes."""
    from torchvision.transforms import v2
    for ours, theirs in ((SPACES["standard"], v2.RandAugment._AUGMENTATION_SPACE), (WIDE, v2.TrivialAugmentWide._AUGMENTATION_SPACE),
                         (SPACES["autoaugment"], v2.AutoAugment._AUGMENTATION_SPACE)):
        assert {OPS[k] for k in ours.ops.tolist()} == set(theirs)
        for name, (magnitudes, signed) in theirs.items():
            values = magnitudes(ours.num_bins, 64, 64)
            expected = torch.zeros(ours.num_bins, dtype=torch.float64) if values is None else values.double()
            assert torch.equal(ours.table[OP_INDEX[name]], expected) and bool(ours.signed[OP_INDEX[name]]) == signed, name
    assert list(augment.IMAGENET_POLICY) == v2.AutoAugment()._policies


def test_a_round_of_mixed_operations_gives_each_image_its_own():
    x = images(n=60, seed=1)
    g = torch.Generator().manual_seed(7)
    op = torch.arange(60) % len(OPS)
    round_ = augment._round(op, torch.randint(31, (60,), generator=g), WIDE, g)
    ours = augment.apply_round(x, round_)
    for image, result, k, m in zip(x, ours, op.tolist(), round_.magnitude.tolist()):
        assert torch.equal(result, torchvision_op(image, OPS[k], m)), (OPS[k], m)


def test_a_policys_rounds_run_one_after_the_other_in_the_loaders_layout():
    x = images(24, seed=2)
    rounds = augment.rand_augment(24, torch.Generator().manual_seed(0), 64, num_ops=2, magnitude=17)
    ours = augment.apply_policy(x.permute(0, 2, 3, 1).contiguous(), rounds)  # the loader's (B, H, W, 3)
    assert ours.shape == (24, 64, 64, 3)
    for i, (image, result) in enumerate(zip(x, ours.permute(0, 3, 1, 2))):
        expected = image
        for round_ in rounds:
            expected = torchvision_op(expected, OPS[round_.op[i]], round_.magnitude[i].item())
        assert torch.equal(result, expected)


# ---------------------------------------------------------------- the policies' distributions

def frequencies(values, size):
    return torch.bincount(values, minlength=size).double() / len(values)


def test_randaugment_draws_its_14_operations_uniformly_at_magnitude_m_with_random_signs():
    n = 28_000
    rounds = augment.rand_augment(n, torch.Generator().manual_seed(0), 64, num_ops=2, magnitude=9)
    space = augment._standard_space(31, 64)
    allowed = torch.tensor([OP_INDEX[name] for name in space])
    for round_ in rounds:
        seen = frequencies(round_.op, len(OPS))
        assert seen[allowed].sub(1 / 14).abs().max() < 0.01 and seen.sum() == pytest.approx(1.0)
        assert seen[OP_INDEX["Invert"]] == 0  # not in RandAugment's space
        for name, (values, signed) in space.items():
            picked = round_.magnitude[round_.op == OP_INDEX[name]]
            if values is None:
                assert (picked == 0).all()
                continue
            assert set(picked.abs().tolist()) == {float(values[9])}
            negative = (picked < 0).double().mean().item()
            assert (0.45 < negative < 0.55) if signed and values[9] != 0 else negative == 0
    assert not torch.equal(rounds[0].op, rounds[1].op)  # two independent operations per image


def test_trivialaugment_draws_one_operation_and_a_uniform_magnitude_bin():
    n = 31_000
    (round_,) = augment.trivial_augment_wide(n, torch.Generator().manual_seed(1), 64)
    seen = frequencies(round_.op, len(OPS))
    assert seen[OP_INDEX["Invert"]] == 0 and seen[:14].sub(1 / 14).abs().max() < 0.01  # Invert: not in its space
    values, _ = augment._wide_space(31, 64)["Rotate"]
    rotations = round_.magnitude[round_.op == OP_INDEX["Rotate"]].abs()
    bins = torch.bucketize(rotations, values.double(), right=False)
    assert frequencies(bins, 31).sub(1 / 31).abs().max() < 0.015
    assert rotations.max() == pytest.approx(135.0)


def test_autoaugment_follows_the_imagenet_policys_table():
    """Expected frequency of each operation: sum over the 25 sub-policies of P(sub-policy) x
    P(its step applies), for each of the two steps."""
    n = 50_000
    rounds = augment.auto_augment(n, torch.Generator().manual_seed(2), 64)
    # The two operations of an image come from one sub-policy: their joint frequencies, each
    # within 5 binomial standard deviations.
    expected = torch.zeros(len(OPS), len(OPS), dtype=torch.float64)
    for (first, p, _), (second, q, _) in augment.IMAGENET_POLICY:
        for a, pa in ((OP_INDEX[first], p), (0, 1 - p)):
            for b, pb in ((OP_INDEX[second], q), (0, 1 - q)):
                expected[a, b] += pa * pb / 25
    seen = frequencies(rounds[0].op * len(OPS) + rounds[1].op, len(OPS) ** 2).view(len(OPS), len(OPS))
    assert ((seen - expected).abs() <= 5 * (expected * (1 - expected) / n).sqrt() + 1e-9).all()
    # Magnitudes come from the policy's bins of 10: Rotate at bins 3, 8 and 9 of 0..30 degrees.
    rotations = set(rounds[1].magnitude[rounds[1].op == OP_INDEX["Rotate"]].abs().tolist()) | \
        set(rounds[0].magnitude[rounds[0].op == OP_INDEX["Rotate"]].abs().tolist())
    assert rotations == {float(torch.linspace(0.0, 30.0, 10)[k]) for k in (3, 8, 9)}


# ---------------------------------------------------------------- random erasing, MixUp, CutMix

def test_random_erasing_zeroes_torchvisions_box_with_its_defaults():
    n, p = 4000, 0.25
    boxes = augment.erasing_boxes(n, torch.Generator().manual_seed(3), 64, 64, p)
    top, left, h, w = boxes.unbind(1)
    erased = h > 0
    assert abs(erased.double().mean().item() - p) < 0.02
    area = (h * w)[erased].double() / (64 * 64)
    assert area.min() >= 0.015 and area.max() <= 0.34  # scale (0.02, 0.33), rounded to whole pixels
    assert ((top + h) <= 64).all() and ((left + w) <= 64).all() and (h[erased] < 64).all() and (w[erased] < 64).all()
    aspect = (h[erased].double() / w[erased].double()).log()
    assert aspect.min() > math.log(0.3) - 0.3 and aspect.max() < math.log(3.3) + 0.3
    x = torch.randn(8, 3, 64, 64)
    ours = augment.erase(x, boxes[:8])
    for image, result, (i, j, bh, bw) in zip(x, ours, boxes[:8].tolist()):
        assert torch.equal(result, TF.erase(image, i, j, bh, bw, torch.tensor(0.0)) if bh else image)


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixed_targets_sum_to_one_and_cutmix_targets_match_the_pasted_area(kind):
    x = torch.rand(16, 3, 64, 64)
    y = torch.arange(16) % 10
    mixing = Mixing(mixup=0.8 if kind == "mixup" else 0.0, cutmix=1.0 if kind == "cutmix" else 0.0, prob=1.0)
    mixed, targets = augment.mix(x, y, 10, mixing, torch.Generator().manual_seed(4), seed=5)
    assert targets.shape == (16, 10) and torch.allclose(targets.sum(1), torch.ones(16))
    own = targets[torch.arange(16), y]
    partner = targets[torch.arange(16), y.roll(1)]
    assert torch.allclose(own + partner, torch.ones(16)) and (own >= 0).all()
    if kind == "cutmix":  # lambda as torchvision adjusts it: 1 - the pasted box's share of the image
        from_partner = (mixed == x.roll(1, 0)).all(dim=1).double().mean(dim=(1, 2))
        assert torch.allclose(partner.double(), from_partner)
    else:
        lam = own[0].item()
        assert torch.allclose(mixed, x * lam + x.roll(1, 0) * (1 - lam), atol=1e-6)
    again = augment.mix(x, y, 10, mixing, torch.Generator().manual_seed(4), seed=5)
    assert torch.equal(again[0], mixed) and torch.equal(again[1], targets)  # a function of the seeds


def test_mixing_leaves_the_global_random_state_alone(monkeypatch):
    """torchvision's MixUp/CutMix draw from the global CPU generator: seeded for the step and
    restored after, and no GPU generator is touched (dropout on each rank draws from those)."""
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: pytest.fail("reseeded the GPUs"))
    x = torch.rand(4, 3, 8, 8)
    before = torch.get_rng_state()
    augment.mix(x, torch.arange(4), 5, Mixing(cutmix=1.0), torch.Generator(), seed=1)
    assert torch.equal(torch.get_rng_state(), before)


def test_a_batch_left_unmixed_gets_one_hot_targets():
    y = torch.arange(4)
    x, targets = augment.mix(torch.rand(4, 3, 8, 8), y, 5, Mixing(mixup=0.8, prob=0.0), torch.Generator(), seed=0)
    assert torch.equal(targets, torch.nn.functional.one_hot(y, 5).float())


def test_soft_targets_with_label_smoothing_are_mixed_with_the_uniform_distribution():
    logits, targets = torch.randn(4, 5), torch.softmax(torch.randn(4, 5), 1)
    updater = train.Updater(None, None, None, label_smoothing=0.1)
    expected = -(((1 - 0.1) * targets + 0.1 / 5) * torch.log_softmax(logits, 1)).sum(1).mean()
    assert updater.loss(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)


# ---------------------------------------------------------------- in the loader

EVERYTHING = Augmentation(policy="autoaugment", erase=0.5, mixing=Mixing(0.8, 1.0, 0.9, 0.5), repeat=3)


def split(n=48):
    g = torch.Generator().manual_seed(6)
    return torch.randint(0, 256, (n, 64, 64, 3), generator=g, dtype=torch.uint8), torch.arange(n) % 12


def test_repeated_augmentation_shows_each_image_k_times_in_an_epoch_of_the_same_length():
    x, y = split()
    loader = BatchLoader(x, torch.arange(48), 8, "cpu", train=True, seed=0, augmentation=Augmentation(repeat=3))
    loader.set_epoch(2)
    order = loader._order()
    assert len(order) == 48 and len(loader) == 6
    assert set(torch.bincount(order).tolist()) == {0, 3}  # 16 images, 3 times each
    seen = torch.cat([labels for _, labels in loader])  # (labels are the image indices here)
    assert torch.equal(seen.sort().values, order.sort().values)
    uneven = BatchLoader(x[:47], torch.arange(47), 8, "cpu", train=True, augmentation=Augmentation(repeat=3))
    assert sorted(torch.bincount(uneven._order()).tolist())[-16:] == [2] + [3] * 15  # 47 = 15 x 3 + 2: the cut


def test_every_draw_is_a_function_of_seed_epoch_and_step_and_two_ranks_split_one_batch():
    x, y = split()
    make = lambda **shard: BatchLoader(x, y, 8, "cpu", train=True, seed=3, augmentation=EVERYTHING,  # noqa: E731
                                       num_classes=12, **shard)
    whole, again, ranks = make(), make(), [make(rank=r, world_size=2) for r in range(2)]
    for loader in (whole, again, *ranks):
        loader.set_epoch(1)
    batches = list(whole)
    tail = list(again.iterate(start_step=3))
    for (xa, ya), (xb, yb) in zip(batches[3:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, ya), *shares in zip(batches, *ranks):
        assert torch.equal(torch.cat([xs for xs, _ in shares]), xa) and torch.equal(torch.cat([ys for _, ys in shares]), ya)
    assert batches[0][1].shape == (8, 12) and torch.allclose(batches[0][1].sum(1), torch.ones(8))
    whole.set_epoch(2)
    assert not torch.equal(next(iter(whole))[0], batches[0][0])


@pytest.mark.parametrize("augmentation", [Augmentation(erase=1.0), Augmentation(mixing=Mixing(0.8, 1.0, 0.5, 0.5)),
                                          Augmentation(erase=0.5, mixing=Mixing(0.8, 0.0, 0.5))])
def test_every_training_batch_has_the_evaluation_batches_layout_mixed_erased_or_not(augmentation):
    """torch.compile guards on an input's strides and on its being a view: every batch a step
    sees, erased or not, mixed or not, is laid out as normalize lays out an evaluation batch."""
    x, y = split()
    eval_x, _ = next(iter(BatchLoader(x, y, 8, "cpu")))
    loader = BatchLoader(x, y, 8, "cpu", train=True, seed=1, augmentation=augmentation, num_classes=12)
    batches = [batch for epoch in range(2) for batch in (loader.set_epoch(epoch), list(loader))[1]]
    layouts = {(xb.stride(), xb._base is not None, yb.stride(), yb.dtype) for xb, yb in batches}
    targets = ((12, 1), torch.float32) if augmentation.mixing.enabled else ((1,), torch.int64)
    assert layouts == {(eval_x.stride(), True, *targets)}
    if augmentation.mixing.enabled:  # both kinds were seen: one-hot targets (unmixed) and soft ones
        assert {bool((yb.max(dim=1).values == 1).all()) for _, yb in batches} == {True, False}


# ---------------------------------------------------------------- train.py's flags

def test_the_vit_recipe_sets_its_augmentation_and_an_explicit_policy_replaces_its_autoaugment():
    args = train_flags.parse_args(["--recipe", "vit-small-data", "--epochs", "20"])
    assert train_flags.augmentation_of(args) == Augmentation(policy="autoaugment", erase=0.25,
                                                       mixing=Mixing(0.8, 1.0, 1.0, 0.5), repeat=3)
    assert (args.batch_size, args.warmup_epochs, args.lr, args.weight_decay) == (128, 2.0, 1e-3, 0.05)
    assert train_flags.model_settings(train_flags.parse_args(["--recipe", "vit-small-data", "--model", "vit"])) == {"drop_path": "0.1"}
    assert train_flags.model_settings(train_flags.parse_args(["--recipe", "vit-small-data", "--model", "cnn"])) == {}
    mine = train_flags.parse_args(["--recipe", "vit-small-data", "--randaugment", "1,5", "--repeat-aug", "1"])
    assert train_flags.augmentation_of(mine).policy == "randaugment" and train_flags.augmentation_of(mine).randaugment == (1, 5)
    assert train_flags.augmentation_of(mine).repeat == 1
    assert train_flags.augmentation_of(train_flags.parse_args([])) == Augmentation()  # the notebook's: crop and flip only
    assert train_flags.augmentation_of(train_flags.parse_args(["--recipe", "vit-small-data", "--no-autoaugment"])).policy is None
    assert train_flags.parse_args(["--warmup-epochs", "25%", "--epochs", "8"]).warmup_epochs == 2.0


@pytest.mark.parametrize("flags,message", [
    (["--autoaugment", "--trivialaugment"], "give one augmentation policy"),
    (["--randaugment", "2"], "--randaugment takes N,M"),
    (["--randaugment", "2,31"], "M in [0, 30]"),
    (["--random-erase", "1.5"], "--random-erase must be in [0, 1]"),
    (["--mixup", "-1"], "--mixup must be a finite number >= 0"),
    (["--repeat-aug", "0"], "--repeat-aug must be at least 1"),
    (["--mixup", "nan"], "--mixup must be a finite number"),
    (["--warmup-epochs", "ten%"], "a percentage of --epochs such as 10%"),
])
def test_bad_augmentation_flags_are_one_line_and_exit_2(flags, message, capsys):
    with pytest.raises(SystemExit) as stop:
        train_flags.parse_args(flags)
    assert stop.value.code == 2 and message in capsys.readouterr().err
