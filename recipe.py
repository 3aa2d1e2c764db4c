"""How the weights are updated: named recipes, the optimizer, the learning-rate schedule,
gradient clipping and an exponential moving average (EMA) of the weights.

    --recipe seed      the notebook's: Adam, lr 1e-3, constant (the default)
    --recipe study     what the notebook's authors moved to later: AdamW lr 1e-4, weight decay
                       1e-3, label smoothing 0.1, 5 warm-up epochs from 1e-6, cosine to 1e-6
    --recipe improved  chosen by measurement on the real mini data (benchmarks/README.md, "Recipes"): AdamW
                       lr 5e-3, weight decay 0.05, 1 warm-up epoch from 1e-5, cosine to 1e-5,
                       label smoothing 0.1, gradient norm clipped at 1
    --recipe vit-small-data  the literature's for small ViTs on Tiny ImageNet (DeiT's, as Lee et
                       al. 2021 use it): AdamW lr 1e-3, weight decay 0.05, batch 128, 10% warm-up,
                       cosine, label smoothing 0.1, stochastic depth 0.1, AutoAugment, MixUp 0.8 /
                       CutMix 1.0 (switching with probability 0.5), random erasing 0.25, repeated
                       augmentation 3
    --recipe speedrun  the CPU hour's candidate (issue 28): the convnet, SGD Nesterov lr 0.1,
                       weight decay 5e-4, batch 128, 3% warm-up, linear to 0, smoothing 0.2,
                       32 px for 90% of the steps then 64, flip TTA, evaluation in the training's
                       autocast; give it --time-budget MINUTES

A preset only sets defaults: any flag given explicitly overrides it.
"""
import contextlib
import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from runtime import autocast

AUGMENTATION_FLAGS = ("randaugment", "trivialaugment", "autoaugment", "random_erase", "mixup", "cutmix",
                      "mix_prob", "mix_switch_prob", "repeat_aug")
RECIPE_FLAGS = ("optimizer", "lr", "weight_decay", "lr_schedule", "warmup_epochs", "min_lr",
                "label_smoothing", "grad_clip", "ema_decay", "low_res", *AUGMENTATION_FLAGS)
NO_AUGMENTATION = dict(randaugment=None, trivialaugment=False, autoaugment=False, random_erase=0.0, mixup=0.0,
                       cutmix=0.0, mix_prob=1.0, mix_switch_prob=0.5, repeat_aug=1, low_res="")  # (and full size)
PRESETS = {
    "seed": dict(optimizer="adam", lr=1e-3, weight_decay=0.0, lr_schedule="constant", warmup_epochs=0.0,
                 min_lr=0.0, label_smoothing=0.0, grad_clip=0.0, ema_decay=0.0, **NO_AUGMENTATION),
    "study": dict(optimizer="adamw", lr=1e-4, weight_decay=1e-3, lr_schedule="cosine", warmup_epochs=5.0,
                  min_lr=1e-6, label_smoothing=0.1, grad_clip=0.0, ema_decay=0.0, **NO_AUGMENTATION),
    "improved": dict(optimizer="adamw", lr=5e-3, weight_decay=0.05, lr_schedule="cosine", warmup_epochs=1.0,
                     min_lr=1e-5, label_smoothing=0.1, grad_clip=1.0, ema_decay=0.0, **NO_AUGMENTATION),
    # DeiT's recipe as Lee et al. (2021) train small ViTs on Tiny ImageNet: the warm-up is 10% of
    # --epochs, stochastic depth 0.1 is set on models that have it (--drop-path), the batch is 128.
    "vit-small-data": dict(optimizer="adamw", lr=1e-3, weight_decay=0.05, lr_schedule="cosine", warmup_epochs="10%",
                           min_lr=1e-5, label_smoothing=0.1, grad_clip=0.0, ema_decay=0.0, batch_size=128,
                           randaugment=None, trivialaugment=False, autoaugment=True, random_erase=0.25,
                           mixup=0.8, cutmix=1.0, mix_prob=1.0, mix_switch_prob=0.5, repeat_aug=3, low_res=""),
    # The CPU hour's candidate (issue 28; barely tuned): the convnet at 32 px for 90% of the steps
    # (32:70%,48:90% gave 2.3-3.6 points less val top-1 in 10-minute ablations, one seed each), then
    # 64 px; SGD with Nesterov momentum at lr 0.1 (ahead of 0.2 at 10 minutes, where the probe also
    # gave it more steps), a short warm-up and a linear decay to zero, label
    # smoothing 0.2, flip TTA at evaluation, which runs in the training's bf16 (twice as fast as
    # fp32 on a CPU) (benchmarks/README.md, "The CPU hour: --recipe speedrun against the clock").
    "speedrun": dict(optimizer="sgd", lr=0.1, weight_decay=5e-4, lr_schedule="linear", warmup_epochs="3%", min_lr=0.0,
                     label_smoothing=0.2, grad_clip=0.0, ema_decay=0.0, batch_size=128, model="convnet", tta="flip", eval_amp=True,
                     **{**NO_AUGMENTATION, "low_res": "32:90%"}),
}
PRESET_MODEL_SETTINGS = {"vit-small-data": {"drop_path": "0.1"}}


