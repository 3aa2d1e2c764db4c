"""robustness.py: the shift as docs/robustness.md defines it, the figures it reports, and its
outputs; and with --corruptions, Tiny-ImageNet-C's rows, CE, mCE and pictures (the corruptions
themselves: test_corruptions.py)."""
import csv
import gc
import json
import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import evaluate
import evaluation
import robustness
import train
from data import BatchLoader
from model import MODELS
from corruptions import CORRUPTIONS, corruption_summary
from robustness import FILLS, crop_offsets, shift_list, sweep, translate
from test_zoo import tiny


def one_white_pixel(y, x, size=64):
    image = torch.zeros(1, size, size, 3, dtype=torch.uint8)
    image[0, y, x] = 255
    return image


def white_pixels(image):
    return sorted(map(tuple, torch.nonzero(image[0, :, :, 0]).tolist()))


@pytest.mark.parametrize("fill", FILLS)
def test_a_white_pixel_moves_right_by_dx_and_down_by_dy(fill):
    assert white_pixels(translate(one_white_pixel(10, 20), 3, -2, fill)) == [(8, 23)]
    assert white_pixels(translate(one_white_pixel(10, 20), 0, 0, fill)) == [(10, 20)]


def test_what_enters_the_image_is_black_mirrored_or_wrapped_around():
    near_the_right_edge = one_white_pixel(5, 60)
    # Moved 3 left: the columns entering on the right show x = 64, 65, 66, i.e. black, the mirror
    # images 62, 61, 60 of the last columns, or the wrapped-around columns 0, 1, 2.
    assert white_pixels(translate(near_the_right_edge, -3, 0, "zero")) == [(5, 57)]
    assert white_pixels(translate(near_the_right_edge, -3, 0, "reflect")) == [(5, 57), (5, 63)]
    assert white_pixels(translate(near_the_right_edge, -3, 0, "circular")) == [(5, 57)]
    leaving = one_white_pixel(5, 62)  # moved 3 right, it leaves; only the circular fill brings it back
    assert white_pixels(translate(leaving, 3, 0, "zero")) == []
    assert white_pixels(translate(leaving, 3, 0, "circular")) == [(5, 1)]


@pytest.mark.parametrize("dx, dy", [(5, 0), (-7, 3), (16, -16), (-1, -1)])
def test_the_fills_are_f_pad_zero_reflect_and_torch_roll(dx, dy):
    images = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    chw = images.permute(0, 3, 1, 2).float()
    # Content moving right by dx is the image padded by dx on the left, cropped from the left.
    pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))  # left, right, top, bottom
    top, left = max(-dy, 0), max(-dx, 0)
    for fill, mode in (("zero", "constant"), ("reflect", "reflect")):
        expected = F.pad(chw, pad, mode=mode)[:, :, top : top + 64, left : left + 64]
        assert torch.equal(translate(images, dx, dy, fill).permute(0, 3, 1, 2).float(), expected), fill
    assert torch.equal(translate(images, dx, dy, "circular"), images.roll((dy, dx), dims=(1, 2)))


def test_each_image_can_have_its_own_shift():
    images = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)
    dx, dy = torch.tensor([0, 3, -2, 5]), torch.tensor([1, 0, -4, 5])
    together = translate(images, dx, dy, "reflect")
    for i in range(4):
        assert torch.equal(together[i], translate(images[i : i + 1], int(dx[i]), int(dy[i]), "reflect")[0])


def test_the_sweep_covers_six_directions_per_shift_and_zhangs_crops_stay_within_k():
    assert shift_list([4, 0, 1]) == [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1),
                                      (4, 0), (-4, 0), (0, 4), (0, -4), (4, 4), (-4, -4)]
    offsets = crop_offsets(5000, 4, seed=0)
    assert offsets.min() == -4 and offsets.max() == 4 and torch.equal(offsets, crop_offsets(5000, 4, seed=0))


class CircularlyInvariant(nn.Module):
    """A 1x1 conv and global average pooling (in float64, so sums in another order agree)."""

    def __init__(self, classes=5):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1).double()
        self.head = nn.Linear(8, classes).double()

    def forward(self, x):
        return self.head(self.conv(x.double()).mean(dim=(2, 3)))


