"""explain.py: Grad-CAM as captum and the definition compute it, attention weights that reproduce
the SDPA output, rollout, the object boxes from prepare to score, and the pictures and maps.pt."""
import os
import shutil
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import data
import explain
import packing
import prepare_data
import train
from conftest import needs_mini_zip
from errors import DataError
from layout import VAL_BOXES_FILE, packed_dir
from model import MODELS
from models.blocks import Attention, Block, attention_weights
from test_zoo import tiny

DEFAULT_LAYERS = {"cvt-simplified": "embedding.proj", "cvt-conv-embed": "conv_embed.proj",
                  "cvt-enhanced-conv-embed": "conv_embed.proj2", "cvt-recurrent": "stage3.embed.proj2",
                  "cvt-original": "stage3.embed.proj", "cnn": "features", "vit": "patch_embed", "resnet18": "layer4",
                  "convnet": "features"}
HAS_ATTENTION = {name for name in MODELS if name not in ("cnn", "resnet18", "convnet")}
CPU = torch.device("cpu")


def images(count=3, seed=0):
    return torch.randn(count, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def gradcam_by_the_definition(model, layer, x, targets):
    """ReLU(sum over channels of the space-mean of d(target logit)/d(activation) x activation)."""
    saved = {}
    handle = layer.register_forward_hook(lambda _m, _i, output: saved.update(activation=output))
    logits = model(x)
    handle.remove()
    gradient, = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), saved["activation"])
    return F.relu((gradient.mean(dim=(2, 3), keepdim=True) * saved["activation"]).sum(dim=1)).detach()


# ---------------------------------------------------------------- Grad-CAM


@pytest.mark.parametrize("name", MODELS)
def test_the_default_layer_is_the_last_conv_before_the_tokens_or_the_cnns_last_stage(name):
    model = tiny(name).eval()
    assert explain.default_layer(model, explain.map_shapes(model, CPU)) == DEFAULT_LAYERS[name]


@pytest.mark.parametrize("name", ["cvt-simplified", "cvt-original", "cnn", "resnet18", "vit"])
def test_gradcam_is_captums_and_the_papers_definition_on_the_same_layer_and_target(name):
    LayerGradCam = pytest.importorskip("captum.attr").LayerGradCam
    torch.manual_seed(0)
    model = tiny(name).eval()
    shapes = explain.map_shapes(model, CPU)
    modules = dict(model.named_modules())
    x = images()
    targets = model(x).argmax(dim=1)
    layers = [DEFAULT_LAYERS[name], explain.listed_layers(model, shapes)[0]]
    maps = explain.gradcam(model, x, targets, layers)
    for layer in layers:
        assert maps[layer].shape == (3, *shapes[layer][1:])
        captums = LayerGradCam(model, modules[layer]).attribute(x, target=targets, relu_attributions=True)[:, 0]
        assert torch.allclose(maps[layer], captums)
        assert torch.allclose(maps[layer], gradcam_by_the_definition(model, modules[layer], x, targets), atol=1e-6)


def test_the_listed_layers_are_the_convs_the_cnns_blocks_and_resnets_stages():
    original = tiny("cvt-original")
    listed = explain.listed_layers(original, explain.map_shapes(original, CPU))
    assert "stage1.embed.proj" in listed and "stage2.blocks.0.proj_q_conv.depthwise_conv" in listed
    cnn = tiny("cnn")
    assert {"features", "features.0", "features.1", "features.0.block.0"} <= set(explain.listed_layers(cnn, explain.map_shapes(cnn, CPU)))
    resnet = tiny("resnet18")
    assert {"conv1", "layer1", "layer4", "layer4.0"} <= set(explain.listed_layers(resnet, explain.map_shapes(resnet, CPU)))


# ---------------------------------------------------------------- attention


def test_the_explicit_attention_path_gives_sdpas_output_and_keeps_its_weights():
    q, k, v = (torch.randn(2, 3, 10, 8, generator=torch.Generator().manual_seed(s)) for s in range(3))
    attention = Attention(0.1).eval()
    fused = attention(q, k, v)
    attention.keep_weights = True
    assert torch.allclose(attention(q, k, v), fused, atol=1e-6)
    assert torch.equal(attention.weights, attention_weights(q, k))
    assert attention.weights.shape == (2, 3, 10, 10) and torch.allclose(attention.weights.sum(-1), torch.ones(2, 3, 10))