def total_steps(args, steps_per_epoch):
    """The run's optimizer steps: its --steps (given, or planned by --time-budget), else whole epochs."""
    return args.steps or args.epochs * steps_per_epoch


def warmup_epochs(spec, epochs):
    """(warm-up epochs, note) of a run of `epochs`: spec is a number of epochs or 'P%' of the run.
    A warm-up ends before the run does: a longer one (study's 5 epochs in a 2-epoch run) is cut to
    10% of the run, and the note says so (None when nothing was cut)."""
    value = float(spec[:-1]) / 100 * epochs if isinstance(spec, str) else float(spec)
    if value < epochs or value == 0:
        return value, None
    cut = 0.1 * epochs
    return cut, (f"the warm-up of {value:g} epochs would not end before the run does: "
                 f"{cut:g} epochs (10% of the run's {epochs}) instead")


def parameter_groups(model, weight_decay):
    """Weight decay on the weight matrices and convolution kernels only: biases and norm
    weights (every 1-D parameter) and what the model names in `no_weight_decay` (the ViT's
    class token and position embeddings) are left undecayed, as is usual for transformers."""
    exempt = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    decay = [p for name, p in trained if p.ndim >= 2 and name not in exempt]
    no_decay = [p for name, p in trained if p.ndim < 2 or name in exempt]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


OPTIMIZERS = ("adam", "adamw", "sgd")
SGD_MOMENTUM = 0.9  # Nesterov: the conv nets' usual choice (ResNets, airbench)


def build_optimizer(model, name, lr, weight_decay, device):
    """Adam (weight decay added to the gradient, L2), AdamW (decoupled weight decay) or SGD with
    Nesterov momentum 0.9 (L2 weight decay)."""
    fused = device.type == "cuda"  # CUDA only: one kernel for the whole update
    groups = parameter_groups(model, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=SGD_MOMENTUM, nesterov=True, fused=fused or None)
    optimizer_class = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return optimizer_class(groups, lr=lr, fused=fused or None)


@dataclass
class LRSchedule:
    """The learning rate of every optimizer step: a linear warm-up from min_lr to lr over
    warmup_steps, then constant, a half cosine or a straight line from lr down to min_lr at
    total_steps (linear to zero: what budgeted training finds best for a fixed number of steps).
    A pure function of the step, so a resumed run continues it exactly."""

    kind: str  # "constant", "cosine" or "linear"
    lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int

    def __call__(self, step):
        if step < self.warmup_steps:
            return self.min_lr + (self.lr - self.min_lr) * step / self.warmup_steps
        if self.kind == "constant":
            return self.lr
        if step >= self.total_steps:
            return self.min_lr
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        if self.kind == "linear":
            return self.lr - (self.lr - self.min_lr) * progress
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))

    @classmethod
    def from_args(cls, args, steps_per_epoch):
        return cls(args.lr_schedule, args.lr, args.min_lr, round(args.warmup_epochs * steps_per_epoch),
                   total_steps(args, steps_per_epoch))


