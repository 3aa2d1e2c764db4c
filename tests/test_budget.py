"""--steps and --time-budget: a run of a fixed number of steps (the last epoch partial), and a
wall-clock budget turned into such a run by a measured probe, planned once and resumed exactly."""
import csv
import json
import math

import pytest
import torch

import budget
import train
import train_flags
from budget import Costs, plan_steps, planned_seconds, train_seconds
from conftest import assert_same_training_state, signal_during_training
from data import BatchLoader, ResolutionSchedule
from errors import DataError

FAST = ["--batch-size", "16", "--eval-batch-size", "16", "--log-every", "2", "--device", "cpu",
        "--embed-dim", "16", "--depth", "1"]  # 96 training images: 6 steps an epoch
SLOW_MACHINE = Costs(step_seconds={32: 0.2, 64: 0.4}, eval_image_seconds=0.004, first_call_seconds=0.5)


def load(path):
    return torch.load(path, weights_only=True)


def test_each_phase_costs_its_steps_as_the_resolution_schedule_counts_them():
    seconds = {24: 1.0, 40: 10.0, 64: 100.0}
    phases = ((24, 0.3), (40, 0.75))
    for steps in (1, 2, 3, 7, 10, 33, 101):
        schedule = ResolutionSchedule(phases, steps)
        assert train_seconds(steps, phases, seconds) == sum(seconds[schedule(step)] for step in range(steps))
    assert train_seconds(10, (), {64: 0.5}) == 5.0


def test_the_plan_is_the_most_steps_that_fit_what_is_left_of_the_budget():
    costs, phases = SLOW_MACHINE, ((32, 0.5),)
    plan = plan_steps(5, 20.0, costs, phases, steps_per_epoch=100, val_images=2000, test_images=8000)
    available = 5 * 60 * (1 - budget.HEADROOM) - 20.0
    cost = lambda steps: planned_seconds(steps, 100, phases, costs, 2000, 8000)  # noqa: E731
    assert cost(plan.steps) <= available < cost(plan.steps + 1)
    assert plan.epochs == math.ceil(plan.steps / 100)
    assert plan.estimated_minutes == pytest.approx((20.0 + cost(plan.steps)) / 60)
    # each epoch's validation is in the plan: 2,000 images at 4 ms, once for each epoch begun
    at_64 = lambda steps: planned_seconds(steps, 100, (), costs, 2000, 8000)  # noqa: E731
    assert at_64(100) - at_64(99) == pytest.approx(0.4)
    assert at_64(101) - at_64(100) == pytest.approx(0.4 + 2000 * 0.004 + 8000 * 0.004)  # and best.pt may be tested


def test_a_budget_too_short_for_one_step_says_so_in_one_line():
    with pytest.raises(DataError, match=r"^--time-budget 0.1 is too short: setting up took 6 s and one step with its "
                                        r"validation and the test takes 1 s more; give at least 0.12 minutes$"):
        plan_steps(0.1, 6.0, SLOW_MACHINE, (), steps_per_epoch=6, val_images=8, test_images=32)