def test_a_model_invariant_to_circular_shifts_keeps_its_accuracy_everywhere_and_is_fully_consistent():
    torch.manual_seed(0)
    x, y = torch.randint(0, 256, (40, 64, 64, 3), dtype=torch.uint8), torch.randint(0, 5, (40,))
    results, consistency = sweep(CircularlyInvariant(), x, y, torch.device("cpu"), None, [1, 4, 16], FILLS, 16)
    unshifted = results["circular", 0, 0]["top1"]
    for (fill, dx, dy), figures in results.items():
        if fill == "circular":
            assert figures["top1"] == unshifted and figures["agreement"] == 1.0 and figures["kl"] < 1e-9, (dx, dy)
    assert consistency["circular"] == 1.0
    assert results["zero", 16, 16]["agreement"] < 1.0  # black borders do change this model's predictions


def test_agreement_and_kl_are_computed_against_the_unshifted_prediction():
    torch.manual_seed(1)
    x, y = torch.randint(0, 256, (32, 64, 64, 3), dtype=torch.uint8), torch.randint(0, 5, (32,))
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 5))  # not shift-invariant at all
    results, _ = sweep(model, x, y, torch.device("cpu"), None, [8], ["zero"], 32)
    with torch.no_grad():
        base = model(robustness.normalize(x))
        moved = model(robustness.normalize(translate(x, 8, 0, "zero")))
    expected_kl = F.kl_div(moved.log_softmax(1), base.log_softmax(1), log_target=True, reduction="batchmean")
    figures = results["zero", 8, 0]
    assert figures["top1"] == pytest.approx((moved.argmax(1) == y).float().mean().item())
    assert figures["agreement"] == pytest.approx((moved.argmax(1) == base.argmax(1)).float().mean().item())
    assert figures["kl"] == pytest.approx(expected_kl.item(), rel=1e-5)


def test_consistency_compares_the_two_seeded_crops_of_each_image():
    torch.manual_seed(2)
    x, y = torch.randint(0, 256, (24, 64, 64, 3), dtype=torch.uint8), torch.randint(0, 5, (24,))
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 5))
    _, consistency = sweep(model, x, y, torch.device("cpu"), None, [], FILLS, 10, k=3, seed=7)
    offsets = crop_offsets(24, 3, seed=7)
    for fill in FILLS:
        with torch.no_grad():
            first = model(robustness.normalize(translate(x, offsets[:, 0], offsets[:, 1], fill))).argmax(1)
            second = model(robustness.normalize(translate(x, offsets[:, 2], offsets[:, 3], fill))).argmax(1)
        assert consistency[fill] == pytest.approx((first == second).float().mean().item())
    assert len(set(consistency.values())) > 1  # the fills differ


@pytest.mark.parametrize("name", MODELS)
def test_every_model_of_the_registry_sweeps(name):
    """Every model's sweep has a row per fill and shift; unshifted, evaluate.py's top-1 with full
    agreement and no divergence; shifted, the top-1, agreement and KL(unshifted || shifted) of
    the model's own outputs on the moved images (computed here in the sweep's batches of 3)."""
    torch.manual_seed(0)
    model, cpu = tiny(name).eval(), torch.device("cpu")
    x = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)

    def log_p(images):
        with torch.no_grad():
            return torch.cat([model(robustness.normalize(images[i : i + 3])).log_softmax(1) for i in (0, 3)])

    unshifted = log_p(x)
    y = torch.where(torch.arange(4) == 0, unshifted.argmax(1), (unshifted.argmax(1) + 1) % 5)  # 1 of 4 right: top-1 1/4
    results, consistency = sweep(model, x, y, cpu, None, [2], FILLS, 3)
    assert list(results) == [(fill, dx, dy) for fill in FILLS for dx, dy in shift_list([2])]
    evaluated = evaluation.evaluate(model, BatchLoader(x, y, 3, cpu), cpu)["top1"]
    assert evaluated == 0.25
    divergences = []
    for fill in FILLS:
        assert results[fill, 0, 0] == {"top1": evaluated, "agreement": 1.0, "kl": 0.0}, fill
        for dx, dy in ((2, 0), (-2, -2)):  # one horizontal and one diagonal shift per fill: quick enough
            moved = log_p(translate(x, dx, dy, fill))
            kl = F.kl_div(moved, unshifted, log_target=True, reduction="batchmean").item()
            assert results[fill, dx, dy] == pytest.approx({"top1": (moved.argmax(1) == y).float().mean().item(),
                                                          "agreement": (moved.argmax(1) == unshifted.argmax(1)).float().mean().item(),
                                                          "kl": kl}, rel=1e-4, abs=1e-9), (fill, dx, dy)
            divergences.append(kl)
            assert not torch.equal(moved, unshifted), (fill, dx, dy)  # the images did move
    # KL >= 0 up to float noise (a global-pooled convnet barely moves under a 2-pixel shift of noise)
    assert min(divergences) > -1e-6
    assert list(consistency) == list(FILLS) and all(0 <= value <= 1 for value in consistency.values())


