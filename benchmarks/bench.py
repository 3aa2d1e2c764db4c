"""Side-by-side speed of the notebook's pipeline and ours, in one run on one machine.

    python benchmarks/bench.py --data-dir data-mini --zip ../shared/data/tiny-imagenet-200-mini.zip

Prints a markdown table: loading, the train step in each mode, end-to-end training, the
share of the machine's matmul peak, and prepare_data.py's wall time. Ratios are what to read:
absolute numbers move with the machine and its load.
"""
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F
import torchvision
from torchvision.transforms import v2
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import notebook  # noqa: E402
from cli import ArgumentParser  # noqa: E402
from augment import Augmentation, Mixing  # noqa: E402
from constants import MEAN, STD  # noqa: E402
from data import BatchLoader, load_packed, make_splits  # noqa: E402
from errors import DataError  # noqa: E402
from layout import check_output_path, read_meta, write_json  # noqa: E402
from model import DEFAULT_MODEL, build_model, flops_per_image  # noqa: E402
from runtime import default_amp, maybe_compile, synchronize  # noqa: E402
from recipe import LRSchedule, Updater, build_optimizer  # noqa: E402
from totals import new_totals  # noqa: E402
from train import train_one_epoch  # noqa: E402

warnings.filterwarnings("ignore")  # the notebook's libraries are noisy; but --sync-debug's warnings must show:
warnings.filterwarnings("default", message=".*synchroniz")


def timed(fn, device):
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


# ---------------------------------------------------------------- the limit


def matmul_peak(dtype, device, size=2048, repeats=10):
    """FLOP/s of a large square matmul: what the machine can do at best."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    seconds = timed(lambda: [a @ b for _ in range(repeats)], device)
    return 2 * size**3 * repeats / seconds


# ---------------------------------------------------------------- loading


def endless(make_epoch):
    """Batches from epoch after epoch, so a small dataset serves any number of steps."""
    while True:
        yield from make_epoch()


def notebook_loader_rate(dataset_root, batch_size, workers, batches):
    loader = notebook.notebook_train_loader(dataset_root, batch_size, workers)
    iterator = endless(lambda: iter(loader))
    for _ in range(3):  # worker start-up is not counted
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def our_loader_rate(train_split, batch_size, device, batches, augmentation=Augmentation()):
    loader = BatchLoader(*train_split, batch_size, device, train=True, seed=0, augmentation=augmentation, num_classes=200)
    iterator = endless(loader.iterate)
    for _ in range(3):
        next(iterator)

    def run():
        for _ in range(batches):
            x, _ = next(iterator)
        return x

    return batches * batch_size / timed(run, device)


# ---------------------------------------------------------------- augmentation


TORCHVISION_POLICIES = {"randaugment": lambda: v2.RandAugment(2, 9),
                        "trivialaugment": v2.TrivialAugmentWide,
                        "autoaugment": v2.AutoAugment}


class PerImageDataset(torch.utils.data.Dataset):
    """The same uint8 training arrays, augmented image by image with torchvision.transforms.v2,
    as a DataLoader pipeline would be written: crop, flip, the policy, float, normalise, erase."""

    def __init__(self, images, labels, policy, erase):
        steps = [v2.RandomCrop(64, padding=4), v2.RandomHorizontalFlip(), *([TORCHVISION_POLICIES[policy]()] if policy else []),
                 v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
        self.transform = v2.Compose(steps + ([v2.RandomErasing(erase)] if erase else []))
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.transform(torch.from_numpy(self.images[index]).permute(2, 0, 1)), int(self.labels[index])


def torchvision_augmented_rate(train_split, batch_size, workers, batches, policy, erase=0.0, mix=False):
    """Images/s of torchvision's per-image pipeline in a DataLoader with `workers` processes
    (MixUp/CutMix, when on, on each collated batch in the main process, as torchvision documents)."""
    dataset = PerImageDataset(train_split[0].numpy() if torch.is_tensor(train_split[0]) else train_split[0],
                              train_split[1], policy, erase)
    loader = torch.utils.data.DataLoader(dataset, batch_size, shuffle=True, num_workers=workers, drop_last=True)
    mixing = v2.RandomChoice([v2.MixUp(alpha=0.8, num_classes=200), v2.CutMix(alpha=1.0, num_classes=200)])
    iterator = endless(lambda: iter(loader))
    for _ in range(3):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        x, y = next(iterator)
        if mix:
            mixing(x, y)
    rate = batches * batch_size / (time.perf_counter() - start)
    iterator.close()  # the workers stop here, not during the next measurement
    return rate


def augmentation_rows(row, train_split, device, workers, batches, step_rate):
    """Each policy (and the vit-small-data set) through our loader and through torchvision's
    per-image pipeline; the note gives what it adds to a training step of the default model."""
    plain = our_loader_rate(train_split, 64, device, batches)
    row("augmented loading, batch 64, crop + flip only (the notebook's)",
        torchvision_augmented_rate(train_split, 64, workers, batches, None), plain, "img/s",
        f"torchvision per image, {workers} workers")
    sets = [(policy, Augmentation(policy=policy), dict(policy=policy)) for policy in TORCHVISION_POLICIES]
    sets.append(("vit-small-data set (AutoAugment, erasing 0.25, MixUp/CutMix)",
                 Augmentation(policy="autoaugment", erase=0.25, mixing=Mixing(0.8, 1.0, 1.0, 0.5)),
                 dict(policy="autoaugment", erase=0.25, mix=True)))
    for name, augmentation, baseline_settings in sets:
        ours = our_loader_rate(train_split, 64, device, batches, augmentation)  # first: no worker processes about
        baseline = torchvision_augmented_rate(train_split, 64, workers, batches, **baseline_settings)
        share = (1 / ours - 1 / plain) * step_rate  # extra seconds per image, in steps' seconds per image
        row(f"augmented loading, batch 64, {name}", baseline, ours, "img/s",
            f"torchvision per image, {workers} workers; adds {share:.1%} to a default train step")


# ---------------------------------------------------------------- the train step


class RepeatedBatch:
    """A loader that yields one batch `steps` times: the step without data loading."""

    def __init__(self, x, y, steps):
        self.x, self.y, self.steps, self.epoch = x, y, steps, 0

    def __len__(self):
        return self.steps

    def iterate(self, start_step=0):
        for _ in range(start_step, self.steps):
            yield self.x, self.y


def notebook_steps(model, optimizer, batches):
    """The notebook's training_step body: forward, cross-entropy, backward, Adam."""
    model.train()
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def notebook_step_rate(batch_size, num_classes, device, steps):
    torch.manual_seed(0)
    model = notebook.CvTSimplifiedEmbedding(num_classes=num_classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch_size, 3, 64, 64, device=device)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    notebook_steps(model, optimizer, [(x, y)] * 3)
    return steps * batch_size / timed(lambda: notebook_steps(model, optimizer, [(x, y)] * steps), device)


