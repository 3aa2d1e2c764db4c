"""Evaluating a model: loss, top-1 and top-5 over a loader (summed on the device, read once),
the confusion matrix and the class report (macro-F1, per-class accuracy, the most confused
pairs), inference throughput and peak memory, and the prepared data a checkpoint is evaluated on.
train.py validates and tests with it; evaluate.py, compare.py, robustness.py and explain.py
build on it. Not here: the command line (evaluate.py), loading checkpoints (checkpoint.py).
"""
import sys
import time
import warnings

import torch
import torch.nn.functional as F

from checkpoint import check_classes
from data import batch_buffer, is_laid_out_as_normalize, load_packed
from errors import DataError
from runtime import amp_dtype, autocast, synchronize


def pad_batch(x, size):
    """x with zero images appended up to `size`, made as normalize makes a batch when x is one
    of normalize's (a channels-last view of a flat buffer): torch.compile guards on the layout
    and, on torch 2.11 with CUDA, on an input being a view, so anything else is another graph."""
    if not is_laid_out_as_normalize(x):
        return torch.cat([x, x.new_zeros((size - len(x), *x.shape[1:]))])
    padded = batch_buffer(size, *x.shape[1:], like=x)
    padded[: len(x)] = x
    padded[len(x) :] = 0
    return padded


@torch.no_grad()
def evaluate(model, loader, device, dtype=None, pad_to=None, dist=None, num_classes=None):
    """{"loss", "top1", "top5", "images"} over the loader, and with num_classes a "confusion"
    matrix (rows: true class, columns: predicted). With pad_to, a last partial batch is
    zero-padded to that size so a compiled model sees one static shape. With dist, each rank
    holds a shard of the split and the sums are added over ranks: the result is the single
    process's, with every image counted once."""
    model.eval()
    # float32, not float64: Apple's MPS has none; counts stay exact up to 2**24 images
    sums = torch.zeros(4, device=device)  # loss, top-1 hits, top-5 hits, images
    confusion = torch.zeros((num_classes or 0) ** 2, device=device)
    for x, y in loader:
        n = len(y)
        if pad_to and n < pad_to:
            x = pad_batch(x, pad_to)
        with autocast(device, dtype):
            logits = model(x)[:n].float()
        top = top_predictions(logits)
        sums[0] += F.cross_entropy(logits, y, reduction="sum")
        sums[1:3] += hits(top, y)
        sums[3] += n
        if num_classes:
            # index_add_, not bincount: bincount's output size depends on the data, a sync on CUDA.
            confusion.index_add_(0, y * num_classes + top[:, 0], confusion.new_ones(n))
    if dist is not None:
        dist.all_reduce(sums)
        if num_classes:
            dist.all_reduce(confusion)
    loss, top1, top5, count = sums.tolist()  # one sync
    metrics = {"loss": loss / count, "top1": top1 / count, "top5": top5 / count, "images": int(count)}
    if num_classes:
        metrics["confusion"] = confusion.view(num_classes, num_classes).long().cpu()
    return metrics


TTA_CHOICES = ("none", "flip")


