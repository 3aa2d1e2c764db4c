"""The model registry: the study's models exactly as the study built them, the two baselines,
settings from the command line, and every model through train.py, resume and evaluate.py."""
import json
import os
import time
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.ops import StochasticDepth
from tqdm import tqdm

import evaluate
import evaluation
import model as model_module
import runs
import train
import train_flags
from benchmarks.notebook import CvTSimplifiedEmbedding as NotebookModel
from checkpoint import model_from_checkpoint
from conftest import ROOT, assert_same_training_state, signal_during_training
from data import BatchLoader, load_packed, make_splits, normalize
from errors import DataError
from model import MODELS, build_model, count_parameters, flops_per_image, make_config
from models.blocks import Block
from recipe import LRSchedule, Updater, build_optimizer
from runtime import amp_dtype, default_amp
from study_reference import STUDY_CLASSES

STUDY_JSON = os.path.join(ROOT, "..", "shared", "reference", "study_models.json")
needs_study_json = pytest.mark.skipif(not os.path.exists(STUDY_JSON), reason="../shared/reference is absent")

# A configuration of each model small enough to train in seconds on a CPU.
TINY = {
    "cvt-simplified": dict(embed_dim=16, depth=1, num_heads=2),
    "cvt-conv-embed": dict(embed_dim=16, depth=(1, 1), num_heads=2, stride=4),
    "cvt-enhanced-conv-embed": dict(embed_dim=16, depth=(1, 1), num_heads=2, stride=4),
    "cvt-recurrent": dict(embed_dim=(8, 16, 16), depth=1, num_heads=(1, 2, 2)),
    "cvt-original": dict(embed_dim=(8, 16, 16), depth=1, num_heads=(1, 2, 2)),
    "cnn": dict(channels=(8, 16), hidden_dim=32),
    "vit": dict(embed_dim=32, depth=2, num_heads=4),
    "resnet18": dict(depth=1),
    "convnet": dict(channels=(16, 32)),
}
PARAMETERS = {"cvt-simplified": 122_568, "cvt-conv-embed": 5_829_704, "cvt-enhanced-conv-embed": 6_751_496,
              "cvt-recurrent": 21_292_040, "cvt-original": 24_354_504, "cnn": 13_283_848,
              "vit": 2_756_744, "resnet18": 11_271_432, "convnet": 1_566_600}


def tiny(name, num_classes=5, **changes):
    return build_model(name, num_classes, **{**TINY[name], **changes})


def unregularised(name):
    """No dropout and no stochastic depth, for the models that have them."""
    return {key: 0.0 for key in ("dropout", "drop_path") if key in model_module.settings_of(name)}


def study_models():
    """{name: what was measured from the study's own code}, from ../shared/reference."""
    if not os.path.exists(STUDY_JSON):
        pytest.skip("../shared/reference/study_models.json is absent")
    return json.load(open(STUDY_JSON))


def test_the_registry_has_every_model_of_the_study_and_both_baselines():
    """The study's models (as its code names them), the seed notebook's, the two baselines, and the
    CPU hour's convnet."""
    study = study_models()
    assert set(MODELS) == {*study, "cvt-simplified", "vit", "resnet18", "convnet"}
    assert {name: entry["study_class"] for name, entry in study.items()} == {name: cls.__name__ for name, cls in STUDY_CLASSES.items()}


def test_these_tests_cover_every_model_of_the_registry():
    assert set(TINY) == set(PARAMETERS) == set(MODELS)


