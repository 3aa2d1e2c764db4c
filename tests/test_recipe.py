"""Training recipes: presets and overrides, the lr schedule, weight decay groups, label
smoothing, gradient clipping, EMA, and exact resume of all of it."""
import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

import curves
import evaluate
import runs
import train
import train_flags
from conftest import assert_resumes_exactly, assert_same_training_state, signal_during_training
from model import CvTConfig, CvTSimplifiedEmbedding, build_model
from recipe import EMA, PRESETS, LRSchedule, Updater, build_optimizer

FAST = ["--batch-size", "16", "--eval-batch-size", "16", "--log-every", "2", "--device", "cpu"]
# Every recipe feature on at once, augmentation included; warm-up and cosine both inside a
# 2-epoch run of 6 steps each.
FULL_RECIPE = ["--optimizer", "adamw", "--lr", "3e-3", "--weight-decay", "0.05", "--lr-schedule", "cosine",
               "--warmup-epochs", "0.5", "--min-lr", "1e-5", "--label-smoothing", "0.1", "--grad-clip", "0.5",
               "--ema-decay", "0.9", "--randaugment", "2,9", "--random-erase", "0.5", "--mixup", "0.8",
               "--cutmix", "1.0", "--mix-prob", "0.9", "--mix-switch-prob", "0.5", "--repeat-aug", "3"]


def load(path):
    return torch.load(path, weights_only=True)


def tiny_model():
    torch.manual_seed(0)
    return CvTSimplifiedEmbedding(CvTConfig(num_classes=3, embed_dim=8, dropout=0.0))


# ---------------------------------------------------------------- presets and flags


def test_the_default_recipe_is_the_notebooks():
    args = train_flags.parse_args([])
    assert (args.recipe, args.optimizer, args.lr, args.weight_decay, args.lr_schedule) == ("seed", "adam", 1e-3, 0.0, "constant")
    assert args.warmup_epochs == 0 and args.label_smoothing == 0 and args.grad_clip == 0 and args.ema_decay == 0
    assert (args.batch_size, args.epochs, args.model) == (64, 10, "cvt-simplified")


def test_the_study_preset_and_explicit_flags_override_it():
    study = train_flags.parse_args(["--recipe", "study"])
    assert (study.optimizer, study.lr, study.weight_decay, study.label_smoothing) == ("adamw", 1e-4, 1e-3, 0.1)
    assert (study.lr_schedule, study.warmup_epochs, study.min_lr) == ("cosine", 5, 1e-6)
    overridden = train_flags.parse_args(["--recipe", "study", "--lr", "3e-4", "--label-smoothing", "0"])
    assert overridden.lr == 3e-4 and overridden.label_smoothing == 0
    assert overridden.optimizer == "adamw" and overridden.weight_decay == 1e-3  # the rest stays the preset's
    assert train_flags.parse_args(["--recipe", "improved"]).lr == PRESETS["improved"]["lr"]


@pytest.mark.parametrize("flags", [
    ["--label-smoothing", "1"], ["--ema-decay", "1"], ["--ema-decay", "-0.1"], ["--grad-clip", "-1"],
    ["--warmup-epochs", "-1"], ["--min-lr", "0.1"], ["--weight-decay", "-1"], ["--recipe", "best"],
    ["--lr-schedule", "step"],
])
def test_invalid_recipe_flags_exit_2(flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_flags.parse_args(flags)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--warmup-epochs", "2", "--epochs", "2"], ["--warmup-epochs", "100%"],
                                   ["--recipe", "study", "--warmup-epochs", "3", "--epochs", "3"]])
