"""An epoch's running training metrics (loss, top-1/top-5 counts, images, fp16-skipped steps):
kept on the device while the loop runs, summarised as plain numbers at the epoch's end, and
saved in last.pt when the epoch is interrupted, so that a resumed epoch reports what the whole
epoch would have. Not here: the loop that fills them (train.py).
"""
import torch


def new_totals(device):
    """Running sums of one epoch's training metrics, kept on the device."""
    zero = torch.zeros((), device=device)
    return {"loss_sum": zero, "correct": torch.zeros(2, device=device), "count": 0, "skipped": zero.clone()}


def summarize(totals):
    count = max(totals["count"], 1)
    loss, (top1, top5) = (totals["loss_sum"] / count).item(), (totals["correct"] / count).tolist()
    return {"loss": loss, "top1": top1, "top5": top5, "images": totals["count"], "skipped_steps": int(totals["skipped"].item())}


def resume_point(progress, device):
    """(first step, metric totals, seconds already spent) for the epoch about to run."""
    partial = progress["partial"]
    if not partial:  # (under torchrun rank 0 alone carries a mid-epoch resume's totals: the others start from zero)
        return progress.get("step_in_epoch", 0), new_totals(device), 0.0
    totals = {key: partial[key] if key == "count" else torch.tensor(partial[key], device=device)
              for key in ("loss_sum", "correct", "count", "skipped")}
    return progress["step_in_epoch"], totals, partial["seconds"]


def plain_totals(totals):
    """Totals as plain numbers for the checkpoint (float32 values survive the round trip exactly)."""
    return {"loss_sum": totals["loss_sum"].item(), "correct": totals["correct"].tolist(), "count": totals["count"],
            "skipped": totals["skipped"].item()}


def epoch_line(epoch, epochs, train, val, row, improved, mixed=False):
    """The line train.py prints as an epoch ends: its training totals, validation, time and speed."""
    skipped = f", {train['skipped_steps']} fp16 steps skipped by the GradScaler" if train["skipped_steps"] else ""
    return (f"epoch {epoch + 1}/{epochs}: train loss {train['loss']:.4f} top-1{' (dominant label)' if mixed else ''} {train['top1']:.2%} | "
            f"val loss {val['loss']:.4f} top-1 {val['top1']:.2%} top-5 {val['top5']:.2%} | "
            f"{row['seconds']:.0f} s, {row['images_per_s']:.0f} img/s{skipped}{'  *best*' if improved else ''}")
