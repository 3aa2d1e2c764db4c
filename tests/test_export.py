"""The model outside training. export.py: an ONNX graph that takes images in [0, 1] at any batch
size and gives onnxruntime the logits the eager model gives, for every model of the zoo; a
Hugging Face-style folder that holds the checkpoint's weights exactly and that evaluate.py reads
back as the checkpoint. evaluate.py --quantize int8: every Linear layer int8, the logits close."""
import copy
import csv
import json
import sys

import numpy as np
import onnxruntime
import pytest
import torch
from safetensors.torch import load_file

import evaluate
import export
import train
from checkpoint import load_checkpoint, model_from_checkpoint, write_hf_folder
from data import load_packed, make_splits, normalize
from evaluation import FlipTTA, evaluation_dtype, quantized_int8
from model import MODELS, SETTINGS, build_model

FAST = ["--batch-size", "16", "--eval-batch-size", "16", "--device", "cpu"]


@pytest.fixture(scope="module")
def flip_ema_run(prepared_once, tmp_path_factory):
    """A tiny run that evaluates with flip TTA and keeps an EMA (so the exported weights must be the EMA's)."""
    run_dir = tmp_path_factory.mktemp("export") / "r"
    assert train.main(["--data-dir", prepared_once, "--run-dir", str(run_dir), "--epochs", "1", "--tta", "flip",
                       "--ema-decay", "0.5", *FAST]) == 0
    return run_dir


def test_onnx_takes_images_in_0_1_at_any_batch_size_and_gives_the_logits_evaluate_computes(flip_ema_run, prepared_once,
                                                                                            tmp_path, capsys):
    path = tmp_path / "model.onnx"
    assert export.main([str(flip_ema_run / "best.pt"), "--onnx", str(path)]) == 0
    assert "largest logit difference" in capsys.readouterr().out
    x_uint8, _ = make_splits(load_packed(prepared_once))["test"]
    x_uint8 = x_uint8[:5]  # a batch size the export never saw
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = x_uint8.permute(0, 3, 1, 2).float().numpy() / 255  # what a user feeds it: RGB in [0, 1], NCHW
    (logits,) = session.run(["logits"], {"images": images.astype(np.float32)})
    model = model_from_checkpoint(load_checkpoint(str(flip_ema_run / "best.pt"))).eval()  # the EMA's weights
    with torch.no_grad():
        expected = FlipTTA(model)(normalize(x_uint8))  # the run's evaluation: the notebook's normalisation, flip TTA
    assert logits.shape == (5, 4)
    assert np.abs(logits - expected.numpy()).max() < 1e-4


def small(name):
    """The model at one block per stage: the same operators, exported faster."""
    depth = {"depth": "1"} if "depth" in SETTINGS and "depth" in MODELS[name].config.__dataclass_fields__ else {}
    return build_model(name, 4, **depth).eval()


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_of_the_zoo_exports_and_onnxruntime_agrees(name, tmp_path):
    graph = export.ImagesToLogits(small(name), "none").eval()
    export.export_onnx(graph, str(tmp_path / "m.onnx"), name)
    assert export.largest_difference(graph, str(tmp_path / "m.onnx")) < 1e-4


def test_the_hf_folder_holds_the_weights_exactly_and_evaluates_as_the_checkpoint(flip_ema_run, prepared_once, tmp_path):
    checkpoint_path, folder = str(flip_ema_run / "best.pt"), tmp_path / "hf"
    assert export.main([checkpoint_path, "--hf", str(folder)]) == 0
    checkpoint = load_checkpoint(checkpoint_path)
    tensors = load_file(str(folder / "model.safetensors"))
    assert tensors.keys() == checkpoint["ema"]["model"].keys()  # the weights the run evaluated: the EMA's
    for key, value in checkpoint["ema"]["model"].items():
        assert torch.equal(tensors[key], value), key
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {str(index): name for index, name in enumerate(checkpoint["class_names"])}
    assert config["wnids"] == checkpoint["classes"] and config["architectures"] == ["cvt-simplified"]

    reports = {}
    for name, path in (("checkpoint", checkpoint_path), ("folder", str(folder))):
        assert evaluate.main([path, "--data-dir", prepared_once, "--device", "cpu", "--json", str(tmp_path / f"{name}.json"),
                              "--predict", str(tmp_path / f"{name}.csv")]) == 0
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    for key in ("top1", "top5", "loss", "tta", "weights"):
        assert reports["folder"][key] == reports["checkpoint"][key], key
    assert reports["folder"]["tta"] == "flip"  # the run's evaluation settings travel with the folder
    rows = {name: list(csv.reader(open(tmp_path / f"{name}.csv"))) for name in ("checkpoint", "folder")}
    assert rows["folder"] == rows["checkpoint"]


def test_export_needs_an_output_and_says_in_one_line_what_is_missing(flip_ema_run, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export.main([str(flip_ema_run / "best.pt")])
    assert exit_info.value.code == 2
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as an uninstalled package looks
    assert export.main([str(flip_ema_run / "best.pt"), "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --onnx needs the onnxscript package, which is not installed: python -m pip install -r requirements-extras.txt")
    assert not (tmp_path / "m.onnx").exists()
    (tmp_path / "file").write_text("")
    assert export.main([str(flip_ema_run / "best.pt"), "--hf", str(tmp_path / "file")]) == 2


def test_quantize_int8_makes_every_linear_layer_int8_and_keeps_the_logits_close(flip_ema_run, prepared_once, tmp_path):
    model = model_from_checkpoint(load_checkpoint(str(flip_ema_run / "best.pt"))).eval()
    linear = sum(isinstance(module, torch.nn.Linear) for module in model.modules())
    x = normalize(make_splits(load_packed(prepared_once))["test"][0])
    with torch.no_grad():
        fp32 = model(x)
        quantized = quantized_int8(copy.deepcopy(model), torch.device("cpu"), None)
        int8 = quantized(x)
    assert linear > 0 and sum(isinstance(module, torch.ao.nn.quantized.dynamic.Linear) for module in quantized.modules()) == linear
    assert (int8 - fp32).abs().max() < 0.05 * fp32.abs().max()  # int8 weights: about 1% of each weight's range
    report = tmp_path / "int8.json"
    assert evaluate.main([str(flip_ema_run / "best.pt"), "--data-dir", prepared_once, "--device", "cpu", "--quantize", "int8",
                          "--json", str(report)]) == 0
    assert json.loads(report.read_text())["precision"] == "int8 (Linear layers)"
    assert evaluate.main([str(flip_ema_run / "best.pt"), "--data-dir", prepared_once, "--quantize", "int8", "--amp"]) == 2


def test_the_hf_folder_keeps_the_runs_evaluation_precision_and_never_overwrites_a_run(flip_ema_run, tmp_path):
    checkpoint = load_checkpoint(str(flip_ema_run / "best.pt"))
    checkpoint["config"] = {**checkpoint["config"], "eval_amp": True, "amp_dtype": "bfloat16", "device": "cpu"}
    model = model_from_checkpoint(checkpoint)
    write_hf_folder(checkpoint, model, str(tmp_path / "hf"), "ema")
    folder = load_checkpoint(str(tmp_path / "hf"))
    assert evaluation_dtype(None, folder, torch.device("cpu")) == evaluation_dtype(None, checkpoint, torch.device("cpu")) == torch.bfloat16
    assert export.main([str(flip_ema_run / "best.pt"), "--hf", str(flip_ema_run)]) == 2  # the run's own config.json
    assert json.loads((flip_ema_run / "config.json").read_text())["epochs"] == 1