def test_a_warmup_given_that_would_not_end_before_the_run_is_one_line(flags, capsys):
    """A warm-up asked for is never changed behind the user's back (a recipe's own is cut to fit)."""
    with pytest.raises(SystemExit) as exit_info:
        train_flags.parse_args(flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "does not end before the run does" in err[0]
    assert train_flags.parse_args(["--recipe", "study", "--epochs", "30"]).warmup_epochs == 5  # the recipe's, uncut


# ---------------------------------------------------------------- the pieces


def test_linear_schedule_goes_straight_from_lr_to_min_lr_at_the_last_step():
    schedule = LRSchedule("linear", lr=0.4, min_lr=0.0, warmup_steps=10, total_steps=110)
    assert schedule(0) == 0.0 and schedule(10) == pytest.approx(0.4)
    assert schedule(35) == pytest.approx(0.3) and schedule(60) == pytest.approx(0.2) and schedule(85) == pytest.approx(0.1)
    assert schedule(110) == 0.0 and schedule(500) == 0.0
    assert LRSchedule("linear", 1e-3, 1e-5, 0, 100)(50) == pytest.approx((1e-3 + 1e-5) / 2)


def test_sgd_is_nesterov_with_l2_decay_on_the_weights_and_resumes_exactly(prepared_once, tmp_path, monkeypatch):
    model = build_model("convnet", 5, channels=(8, 16))
    optimizer = build_optimizer(model, "sgd", 0.1, 5e-4, torch.device("cpu"))
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["nesterov"] and optimizer.defaults["momentum"] == 0.9
    assert [group["weight_decay"] for group in optimizer.param_groups] == [5e-4, 0.0]
    flags = [*FAST, "--model", "convnet", "--channels", "8,16", "--optimizer", "sgd", "--lr", "0.05", "--weight-decay", "5e-4",
             "--lr-schedule", "linear", "--min-lr", "0", "--epochs", "2"]
    assert_resumes_exactly(monkeypatch, prepared_once, tmp_path, flags, epoch=1, step=2)


def test_a_run_stopped_in_its_low_resolution_phase_resumes_exactly_across_the_switch(prepared_once, tmp_path, monkeypatch):
    """--low-res: 32 px for the first half of the steps, then 64; stopped at step 2 (32 px),
    resumed, it equals the straight run, whose test ran at 64 px."""
    flags = [*FAST, "--embed-dim", "16", "--depth", "1", "--low-res", "32:50%", "--epochs", "2"]
    assert_resumes_exactly(monkeypatch, prepared_once, tmp_path, flags, epoch=0, step=2)
    assert json.load(open(tmp_path / "r" / "config.json"))["low_res"] == "32:50%"


@pytest.mark.parametrize("model", ["vit", "cnn"])
def test_low_res_for_a_model_sized_for_64_pixels_is_one_line(model, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_flags.parse_args(["--model", model, "--low-res", "32:50%"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and f"{model} takes only 64x64 images, not 32x32" in err[0]


def test_a_recipes_progressive_resizing_is_left_out_with_a_note_for_a_model_sized_for_64_pixels():
    """speedrun's 32/48 px phases are its default, not a demand: --model vit under it trains at 64
    px and says so (the study's grid crosses every model with every recipe); the convnet keeps them."""
    args = train_flags.parse_args(["--recipe", "speedrun", "--model", "vit"])
    assert args.low_res == "" and args.recipe_defaults["low_res"] == ""
    assert args.notes == ["vit takes only 64x64 images: recipe speedrun's progressive resizing (32:90%) is left out"]
    assert train_flags.parse_args(["--recipe", "speedrun"]).low_res == "32:90%"


def test_warmup_then_cosine_schedule():
    schedule = LRSchedule("cosine", lr=1e-3, min_lr=1e-6, warmup_steps=10, total_steps=110)
    assert schedule(0) == pytest.approx(1e-6)  # warm-up starts at min_lr ...
    assert schedule(5) == pytest.approx((1e-6 + 1e-3) / 2)
    assert schedule(10) == pytest.approx(1e-3)  # ... reaches lr ...
    assert schedule(60) == pytest.approx((1e-3 + 1e-6) / 2)  # ... halfway down the cosine ...
    assert schedule(110) == pytest.approx(1e-6) and schedule(500) == pytest.approx(1e-6)  # ... ends at min_lr
    lrs = [schedule(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    all_warmup = LRSchedule("cosine", lr=1e-3, min_lr=1e-6, warmup_steps=10, total_steps=10)
    assert all_warmup(9) == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.9) and all_warmup(10) == pytest.approx(1e-6)
    constant = LRSchedule("constant", lr=1e-3, min_lr=0.0, warmup_steps=4, total_steps=100)
    assert [constant(s) for s in (0, 2, 4, 99)] == pytest.approx([0, 5e-4, 1e-3, 1e-3])


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_weight_decay_spares_biases_and_norm_weights(name):
    """With zero gradients, only decay moves the weights: matrices and kernels shrink, 1-D
    parameters (biases, LayerNorm weights) do not move."""
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, name, lr=0.1, weight_decay=0.5, device=torch.device("cpu"))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for n, p in model.named_parameters():
        if p.ndim >= 2:
            assert not torch.equal(p, before[n]), n
            if name == "adamw":  # decoupled: p <- p (1 - lr wd)
                torch.testing.assert_close(p, before[n] * (1 - 0.1 * 0.5))
        else:
            assert torch.equal(p, before[n]), n
    assert any("norm" in n for n, p in model.named_parameters() if p.ndim < 2)


def test_label_smoothing_loss():
    logits, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    smoothing = 0.1
    log_p = logits.log_softmax(1)
    expected = (1 - smoothing) * F.nll_loss(log_p, y) - smoothing * log_p.mean(1).mean()
    updater = Updater(None, None, None, label_smoothing=smoothing)
    assert updater.loss(logits, y).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("clip", [0.0, 1e-3])
def test_gradient_clipping_bounds_the_gradient_norm(clip):
    model = tiny_model()
    optimizer = build_optimizer(model, "adamw", 1e-3, 0.0, torch.device("cpu"))
    updater = Updater(optimizer, torch.amp.GradScaler("cpu", enabled=False), LRSchedule("constant", 1e-3, 0, 0, 1), grad_clip=clip)
    updater.train_step(model, torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 0]), 0, torch.device("cpu"), None)
    norm = torch.norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    if clip:
        assert norm <= clip * 1.001
    else:
        assert norm > 1e-2  # unclipped: the real gradient


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_gradient_accumulation_updates_as_the_whole_batch_does_whatever_the_chunks(clip):
    """Updater.train_step with accumulate N: the batch's forward and backward in N chunks, one
    update (clipped, when on, after the chunks are summed); the same weights, logits and mean loss
    as the whole batch at once (fp32, no BatchNorm or dropout), also when 7 images split 3/2/2.
    (SGD: Adam would scale up the float noise of the attention's key bias, whose exact gradient
    is zero; see test_distributed.)"""
    x, y = torch.randn(7, 3, 64, 64), torch.tensor([0, 1, 2, 0, 1, 2, 0])

    def train(accumulate):
        model = tiny_model()
        updater = Updater(build_optimizer(model, "sgd", 0.1, 5e-4, torch.device("cpu")),
                          torch.amp.GradScaler("cpu", enabled=False), LRSchedule("constant", 0.1, 0, 0, 1),
                          label_smoothing=0.1, grad_clip=clip, accumulate=accumulate)
        results = [updater.train_step(model, x, y, step, torch.device("cpu"), None) for step in range(3)]
        return model.state_dict(), results[-1]

    whole, (logits, loss, _) = train(1)
    for accumulate in (2, 3):
        weights, (chunked_logits, chunked_loss, _) = train(accumulate)
        assert chunked_logits.shape == logits.shape and torch.allclose(chunked_logits, logits, atol=1e-5)
        assert chunked_loss.item() == pytest.approx(loss.item(), rel=1e-5)
        for key, value in whole.items():
            assert torch.allclose(weights[key], value, atol=1e-5), (accumulate, key)


def test_grad_accum_2_at_batch_8_trains_as_batch_16_records_it_and_resumes_exactly(prepared_once, tmp_path, monkeypatch):
    """train.py --grad-accum: the loader's batch is N x --batch-size (the same images, order and
    augmentation as the whole batch); a run stopped mid-epoch resumes exactly, and its weights are
    those of the whole batch; config.json records both numbers."""
    common = ["--eval-batch-size", "16", "--device", "cpu", "--no-amp", "--dropout", "0", "--epochs", "1",
              "--optimizer", "sgd", "--lr", "0.05"]  # (SGD: see the test above)
    assert_resumes_exactly(monkeypatch, prepared_once, tmp_path, [*common, "--batch-size", "8", "--grad-accum", "2"],
                           epoch=0, step=2)
    assert train.main(["--data-dir", prepared_once, *common, "--batch-size", "16", "--run-dir", str(tmp_path / "whole")]) == 0
    whole, chunks = (torch.load(tmp_path / run / "last.pt", weights_only=True) for run in ("whole", "straight"))
    assert whole["progress"]["step"] == chunks["progress"]["step"] == 96 // 16  # optimizer steps, not chunks
    for key, value in whole["model"].items():
        assert torch.allclose(chunks["model"][key], value, atol=1e-5), key
    config = json.load(open(tmp_path / "r" / "config.json"))
    assert (config["batch_size"], config["grad_accum"]) == (8, 2)
    older = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)  # as a run from before --grad-accum saved it
    del older["config"]["grad_accum"]
    torch.save(older, tmp_path / "older.pt")
    assert train.main(["--resume", str(tmp_path / "older.pt"), "--grad-accum", "2", "--epochs", "2", "--device", "cpu"]) == 2


def test_ema_follows_the_weights_with_a_ramped_decay():
    model = tiny_model()
    ema = EMA(model, decay=0.99)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update()  # first update: decay min(0.99, 2/11)
    decay = 2 / 11
    for averaged, before, now in zip(ema.module.parameters(), start, model.parameters()):
        torch.testing.assert_close(averaged, decay * before + (1 - decay) * now)
    for _ in range(2000):
        ema.update()  # weights no longer move: the average converges to them
    for averaged, now in zip(ema.module.parameters(), model.parameters()):
        torch.testing.assert_close(averaged, now)
    assert ema.updates == 2001 and not any(p.requires_grad for p in ema.module.parameters())


# ---------------------------------------------------------------- through train.py


@pytest.fixture(scope="module")
def full_recipe_run(prepared_once, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full") / "r"
    assert train.main(["--data-dir", prepared_once, "--run-dir", str(run_dir), *FAST, "--epochs", "2", *FULL_RECIPE]) == 0
    return run_dir


def test_the_lr_follows_the_schedule_step_by_step(prepared_once, tmp_path, monkeypatch):
    """The lr of every optimizer step of a real 2-epoch run (6 steps an epoch), against values
    worked out by hand: warm-up 0.5 epoch = 3 steps from 1e-5 to 3e-3, then a half cosine over
    the remaining 9 steps down to 1e-5."""
    seen = []
    original_update = Updater.update

    def update(self, global_step):
        skipped = original_update(self, global_step)
        seen.append(self.optimizer.param_groups[0]["lr"])
        return skipped

    monkeypatch.setattr(Updater, "update", update)
    run_dir = tmp_path / "r"
    assert train.main(["--data-dir", prepared_once, "--run-dir", str(run_dir), *FAST, "--epochs", "2", *FULL_RECIPE]) == 0
    low, peak = 1e-5, 3e-3
    warmup = [low, low + (peak - low) / 3, low + 2 * (peak - low) / 3]
    cosine = [low + (peak - low) * (1 + math.cos(math.pi * k / 9)) / 2 for k in range(9)]
    assert seen == pytest.approx(warmup + cosine, rel=1e-9)
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert [float(r["lr"]) for r in rows] == pytest.approx([seen[5], seen[11]])  # the lr of each epoch's last step
    assert load(run_dir / "last.pt")["schedule"] == {"kind": "cosine", "lr": 3e-3, "min_lr": 1e-5,
                                                     "warmup_steps": 3, "total_steps": 12}


def test_ema_weights_are_evaluated_checkpointed_and_used_by_evaluate(full_recipe_run, tmp_path, capsys):
    checkpoint = load(full_recipe_run / "last.pt")
    assert checkpoint["ema"]["updates"] == 12
    assert any(not torch.equal(checkpoint["ema"]["model"][k], v) for k, v in checkpoint["model"].items())
    reported = json.load(open(full_recipe_run / "test_metrics.json"))["final"]
    ema_json, raw_json = tmp_path / "ema.json", tmp_path / "raw.json"
    assert evaluate.main([str(full_recipe_run / "last.pt"), "--json", str(ema_json)]) == 0
    assert evaluate.main([str(full_recipe_run / "last.pt"), "--no-ema", "--json", str(raw_json)]) == 0
    ema, raw = json.load(open(ema_json)), json.load(open(raw_json))
    assert (ema["weights"], raw["weights"]) == ("ema", "trained")
    assert ema["loss"] == pytest.approx(reported["loss"], abs=1e-5) and ema["top1"] == reported["top1"]
    assert raw["loss"] != pytest.approx(ema["loss"], abs=1e-6)


def test_resume_mid_epoch_with_every_recipe_feature_equals_a_straight_run(prepared_once, full_recipe_run, tmp_path, monkeypatch, capsys):
    """Stopped during the warm-up of epoch 1 and resumed with no recipe flags: the saved
    settings, schedule position, EMA and optimizer state make it bit-identical."""
    run_dir = tmp_path / "r"
    with monkeypatch.context() as patch:
        signal_during_training(patch, epoch=0, step=1)
        assert train.main(["--data-dir", prepared_once, "--run-dir", str(run_dir), *FAST, "--epochs", "2", *FULL_RECIPE]) == 130
    assert load(run_dir / "last.pt")["progress"]["step_in_epoch"] == 2
    assert train.main(["--resume", str(run_dir / "last.pt"), "--device", "cpu"]) == 0
    assert_same_training_state(load(full_recipe_run / "last.pt"), load(run_dir / "last.pt"))
    config = json.load(open(run_dir / "config.json"))
    assert config["lr"] == 3e-3 and config["ema_decay"] == 0.9 and config["batch_size"] == 16


def test_resume_refuses_changed_recipe_flags_and_accepts_more_epochs(full_recipe_run, tmp_path, capsys):
    assert train.main(["--resume", str(full_recipe_run / "last.pt"), "--lr", "1e-2", "--label-smoothing", "0"]) == 2
    err = capsys.readouterr().err
    assert "--lr 0.01 (the run has 0.003)" in err and "--label-smoothing 0.0 (the run has 0.1)" in err
    run_dir = tmp_path / "more"
    assert train.main(["--resume", str(full_recipe_run / "last.pt"), "--epochs", "3", "--run-dir", str(run_dir)]) == 0
    assert "the lr schedule now spans 3 epochs (it was 2)" in capsys.readouterr().out
    assert load(run_dir / "last.pt")["schedule"]["total_steps"] == 18


def test_presets_run_end_to_end(prepared_once, tmp_path, capsys):
    """In a 1-epoch run the recipes' warm-ups (5 epochs, 1 epoch) would never end: each is cut to
    10% of the run, said in one line and recorded."""
    for recipe in ("study", "improved"):
        run_dir = tmp_path / recipe
        assert train.main(["--data-dir", prepared_once, "--run-dir", str(run_dir), *FAST, "--epochs", "1", "--recipe", recipe]) == 0
        config = json.load(open(run_dir / "config.json"))
        assert {key: config[key] for key in PRESETS[recipe]} == {**PRESETS[recipe], "warmup_epochs": 0.1}
        out = capsys.readouterr().out
        assert f"the warm-up of {PRESETS[recipe]['warmup_epochs']:g} epochs would not end before the run does: " \
               "0.1 epochs (10% of the run's 1) instead" in out
        assert load(run_dir / "last.pt")["schedule"]["warmup_steps"] == round(0.1 * 6)
        assert math.isfinite(json.load(open(run_dir / "test_metrics.json"))["final"]["loss"])


def test_the_speedrun_recipe_trains_its_convnet_low_then_full_size_and_tests_with_flip_tta(prepared_once, tmp_path, capsys):
    run_dir = tmp_path / "speedrun"
    flags = ["--data-dir", prepared_once, "--run-dir", str(run_dir), *FAST, "--epochs", "2", "--recipe", "speedrun",
             "--channels", "8,16"]
    assert train.main(flags) == 0
    config = json.load(open(run_dir / "config.json"))
    assert (config["model"], config["optimizer"], config["lr_schedule"], config["tta"], config["low_res"], config["eval_amp"]) == \
        ("convnet", "sgd", "linear", "flip", "32:90%", True)
    assert "(final weights, flip TTA" in capsys.readouterr().out  # (then bfloat16, where the run trains in it)
    assert math.isfinite(json.load(open(run_dir / "test_metrics.json"))["final"]["loss"])


def test_under_mixup_the_training_accuracy_is_named_for_the_dominant_label(full_recipe_run, capsys):
    """metrics.csv says what the training top-1 is measured against; curves and runs.py read it."""
    header = open(full_recipe_run / "metrics.csv").readline().strip().split(",")
    assert "train_top1_dominant_label" in header and "train_top1" not in header
    metrics = curves.read_metrics(str(full_recipe_run))
    assert metrics["dominant_label"] and len(metrics["train_top1"]) == 2
    assert runs.main([str(full_recipe_run)]) == 0 and "finished" in capsys.readouterr().out


def test_the_vit_recipe_trains_and_a_resume_keeps_its_warm_up_in_epochs(prepared_once, tmp_path, capsys):
    """--recipe vit-small-data end to end on a tiny ViT: its augmentation, stochastic depth and a
    warm-up of 10% of the epochs; extending the run keeps the warm-up it had, and a percentage
    given on --resume is read against the run's epochs."""
    run = tmp_path / "r"
    tiny_vit = ["--model", "vit", "--embed-dim", "16", "--depth", "1", "--num-heads", "2"]
    assert train.main(["--data-dir", prepared_once, "--run-dir", str(run), *FAST, *tiny_vit, "--recipe", "vit-small-data",
                       "--epochs", "1"]) == 0
    config = json.load(open(run / "config.json"))
    assert (config["warmup_epochs"], config["autoaugment"], config["repeat_aug"]) == (0.1, True, 3)
    assert config["model_config"]["drop_path"] == 0.1
    assert train.main(["--resume", str(run / "last.pt"), "--warmup-epochs", "10%", "--device", "cpu"]) == 0
    assert train.main(["--resume", str(run / "last.pt"), "--epochs", "2", "--device", "cpu"]) == 0
    assert json.load(open(run / "config.json"))["warmup_epochs"] == 0.1
    capsys.readouterr()
    assert train.main(["--resume", str(run / "last.pt"), "--epochs", "3", "--warmup-epochs", "10%", "--device", "cpu"]) == 2
    assert "--warmup-epochs 10% (the run has 0.1)" in capsys.readouterr().err


@pytest.mark.parametrize("policy", [["--trivialaugment"], ["--autoaugment"]])
def test_resume_is_exact_with_the_other_policies_and_every_augmentation_on(policy, prepared_once, tmp_path, monkeypatch, capsys):
    """As the full-recipe resume test (RandAugment), with TrivialAugmentWide and AutoAugment."""
    flags = [*FAST, "--epochs", "2", *policy, "--random-erase", "0.5", "--mixup", "0.8", "--cutmix", "1.0",
             "--repeat-aug", "2", "--label-smoothing", "0.1"]
    assert_resumes_exactly(monkeypatch, prepared_once, tmp_path, flags, epoch=1, step=2)
