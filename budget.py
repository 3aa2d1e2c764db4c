"""Fitting a run to a wall-clock budget (train.py --time-budget MINUTES): a short probe measures
what a training step costs at each side the run trains at and what evaluation costs per image;
plan_steps turns that into a number of steps, fixed up front and recorded in config.json. From
then on the run is an ordinary run of that many steps (its LR and resolution are functions of the
step), so a resumed run continues it exactly. Not in the plan: each epoch's bookkeeping
(checkpoints, metrics.csv), a second or so an epoch, which HEADROOM covers for epochs of minutes.
Not here: the loop itself (train.py).
"""
import copy
import itertools
import math
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from constants import IMAGE_SIZE
from data import BatchLoader, ResolutionSchedule
from errors import DataError
from evaluation import evaluate, with_tta
from runtime import maybe_compile

HEADROOM = 0.03  # share of the budget left unplanned: this machine's speed drifts by a few percent
# The probe warms every side up (PROBE_WARMUP steps each: first-call costs) before it times any,
# then times PROBE_STEPS steps a side in each of PROBE_ROUNDS rounds over the sides; a side's cost
# is the lowest of its rounds' medians. Timing each side once, right after its warm-up, planned
# 10-20% short on this CPU (0.52-0.61 s for a 32 px step that the runs trained at 0.46: the first
# side timed carried the process's start; a step now and then runs slow).
PROBE_STEPS, PROBE_WARMUP, PROBE_ROUNDS = 8, 3, 2


@dataclass
class Costs:
    """What the probe measured: seconds per training step at each side, seconds per evaluated image."""

    step_seconds: dict  # side -> seconds
    eval_image_seconds: float
    first_call_seconds: float  # what the first steps and evaluation cost beyond the rest (compilation)


@dataclass
class Plan:
    steps: int
    epochs: int
    minutes: float  # the budget
    costs: dict  # Costs, as measured
    estimated_minutes: float  # what the plan should take, from the start of train.py

    def record(self):
        return asdict(self)


def train_seconds(steps, phases, step_seconds):
    """Seconds for `steps` training steps under the resolution phases ((side, end), ...), each
    phase's steps at its side's measured cost (data.ResolutionSchedule's rule: `side` while
    step < end * steps; IMAGE_SIZE after the last phase)."""
    bounds = [0, *(min(math.ceil(end * steps), steps) for _, end in phases), steps]
    sides = [side for side, _ in phases] + [IMAGE_SIZE]
    return sum((stop - begin) * step_seconds[side] for begin, stop, side in zip(bounds, bounds[1:], sides))


def planned_seconds(steps, steps_per_epoch, phases, costs, val_images, test_images):
    """Training, one validation per epoch (the last one may be partial) and the test, in seconds.
    In a run of two epochs or more the test counts twice: train.py also tests best.pt when its
    epoch was not the last."""
    epochs = math.ceil(steps / steps_per_epoch)
    evaluated = epochs * val_images + (2 if epochs > 1 else 1) * test_images
    return (train_seconds(steps, phases, costs.step_seconds) + evaluated * costs.eval_image_seconds
            + costs.first_call_seconds)


def plan_steps(minutes, spent_seconds, costs, phases, steps_per_epoch, val_images, test_images):
    """The most steps whose planned time fits what is left of the budget (less HEADROOM), or a
    DataError saying the budget is too short for one step."""
    available = minutes * 60 * (1 - HEADROOM) - spent_seconds

    def fits(steps):
        return planned_seconds(steps, steps_per_epoch, phases, costs, val_images, test_images) <= available

    if not fits(1):
        one_step = planned_seconds(1, steps_per_epoch, phases, costs, val_images, test_images)
        need = (spent_seconds + one_step) / 60 / (1 - HEADROOM)
        raise DataError(f"--time-budget {minutes:g} is too short: setting up took {spent_seconds:.0f} s and one step with "
                        f"its validation and the test takes {one_step:.0f} s more; give at least {need:.2g} minutes")
    low, high = 1, 2
    while fits(high):  # planned time grows with the steps: double, then bisect
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    planned = planned_seconds(low, steps_per_epoch, phases, costs, val_images, test_images)
    return Plan(low, math.ceil(low / steps_per_epoch), minutes, asdict(costs), (spent_seconds + planned) / 60)