@pytest.mark.parametrize("flags, said", [
    (["--epochs", "3", "--time-budget", "5"], "--epochs and --time-budget each say how long the run is: give one"),
    (["--steps", "30", "--epochs", "3"], "--epochs and --steps each say how long the run is: give one"),
    (["--time-budget", "0"], "--time-budget must be a positive number of minutes, got 0.0"),
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--resume", "last.pt", "--time-budget", "5"], "--time-budget plans a new run; --resume continues a run as it was planned"),
])
def test_conflicting_or_bad_length_flags_are_one_line(flags, said, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_flags.parse_args(flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and said in err[0]


def test_a_steps_run_trains_exactly_its_steps_its_last_epoch_partial(prepared_once, tmp_path, capsys):
    """15 steps of 6 per epoch: epochs 1, 2 whole, epoch 3 of 3 steps; the lr schedule spans the 15."""
    run_dir = tmp_path / "run"
    flags = ["--steps", "15", "--optimizer", "sgd", "--lr", "0.1", "--lr-schedule", "linear", "--warmup-epochs", "10%"]
    assert train.main(["--data-dir", prepared_once, "--run-dir", str(run_dir), *FAST, *flags]) == 0
    config, saved = json.load(open(run_dir / "config.json")), load(run_dir / "last.pt")
    assert (config["steps"], config["epochs"], config["warmup_epochs"]) == (15, 3, pytest.approx(0.25))
    assert saved["progress"]["step"] == 15 and saved["schedule"]["total_steps"] == 15
    assert [row["epoch"] for row in saved["progress"]["history"]] == [1, 2, 3]
    elapsed = [float(row["elapsed_minutes"]) for row in csv.DictReader(open(run_dir / "metrics.csv"))]
    tested = json.load(open(run_dir / "test_metrics.json"))["final"]["elapsed_minutes"]
    assert 0 < elapsed[0] <= elapsed[1] <= elapsed[2] <= tested  # wall minutes since train.py started (to 6 ms)
    assert train.main(["--resume", str(run_dir / "last.pt"), "--epochs", "4"]) == 2  # its length is its steps
    capsys.readouterr()
    assert train.main(["--resume", str(run_dir / "last.pt")]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_a_time_budget_run_measures_and_records_its_plan(prepared_once, tmp_path, monkeypatch, capsys):
    """The real probe, on this machine: every side the run trains at is measured, and the plan
    (its steps, the epochs they span, the warm-up as their share) is recorded before the first step
    (the run is stopped in its third epoch; the probe only ever takes the first epoch's batches: the
    rest is any --steps run's)."""
    run_dir = tmp_path / "run"
    signal_during_training(monkeypatch, epoch=2, step=0)
    assert train.main(["--data-dir", prepared_once, "--run-dir", str(run_dir), *FAST, "--low-res", "32:50%",
                       "--warmup-epochs", "10%", "--time-budget", "5"]) == 130
    config = json.load(open(run_dir / "config.json"))
    plan = config["budget_plan"]
    assert set(plan["costs"]["step_seconds"]) == {"32", "64"} and plan["costs"]["eval_image_seconds"] > 0
    assert config["steps"] == plan["steps"] > 6 and config["epochs"] == math.ceil(plan["steps"] / 6)
    assert plan["estimated_minutes"] <= 5 * (1 - budget.HEADROOM)
    assert config["warmup_epochs"] == pytest.approx(0.1 * plan["steps"] / 6)  # 10% of the planned run
    assert f"planned {plan['steps']:,} steps" in capsys.readouterr().out


def test_a_budget_run_stopped_at_low_resolution_resumes_exactly_as_the_steps_run_it_planned(prepared_once, tmp_path,
                                                                                             monkeypatch, capsys):
    """Planned on a slow machine's costs, stopped at step 14 (32 px, in the third epoch: the probe,
    which takes the first epoch's batches over and over, never reaches it), resumed across the switch to
    64 px: it equals a straight --steps run of the steps it planned (the probe, which really runs
    and draws dropout masks, left the random generators as they were)."""
    measure = budget.measure_costs

    def probe_then_plan_as_a_slow_machine(*args):
        measure(*args)
        return SLOW_MACHINE

    monkeypatch.setattr(budget, "measure_costs", probe_then_plan_as_a_slow_machine)
    flags = [*FAST, "--low-res", "32:50%"]
    with monkeypatch.context() as patch:
        signal_during_training(patch, epoch=2, step=2)
        assert train.main(["--data-dir", prepared_once, "--run-dir", str(tmp_path / "budget"), *flags,
                           "--time-budget", "0.5"]) == 130
    assert train.main(["--resume", str(tmp_path / "budget" / "last.pt"), "--device", "cpu"]) == 0
    assert "min from the start of train.py to the end of its test, for a --time-budget of 0.5 min (with the earlier " \
           "processes' minutes to their last finished epoch)" \
        in capsys.readouterr().out
    steps = json.load(open(tmp_path / "budget" / "config.json"))["steps"]
    assert steps > 2 * 15  # (so that it stopped at 32 px, and switched to 64 px later)
    assert train.main(["--data-dir", prepared_once, "--run-dir", str(tmp_path / "straight"), *flags,
                       "--steps", str(steps)]) == 0
    assert_same_training_state(load(tmp_path / "straight" / "last.pt"), load(tmp_path / "budget" / "last.pt"))


def test_the_probe_warms_every_side_up_before_timing_and_a_slow_first_round_does_not_set_the_plan(monkeypatch):
    """Every side's warm-up steps come before any timed step; then each side is timed in each of
    PROBE_ROUNDS rounds, and its cost is the lowest round's median: a first round that ran at half
    speed (as the first seconds of a process can) does not shorten the plan."""
    images, labels = torch.randint(0, 256, (32, 64, 64, 3), dtype=torch.uint8), torch.arange(32) % 4  # (NHWC, as packed)
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 4))
    sides, seen = [32, 64], []
    warmup_steps, round_steps = budget.PROBE_WARMUP * len(sides), budget.PROBE_STEPS * len(sides)

    def step_at_half_speed_in_the_first_round(model, updater, batches, step, device, dtype):
        side = next(batches)[0].shape[-1]
        seen.append(side)
        return {32: 0.1, 64: 0.3}[side] * (2 if step < warmup_steps + round_steps else 1)

    monkeypatch.setattr(budget, "time_step", step_at_half_speed_in_the_first_round)
    costs = budget.measure_costs(model, None, BatchLoader(images, labels, 8, "cpu", train=True),
                                 BatchLoader(images[:8], labels[:8], 8, "cpu"), sides, torch.device("cpu"), None, "none", None)
    warmups = [side for side in sides for _ in range(budget.PROBE_WARMUP)]
    timed = [side for side in sides for _ in range(budget.PROBE_STEPS)]
    assert budget.PROBE_ROUNDS >= 2 and seen == warmups + timed * budget.PROBE_ROUNDS
    assert costs.step_seconds == {32: pytest.approx(0.1), 64: pytest.approx(0.3)}
    assert costs.first_call_seconds >= budget.PROBE_WARMUP * (0.1 + 0.3) - 1e-9  # the warm-up's extra cost, counted