class FlipTTA(torch.nn.Module):
    """Test-time augmentation by horizontal flip: the mean of the logits of each image and of its
    mirror image (the training augmentation flips, so both are in-distribution)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.model_name = getattr(model, "model_name", None)

    def forward(self, x):
        return (self.model(x) + self.model(x.flip(3))) / 2


def evaluation_dtype(amp, checkpoint, device):
    """The autocast dtype to evaluate a checkpoint in (None: fp32): --amp as given; else as its
    run validated and tested (train.py --eval-amp under --amp: its dtype on the same kind of
    device, this device's own autocast dtype on another), else fp32."""
    if amp is not None:
        return amp_dtype(device, amp)
    config = checkpoint.get("config", {})
    if not (config.get("eval_amp") and config.get("amp_dtype")):
        return None
    same_kind = torch.device(config.get("device", "cpu")).type == device.type
    return amp_dtype(device, True, config["amp_dtype"] if same_kind else "auto")


def quantized_int8(model, device, dtype):
    """The model with its Linear layers quantized to int8 dynamically (weights int8 ahead of time,
    activations per batch; convolutions, LayerNorm and BatchNorm stay fp32): torch's CPU-only
    int8 inference (evaluate.py --quantize int8). torch deprecates these quantized modules in
    favour of torchao, without removing them as of 2.14."""
    if device.type != "cpu":
        raise DataError(f"--quantize int8 runs on the CPU (torch's quantized kernels): add --device cpu (not {device})")
    if dtype is not None:
        raise DataError("--quantize int8 replaces autocast: drop --amp (or give --no-amp)")
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError:
        raise DataError("this torch has no torch.ao.quantization.quantize_dynamic: --quantize int8 cannot run") from None
    with warnings.catch_warnings():  # the deprecation, once per layer: said once in the docs instead
        warnings.simplefilter("ignore")
        return quantize_dynamic(model.eval(), {torch.nn.Linear}, dtype=torch.qint8)


def with_tta(model, tta):
    """The model as evaluation sees it under --tta ("none" or None: itself)."""
    return FlipTTA(model) if tta == "flip" else model


def top_predictions(logits, k=5):
    """The k most likely classes per row, most likely first."""
    return logits.topk(min(k, logits.shape[1]), dim=1).indices


def hits(top, y):
    """(top-1 hits, top-k hits) as a device tensor."""
    correct = top == y[:, None]
    return torch.stack([correct[:, 0].sum(), correct.any(dim=1).sum()]).float()


def topk_correct(logits, y, k=5):
    """(top-1 hits, top-k hits) as a device tensor."""
    return hits(top_predictions(logits, k), y)


def class_report(confusion, classes, class_names, top=20):
    """Macro-F1, per-class accuracy and F1, and the most confused (true, predicted) pairs from a
    confusion matrix. Macro-F1 averages F1 over the classes that occur as a label or a
    prediction (scikit-learn's f1_score(average="macro") on the same predictions)."""
    confusion = confusion.double()
    support, predicted, correct = confusion.sum(1), confusion.sum(0), confusion.diagonal()
    f1 = 2 * correct / (support + predicted).clamp(min=1)
    present = (support + predicted) > 0
    per_class = [
        {"wnid": wnid, "name": name, "images": int(support[i]), "accuracy": (correct[i] / support[i]).item() if support[i] else None,
         "f1": f1[i].item()}
        for i, (wnid, name) in enumerate(zip(classes, class_names))
    ]
    mistakes = confusion.clone().fill_diagonal_(0).flatten()
    count = min(top, int((mistakes > 0).sum()))
    values, flat = mistakes.topk(count) if count else (mistakes[:0], mistakes[:0].long())
    confused = [
        {"true": classes[t], "true_name": class_names[t], "predicted": classes[p], "predicted_name": class_names[p],
         "images": int(v), "share_of_true": v.item() / support[t].item()}
        for v, t, p in zip(values, (flat // len(classes)).tolist(), (flat % len(classes)).tolist())
    ]
    return {"macro_f1": f1[present].mean().item() if present.any() else 0.0, "per_class": per_class, "most_confused": confused}


def evaluate_with_report(model, loader, device, data, dtype=None, pad_to=None, dist=None):
    """evaluate()'s figures plus macro-F1 (what train.py records, evaluate.py prints and
    compare.py re-evaluates), and class_report's whole report."""
    metrics = evaluate(model, loader, device, dtype, pad_to, dist, num_classes=len(data.classes))
    report = class_report(metrics.pop("confusion"), data.classes, data.class_names)
    return {**metrics, "macro_f1": report["macro_f1"]}, report


@torch.no_grad()
def measure_throughput(model, x, device, dtype, warmup=2, min_seconds=1.0, min_batches=5):
    """Inference images/s on one batch already in memory (the model alone, no data loading),
    timed after warmup batches and over at least min_seconds and min_batches."""
    model.eval()
    with autocast(device, dtype):
        for _ in range(warmup):
            model(x)
        synchronize(device)
        batches, start = 0, time.perf_counter()
        while batches < min_batches or time.perf_counter() - start < min_seconds:
            model(x)
            batches += 1
        synchronize(device)
    return batches * len(x) / (time.perf_counter() - start)


def peak_memory(device):
    """(megabytes, what was measured): CUDA memory allocated by tensors, or the process's peak
    resident memory on CPU (which includes the data it loaded), where the platform reports it
    (the Unix `resource` module); elsewhere (Windows) NaN, and the reason."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "peak CUDA memory allocated"
    try:
        import resource  # Unix only
    except ImportError:
        return float("nan"), "peak memory (not measured: this platform has no `resource` module)"
    kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform == "darwin" else 1)
    return kilobytes / 1024, "peak resident memory of the process"


def data_dir_of(checkpoint, data_dir=None):
    """The --data-dir given, else the one the checkpoint's run trained on, else data/."""
    return data_dir or checkpoint.get("config", {}).get("data_dir") or "data"


def checked_data(checkpoint, model, path, data_dir):
    """The prepared data in data_dir, checked to have the checkpoint's classes (with a warning on
    stderr when it is synthetic): what every script that evaluates a checkpoint runs it on."""
    data = load_packed(data_dir)
    check_classes(checkpoint, data.classes, path)
    if model.config.num_classes != len(data.classes):
        raise DataError(f"{path} predicts {model.config.num_classes} classes, the data in {data_dir}/ has {len(data.classes)}")
    if data.synthetic or checkpoint.get("synthetic"):
        print("warning: SYNTHETIC data (prepare_data.py --synthetic): a smoke test, not a result", file=sys.stderr)
    return data