def our_training(num_classes, device, amp, compile_model, model_name=DEFAULT_MODEL):
    torch.manual_seed(0)
    model = build_model(model_name, num_classes).to(device)
    optimizer = build_optimizer(model, "adam", 1e-3, 0.0, device)
    dtype = torch.bfloat16 if amp else None
    # The notebook's recipe as train.py runs it: Adam 1e-3, constant, no clipping or EMA.
    updater = Updater(optimizer, torch.amp.GradScaler(device.type, enabled=False), LRSchedule("constant", 1e-3, 0.0, 0, 1))
    return maybe_compile(model, compile_model), updater, dtype


def run_epoch(model, loader, updater, device, dtype):
    with tqdm(total=len(loader), disable=True) as bar:
        return train_one_epoch(model, loader, updater, device, dtype, new_totals(device), 0, 10**9, bar)


def our_step_rate(batch_size, num_classes, device, steps, amp, compile_model, model_name=DEFAULT_MODEL, warmup=3):
    model, updater, dtype = our_training(num_classes, device, amp, compile_model, model_name)
    x = torch.randn(batch_size, 3, 64, 64, device=device)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    run_epoch(model, RepeatedBatch(x, y, warmup), updater, device, dtype)  # warm-up, compilation
    seconds = timed(lambda: run_epoch(model, RepeatedBatch(x, y, steps), updater, device, dtype), device)
    return steps * batch_size / seconds


# ---------------------------------------------------------------- end to end