class EMA:
    """An exponential moving average of the weights, updated after every optimizer step. The
    decay ramps up as min(decay, (1 + n) / (10 + n)) after n updates, so the average is not
    dominated by the random initial weights in a short run."""

    def __init__(self, model, decay):
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        pairs = list(zip(self.module.state_dict().values(), model.state_dict().values()))
        # Weights and BatchNorm statistics are averaged; integer buffers (BatchNorm's batch count) copied.
        self.averaged = [mine for mine, _ in pairs if mine.is_floating_point()]
        self.source = [theirs for mine, theirs in pairs if mine.is_floating_point()]
        self.copied = [(mine, theirs) for mine, theirs in pairs if not mine.is_floating_point()]

    @torch.no_grad()
    def update(self):
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.averaged, self.source, 1 - decay)
        for averaged, source in self.copied:
            averaged.copy_(source)

    def state_dict(self):
        return {"model": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state):
        self.module.load_state_dict(state["model"])
        self.updates = state["updates"]


@dataclass
class Updater:
    """The recipe applied to one batch: the loss (with label smoothing), then the update: set
    the step's learning rate, backpropagate (through the fp16 GradScaler when it is on), clip
    the gradient norm, step the optimizer, update the EMA. With accumulate N (--grad-accum) the
    batch goes forward and backward in N chunks before the one update."""

    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: LRSchedule
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # 0: off
    ema: EMA = None
    accumulate: int = 1  # chunks a batch is split into (gradient accumulation)

    def __post_init__(self):
        groups = self.optimizer.param_groups if self.optimizer is not None else []
        self.parameters = [p for group in groups for p in group["params"]]

    def loss(self, logits, y):
        """Cross-entropy against labels, or against MixUp/CutMix's soft targets (B, classes), which
        label smoothing then mixes with the uniform distribution: (1 - e) * target + e / classes."""
        return F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)

    def train_step(self, model, x, y, global_step, device, dtype):
        """One optimizer step on the batch (x, y), forward and backward in `accumulate` chunks:
        the gradient of the whole batch's mean loss with the activations of one chunk in memory
        (BatchNorm normalises each chunk on its own). Under DDP the gradients are all-reduced in
        the last chunk's backward only. Returns (logits, mean loss, steps skipped or None)."""
        self.optimizer.zero_grad(set_to_none=True)
        chunks = list(zip(x.tensor_split(self.accumulate), y.tensor_split(self.accumulate)))
        outputs, losses = [], []
        for index, (x_chunk, y_chunk) in enumerate(chunks):
            last = index == len(chunks) - 1
            with contextlib.nullcontext() if last else no_gradient_sync(model):
                with autocast(device, dtype):
                    logits = model(x_chunk)
                loss = self.loss(logits, y_chunk)
                share = len(y_chunk) / len(y)  # (chunks may differ by one image)
                self.scaler.scale(loss if len(chunks) == 1 else loss * share).backward()
            outputs.append(logits.detach())
            losses.append(loss.detach() * share)
        if len(chunks) == 1:
            return outputs[0], losses[0], self.update(global_step)
        return torch.cat(outputs), torch.stack(losses).sum(), self.update(global_step)

    def update(self, global_step):
        """Set the step's lr, clip, step the optimizer and the EMA on the gradients already
        accumulated. Returns the number of steps the fp16 GradScaler skipped (a device tensor) or None."""
        lr = self.schedule(global_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip)
        self.scaler.step(self.optimizer)
        skipped = None
        if self.scaler.is_enabled():  # fp16: steps skipped for inf/NaN gradients, normal while the scale calibrates
            skipped = sum(self.scaler._found_inf_per_device(self.optimizer).values())
        self.scaler.update()
        if self.ema is not None:
            self.ema.update()
        return skipped


def no_gradient_sync(model):
    """DDP's no_sync() (reached through torch.compile's wrapper too): this backward accumulates
    the gradients locally, without an all-reduce; for a model outside DDP, nothing."""
    no_sync = getattr(model, "no_sync", None)
    return no_sync() if no_sync is not None else contextlib.nullcontext()
