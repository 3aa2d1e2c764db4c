"""compare.py: runs that differ only in seed make one row, with mean and sample std over the
seeds, the study's figures under fixed JSON keys, re-evaluation with evaluate.py's functions,
and one line per input it cannot use. Runs are copies of one real tiny run, edited."""
import csv
import json
import math
import os
import shutil
import socket

import pytest

import compare
import evaluate
import prepare_data
import robustness
import train
from layout import data_identity, read_meta
from model import cost_row

CORE_KEYS = ["model", "recipe", "epochs", "seeds", "top1_mean", "top1_std", "top5_mean", "top5_std", "f1_mean", "f1_std",
             "loss_mean", "loss_std", "params", "gflops", "train_images_per_s", "seconds_per_epoch", "latency_ms_batch1",
             "images_per_s_batch256", "runs"]


@pytest.fixture(scope="module")
def real_run(prepared_once, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("compare") / "real"
    assert train.main(["--data-dir", prepared_once, "--run-dir", str(run_dir), "--device", "cpu", "--epochs", "2",
                       "--batch-size", "16", "--eval-batch-size", "16", "--log-every", "2"]) == 0
    return run_dir


def copy_run(real_run, dest, test=None, speeds=None, **config_changes):
    """A copy of the real run with its config, test figures and per-epoch speeds changed."""
    shutil.copytree(real_run, dest)
    config = json.load(open(dest / "config.json"))
    json.dump({**config, **config_changes, "run_dir": str(dest)}, open(dest / "config.json", "w"))
    if test:
        recorded = json.load(open(dest / "test_metrics.json"))
        recorded["final"].update(test)
        json.dump(recorded, open(dest / "test_metrics.json", "w"))
    if speeds:
        rows = list(csv.DictReader(open(dest / "metrics.csv")))
        rows = [{**rows[0], "epoch": i + 1, "images_per_s": rate, "seconds": seconds} for i, (rate, seconds) in enumerate(speeds)]
        with open(dest / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=rows[0])
            writer.writeheader()
            writer.writerows(rows)
    return dest


def compare_json(tmp_path, *paths, extra=("--no-speed",)):
    out = tmp_path / "out.json"
    assert compare.main([*map(str, paths), "--json", str(out), *extra]) == 0
    return json.load(open(out))


def test_a_run_records_what_compare_reads(real_run, prepared_once):
    config = json.load(open(real_run / "config.json"))
    assert config["data"] == data_identity(read_meta(prepared_once)) and config["data"]["synthetic"] is True
    test = json.load(open(real_run / "test_metrics.json"))["final"]
    report = evaluate.run(evaluate.parse_args([str(real_run / "last.pt"), "--device", "cpu"]))
    assert test["macro_f1"] == pytest.approx(report["macro_f1"], abs=1e-12) and test["top1"] == report["top1"]
    rows = list(csv.DictReader(open(real_run / "metrics.csv")))
    assert all(float(row["peak_memory_mb"]) > 0 for row in rows)


def test_seeds_make_one_row_with_mean_and_sample_std(real_run, tmp_path):
    figures = [(0.5, 0.75, 0.4, 1.0), (0.6, 0.80, 0.5, 2.0), (0.7, 1.00, 0.3, 4.0)]  # top-1, top-5, F1, loss
    speeds = [[(50, 20.0), (100, 10.0), (120, 8.0)], [(60, 15.0), (80, 12.0)], [(90, 11.0)]]
    runs = [copy_run(real_run, tmp_path / f"s{seed}", test=dict(zip(("top1", "top5", "macro_f1", "loss"), values)),
                     speeds=speed, seed=seed)
            for seed, (values, speed) in enumerate(zip(figures, speeds))]
    [row] = compare_json(tmp_path, *runs)
    assert list(row)[:len(CORE_KEYS)] == CORE_KEYS
    assert row["seeds"] == 3 and row["seed_values"] == [0, 1, 2] and row["runs"] == [str(r) for r in runs]
    assert row["model"] == "cvt-simplified" and row["recipe"] == "seed (batch 16)" and row["epochs"] == 2
    assert row["top1_mean"] == pytest.approx(0.6) and row["top1_std"] == pytest.approx(0.1)
    assert row["top5_mean"] == pytest.approx(0.85) and row["top5_std"] == pytest.approx(math.sqrt(0.0175))
    assert row["f1_mean"] == pytest.approx(0.4) and row["f1_std"] == pytest.approx(0.1)
    assert row["loss_mean"] == pytest.approx(7 / 3) and row["loss_std"] == pytest.approx(math.sqrt(7 / 3))
    # each run's median over the epochs after the first (all of them for a one-epoch run), then the mean
    assert row["train_images_per_s"] == pytest.approx((110 + 80 + 90) / 3)
    assert row["seconds_per_epoch"] == pytest.approx((9.0 + 12.0 + 11.0) / 3)
    cost = cost_row("cvt-simplified", 4)
    assert row["params"] == cost["parameters"] and row["gflops"] == pytest.approx(cost["gflops"])
    assert row["latency_ms_batch1"] is None and row["peak_train_memory_mb"] > 0


def test_a_single_seed_has_no_std(real_run, tmp_path):
    [row] = compare_json(tmp_path, copy_run(real_run, tmp_path / "one"))
    assert row["seeds"] == 1 and row["top1_std"] is None and row["loss_std"] is None
    assert 0 <= row["top1_mean"] <= row["top5_mean"] <= 1


def test_runs_that_differ_in_more_than_seed_or_in_data_are_never_grouped(real_run, tmp_path):
    other_data = {**json.load(open(real_run / "config.json"))["data"], "classes_sha256": "0" * 16}
    runs = [copy_run(real_run, tmp_path / "a", seed=0), copy_run(real_run, tmp_path / "b", seed=1),
            copy_run(real_run, tmp_path / "lr", seed=2, lr=3e-3), copy_run(real_run, tmp_path / "data", seed=3, data=other_data),
            copy_run(real_run, tmp_path / "moved", seed=4, data_dir="elsewhere", log_every=7)]
    rows = compare_json(tmp_path, *runs)
    assert [row["runs"] for row in rows] == [[str(runs[0]), str(runs[1]), str(runs[4])], [str(runs[2])], [str(runs[3])]]
    assert rows[1]["recipe"] == "seed (lr 0.003, batch 16)"


def test_a_rows_recipe_label_says_what_the_run_changed_from_its_recipe_as_its_config_recorded(tmp_path):
    """vit-small-data's own batch (128) and warm-up (10% of the run) are no change; a batch given
    on the command line is, whatever the default table says."""
    data_dir = str(tmp_path / "data")  # one batch of 128
    assert prepare_data.main(["--synthetic", "--data-dir", data_dir, "--classes", "4", "--train-per-class", "32",
                              "--val-per-class", "5"]) == 0
    tiny_vit = ["--model", "vit", "--embed-dim", "16", "--depth", "1", "--num-heads", "2"]
    flags = ["--data-dir", data_dir, "--device", "cpu", "--epochs", "1", "--recipe", "vit-small-data", *tiny_vit]
    assert train.main([*flags, "--run-dir", str(tmp_path / "a"), "--eval-batch-size", "16"]) == 0
    config = json.load(open(tmp_path / "a" / "config.json"))
    assert compare.recipe_label(config) == "vit-small-data"
    assert compare.recipe_label({**config, "batch_size": 64, "lr": 3e-3}) == "vit-small-data (lr 0.003, batch 64)"
    assert compare.recipe_label({**config, "grad_accum": 2}) == "vit-small-data (grad-accum 2)"
    # and a run from before --grad-accum (nothing recorded) is a run without it: one row, not two
    older, accumulated = {key: value for key, value in config.items() if key != "grad_accum"}, {**config, "grad_accum": 2}
    keys = [compare.run_record(each, "a", "final", {}, None)["key"] for each in (older, config, accumulated)]
    assert keys[0] == keys[1] != keys[2]
    assert compare.recipe_label({key: value for key, value in config.items() if key != "recipe_defaults"}) == "vit-small-data"


def test_outputs_csv_plot_and_markdown_with_inference_timings(real_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = copy_run(real_run, tmp_path / "run")
    out = tmp_path / "out"
    assert compare.main([str(run), "--json", f"{out}.json", "--csv", f"{out}.csv", "--plot", f"{out}.png",
                         "--device", "cpu"]) == 0
    [row] = json.load(open(f"{out}.json"))
    assert row["latency_ms_batch1"] > 0 and row["images_per_s_batch256"] > 0
    [line] = list(csv.DictReader(open(f"{out}.csv")))
    assert list(line)[:len(CORE_KEYS)] == CORE_KEYS and float(line["top1_mean"]) == row["top1_mean"]
    assert open(f"{out}.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert table[0].startswith("| model | recipe | epochs | seeds | test top-1 % |") and len(table) == 3
    assert "SYNTHETIC" in table[2]


def test_time_budget_runs_group_by_their_budget_not_their_measured_plan(real_run, tmp_path):
    """Each seed of a --time-budget run measures its own plan (steps, warm-up, and so epochs): they
    are one row; another budget is another row."""
    plan = lambda steps, seconds: dict(steps=steps, warmup_epochs=steps / 60,  # noqa: E731
                                       budget_plan={"steps": steps, "costs": {"step_seconds": {"64": seconds}}})
    runs = [copy_run(real_run, tmp_path / "a", seed=0, time_budget=60, **plan(3876, 2.09)),
            copy_run(real_run, tmp_path / "b", seed=1, time_budget=60, **plan(3790, 2.15)),
            copy_run(real_run, tmp_path / "c", seed=2, time_budget=30, **plan(1900, 2.10))]
    rows = compare_json(tmp_path, *runs)
    assert [row["runs"] for row in rows] == [[str(runs[0]), str(runs[1])], [str(runs[2])]]


def test_reevaluation_evaluates_as_the_run_tested_with_flip_tta_in_bf16(prepared_once, tmp_path, capsys):
    run = tmp_path / "tta"
    assert train.main(["--data-dir", prepared_once, "--run-dir", str(run), "--device", "cpu", "--epochs", "1",
                       "--batch-size", "16", "--eval-batch-size", "16", "--tta", "flip", "--amp", "--eval-amp"]) == 0
    assert compare.main([str(run), "--reevaluate", "--no-speed", "--device", "cpu", "--batch-size", "16"]) == 0
    assert "differs" not in capsys.readouterr().err


def test_reevaluation_agrees_with_the_record_and_flags_a_run_that_does_not(real_run, tmp_path, capsys):
    recorded = json.load(open(real_run / "test_metrics.json"))["final"]
    rounding = copy_run(real_run, tmp_path / "rounding", test={"loss": recorded["loss"] * (1 + 1e-6)})
    older = json.load(open(rounding / "test_metrics.json"))
    del older["final"]["macro_f1"]  # as a run recorded before macro-F1 was: nothing to compare it with
    json.dump(older, open(rounding / "test_metrics.json", "w"))
    assert compare.main([str(rounding), "--reevaluate", "--no-speed", "--device", "cpu"]) == 0
    one_image = 1 / recorded["images"]
    tampered = copy_run(real_run, tmp_path / "tampered", seed=1, test={"top1": recorded["top1"] + one_image})
    out = tmp_path / "r.json"
    assert compare.main([str(rounding), str(tampered), "--reevaluate", "--no-speed", "--device", "cpu", "--json", str(out)]) == 1
    [row] = json.load(open(out))
    assert row["reevaluation_differs"] == [str(tampered)]
    assert row["top1_mean"] == recorded["top1"] and row["top1_std"] == 0  # the recomputed figures
    assert row["f1_mean"] == pytest.approx(recorded["macro_f1"])
    err = capsys.readouterr().err
    assert f"{tampered}: a re-evaluation of {tampered / 'last.pt'} differs" in err and "top1" in err


def test_best_weights_and_checkpoints_in_any_mix(real_run, tmp_path, capsys):
    recorded = json.load(open(real_run / "test_metrics.json"))
    [row] = compare_json(tmp_path, real_run, extra=("--no-speed", "--weights", "best"))
    assert row["top1_mean"] == recorded["best"]["top1"] and row["weights"] == "best"
    # the run's own last.pt is the same run: counted once
    rows = compare_json(tmp_path, real_run, real_run / "last.pt")
    assert len(rows) == 1 and rows[0]["seeds"] == 1 and "the same settings and seed" in capsys.readouterr().err
    # a checkpoint on its own is evaluated, and is a row of its own
    (tmp_path / "alone").mkdir()
    shutil.copy(real_run / "last.pt", tmp_path / "alone" / "model.pt")
    rows = compare_json(tmp_path, real_run, tmp_path / "alone" / "model.pt", extra=("--no-speed", "--device", "cpu"))
    assert [row["weights"] for row in rows] == ["final", "epoch 2"]
    assert rows[1]["top1_mean"] == recorded["final"]["top1"] and rows[1]["runs"] == [str(tmp_path / "alone" / "model.pt")]
    # the weights of an unfinished run are not a result
    unfinished = copy_run(real_run, tmp_path / "unfinished")
    json.dump({"state": "interrupted"}, open(unfinished / "status.json", "w"))
    assert compare.main([str(real_run), str(unfinished / "last.pt"), "--no-speed"]) == 0
    assert "its run is not finished (interrupted" in capsys.readouterr().err


def test_each_unusable_input_is_one_line_and_the_rest_is_compared(real_run, tmp_path, capsys):
    good = copy_run(real_run, tmp_path / "good")
    crashed = copy_run(real_run, tmp_path / "crashed")
    (crashed / "test_metrics.json").unlink()
    json.dump({"state": "crashed", "detail": "RuntimeError: boom"}, open(crashed / "status.json", "w"))
    running = copy_run(real_run, tmp_path / "running")  # (an extended run keeps the shorter run's test figures)
    json.dump({"state": "running", "pid": os.getpid(), "host": socket.gethostname()}, open(running / "status.json", "w"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    inputs = [good, crashed, running, tmp_path / "empty", tmp_path / "garbage.pt", tmp_path / "missing"]
    assert compare.main([*map(str, inputs), "--no-speed"]) == 0
    captured = capsys.readouterr()
    notes = captured.err.strip().splitlines()
    assert len([n for n in notes if n.startswith("left out: ")]) == 5, notes
    assert any("crashed has no test figures (crashed: RuntimeError: boom)" in n for n in notes)
    assert any("running has no test figures (running)" in n for n in notes)
    assert any("empty holds no train.py run" in n for n in notes) and any("missing does not exist" in n for n in notes)
    assert any("garbage.pt" in n and "not a PyTorch checkpoint" in n for n in notes)
    assert len([line for line in captured.out.splitlines() if line.startswith("| ")]) == 2  # header and the good run
    assert compare.main([str(tmp_path / "empty"), str(crashed)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "error: nothing to compare: no run with test figures among the paths given"


def test_runs_that_carry_corruption_rows_get_their_mean_ce_in_the_table(real_run, tmp_path, capsys):
    """robustness.py --corruptions --json RUN/corruptions.json: compare.py's row holds the mean
    corruption error over seeds (and the table a column for it); runs without the file have none."""
    first, second = copy_run(real_run, tmp_path / "s0", seed=0), copy_run(real_run, tmp_path / "s1", seed=1)
    assert robustness.main([str(first / "last.pt"), "--corruptions", "fog,contrast", "--severities", "1", "5",
                            "--limit", "8", "--json", str(first / "corruptions.json")]) == 0
    measured = json.load(open(first / "corruptions.json"))
    expected_first = sum(row["error"] for row in measured if row["corruption"] != "clean") / 4
    made_up = [{**row, "checkpoint": str(second / "last.pt"), "error": 0.5, "top1": 0.5} for row in measured]
    json.dump(made_up, open(second / "corruptions.json", "w"))
    [row] = compare_json(tmp_path, first, second)
    assert row["mean_ce_mean"] == pytest.approx((expected_first + 0.5) / 2) and row["mce_mean"] is None
    [plain] = compare_json(tmp_path, copy_run(real_run, tmp_path / "plain"))
    assert plain["mean_ce_mean"] is None
    capsys.readouterr()
    assert compare.main([str(first), str(second), "--no-speed"]) == 0
    assert "mean CE % (corruptions)" in capsys.readouterr().out