@pytest.mark.parametrize("name", sorted(HAS_ATTENTION))
def test_every_block_hands_over_its_weights_and_the_model_gives_its_sdpa_output(name):
    model = tiny(name).eval()
    x = images(2)
    with torch.no_grad():
        plain = model(x)
    taken = []
    logits = explain.run_keeping_attention(model, x, lambda block, weights: taken.append((block, weights)))
    assert torch.allclose(logits, plain, atol=1e-5)
    assert [block for block, _ in taken] == [explain.block_name(n) for n, _ in explain.attention_modules(model)]
    for _, w in taken:
        assert w.dim() == 4 and torch.allclose(w.sum(-1), torch.ones(w.shape[:-1]), atol=1e-5)
    assert not any(m.keep_weights or m.weights is not None for m in model.modules() if isinstance(m, Attention))


def test_rollout_of_identity_attention_is_uniform():
    identity = torch.eye(16).expand(2, 3, 16, 16)
    assert torch.allclose(explain.rollout([identity, identity, identity]), torch.full((2, 4, 4), 1 / 16))


def test_rollout_averages_heads_adds_the_identity_and_multiplies_the_later_block_on_the_left():
    first, second = (torch.rand(1, 2, 4, 4, generator=torch.Generator().manual_seed(s)).softmax(-1) for s in (0, 1))
    step = lambda w: (w.mean(1) + torch.eye(4)) / (w.mean(1) + torch.eye(4)).sum(-1, keepdim=True)  # noqa: E731
    expected = (step(second) @ step(first)).mean(dim=1).view(1, 2, 2)  # the mean token's row
    assert torch.allclose(explain.rollout([first, second]), expected)


def test_the_pooled_token_is_the_mean_for_cvts_and_the_class_token_for_the_vit():
    weights = torch.rand(1, 1, 5, 5)  # a class token and 4 image tokens
    assert torch.equal(explain.pooled_row(weights, class_token=True), weights[:, :, 0, 1:])
    assert torch.equal(explain.pooled_row(weights), weights.mean(dim=2))
    vit = explain.attention_and_rollout(tiny("vit").eval(), images(1), ["attention"])["attention"]
    assert all(m.shape[-2:] == (8, 8) for m in vit.values())  # 64 image tokens, the class token left out


def test_the_rollout_is_built_block_by_block_as_from_all_weights_at_once():
    model = tiny("cvt-conv-embed").eval()
    x = images(2)
    taken = []
    explain.run_keeping_attention(model, x, lambda block, weights: taken.append(weights))
    together = explain.rollout(taken)
    assert torch.allclose(explain.attention_and_rollout(model, x, ["rollout"])["rollout"]["rollout"], together)


def test_rollout_is_per_stage_where_a_conv_embedding_retokenises():
    assert list(explain.rollout_groups(tiny("cvt-original"))) == ["rollout stage1", "rollout stage2", "rollout stage3"]
    assert list(explain.rollout_groups(tiny("cvt-conv-embed"))) == ["rollout"]
    assert list(explain.rollout_groups(tiny("vit"))) == ["rollout"]


@pytest.mark.parametrize("name", MODELS)
def test_every_model_gets_every_map_it_has_at_its_own_resolution(name):
    model = tiny(name).eval()
    shapes = explain.map_shapes(model, CPU)
    methods = list(explain.METHODS) if name in HAS_ATTENTION else ["gradcam"]
    x = images(2)
    maps = explain.explain_batch(model, x, model(x).argmax(1), methods, [DEFAULT_LAYERS[name]])
    assert list(maps) == methods
    assert maps["gradcam"][DEFAULT_LAYERS[name]].shape == (2, *shapes[DEFAULT_LAYERS[name]][1:])
    for by_name in maps.values():
        for m in by_name.values():
            assert torch.isfinite(m).all() and (m >= 0).all()
    if "attention" in maps:
        grids = {m.shape[-1] for m in maps["attention"].values()}
        assert grids <= {h for h, _ in model.token_grids()}
        if name != "vit":  # the mean token's attention is a distribution over the tokens
            for m in maps["attention"].values():
                assert torch.allclose(m.sum(dim=(-2, -1)), torch.ones(m.shape[:2]), atol=1e-5)
        if name != "vit":  # (the ViT's class token row leaves out the token's own share: see the test below)
            for m in maps["rollout"].values():
                assert torch.allclose(m.sum(dim=(-2, -1)), torch.ones(2), atol=1e-5)