@pytest.fixture(scope="module")
def tiny_run(prepared_once, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("robustness") / "run"
    assert train.main(["--data-dir", prepared_once, "--run-dir", str(run_dir), "--device", "cpu", "--epochs", "1",
                       "--batch-size", "16", "--embed-dim", "16", "--depth", "1"]) == 0
    return run_dir


def test_at_shift_0_the_accuracy_is_evaluate_pys_and_the_outputs_hold_every_row(tiny_run, tmp_path, capsys):
    out = {kind: str(tmp_path / f"shifts.{kind}") for kind in ("json", "csv", "png")}
    checkpoint = str(tiny_run / "best.pt")
    assert robustness.main([checkpoint, "--shifts", "0", "2", "--batch-size", "7", "--json", out["json"],
                            "--csv", out["csv"], "--plot", out["png"]]) == 0
    assert evaluate.main([checkpoint, "--batch-size", "7", "--json", str(tmp_path / "eval.json")]) == 0
    expected = json.load(open(tmp_path / "eval.json"))["top1"]
    rows = json.load(open(out["json"]))
    assert len(rows) == 3 * 7 + 3
    assert all({"checkpoint", "model", "fill", "dx", "dy", "top1", "agreement", "kl"} <= set(row) for row in rows[:21])
    unshifted = [row for row in rows if row["dx"] == 0 and row["dy"] == 0]
    assert [row["fill"] for row in unshifted] == list(FILLS)
    assert all(row["top1"] == expected and row["agreement"] == 1.0 and row["kl"] == 0.0 for row in unshifted)
    consistency = [row for row in rows if row["dx"] is None]
    assert [row["fill"] for row in consistency] == list(FILLS)
    assert all(row["dy"] is None and 0 <= row["consistency"] <= 1 and row["k"] == 4 for row in consistency)
    with open(out["csv"]) as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    with Image.open(out["png"]) as image:
        assert image.size[0] > 600
    printed = capsys.readouterr().out
    assert "consistency (k=4)" in printed and "cvt-simplified" in printed


def test_limit_takes_the_first_images_and_bad_inputs_are_one_line(tiny_run, tmp_path, capsys):
    checkpoint = str(tiny_run / "best.pt")
    assert robustness.main([checkpoint, "--shifts", "1", "--fill", "zero", "--limit", "5", "--json", str(tmp_path / "r.json")]) == 0
    assert {row["images"] for row in json.load(open(tmp_path / "r.json"))} == {5}
    capsys.readouterr()
    assert robustness.main([str(tmp_path / "missing.pt")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: no checkpoint at")
    for argv in (["--shifts", "64"], ["--limit", "0"], ["--fill", "wrap"]):
        with pytest.raises(SystemExit) as exit:
            robustness.parse_args([checkpoint, *argv])
        assert exit.value.code == 2


def test_checkpoints_are_swept_one_model_at_a_time_over_one_shared_copy_of_the_split(tiny_run, monkeypatch):
    """Memory does not grow with the number of checkpoints: when a sweep starts, the models of
    the checkpoints before it are gone, and every sweep gets the same images."""
    built, swept = [], []
    real_build, real_sweep = robustness.model_from_checkpoint, robustness.sweep

    def build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        built.append(weakref.ref(model))
        return model

    def sweep(model, x, y, *args, **kwargs):
        gc.collect()
        swept.append((sum(ref() is not None for ref in built), x))
        return real_sweep(model, x, y, *args, **kwargs)

    monkeypatch.setattr(robustness, "model_from_checkpoint", build)
    monkeypatch.setattr(robustness, "sweep", sweep)
    checkpoints = [str(tiny_run / name) for name in ("best.pt", "last.pt", "best.pt")]
    assert robustness.main([*checkpoints, "--shifts", "1", "--fill", "zero", "--limit", "4"]) == 0
    assert [alive for alive, _ in swept] == [1, 1, 1]
    assert all(x is swept[0][1] for _, x in swept)


# ---------------------------------------------------------------- common corruptions


def test_corruptions_give_a_row_per_setting_and_a_clean_row_equal_to_evaluate_pys(tiny_run, tmp_path, capsys):
    out = {kind: str(tmp_path / f"c.{kind}") for kind in ("json", "csv", "png")}
    checkpoint = str(tiny_run / "best.pt")
    assert robustness.main([checkpoint, "--corruptions", "all", "--severities", "1", "5", "--limit", "8",
                            "--json", out["json"], "--csv", out["csv"], "--plot", out["png"],
                            "--show", str(tmp_path / "grid.png")]) == 0
    assert evaluate.main([checkpoint, "--json", str(tmp_path / "eval.json")]) == 0
    rows = json.load(open(out["json"]))
    assert [(row["corruption"], row["severity"]) for row in rows] == [("clean", 0)] + [
        (name, severity) for name in CORRUPTIONS for severity in (1, 5)]
    assert all(row["error"] == pytest.approx(1 - row["top1"]) and row["images"] == 8 for row in rows)
    assert robustness.main([checkpoint, "--corruptions", "contrast", "--severities", "1", "--json", out["json"]]) == 0
    assert json.load(open(out["json"]))[0]["top1"] == json.load(open(tmp_path / "eval.json"))["top1"]  # the whole split
    with open(out["csv"]) as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    for picture in (out["png"], str(tmp_path / "grid.png")):
        with Image.open(picture) as image:
            assert image.size[0] > 300
    printed = capsys.readouterr().out
    assert "mean CE (unnormalised)" in printed and "gaussian_noise" in printed


def test_mce_and_relative_mce_follow_the_papers_definitions():
    def rows(clean, errors):
        return [{"corruption": "clean", "severity": 0, "top1": 1 - clean}] + [
            {"corruption": name, "severity": s, "top1": 1 - e} for name, values in errors.items() for s, e in enumerate(values, 1)]

    model = rows(0.2, {"fog": [0.3, 0.5], "snow": [0.4, 0.4]})
    baseline = rows(0.4, {"fog": [0.6, 0.8], "snow": [0.5, 0.7]})
    summary = corruption_summary(model, baseline)
    assert summary["ce"] == {"fog": pytest.approx(0.4), "snow": pytest.approx(0.4)} and summary["mean_ce"] == pytest.approx(0.4)
    assert summary["normalised_ce"] == {"fog": pytest.approx(0.8 / 1.4), "snow": pytest.approx(0.8 / 1.2)}
    assert summary["mce"] == pytest.approx((0.8 / 1.4 + 0.8 / 1.2) / 2)
    # relative: sum over severities of (E - E_clean), over the baseline's
    assert summary["relative_mce"] == pytest.approx(((0.1 + 0.3) / (0.2 + 0.4) + (0.2 + 0.2) / (0.1 + 0.3)) / 2)
    assert corruption_summary(baseline, baseline)["mce"] == pytest.approx(1.0)


def test_a_baseline_normalises_and_bad_corruption_flags_are_one_line(tiny_run, capsys):
    checkpoint = str(tiny_run / "best.pt")
    assert robustness.main([checkpoint, "--corruptions", "fog", "--severities", "2", "--limit", "8",
                            "--baseline", checkpoint]) == 0
    assert "mCE 100.0%, relative mCE 100.0%" in capsys.readouterr().out
    for flags in (["--corruptions", "fgo"], ["--corruptions", "fog", "--shifts", "1"], ["--baseline", checkpoint],
                  ["--corruptions", "fog", "--severities", "6"]):
        with pytest.raises(SystemExit) as exit_info:
            robustness.main([checkpoint, *flags])
        assert exit_info.value.code == 2
        assert ": error: --" in capsys.readouterr().err.strip().splitlines()[-1]