def vit_parameters(classes=200, patch=8, dim=192, depth=9, mlp=384, image=64):
    """The ViT of Lee et al. (2021) counted by hand from its layout: a patch-embedding conv, a
    class token, position embeddings, pre-norm blocks (the study's block: q, k, v without bias),
    a final LayerNorm and a linear head."""
    block = 2 * 2 * dim + 3 * dim * dim + (dim * dim + dim) + (dim * mlp + mlp) + (mlp * dim + dim)
    tokens = (image // patch) ** 2 + 1
    return (3 * patch * patch * dim + dim) + dim + tokens * dim + depth * block + 2 * dim + (dim * classes + classes)


def resnet18_parameters(classes=200):
    """torchvision's ResNet-18 with its 7x7 stem conv replaced by a 3x3 one (no bias either way)."""
    with torch.device("meta"):
        return count_parameters(torchvision.models.resnet18(num_classes=classes)) - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64


def convnet_parameters(classes=200, widths=(64, 192, 256)):
    """Two bias-free 3x3 convs and two BatchNorms (weight and bias) per block, then a linear head."""
    total, channels = 0, 3
    for width in widths:
        total += 9 * (channels * width + width * width) + 2 * 2 * width
        channels = width
    return total + channels * classes + classes


def parameters_elsewhere(name):
    """The parameter count at the default size (200 classes) from a source other than model.py:
    what was measured from the study's code, the notebook's own class, torchvision, the ViT's and
    the convnet's layouts."""
    if name in STUDY_CLASSES:
        return study_models()[name]["parameters"]
    if name == "cvt-simplified":
        with torch.device("meta"):
            return count_parameters(NotebookModel(num_classes=200))
    return {"vit": vit_parameters, "resnet18": resnet18_parameters, "convnet": convnet_parameters}[name]()


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count_at_the_default_size(name):
    expected = parameters_elsewhere(name)
    with torch.device("meta"):
        assert count_parameters(build_model(name, 200)) == expected
    assert PARAMETERS[name] == expected  # (the table that the --list test reads)


@needs_study_json
@pytest.mark.parametrize("name", list(STUDY_CLASSES))
def test_keys_shapes_parameters_and_flops_are_the_studys(name):
    study = json.load(open(STUDY_JSON))[name]
    with torch.device("meta"):
        model = build_model(name, 200)
    assert {key: list(value.shape) for key, value in model.state_dict().items()} == study["state_dict"]
    assert count_parameters(model) == study["parameters"]
    assert flops_per_image(model) == study["forward_flops_per_64px_image"]


@pytest.mark.parametrize("name", list(STUDY_CLASSES))
def test_a_state_dict_of_the_studys_class_loads_strictly_and_gives_its_outputs(name):
    torch.manual_seed(0)
    study = STUDY_CLASSES[name](num_classes=10)
    with torch.no_grad():
        study.train()(torch.randn(4, 3, 64, 64))  # BatchNorm statistics away from their initial values
    study.eval()
    ours = build_model(name, 10).eval()
    ours.load_state_dict(study.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), study(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("num_classes", [200, 7])
def test_output_shape_follows_the_class_count(name, num_classes):
    assert tiny(name, num_classes)(torch.randn(2, 3, 64, 64)).shape == (2, num_classes)


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = tiny(name, **unregularised(name))
    model(torch.randn(4, 3, 64, 64)).logsumexp(1).sum().backward()
    for key, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, key


@pytest.mark.parametrize("name", MODELS)
def test_a_tiny_configuration_overfits_one_batch(name):
    torch.manual_seed(0)
    model = tiny(name, 8, **unregularised(name))
    x, y = torch.randn(16, 3, 64, 64), torch.arange(16) % 8
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(100):
        loss = F.cross_entropy(model(x), y)
        if loss.item() < 0.1:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1


@pytest.mark.parametrize("name", MODELS)
def test_eval_mode_is_deterministic_and_dropout_and_stochastic_depth_act_in_training_only(name):
    torch.manual_seed(0)
    model = tiny(name)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        first, second = model.train()(x), model(x)
        assert torch.equal(model.eval()(x), model(x))
        assert not torch.equal(first, model(x))  # dropout, stochastic depth or batch statistics
        if unregularised(name):  # fresh dropout / stochastic depth draws at every training forward
            assert not torch.equal(first, second)


@pytest.mark.parametrize("name", ["cvt-conv-embed", "cvt-original", "vit"])
def test_stochastic_depth_is_torchvisions_row_mode_at_the_configured_rate(name):
    blocks = [m for m in build_model(name, 5).modules() if isinstance(m, Block)]
    modules = [block.drop_path for block in blocks]
    rates = [0.0 if isinstance(module, torch.nn.Identity) else module.p for module in modules]
    assert all(isinstance(module, StochasticDepth) and module.mode == "row" for module, rate in zip(modules, rates) if rate)
    assert rates == ([0.1] * len(blocks) if name != "vit" else pytest.approx([0.1 * i / 8 for i in range(9)]))


COMPILE_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def compiled_epoch(model, train_loader, val_loader, updater, device, epoch):
    """One epoch of train.py's steps (train_one_epoch, then evaluate padding the short last batch
    as train.py does under --compile); the number of host-device syncs it made on CUDA."""
    train_loader.set_epoch(epoch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            with tqdm(disable=True) as bar:
                train.train_one_epoch(model, train_loader, updater, device, amp_dtype(device, default_amp(device)),
                                      train.new_totals(device), 0, 10**9, bar)
            evaluation.evaluate(model, val_loader, device, pad_to=val_loader.batch_size, num_classes=5)
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(warning.message) for warning in caught)


@pytest.mark.slow
@pytest.mark.parametrize("device", COMPILE_DEVICES)
@pytest.mark.parametrize("name", MODELS)
def test_each_model_compiles_whole_and_later_epochs_neither_recompile_nor_sync_per_step(name, device):
    """torch.compile(fullgraph=True): the train and eval steps are one graph each (no graph
    break), built in the first epoch, the short last eval batch padded as train.py pads it;
    later epochs compile nothing (error_on_recompile), and on CUDA make the same few syncs (the
    epoch's metrics) however many steps they have. CPU: aot_eager (the capture and the backward
    graph, without waiting minutes for the C++ compiler); CUDA: inductor, as train.py runs it."""
    torch._dynamo.reset()
    device = torch.device(device)
    model = tiny(name).to(device)
    compiled = torch.compile(model, fullgraph=True, backend="inductor" if device.type == "cuda" else "aot_eager")
    images = torch.randint(0, 256, (18, 64, 64, 3), dtype=torch.uint8)
    labels = torch.arange(18) % 5
    updater = Updater(build_optimizer(model, "adamw", 1e-3, 0.05, device), torch.amp.GradScaler(device.type, enabled=False),
                      LRSchedule("cosine", 1e-3, 0.0, 1, 12))

    def epoch(number, train_images, val_images):  # batches of 4: the last eval batch is short
        loaders = (BatchLoader(images[:train_images], labels[:train_images], 4, device, train=True),
                   BatchLoader(images[:val_images], labels[:val_images], 4, device))
        return compiled_epoch(compiled, *loaders, updater, device, number)

    torch._dynamo.utils.counters.clear()
    epoch(0, 8, 10)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # train and eval; the short batch is padded
    with torch._dynamo.config.patch(error_on_recompile=True):  # torch's own way: pytest's undo breaks its config
        syncs = epoch(1, 8, 10)
        if device.type == "cuda":  # 2 vs 4 train steps, 3 vs 5 eval batches: nothing syncs per step
            assert epoch(2, 16, 18) == syncs


# ---------------------------------------------------------------- settings


def test_settings_from_the_command_line_are_typed_and_per_stage_values_broadcast():
    config = make_config("cvt-original", 10, depth="1", embed_dim="8,16,32", conv_projection="false")
    assert config.depth == (1, 1, 1) and config.embed_dim == (8, 16, 32) and config.conv_projection is False
    assert make_config("vit", 10, drop_path="0.2", depth="6").drop_path == 0.2


@pytest.mark.parametrize("settings,message", [
    (dict(num_heads="2"), "resnet18 has no setting --num-heads; its settings: --depth"),
    (dict(depth="1,2"), "--depth has 2 values for 4 stages"),
    (dict(depth="two"), "--depth takes integers separated by commas, got 'two'"),
])
def test_bad_settings_are_one_clear_error(settings, message):
    with pytest.raises(ValueError, match=message):
        make_config("resnet18", 5, **settings)


@pytest.mark.parametrize("argv,message", [
    (["--model", "resnet18", "--num-heads", "2"], "resnet18 has no setting --num-heads"),
    (["--model", "vit", "--embed-dim", "30", "--num-heads", "4"], "width 30 is not divisible by 4 heads"),
    (["--model", "cvt-recurrent", "--embed-dim", "8,16"], "--embed-dim has 2 values for 3 stages"),
    (["--model", "cnn", "--dropout", "1.5"], "--dropout must be in [0, 1)"),
    (["--model", "cvt-original", "--conv-projection", "maybe"], "--conv-projection takes true or false"),
    (["--model", "convnet", "--identity-init", "true", "--whiten-init", "maybe"], "--whiten-init takes true or false"),
])
def test_train_refuses_bad_model_settings_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_flags.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_model_list_prints_every_model_with_its_exact_size(capsys):
    model_module.main(["--list"])
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()[1:-1]}
    assert rows == {name: f"{parameters:,}" for name, parameters in PARAMETERS.items()}


def test_the_vits_class_token_and_position_embeddings_are_not_decayed():
    from recipe import parameter_groups

    model = build_model("vit", 5, **TINY["vit"])
    decayed, undecayed = ({id(p) for p in group["params"]} for group in parameter_groups(model, 0.05))
    assert {id(model.cls_token), id(model.pos_embed)} <= undecayed
    assert id(model.patch_embed.weight) in decayed and id(model.blocks[0].proj_q.weight) in decayed


# ---------------------------------------------------------------- the convnet's airbench inits


def photo_like_images(count, seed=0):
    """uint8 (N, 64, 64, 3) images whose neighbouring pixels correlate, as a photograph's do, plus
    independent noise (so that no patch direction has zero variance)."""
    generator = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(count, 3, 8, 8, generator=generator), size=(64, 64), mode="bilinear")
    noisy = smooth * 180 + 38 + 30 * torch.randn(count, 3, 64, 64, generator=generator)
    return noisy.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def whitens(weight, images):
    """Whether the filters' responses over every position of the images are decorrelated, each
    with a second moment of about 1: below 1 by eps / (eigenvalue + eps) for the weakest
    directions, which whiten_stem's eps keeps from blowing up."""
    responses = F.conv2d(images, weight).transpose(0, 1).flatten(1)
    moment = responses @ responses.T / responses.shape[1]
    off_diagonal = moment - torch.diag(moment.diagonal())
    return bool(off_diagonal.abs().max() < 0.02 and ((0.9 < moment.diagonal()) & (moment.diagonal() < 1.02)).all())


