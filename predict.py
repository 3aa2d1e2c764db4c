"""Labelling image files with a trained model: the unlabeled test/images of the zip, or the
user's own images of any size and format (`evaluate.py CKPT --predict OUT.csv [--files ...]`).
Each row of the CSV holds the file and its TOP_K most likely classes with their probabilities.
"""
import os
import re
import sys

import numpy as np
import torch

from constants import IMAGE_EXTENSIONS
from data import normalize
from errors import DataError
from layout import DATASET_DIR, prepare_advice, read_meta, write_csv
from runtime import autocast

TOP_K = 5  # classes per image in --predict's CSV


def short_name(name):
    """'goldfish, Carassius auratus' -> 'goldfish'."""
    return name.split(",")[0].strip()


def natural_key(name):
    """test_2.JPEG before test_10.JPEG."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def test_image_files(data_dir):
    folder = os.path.join(data_dir, DATASET_DIR, "test", "images")
    try:
        names = sorted((n for n in os.listdir(folder) if n.lower().endswith((".jpeg", ".jpg", ".png"))), key=natural_key)
    except OSError:
        advice = prepare_advice(data_dir, force=read_meta(data_dir) is not None)  # extract again
        raise DataError(f"no {folder}/: --predict labels the zip's unlabeled test images; {advice}, or label "
                        "your own images with --files") from None
    if not names:
        raise DataError(f"{folder}/ holds no images")
    return [os.path.join(folder, n) for n in names]


def own_image_files(paths):
    """The files named, and the image files inside the folders named (recursively, in natural
    order); a path that does not exist is reported as unreadable later, like a broken image."""
    extensions = (*IMAGE_EXTENSIONS, ".gif")  # what ImageFolder takes, and GIFs (their first frame)
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = [os.path.join(d, n) for d, _, names in os.walk(path) for n in names if n.lower().endswith(extensions)]
            files += sorted(found, key=natural_key)
        else:
            files.append(path)
    seen = set()  # a file named twice (or named and inside a folder named) is labelled once
    return [path for path in files if not (os.path.realpath(path) in seen or seen.add(os.path.realpath(path)))]


def load_any_image(path):
    """Any image file, any size or mode -> 64x64x3 uint8: turned upright (EXIF), converted to
    RGB like the training images, its centre cropped to a square and that square resized to
    64x64 with PIL's antialiased bilinear filter (the usual Resize + CenterCrop, cropping first,
    so the result differs from torchvision's by interpolation rounding only)."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
        return np.asarray(ImageOps.fit(image, (64, 64), method=Image.BILINEAR))


def read_images(paths, load):
    """([(path, 64x64x3 pixels)], [(path, why it could not be read)])."""
    images, unreadable = [], []
    for path in paths:
        try:
            images.append((path, load(path)))
        except Exception as error:  # PIL raises many types for bad files; DataError from decode()
            unreadable.append((path, why_unreadable(error, str(path))))
    return images, unreadable


def why_unreadable(error, path):
    """The reason in a few words, without repeating the path (which is listed beside it)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    reason = str(error)
    if reason.startswith("cannot identify image file"):
        return "not an image PIL can read"
    if path:
        reason = reason.replace(f"cannot decode {path}: ", "").replace(f"{path} is ", "it is ")
    return reason or type(error).__name__


@torch.no_grad()
def predict_probabilities(model, pixels, device, dtype, batch_size):
    """Softmax probabilities (N, classes) on the CPU for a list of 64x64x3 uint8 images."""
    model.eval()
    chunks = []
    for start in range(0, len(pixels), batch_size):
        x = normalize(torch.from_numpy(np.stack(pixels[start : start + batch_size])).to(device))
        with autocast(device, dtype):
            chunks.append(model(x).float().softmax(dim=1).cpu())
    return torch.cat(chunks)


def prediction_header(k=TOP_K):
    ranked = [f"{name}_{rank}" for rank in range(2, k + 1) for name in ("wnid", "class_name", "confidence")]
    return ("file", "wnid", "class_name", "confidence", *ranked)


def prediction_rows(names, probabilities, classes, class_names, k=TOP_K):
    """One row per image: its name, then the k most likely classes (wnid, name, probability)."""
    confidence, label = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
    rows = []
    for name, ps, cs in zip(names, confidence.tolist(), label.tolist()):
        ranked = [value for p, c in zip(ps, cs) for value in (classes[c], class_names[c], f"{p:.4f}")]
        rows.append((name, *ranked, *[""] * (3 * k - len(ranked))))
    return rows


def report_unreadable(unreadable):
    if unreadable:
        listed = "; ".join(f"{path} ({reason})" for path, reason in unreadable)
        print(f"skipped {len(unreadable)} unreadable file{'s' if len(unreadable) != 1 else ''}: {listed}", file=sys.stderr)


def write_predictions(model, paths, load, name_of, classes, class_names, device, dtype, batch_size, out):
    """Label the image files (unreadable ones listed on stderr and skipped) and write the CSV:
    name_of(path), then the TOP_K most likely classes. Returns the rows."""
    images, unreadable = read_images(paths, load)
    report_unreadable(unreadable)
    if not images:
        raise DataError("none of the images is readable: nothing to label")
    probabilities = predict_probabilities(model, [pixels for _, pixels in images], device, dtype, batch_size)
    rows = prediction_rows([name_of(path) for path, _ in images], probabilities, classes, class_names)
    write_csv(out, prediction_header(), rows)
    return rows


def class_names_for(checkpoint, data_dir):
    """The checkpoint's class names (train.py saves them), else the prepared data's when its
    classes are the checkpoint's, else the wnids themselves."""
    classes = checkpoint.get("classes")
    if classes is None:
        meta = read_meta(data_dir)
        if meta is None:
            raise DataError(f"the checkpoint does not list its classes and {data_dir}/ holds no prepared data to "
                            "take them from: pass the --data-dir it was trained on")
        return meta["classes"], meta["class_names"]
    if checkpoint.get("class_names"):
        return classes, checkpoint["class_names"]
    meta = read_meta(data_dir)
    return classes, meta["class_names"] if meta and meta["classes"] == classes else list(classes)