def notebook_end_to_end(dataset_root, batch_size, workers, num_classes, device, steps):
    """The notebook's loop: its DataLoader (workers share the CPU with training), its model, Adam."""
    torch.manual_seed(0)
    model = notebook.CvTSimplifiedEmbedding(num_classes=num_classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = notebook.notebook_train_loader(dataset_root, batch_size, workers)
    iterator = endless(lambda: iter(loader))

    def batches(n):
        for _ in range(n):
            x, y = next(iterator)
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    notebook_steps(model, optimizer, batches(3))
    return steps * batch_size / timed(lambda: notebook_steps(model, optimizer, batches(steps)), device)


def our_end_to_end(train_split, batch_size, num_classes, device, steps, amp, compile_model):
    """train.py's loop (train_one_epoch + BatchLoader) over steps batches of real data."""
    model, updater, dtype = our_training(num_classes, device, amp, compile_model)
    x, y = train_split
    steps = min(steps, len(y) // batch_size)
    loader = BatchLoader(x[: steps * batch_size], y[: steps * batch_size], batch_size, device, train=True, seed=0)
    warm = BatchLoader(x[: 3 * batch_size], y[: 3 * batch_size], batch_size, device, train=True, seed=1)
    run_epoch(model, warm, updater, device, dtype)
    return steps * batch_size / timed(lambda: run_epoch(model, loader, updater, device, dtype), device)


# ---------------------------------------------------------------- preparation


def notebook_prepare_seconds(zip_path):
    """The notebook's extract_data + process_validation_set on a fresh copy of the zip."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        shutil.unpack_archive(zip_path, tmp)
        root = os.path.join(tmp, "tiny-imagenet-200")
        with open(os.path.join(root, "val", "val_annotations.txt")) as f:
            img_to_class = {line.split("\t")[0]: line.split("\t")[1] for line in f}
        for img_name, class_name in img_to_class.items():
            class_folder = os.path.join(root, "val_processed", class_name)
            os.makedirs(class_folder, exist_ok=True)
            shutil.copy(os.path.join(root, "val", "images", img_name), os.path.join(class_folder, img_name))
        return time.perf_counter() - start


def our_prepare_seconds(zip_path):
    """prepare_data.py as a user runs it: (cold seconds, second no-op run's seconds, images packed)."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, os.path.join(ROOT, "prepare_data.py"), "--zip", zip_path, "--data-dir", tmp]
        times = []
        for _ in range(2):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        counts = read_meta(tmp)["counts"]
        return times[0], times[1], counts["train"] + counts["val"]


# ---------------------------------------------------------------- the report


def parse_args(argv):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="prepared by prepare_data.py (its extracted folder is used too)")
    parser.add_argument("--zip", help="time prepare_data.py and the notebook's extraction on this zip "
                        "(default: DATA_DIR/tiny-imagenet-200.zip, else ../shared/data/tiny-imagenet-200-mini.zip)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--large-batch", type=int, default=256, help="the second batch size timed")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the notebook's loader")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where to time")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile modes (quick check)")
    parser.add_argument("--json", help="also write the numbers as JSON")
    parser.add_argument("--augmentation-only", action="store_true",
                        help="only the augmentation rows (each policy against torchvision's per-image pipeline)")
    parser.add_argument("--sync-debug", choices=("warn", "error"),
                        help="CUDA: torch.cuda.set_sync_debug_mode, to find host-device syncs (each is a warning or an error)")
    return parser, parser.parse_args(argv)


class Table:
    """The side-by-side rows, printed as they are measured and kept for the table and --json."""

    def __init__(self, device):
        self.rows, self.results = [], {"machine": machine_description(device)}

    def row(self, what, notebook_value, our_value, unit, note=""):
        ratio = our_value / notebook_value if notebook_value else float("nan")
        if unit == "s":
            ratio = notebook_value / our_value
        self.rows.append((what, notebook_value, our_value, unit, ratio, note))
        self.results[what] = {"notebook": notebook_value, "ours": our_value, "unit": unit, "speed-up": ratio}
        print(f"  {what}: notebook {notebook_value:,.1f}, ours {our_value:,.1f} {unit} ({ratio:.1f}x) {note}", flush=True)


def main(argv=None):
    parser, args = parse_args(argv)
    try:
        if args.json:
            check_output_path(args.json, "--json")
        data = load_packed(args.data_dir)
    except DataError as error:
        parser.exit(2, f"error: {error}\n")
    device = torch.device(args.device)
    if args.sync_debug and device.type == "cuda":
        torch.cuda.set_sync_debug_mode(args.sync_debug)
    train_split, num_classes = make_splits(data)["train"], len(data.classes)
    table = Table(device)
    print("measuring (a few minutes on 2 CPU cores)...", flush=True)
    default = (default_amp(device), device.type == "cuda")  # what train.py does without flags here
    flops = peaks = None
    if args.augmentation_only:
        step_rate = our_step_rate(64, num_classes, device, args.steps, *default)
    else:
        flops, peaks, step_rate = speed_rows(table, args, train_split, num_classes, device, default)
    augmentation_rows(table.row, train_split, device, args.workers, 2 * args.steps, step_rate)
    if not args.augmentation_only:
        prepare_row(table, args)
    print_table(table.rows, table.results, flops, peaks)
    if args.json:
        write_json(args.json, table.results, default=str)
    return 0


def speed_rows(table, args, train_split, num_classes, device, default):
    """The loader, the train step at two batch sizes and end to end, each mode against the
    notebook's; returns (FLOPs per training image, the matmul peaks, the default mode's rate)."""
    dataset_root = os.path.join(args.data_dir, "tiny-imagenet-200")
    batches = max(args.steps, 20)
    table.row("loading, batch 64", notebook_loader_rate(dataset_root, 64, args.workers, batches),
              our_loader_rate(train_split, 64, device, batches * 5), "img/s", f"notebook: {args.workers} workers")
    flops = flops_per_image(build_model(DEFAULT_MODEL, num_classes), backward=True)
    peaks = {"fp32": matmul_peak(torch.float32, device), "bf16": matmul_peak(torch.bfloat16, device)}
    table.results.update(flops_per_image_train=flops, matmul_peak=peaks)
    modes = [
        (f"{'compiled' if compile_model else 'eager'} {'bf16' if amp else 'fp32'}"
         f"{' (train.py default here)' if (amp, compile_model) == default else ''}", amp, compile_model)
        for compile_model in ((False,) if args.no_compile else (False, True)) for amp in (False, True)
    ]
    step_rates = {}
    for batch_size in (64, args.large_batch):
        baseline = notebook_step_rate(batch_size, num_classes, device, args.steps)
        steps = max(4, args.steps * 64 // batch_size)
        for name, amp, compile_model in modes:
            rate = our_step_rate(batch_size, num_classes, device, steps, amp, compile_model)
            step_rates[(name, batch_size)] = rate
            share = flops * rate / peaks["fp32"]
            table.row(f"train step, batch {batch_size}, {name}", baseline, rate, "img/s", f"{share:.0%} of fp32 peak")
        table.results[f"notebook step share of fp32 peak, batch {batch_size}"] = flops * baseline / peaks["fp32"]
    baseline = notebook_end_to_end(dataset_root, 64, args.workers, num_classes, device, args.steps)
    for name, amp, compile_model in modes:
        rate = our_end_to_end(train_split, 64, num_classes, device, args.steps, amp, compile_model)
        table.row(f"end to end, batch 64, {name}", baseline, rate, "img/s")
    default_name = next(name for name, amp, compile_model in modes if (amp, compile_model) == default)
    return flops, peaks, step_rates[(default_name, 64)]


def prepare_row(table, args):
    """prepare_data.py against the notebook's extraction and restructuring, on the zip."""
    args.zip = args.zip or next((z for z in default_zips(args.data_dir) if os.path.isfile(z)), None)
    if not args.zip:
        print("  prepare: skipped, no zip found (pass --zip)", flush=True)
        return
    notebook_seconds = notebook_prepare_seconds(args.zip)
    cold, again, images = our_prepare_seconds(args.zip)
    table.row("prepare (notebook: extract + restructure only)", notebook_seconds, cold, "s",
              f"ours packs too; {cold / images * 1e6:.0f} us/image; second run {again:.2f} s")
    table.results["prepare_second_run_s"] = again


def default_zips(data_dir):
    return [os.path.join(data_dir, "tiny-imagenet-200.zip"),
            os.path.join(ROOT, "..", "shared", "data", "tiny-imagenet-200-mini.zip")]


def machine_description(device):
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads"
    return f"{hardware}; torch {torch.__version__}, torchvision {torchvision.__version__}, Python {platform.python_version()}"


def print_table(rows, results, flops, peaks):
    print(f"\n{results['machine']}")
    if flops:
        print(f"model: {flops / 1e6:.1f} MFLOP per image (forward + backward); matmul peak: "
              f"fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
    print("(augmented loading: the 'notebook' column is torchvision.transforms.v2 per image)\n")
    print("| measurement | notebook | ours | unit | ours vs notebook | note |")
    print("| --- | ---: | ---: | --- | ---: | --- |")
    for what, notebook_value, our_value, unit, ratio, note in rows:
        print(f"| {what} | {notebook_value:,.1f} | {our_value:,.1f} | {unit} | {ratio:.1f}x | {note} |")
    for key, value in results.items():
        if key.startswith("notebook step share"):
            print(f"\n{key}: {value:.0%}", end="")
    print()


if __name__ == "__main__":
    main()