def test_whitening_init_makes_the_first_convs_responses_to_the_images_decorrelated_with_unit_variance():
    images = normalize(photo_like_images(64))
    model = build_model("convnet", 5, channels=(64, 8))
    random_init = model.features[0].weight.clone()
    model.whiten_stem(images)
    weight, patch_size = model.features[0].weight, 3 * 3 * 3
    assert whitens(weight[:patch_size], images)
    norms = weight[:patch_size].flatten(1).norm(dim=1)  # 1 / sqrt(eigenvalue + eps): the strongest direction first
    assert (norms[1:] >= norms[:-1]).all()
    assert torch.equal(weight[patch_size : 2 * patch_size], -weight[:patch_size])  # both signs pass the GELU
    assert torch.equal(weight[2 * patch_size :], random_init[2 * patch_size :])  # the 10 filters left over keep theirs


def test_a_new_run_whitens_its_first_conv_at_the_side_training_starts_at():
    """--whiten-init true with --low-res 32:50%: the first conv whitens the images at 32 px (where
    neighbouring pixels correlate less than at 64), not at the full size."""
    images = photo_like_images(100)
    args = train_flags.parse_args(["--model", "convnet", "--channels", "64,8", "--whiten-init", "true", "--low-res", "32:50%"])
    weight = train.new_model(args, None, 5, None, "cpu", images).features[0].weight[:27]
    full_size = normalize(images)
    at_32 = F.interpolate(full_size, size=(32, 32), mode="bilinear", antialias=True)
    assert whitens(weight, at_32) and not whitens(weight, full_size)
    plain = train.new_model(train_flags.parse_args(["--model", "convnet", "--channels", "64,8"]), None, 5, None, "cpu", images)
    assert not whitens(plain.features[0].weight[:27], at_32)