def measure_costs(model, updater, train_loader, eval_loader, sides, device, dtype, tta, eval_dtype):
    """Costs, measured with `model` and `updater` (copies the run does not use: the probe trains
    them) on the run's own batches at each side, and on eval_loader's images as validation sees
    them (in eval_dtype, None: fp32, with the run's TTA)."""
    loader = copy.copy(train_loader)
    batches, steps = probe_batches(loader), itertools.count()

    def seconds_of_steps(side, count):
        loader.resolution = ResolutionSchedule(((side, 1.0),), 2**62) if side < IMAGE_SIZE else None
        return [time_step(model, updater, batches, next(steps), device, dtype) for _ in range(count)]

    warmup = {side: sum(seconds_of_steps(side, PROBE_WARMUP)) for side in sides}
    rounds = [{side: statistics.median(seconds_of_steps(side, PROBE_STEPS)) for side in sides} for _ in range(PROBE_ROUNDS)]
    step_seconds = {side: min(medians[side] for medians in rounds) for side in sides}
    first_calls = sum(max(warmup[side] - PROBE_WARMUP * step_seconds[side], 0.0) for side in sides)
    evaluated = with_tta(model, tta)
    start = time.perf_counter()
    evaluate(evaluated, eval_loader, device, eval_dtype)
    eval_warmup = time.perf_counter() - start
    start = time.perf_counter()
    images = evaluate(evaluated, eval_loader, device, eval_dtype)["images"]
    eval_image_seconds = (time.perf_counter() - start) / images
    first_calls += max(eval_warmup - images * eval_image_seconds, 0.0)
    return Costs(step_seconds, eval_image_seconds, first_calls)


def probe_batches(loader):
    """The batches of the loader's first epoch, over and over (the probe may take more steps than
    a small data set's epoch has; it never reaches an epoch the run's own hooks could act on)."""
    while True:
        loader.set_epoch(0)
        yield from loader.iterate(0)


def time_step(model, updater, batches, step, device, dtype):
    """Seconds of one training step, from fetching its batch to its loss on the host."""
    model.train()
    start = time.perf_counter()
    x, y = next(batches)
    _, loss, _ = updater.train_step(model, x, y, step, device, dtype)
    loss.item()  # (a sync: on a GPU the step is done when the clock stops)
    return time.perf_counter() - start


def fit_to_budget(args, model, make_updater, train_loader, splits, device, dtype, dist, started):
    """Plan a new run for --time-budget: measure (on a copy of the model), plan its steps, and set
    args.steps and args.budget_plan (train_flags.resolve_length does the rest).
    Every rank plans from rank 0's measurements (so all make the same plan, or raise the same
    error). `started`: time.monotonic() at the start of train.py's main()."""
    probe, probe_args = copy.deepcopy(model), copy.copy(args)
    probe_args.warmup_epochs = 0.0  # (a percentage is resolved once the plan is made; the probe needs none)
    sample = [tensor[:2 * args.eval_batch_size] for tensor in splits["val"]]
    sides = [side for side, _ in ResolutionSchedule.parse(args.low_res)] + [IMAGE_SIZE]
    # The probe's dropout draws from the global generator: forked, so that the run that follows
    # is exactly the --steps run of its planned steps.
    accelerators = [device] if device.type != "cpu" else []
    with torch.random.fork_rng(accelerators, device_type=device.type if accelerators else "cuda"):
        costs = measure_costs(maybe_compile(probe, args.compile, args.compile_mode), make_updater(probe_args, probe),
                              train_loader, BatchLoader(*sample, args.eval_batch_size, device), sides, device, dtype, args.tta,
                              dtype if args.eval_amp else None)
    del probe
    if device.type == "cuda":  # the probe's copies are no part of the run's peak memory
        torch.cuda.reset_peak_memory_stats(device)
    costs, spent = dist.all_gather((costs, time.monotonic() - started))[0]
    shard = dist.world_size  # (each process evaluates its share of the splits)
    plan = plan_steps(args.time_budget, spent, costs, ResolutionSchedule.parse(args.low_res),
                      len(train_loader), len(splits["val"][1]) / shard, len(splits["test"][1]) / shard)
    args.steps, args.budget_plan = plan.steps, plan.record()
    args.notes.append(describe_plan(plan, len(train_loader)))
    return plan


def describe_plan(plan, steps_per_epoch):
    measured = ", ".join(f"{seconds:.3g} s per step at {side} px" for side, seconds in plan.costs["step_seconds"].items())
    return (f"--time-budget {plan.minutes:g} min: measured {measured}, {plan.costs['eval_image_seconds'] * 1e3:.3g} ms per "
            f"evaluated image; planned {plan.steps:,} steps ({plan.steps / steps_per_epoch:.2f} epochs), "
            f"{plan.estimated_minutes:.1f} min in all")
