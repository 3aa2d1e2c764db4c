"""data.py: the notebook's labels, split and transforms, reproduced exactly; the batch loader."""
import os

import pytest
import torch
import torchvision.transforms.functional as TF
from conftest import needs_mini_zip
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.data import random_split
from torchvision import datasets

from benchmarks.notebook import VAL_TRANSFORMS, notebook_datasets
from constants import MEAN, STD
from data import BatchLoader, ResolutionSchedule, load_packed, make_splits, normalize, random_crop_flip, split_indices
from errors import DataError


@pytest.mark.parametrize("n", [5, 7, 40, 2000, 10000])
def test_split_is_random_split_of_the_notebook(n):
    generator = torch.Generator().manual_seed(42)
    val_size = int(0.2 * n)
    val, test = random_split(range(n), [val_size, n - val_size], generator=generator)
    ours_val, ours_test = split_indices(n)
    assert ours_val.tolist() == list(val.indices) and ours_test.tolist() == list(test.indices)


def assert_same_as_notebook(data_dir):
    """Labels, order, split and normalised pixels equal ImageFolder + random_split's."""
    data = load_packed(data_dir)
    root = os.path.join(data_dir, "tiny-imagenet-200")
    train, val, test = notebook_datasets(root)
    assert data.classes == train.classes
    assert data.train_y.tolist() == train.targets
    for ours, theirs in ((data.val_y[split_indices(len(data.val_y))[0]], val), (data.val_y[split_indices(len(data.val_y))[1]], test)):
        assert ours.tolist() == [theirs.dataset.targets[i] for i in theirs.indices]
    splits = make_splits(data)
    for name, subset in (("val", val), ("test", test)):
        x, y = next(iter(BatchLoader(*splits[name], batch_size=len(subset), device="cpu")))
        expected = torch.stack([subset[i][0] for i in range(len(subset))])
        assert torch.allclose(x, expected, atol=1e-5), name
        assert y.tolist() == [subset[i][1] for i in range(len(subset))]
    # Training pixels without augmentation: ToTensor + Normalize of ImageFolder's RGB image.
    plain = datasets.ImageFolder(os.path.join(root, "train"), transform=VAL_TRANSFORMS)
    for i in (0, len(plain) // 2, len(plain) - 1):
        assert torch.allclose(normalize(data.train_x[i : i + 1])[0], plain[i][0], atol=1e-5)


def test_labels_split_and_pixels_match_imagefolder(prepared_once):
    assert_same_as_notebook(prepared_once)


@needs_mini_zip
def test_labels_split_and_pixels_match_imagefolder_on_real_data(mini_prepared):
    assert_same_as_notebook(mini_prepared)


def test_normalize_is_totensor_then_normalize():
    x = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    expected = torch.stack([TF.normalize(TF.to_tensor(img.numpy()), MEAN, STD) for img in x])
    assert torch.allclose(normalize(x), expected, atol=1e-6)


class OpsOffTheBatch(TorchDispatchMode):
    """Records every aten op none of whose tensor inputs comes from `batch`: a tensor made or
    derived from constants (torch.tensor, repeat, a division, a copy to the device...)."""

    def __init__(self, batch):
        super().__init__()
        self.from_batch = [batch]  # (held, so that no id is reused)
        self.off_batch = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        if any(a is b for a in inputs for b in self.from_batch):
            self.from_batch += [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        else:
            self.off_batch.append(func)
        return out


def test_normalize_builds_no_tensor_per_batch():
    """(x / 255 - mean) / std with the notebook's values, from constants made once per device: a
    tensor built from Python numbers on every batch would be a host-to-device copy (a sync) on
    CUDA. So after the first batch every op normalize runs takes the batch or what came of it."""
    x = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    mean = torch.tensor([0.4802, 0.4481, 0.3975]).view(1, 3, 1, 1)  # the notebook's transforms.Normalize
    std = torch.tensor([0.2302, 0.2265, 0.2262]).view(1, 3, 1, 1)
    normalize(x)  # the first batch on a device may build the constants
    with OpsOffTheBatch(x) as ops:
        out = normalize(x)
    assert ops.off_batch == [] and any(out is t for t in ops.from_batch)  # (the mode saw the work)
    assert torch.allclose(out, (x.permute(0, 3, 1, 2).float() / 255 - mean) / std, atol=1e-5)


def test_crop_flip_matches_torchvision_per_image():
    """Each augmented image is torchvision's pad(4) + crop + optional hflip at the drawn offsets."""
    x = torch.randint(0, 256, (32, 64, 64, 3), dtype=torch.uint8)
    out = random_crop_flip(x, torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)  # replay the same draws
    dy = torch.randint(0, 9, (32, 1), generator=generator)
    dx = torch.randint(0, 9, (32, 1), generator=generator)
    flip = torch.rand(32, 1, generator=generator) < 0.5
    assert 0 < flip.sum() < 32
    for i in range(32):
        image = TF.pad(x[i].permute(2, 0, 1), [4], fill=0)
        image = TF.crop(image, int(dy[i]), int(dx[i]), 64, 64)
        image = TF.hflip(image) if flip[i] else image
        assert torch.equal(out[i].permute(2, 0, 1), image), i


def test_crop_flip_draws_every_offset_and_flips_half():
    x = torch.zeros(4000, 64, 64, 3, dtype=torch.uint8)
    x[:, 0, 0] = 255  # a marker pixel: where it lands tells the offset and the flip
    out = random_crop_flip(x, torch.Generator().manual_seed(0))
    positions = (out[..., 0] == 255).flatten(1).float().argmax(1)
    rows, cols = positions // 64, positions % 64
    visible = out[..., 0].flatten(1).amax(1) == 255
    flipped = (cols > 32) & visible
    assert 0.4 < flipped.float().sum() / visible.sum() < 0.6
    assert set(rows[visible].tolist()) == set(range(5))  # offsets 0..4 keep the pixel in view
    assert (out.sum((1, 2, 3)) <= 3 * 255).all()  # nothing but the marker and zero padding


def tiny_split(n=50):
    return torch.randint(0, 256, (n, 64, 64, 3), dtype=torch.uint8), torch.arange(n)


def test_training_epochs_cover_each_image_once_and_differ():
    x, y = tiny_split()
    loader = BatchLoader(x, y, batch_size=8, device="cpu", train=True, seed=0)
    assert len(loader) == 6  # the last partial batch is dropped for training
    loader.set_epoch(0)
    first = torch.cat([labels for _, labels in loader])
    loader.set_epoch(1)
    second = torch.cat([labels for _, labels in loader])
    assert len(set(first.tolist())) == 48 and len(set(second.tolist())) == 48
    assert first.tolist() != second.tolist()


def test_loader_is_reproducible_and_resumable_mid_epoch():
    x, y = tiny_split()
    batches = [BatchLoader(x, y, 8, "cpu", train=True, seed=5) for _ in range(2)]
    for loader in batches:
        loader.set_epoch(3)
    full = list(batches[0])
    tail = list(batches[1].iterate(start_step=4))
    assert len(tail) == 2
    for (xa, ya), (xb, yb) in zip(full[4:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other_seed = BatchLoader(x, y, 8, "cpu", train=True, seed=6)
    assert not torch.equal(next(iter(other_seed))[1], full[0][1])


def test_evaluation_keeps_the_last_partial_batch_in_order():
    x, y = tiny_split()
    loader = BatchLoader(x, y, batch_size=8, device="cpu")
    labels = [batch_y for _, batch_y in loader]
    assert len(loader) == 7 and len(labels[-1]) == 2
    assert torch.cat(labels).tolist() == list(range(50))
    first_x, _ = next(iter(loader))
    assert torch.equal(first_x, normalize(x[:8]))  # no augmentation


def test_more_ranks_than_images_give_empty_evaluation_shards_and_every_image_once():
    x, y = tiny_split()
    shards = [BatchLoader(x[:3], y[:3], 8, "cpu", rank=rank, world_size=4) for rank in range(4)]
    assert [len(shard) for shard in shards] == [1, 1, 1, 0] and list(shards[3]) == []
    assert torch.cat([labels for shard in shards for _, labels in shard]).tolist() == y[:3].tolist()


def test_load_packed_without_prepared_data_names_the_command(tmp_path):
    with pytest.raises(DataError, match="python prepare_data.py --data-dir"):
        load_packed(str(tmp_path))


def test_packed_arrays_are_memory_mapped(prepared_once):
    data = load_packed(prepared_once)
    assert data.train_x.dtype == torch.uint8 and data.train_x.shape[1:] == (64, 64, 3)
    assert data.train_y.dtype == torch.int64


def test_progressive_resizing_is_a_pure_function_of_the_step_and_each_batch_keeps_the_layout():
    schedule = ResolutionSchedule(ResolutionSchedule.parse("32:50%,48:75%"), total_steps=8)
    assert [schedule(step) for step in range(10)] == [32] * 4 + [48] * 2 + [64] * 4
    for bad in ("32", "32:0%", "64:50%", "32:60%,48:50%", "x:10%"):
        with pytest.raises(ValueError):
            ResolutionSchedule.parse(bad)
    x, y = tiny_split()
    loader = BatchLoader(x, y, 8, "cpu", train=True, seed=1)  # 6 steps an epoch
    loader.resolution = ResolutionSchedule(((32, 0.5),), total_steps=2 * len(loader))
    sides = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        for batch, _ in loader:
            assert batch.shape[:2] == (8, 3) and batch.shape[2] == batch.shape[3]
            assert batch.is_contiguous(memory_format=torch.channels_last) and batch._base is not None
            sides.append(batch.shape[-1])
    assert sides == [32] * 6 + [64] * 6
    loader.set_epoch(0)
    full = next(iter(BatchLoader(x, y, 8, "cpu", train=True, seed=1)))[0]
    small = torch.nn.functional.interpolate(full, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    assert torch.allclose(next(iter(loader))[0], small)  # the same crop and flip, then resized