def test_identity_init_starts_every_conv_after_the_first_as_the_identity_on_its_inputs():
    model = build_model("convnet", 5, channels=(8, 16), identity_init=True)
    convs = [layer for layer in model.features if isinstance(layer, torch.nn.Conv2d)]
    for conv in convs[1:]:
        x = torch.randn(2, conv.in_channels, 6, 6)
        assert torch.allclose(F.conv2d(x, conv.weight[: conv.in_channels], padding=1), x)
    second_conv_by_default = build_model("convnet", 5, channels=(8, 16)).features[3]
    x = torch.randn(2, 8, 6, 6)
    assert not torch.allclose(second_conv_by_default(x), x, atol=0.3)


def test_the_ema_averages_batchnorm_statistics_and_copies_its_batch_count():
    from recipe import EMA

    model = tiny("cnn")
    ema = EMA(model, decay=0.5)
    model.train()(torch.randn(4, 3, 64, 64))  # moves the running statistics, counts one batch
    ema.update()
    bn, averaged = model.features[0].block[1], ema.module.features[0].block[1]
    decay = min(0.5, 2 / 11)  # the ramp after one update
    torch.testing.assert_close(averaged.running_mean, bn.running_mean * (1 - decay))  # from zeros
    assert averaged.num_batches_tracked.item() == bn.num_batches_tracked.item() == 1