def weights_from_q_and_k(model, x):
    """Each block's softmax(q k^T / sqrt(d)) per head, from what its q and k projections output
    in a plain forward (SDPA's path; explain.py's explicit path is not used)."""
    blocks = [module for module in model.modules() if isinstance(module, Block)]
    outputs = {}
    hooks = [projection.register_forward_hook(lambda _m, _i, output, key=(block, kind): outputs.update({key: output}))
             for block in blocks for kind, projection in (("q", block.proj_q), ("k", block.proj_k))]
    with torch.no_grad():
        model.eval()(x)
    for hook in hooks:
        hook.remove()
    weights = []
    for block in blocks:
        q, k = (outputs[block, kind].unflatten(-1, (block.num_heads, -1)).transpose(1, 2) for kind in "qk")
        weights.append(((q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5).softmax(dim=-1))
    return weights


@pytest.mark.parametrize("name", ["vit", "cvt-conv-embed"])
def test_the_maps_are_abnar_and_zuidemas_rollout_of_the_pooled_token(name):
    """Rollout as the paper writes it: per block, A = 0.5 W + 0.5 I with W the heads' mean, the
    blocks' A multiplied from the last; read in the row of the token the model pools (the
    ViT's class token, without its own column; the CvTs' mean token). Attention: that row per
    head, block by block."""
    torch.manual_seed(0)
    model, x = tiny(name).eval(), images(2)
    weights = weights_from_q_and_k(model, x)
    tokens = weights[0].shape[-1]
    rolled = torch.eye(tokens)
    for w in weights:
        rolled = (0.5 * w.mean(dim=1) + 0.5 * torch.eye(tokens)) @ rolled
    pooled = (lambda a: a[..., 0, 1:]) if name == "vit" else (lambda a: a.mean(dim=-2))
    side = 8 if name == "vit" else 16  # 8x8 patches of 8 pixels, or 16x16 tokens after a stride-4 conv
    maps = explain.explain_batch(model, x, None, ["attention", "rollout"], [])
    assert torch.allclose(maps["rollout"]["rollout"], pooled(rolled).view(2, side, side), atol=1e-6)
    assert len(maps["attention"]) == len(weights)
    for m, w in zip(maps["attention"].values(), weights):
        assert torch.allclose(m, pooled(w).view(2, -1, side, side), atol=1e-6)


# ---------------------------------------------------------------- object boxes


def write_annotations(root, lines, wnids=("nb", "na")):
    os.makedirs(os.path.join(root, "val"))
    with open(os.path.join(root, "wnids.txt"), "w") as f:
        f.write("\n".join(wnids) + "\n")
    with open(os.path.join(root, "val", "val_annotations.txt"), "w") as f:
        f.write("".join(line + "\n" for line in lines))


def test_boxes_are_read_in_the_packed_order_with_inclusive_coordinates(tmp_path):
    root = str(tmp_path / "root")
    write_annotations(root, ["val_1.JPEG\tnb\t0\t0\t63\t63", "val_0.JPEG\tna\t60\t10\t63\t10", "val_2.JPEG\tna\t5\t6\t7\t8"])
    names, labels, boxes = packing.val_boxes_in_packed_order(root, ["na", "nb"])
    assert names == ["val_0.JPEG", "val_2.JPEG", "val_1.JPEG"] and labels.tolist() == [0, 0, 1]
    assert boxes.tolist() == [[60, 10, 63, 10], [5, 6, 7, 8], [0, 0, 63, 63]]


@pytest.mark.parametrize("box, message", [("0 0 64 10", "not inside"), ("3 0 2 10", "not inside"), ("a b c d", "four integers")])
def test_a_bad_box_is_one_line_with_its_place(tmp_path, box, message):
    root = str(tmp_path / "root")
    write_annotations(root, ["val_0.JPEG\tna\t" + box.replace(" ", "\t")])
    with pytest.raises(DataError, match=f"val_annotations.txt:1: .*{message}"):
        packing.val_boxes_in_packed_order(root, ["na", "nb"])


def test_a_problem_with_the_boxes_skips_them_and_never_stops_a_prepare(tmp_path):
    root = str(tmp_path / "root")
    write_annotations(root, ["val_0.JPEG\tna\t0\t0\t99\t10", "val_1.JPEG\tnb\t0\t0\t63\t63"])
    boxes, why_not = packing.boxes_for(root, ["na", "nb"], ["x/val_0.JPEG", "x/val_1.JPEG"])
    assert boxes is None and "malformed" in why_not and "val_annotations.txt:1" in why_not
    assert packing.read_val_annotations(root) == [("val_0.JPEG", "na"), ("val_1.JPEG", "nb")]
    shutil.rmtree(root)
    write_annotations(root, ["val_0.JPEG\tna\t0\t0\t9\t10", "val_1.JPEG\tnb\t0\t0\t63\t63"])
    assert packing.boxes_for(root, ["na", "nb"], ["x/val_0.JPEG", "x/val_1.JPEG"])[0].tolist() == [[0, 0, 9, 10], [0, 0, 63, 63]]
    boxes, why_not = packing.boxes_for(root, ["na", "nb"], ["x/val_1.JPEG", "x/val_0.JPEG"])  # other images packed
    assert boxes is None and "not the ones" in why_not


def test_a_box_scales_to_the_share_of_each_map_cell_it_covers():
    corner_and_border = torch.tensor([[0, 0, 31, 31], [60, 10, 63, 10]])  # the second: one pixel tall, at the right edge
    cover = explain.box_cover(corner_and_border, (16, 16))
    assert torch.equal(cover[0, :8, :8], torch.ones(8, 8)) and cover[0].sum() == 64
    assert cover[1, 2, 15] == 0.25 and cover[1].sum() == 0.25  # 4 of the 16 pixels of cell (2, 15)
    pixels = explain.box_cover(corner_and_border, (64, 64))
    assert pixels[1].sum() == 4 and torch.equal(pixels[1, 10, 60:], torch.ones(4))
    uniform = torch.ones(2, 16, 16)
    share, area, usable = explain.box_shares(uniform, corner_and_border)
    assert torch.allclose(share, area) and torch.allclose(area, torch.tensor([0.25, 4 / 4096])) and usable.all()
    inside = cover.clone()
    share, _, _ = explain.box_shares(inside * (cover == 1), corner_and_border)
    assert share[0] == 1.0
    assert not explain.box_shares(torch.zeros(2, 16, 16), corner_and_border)[2].any()


def test_prepare_stores_the_boxes_and_adds_them_to_data_prepared_without(prepared, tiny_zip, capsys):
    stored = data.load_packed(prepared).val_boxes
    assert stored.shape == (40, 4) and stored.dtype == torch.int16  # the synthetic zip's boxes: the whole image
    os.remove(os.path.join(packed_dir(prepared), VAL_BOXES_FILE))
    assert data.load_packed(prepared).val_boxes is None
    with pytest.raises(DataError, match="prepared before the object boxes were stored: run `python prepare_data.py"):
        data.split_boxes(data.load_packed(prepared), "test")
    images = os.path.join(packed_dir(prepared), "val_x.npy")
    before = os.stat(images).st_mtime_ns
    capsys.readouterr()
    assert prepare_data.main(["--zip", tiny_zip, "--data-dir", prepared]) == 0
    assert "added the val images' object boxes" in capsys.readouterr().out
    assert torch.equal(data.load_packed(prepared).val_boxes, stored) and os.stat(images).st_mtime_ns == before
    assert prepare_data.main(["--zip", tiny_zip, "--data-dir", prepared]) == 0
    assert "nothing to do" in capsys.readouterr().out
    np.save(os.path.join(packed_dir(prepared), VAL_BOXES_FILE), np.zeros((3, 4), np.int16))  # not one per image
    assert data.load_packed(prepared).val_boxes is None
    assert prepare_data.main(["--zip", tiny_zip, "--data-dir", prepared]) == 0
    assert torch.equal(data.load_packed(prepared).val_boxes, stored)


@needs_mini_zip
def test_the_real_boxes_land_beside_their_images(mini_prepared):
    packed = data.load_packed(mini_prepared)
    names, labels, boxes = packing.val_boxes_in_packed_order(os.path.join(mini_prepared, "tiny-imagenet-200"), packed.classes)
    assert torch.equal(packed.val_boxes, torch.from_numpy(boxes)) and np.array_equal(labels, packed.val_y.numpy())
    first = names.index("val_0.JPEG")  # val_annotations.txt: val_0.JPEG n03444034 0 32 44 62
    assert packed.val_boxes[first].tolist() == [0, 32, 44, 62] and packed.classes[packed.val_y[first]] == "n03444034"
    val_idx, test_idx = data.split_indices(len(packed.val_y))
    assert torch.equal(data.split_boxes(packed, "test"), packed.val_boxes[test_idx].long())


def test_the_box_score_is_the_mean_share_over_the_usable_maps(prepared_once):
    model = tiny("cvt-simplified", 4).eval()
    packed = data.load_packed(prepared_once)
    x, y = data.make_splits(packed)["test"]
    boxes = torch.tensor([[0, 0, 31, 63], [0, 0, 63, 63], [8, 8, 15, 15]]).repeat(11, 1)[: len(y)]
    rows = explain.box_score(model, x, y, boxes, CPU, ["gradcam", "attention"], ["embedding.proj"], 5, "true")
    images = data.normalize(x)
    maps = explain.explain_batch(model, images, y, ["gradcam", "attention"], ["embedding.proj"])
    for row in rows:
        m = maps[row["method"]][row["map"]]
        m = m.mean(dim=1) if m.dim() == 4 else m
        share, area, usable = explain.box_shares(m, boxes)
        assert row["images"] == int(usable.sum()) and row["zero_maps"] == int((~usable).sum())
        assert row["share_in_box"] == pytest.approx(share[usable].mean().item(), rel=1e-5)
        assert row["uniform"] == pytest.approx(area[usable].mean().item(), rel=1e-5)
    assert [row["method"] for row in rows] == ["gradcam", "attention"]


# ---------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def tiny_run(prepared_once, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("explain") / "run"
    assert train.main(["--data-dir", prepared_once, "--run-dir", str(run_dir), "--device", "cpu", "--epochs", "1",
                       "--batch-size", "16", "--embed-dim", "16", "--depth", "2", "--num-heads", "2"]) == 0
    return run_dir


def test_explain_draws_a_grid_per_method_and_saves_every_raw_map(tiny_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert explain.main([str(tiny_run / "best.pt"), "--images", "0", "3", "5", "--out", str(out), "--box-score"]) == 0
    for picture in ("gradcam.png", "attention.png", "rollout.png", "attention-heads.png"):
        with Image.open(out / picture) as image:
            image.load()
            assert image.size[0] > 100 and image.size[1] > 100
    saved = torch.load(out / "maps.pt", weights_only=True)
    assert saved["model"] == "cvt-simplified" and [entry["index"] for entry in saved["images"]] == [0, 3, 5]
    entry = saved["images"][0]
    assert entry["true"] in saved["classes"] and entry["predicted"] == saved["classes"][entry["predicted_label"]]
    assert entry["maps"]["gradcam"]["embedding.proj"].shape == (16, 16)
    assert entry["maps"]["attention"]["transformer_blocks.1"].shape == (2, 16, 16)  # per head
    assert entry["maps"]["rollout"]["rollout"].shape == (16, 16) and entry["pixels"].shape == (64, 64, 3)
    printed = capsys.readouterr().out
    assert "uniform" in printed and "gradcam    embedding.proj" in printed and "rollout" in printed
    assert (out / "box_score.json").exists()


def test_own_files_of_any_size_are_explained_and_unreadable_ones_skipped(tiny_run, tmp_path, capsys):
    Image.new("L", (120, 80), 128).save(tmp_path / "grey.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert explain.main([str(tiny_run / "best.pt"), "--files", str(tmp_path / "grey.png"), str(tmp_path / "broken.jpg"),
                         "--method", "attention", "--out", str(out)]) == 0
    assert "skipped 1 unreadable file" in capsys.readouterr().err
    saved = torch.load(out / "maps.pt", weights_only=True)
    assert [entry["file"] for entry in saved["images"]] == [str(tmp_path / "grey.png")]
    assert saved["images"][0]["true"] is None and list(saved["images"][0]["maps"]) == ["attention"]


@pytest.mark.parametrize("argv, message", [
    (["--layer", "head"], "--layer head is not a module of cvt-simplified with a feature map"),
    (["--images", "999"], "--images 999 is not an image of the test split"),
    (["--class", "no such class"], "--class no such class: no class has that wnid or name"),
])
def test_bad_inputs_are_one_line(tiny_run, tmp_path, argv, message, capsys):
    assert explain.main([str(tiny_run / "best.pt"), "--out", str(tmp_path / "out"), *argv]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning: SYNTHETIC")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_a_model_without_attention_is_refused_attention_in_one_line(prepared_once, tmp_path, capsys):
    from checkpoint import model_entries, save_checkpoint

    save_checkpoint(model_entries(tiny("cnn", 4)), str(tmp_path / "cnn.pt"))
    assert explain.main([str(tmp_path / "cnn.pt"), "--method", "rollout", "--data-dir", prepared_once]) == 2
    assert "cnn has no attention" in capsys.readouterr().err
    assert explain.main([str(tmp_path / "cnn.pt"), "--list-layers"]) == 0
    assert "features.0.block.0" in capsys.readouterr().out


def test_a_class_is_found_by_wnid_any_of_its_names_or_part_of_one():
    classes, names = ["n01", "n02"], ["goldfish, Carassius auratus", "great white shark"]
    assert explain.matching_classes("n02", classes, names) == [1]
    assert explain.matching_classes("carassius auratus", classes, names) == [0]
    assert explain.matching_classes("shark", classes, names) == [1]
    assert explain.matching_classes("g", classes, names) == [0, 1]


def test_without_captum_gradcam_is_one_line_and_the_attention_is_still_drawn(tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "captum", None)  # import captum raises ImportError
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    checkpoint = str(tiny_run / "best.pt")
    assert explain.main([checkpoint, "--method", "gradcam", "--out", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: {explain.CAPTUM_HINT}"
    assert explain.main([checkpoint, "--out", str(tmp_path / "b")]) == 0
    assert f"note: {explain.CAPTUM_HINT}" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "b")) == ["attention-heads.png", "attention.png", "maps.pt", "rollout.png"]
    from checkpoint import model_entries, save_checkpoint

    save_checkpoint(model_entries(tiny("cnn", 4)), str(tmp_path / "cnn.pt"))
    assert explain.main([str(tmp_path / "cnn.pt"), "--out", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {explain.CAPTUM_HINT} (cnn has no attention to draw instead)"]


@pytest.mark.parametrize("name", MODELS)
def test_every_model_of_the_registry_is_explained_and_swept_from_the_command_line(name, prepared_once, tmp_path):
    from checkpoint import model_entries, save_checkpoint

    import robustness

    checkpoint = str(tmp_path / f"{name}.pt")
    save_checkpoint(model_entries(tiny(name, 4)), checkpoint)
    out = tmp_path / "out"
    assert explain.main([checkpoint, "--data-dir", prepared_once, "--images", "0", "1", "--out", str(out),
                         "--box-score", "--limit", "6"]) == 0
    pictures = {"gradcam.png"} | ({"attention.png", "rollout.png", "attention-heads.png"} if name in HAS_ATTENTION else set())
    assert set(os.listdir(out)) == pictures | {"maps.pt", "box_score.json"}
    assert robustness.main([checkpoint, "--data-dir", prepared_once, "--shifts", "1", "--limit", "6",
                            "--json", str(tmp_path / "shifts.json")]) == 0


def test_a_second_run_replaces_the_first_runs_files_and_maps_pt_is_no_checkpoint(tiny_run, tmp_path, capsys):
    import robustness

    checkpoint, out = str(tiny_run / "best.pt"), tmp_path / "out"
    assert explain.main([checkpoint, "--images", "0", "--out", str(out), "--box-score", "--limit", "4"]) == 0
    assert explain.main([checkpoint, "--images", "0", "--method", "attention", "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["attention-heads.png", "attention.png", "maps.pt"]
    capsys.readouterr()
    for script in (explain, robustness):
        assert script.main([str(out / "maps.pt")]) == 2
        assert capsys.readouterr().err.strip().endswith("is not a model checkpoint: its weights are not there (give best.pt or last.pt)")


def test_a_foreign_checkpoint_is_named_with_model_as_in_evaluate(prepared_once, tmp_path, capsys):
    state_dict = {"state_dict": {f"model.{k}": v for k, v in tiny("vit", 4).state_dict().items()}}
    torch.save(state_dict, tmp_path / "lightning.ckpt")
    settings = ["--embed-dim", "32", "--depth", "2", "--num-heads", "4"]
    assert explain.main([str(tmp_path / "lightning.ckpt"), "--data-dir", prepared_once, "--method", "rollout",
                         "--out", str(tmp_path / "out"), "--model", "vit", *settings]) == 0
