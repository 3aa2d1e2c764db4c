"""Export a checkpoint for use outside the kit: an ONNX graph, or a Hugging Face-style folder.

    python export.py runs/cvt/best.pt --onnx cvt.onnx     # float32 NCHW RGB in [0, 1], 64x64 -> logits
    python export.py runs/cvt/best.pt --hf hf/cvt         # model.safetensors + config.json (id2label)
    python evaluate.py hf/cvt                             # the kit reads the folder back (--predict too)

The ONNX graph holds the notebook's normalisation and, where the run evaluated with flip TTA,
the flip (--tta none leaves it out), so it returns the logits evaluate.py computes from the
same pixels; its batch size is dynamic. It is checked against the eager model with onnxruntime
when that is installed. The folder holds the weights evaluate.py would use (the EMA's when the
run kept one, unless --no-ema), tensor for tensor, and a config.json with the model's name and
config, the class names (id2label), the wnids, the input size and normalisation. Every model
of the zoo exports. The packages (onnx, onnxscript, onnxruntime, safetensors) are extras:
python -m pip install -r requirements-extras.txt.
"""
import sys

if __name__ == "__main__":  # before the imports below, which take a moment
    from cli import exit_quietly_on_ctrl_c

    exit_quietly_on_ctrl_c()

import os

import torch

from checkpoint import HF_CONFIG, HF_WEIGHTS, load_checkpoint, model_from_checkpoint, write_hf_folder
from cli import ArgumentParser, exit_code_of, shell_command
from constants import IMAGE_SIZE, MEAN, STD
from errors import INSTALL_EXTRAS, DataError
from evaluation import TTA_CHOICES, with_tta
from layout import check_output_path, write_atomically
from model import MODELS, add_setting_flags, given_settings

CHECK_IMAGES = 3  # onnxruntime's check runs another batch size than the export's example (2): the batch is dynamic


def parse_args(argv):
    parser = ArgumentParser(description="Export a checkpoint as an ONNX graph or a Hugging Face-style folder.")
    parser.add_argument("checkpoint", help="a train.py checkpoint, a folder export.py --hf wrote, or a Lightning .ckpt")
    parser.add_argument("--onnx", metavar="FILE.onnx", help="write an ONNX graph: images in [0, 1] -> logits")
    parser.add_argument("--hf", metavar="DIR", help="write a Hugging Face-style folder (model.safetensors, config.json)")
    parser.add_argument("--tta", choices=TTA_CHOICES,
                        help="--onnx: flip TTA in the graph or not (default: as the checkpoint's run evaluated)")
    parser.add_argument("--no-ema", dest="ema", action="store_false",
                        help="the raw trained weights of a run that kept an EMA (default: the EMA's, as evaluated)")
    parser.add_argument("--model", choices=tuple(MODELS), help="the architecture of a checkpoint that does not say")
    add_setting_flags(parser)
    args = parser.parse_args(argv)
    if not (args.onnx or args.hf):
        parser.error("say what to write: --onnx FILE.onnx, --hf DIR, or both")
    if args.tta and not args.onnx:
        parser.error("--tta goes with --onnx (the folder records the run's evaluation settings as they were)")
    return args


class ImagesToLogits(torch.nn.Module):
    """What the ONNX graph computes: float RGB images in [0, 1] (N, 3, 64, 64), normalised as the
    notebook normalises, through the model (and its flip TTA), to logits."""

    def __init__(self, model, tta):
        super().__init__()
        self.model = with_tta(model, tta)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, images):
        return self.model((images - self.mean) / self.std)


def export_onnx(graph, path, model_name):
    """torch.onnx's exporter (torch.export, then onnxscript) with a dynamic batch, written atomically."""
    try:
        import onnx  # noqa: F401  (what the exporter needs: said here in one line, not deep in its traceback)
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise DataError(f"--onnx needs the {error.name} package, which is not installed: {INSTALL_EXTRAS}") from None
    example = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.onnx.export(graph, (example,), input_names=["images"], output_names=["logits"],
                                    dynamic_shapes={"images": {0: batch}}, dynamo=True, verbose=False)
    except Exception as error:  # the exporter raises many kinds; each means this model does not export
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise DataError(f"cannot export {model_name} to ONNX: {reason}") from None
    write_atomically(path, program.save)


def largest_difference(graph, path):
    """The largest |logit| difference between onnxruntime running the file and the eager model on
    CHECK_IMAGES random images, or None without onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        return None
    images = torch.rand(CHECK_IMAGES, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    try:
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        (logits,) = session.run(["logits"], {"images": images.numpy()})
    except Exception as error:  # onnxruntime's own exception types: the graph does not run there
        raise DataError(f"onnxruntime cannot run {path}: {str(error).strip().splitlines()[0][:300]}") from None
    with torch.no_grad():
        return (torch.from_numpy(logits) - graph(images)).abs().max().item()


def write_onnx(args, checkpoint, model):
    tta = args.tta or checkpoint.get("config", {}).get("tta") or "none"
    graph = ImagesToLogits(model, tta).eval()
    export_onnx(graph, args.onnx, model.model_name)
    with_flip = ", flip TTA in the graph" if tta == "flip" else ""
    print(f"ONNX: {args.onnx} ({model.model_name}{with_flip}; input 'images' float32 (N, 3, {IMAGE_SIZE}, {IMAGE_SIZE}) "
          f"in [0, 1], output 'logits' (N, {model.config.num_classes}), N dynamic)")
    difference = largest_difference(graph, args.onnx)
    if difference is None:
        print(f"not checked: onnxruntime is not installed ({INSTALL_EXTRAS})")
    else:
        print(f"onnxruntime against the eager model on {CHECK_IMAGES} random images: largest logit difference {difference:.2e}")
        if difference > 1e-3:  # float32 reorderings give about 1e-6: more means the graph computes something else
            raise DataError(f"{args.onnx} does not compute what the model computes (logits differ by {difference:.2e}); "
                            "please report it with the model's name")


def write_hf(args, checkpoint, model):
    weights = checkpoint.get("weights") or ("ema" if args.ema and "ema" in checkpoint else "trained")
    write_hf_folder(checkpoint, model, args.hf, weights)
    print(f"Hugging Face folder: {args.hf} ({HF_WEIGHTS}: {len(model.state_dict())} tensors, {weights} weights; "
          f"{HF_CONFIG}: {model.model_name}, {model.config.num_classes} labels); evaluate it: {shell_command('evaluate.py', args.hf)}")


def run(args):
    for path, flag in ((args.onnx, "--onnx"),):
        if path:  # before any work
            check_output_path(path, flag)
    if args.hf and os.path.isfile(args.hf):
        raise DataError(f"--hf {args.hf} is a file: give a folder to write the model into")
    checkpoint = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(checkpoint, args.checkpoint, use_ema=args.ema, model_name=args.model,
                                  settings=given_settings(args)).eval()
    if args.hf:
        write_hf(args, checkpoint, model)
    if args.onnx:
        write_onnx(args, checkpoint, model)


def main(argv=None):
    return exit_code_of(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