# ---------------------------------------------------------------- through train.py and evaluate.py

FAST = ["--batch-size", "16", "--eval-batch-size", "16", "--log-every", "2", "--device", "cpu"]
FAMILIES = {  # one tiny model of each kind, as command-line settings
    "transformer": ["--model", "cvt-conv-embed", "--embed-dim", "16", "--depth", "1,1", "--num-heads", "2", "--stride", "4"],
    "conv projections + BatchNorm": ["--model", "cvt-original", "--embed-dim", "8,16,16", "--depth", "1", "--num-heads", "1,2,2"],
    "CNN (+ EMA of BatchNorm statistics)": ["--model", "cnn", "--channels", "8,16", "--hidden-dim", "32", "--ema-decay", "0.9"],
    "ViT": ["--model", "vit", "--embed-dim", "32", "--depth", "2", "--num-heads", "4", "--recipe", "improved"],
    "ResNet": ["--model", "resnet18", "--depth", "1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_resumes_bit_exactly_and_evaluates_to_what_it_recorded(family, prepared_once, tmp_path, monkeypatch):
    settings = FAMILIES[family]
    base = ["--data-dir", prepared_once, *FAST, "--epochs", "1", *settings]
    assert train.main([*base, "--run-dir", str(tmp_path / "straight")]) == 0
    with monkeypatch.context() as patch:
        signal_during_training(patch, epoch=0, step=3)
        assert train.main([*base, "--run-dir", str(tmp_path / "stopped")]) == 130
    assert train.main(["--resume", str(tmp_path / "stopped" / "last.pt"), "--device", "cpu"]) == 0
    straight, resumed = (torch.load(tmp_path / run / "last.pt", weights_only=True) for run in ("straight", "stopped"))
    assert_same_training_state(straight, resumed)
    assert straight["model_name"] == settings[1]
    recorded = json.load(open(tmp_path / "straight" / "test_metrics.json"))["final"]
    assert evaluate.main([str(tmp_path / "straight" / "last.pt"), "--device", "cpu", "--json", str(tmp_path / "eval.json")]) == 0
    measured = json.load(open(tmp_path / "eval.json"))
    assert (measured["top1"], measured["top5"], measured["model"]) == (recorded["top1"], recorded["top5"], settings[1])
    assert measured["loss"] == pytest.approx(recorded["loss"], abs=1e-5)


def test_a_run_saved_before_a_setting_existed_takes_it_at_its_default_on_resume():
    from resume import model_differences

    saved = {"num_classes": 200, "in_channels": 3, "channels": (64, 192, 256)}  # a convnet saved before its inits
    for model_from_saved in (True, False):
        same = train_flags.parse_args(["--model", "convnet", "--whiten-init", "false"])
        assert model_differences(same, "convnet", saved, model_from_saved) == []
        other = train_flags.parse_args(["--model", "convnet", "--whiten-init", "true"])
        assert model_differences(other, "convnet", saved, model_from_saved) == ["--whiten-init true (the run has false)"]


def test_resume_refuses_another_model_or_other_settings(prepared_once, tmp_path, capsys):
    run = tmp_path / "r"
    assert train.main(["--data-dir", prepared_once, *FAST, "--epochs", "1", "--run-dir", str(run), *FAMILIES["CNN (+ EMA of BatchNorm statistics)"]]) == 0
    last = str(run / "last.pt")
    for argv, message in ((["--model", "vit"], "--model vit (the run has cnn)"),
                          (["--channels", "8,32"], "--channels 8,32 (the run has 8,16)"),
                          (["--num-heads", "2"], "--num-heads (cnn has no such setting)")):
        capsys.readouterr()
        assert train.main(["--resume", last, "--epochs", "2", *argv]) == 2
        assert message in capsys.readouterr().err
    assert train.main(["--resume", last, "--epochs", "2", "--channels", "8,16"]) == 0  # the same value is fine


def test_runs_from_before_the_registry_still_evaluate_resume_and_list(prepared_once, tmp_path, capsys):
    """The previous version saved no model name and kept the notebook model's settings as
    top-level flags of the config: such a run is cvt-simplified, with its own settings."""
    run = tmp_path / "old"
    assert train.main(["--data-dir", prepared_once, *FAST, "--epochs", "1", "--run-dir", str(run)]) == 0
    old_flags = dict(embed_dim=64, depth=2, num_heads=1, mlp_ratio=4.0, dropout=0.1)
    for name in ("last.pt", "best.pt"):
        checkpoint = torch.load(run / name, weights_only=True)
        del checkpoint["model_name"], checkpoint["config"]["model"], checkpoint["config"]["model_config"]
        checkpoint["config"].update(old_flags)
        torch.save(checkpoint, run / name)
    config = json.load(open(run / "config.json"))
    del config["model"], config["model_config"]
    json.dump({**config, **old_flags}, open(run / "config.json", "w"))
    capsys.readouterr()
    assert evaluate.main([str(run / "best.pt")]) == 0
    assert "model: cvt-simplified, " in capsys.readouterr().out
    assert model_from_checkpoint(torch.load(run / "best.pt", weights_only=True)).model_name == "cvt-simplified"
    assert train.main(["--resume", str(run / "last.pt"), "--epochs", "2", "--embed-dim", "32"]) == 2
    assert "--embed-dim 32 (the run has 64)" in capsys.readouterr().err
    assert train.main(["--resume", str(run / "last.pt"), "--epochs", "2"]) == 0
    assert torch.load(run / "last.pt", weights_only=True)["model_name"] == "cvt-simplified"
    assert runs.main([str(run)]) == 0 and f"| {run} | cvt-simplified | seed | 2/2 |" in capsys.readouterr().out


def test_sync_bn_needs_cuda_under_torchrun_and_converts_the_batchnorms(prepared_once, tmp_path, capsys):
    argv = ["--data-dir", prepared_once, "--run-dir", str(tmp_path / "r"), *FAST, *FAMILIES["CNN (+ EMA of BatchNorm statistics)"]]
    dist = train.Distributed(rank=0, local_rank=0, world_size=2)
    for processes in (dist, train.Distributed()):  # under torchrun or not
        with pytest.raises(DataError, match="--sync-bn needs CUDA"):
            train.start_run(train_flags.parse_args([*argv, "--sync-bn"]), processes, torch.device("cpu"), time.monotonic())
    assert not (tmp_path / "r").exists()  # refused before any work
    args = train_flags.parse_args(["--model", "cnn", "--sync-bn"])
    converted = train.new_model(args, None, 4, dist, torch.device("cpu"), train_images=None)
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules()) == 8
    assert set(converted.state_dict()) == set(build_model("cnn", 4).state_dict())  # checkpoints unchanged


# ---------------------------------------------------------------- the study's Lightning checkpoints


def lightning_checkpoint(model, path):
    """What the study's LightningModule saved: the model under `model.`, plus Lightning's own entries."""
    torch.save({"epoch": 29, "global_step": 1000, "pytorch-lightning_version": "2.1.0",
                "state_dict": {f"model.{key}": value for key, value in model.state_dict().items()}}, path)


@pytest.mark.parametrize("name,ways", [("cnn", ([], ["--model", "cnn"])), ("cvt-original", ([],))])
def test_the_studys_lightning_checkpoint_evaluates_to_what_its_own_code_gives(name, ways, prepared_once, tmp_path):
    """Recognised by its keys, or named with --model: evaluate.py's loss and accuracy are the
    study's model's own on the same split."""
    torch.manual_seed(0)
    study = STUDY_CLASSES[name](num_classes=4)
    with torch.no_grad():
        study.train()(torch.randn(4, 3, 64, 64))
    study.eval()
    lightning_checkpoint(study, tmp_path / "study.ckpt")
    x, y = make_splits(load_packed(prepared_once))["test"]
    with torch.no_grad():
        logits = study(normalize(x))
    out = tmp_path / "m.json"
    for by_name in ways:
        assert evaluate.main([str(tmp_path / "study.ckpt"), "--data-dir", prepared_once, "--json", str(out),
                              "--device", "cpu", "--batch-size", "8", *by_name]) == 0  # small batches: the timing of a big model is short
        report = json.load(open(out))
        assert report["model"] == name and report["images"] == len(y)
        assert report["top1"] == (logits.argmax(1) == y).float().mean().item()
        assert report["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), abs=1e-5)


def test_a_variant_of_a_study_model_is_named_with_model_and_its_settings():
    """cvt-original without its conv projections: neither cvt-original's keys nor cvt-recurrent's."""
    variant = build_model("cvt-original", 5, conv_projection=False).eval()
    checkpoint = {"state_dict": {f"model.{key}": value for key, value in variant.state_dict().items()}}
    with pytest.raises(DataError, match="say which with --model NAME"):
        model_from_checkpoint(checkpoint, "x.ckpt")
    with pytest.raises(DataError, match="does not hold a cvt-original model as configured: 351 parameters missing"):
        model_from_checkpoint(checkpoint, "x.ckpt", model_name="cvt-original")
    with pytest.raises(DataError, match="cvt-original has no setting --channels"):
        model_from_checkpoint(checkpoint, "x.ckpt", model_name="cvt-original", settings={"channels": "8"})
    rebuilt = model_from_checkpoint(checkpoint, "x.ckpt", model_name="cvt-original", settings={"conv_projection": "false"})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), variant(x))


def test_a_foreign_checkpoint_named_as_another_model_or_of_other_sizes_is_one_clear_line():
    simplified = {"state_dict": build_model("cvt-simplified", 5).state_dict()}
    for name in ("vit", "resnet18"):
        with pytest.raises(DataError, match=f"does not hold a {name} model: its parameter names are not {name}'s"):
            model_from_checkpoint(simplified, "x.ckpt", model_name=name)
    small_vit = {"state_dict": build_model("vit", 5, **TINY["vit"]).state_dict()}  # recognised, but not the default size
    with pytest.raises(DataError, match=r"does not hold a vit model as configured: .*cls_token is 1x1x32 in the "
                                        r"checkpoint, 1x1x192 here; if it is a vit of other sizes, give them"):
        model_from_checkpoint(small_vit, "x.ckpt")
    settings = {key: model_module.format_setting(value) for key, value in TINY["vit"].items()}
    assert model_from_checkpoint(small_vit, "x.ckpt", model_name="vit", settings=settings).config.depth == 2


def test_a_train_py_checkpoint_keeps_its_own_model_and_settings():
    checkpoint = {"model": {}, "model_name": "cnn", "model_config": {}}
    with pytest.raises(DataError, match="holds a cnn model, not --model vit"):
        model_from_checkpoint(checkpoint, "x.pt", model_name="vit")
    with pytest.raises(DataError, match="records its model's settings: drop --channels"):
        model_from_checkpoint(checkpoint, "x.pt", settings={"channels": "8"})
