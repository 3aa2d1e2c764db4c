"""The layout of a prepared data directory, shared by prepare_data.py (which writes it) and
data.py (which reads it). Kept free of torch so that `prepare_data.py` answers a no-op run fast.

    data/
      tiny-imagenet-200.zip          downloaded (or given with --zip)
      tiny-imagenet-200/             the extracted zip, as the notebook has it
        .extracted.json              marker: extraction complete, and from which zip
        val_processed/<wnid>/*.JPEG  val/ restructured into class folders (the notebook's step)
        val_processed/.complete      marker
      packed/                        uint8 arrays that data.py memory-maps
        train_x.npy train_y.npy val_x.npy val_y.npy
        meta.json                    written last: classes, names, counts, bytes, source
"""
import csv
import json
import os

ZIP_NAME = "tiny-imagenet-200.zip"
DATASET_DIR = "tiny-imagenet-200"
EXTRACTED_MARKER = ".extracted.json"
VAL_PROCESSED_DIR = "val_processed"
VAL_PROCESSED_MARKER = ".complete"
PACKED_DIR = "packed"
META_FILE = "meta.json"
PACKED_ARRAYS = ("train_x", "train_y", "val_x", "val_y")
PACK_FORMAT = 1


class DataError(Exception):
    """A problem with the user's data or inputs: reported as one line, exit code 2."""


def packed_dir(data_dir):
    return os.path.join(data_dir, PACKED_DIR)


def array_path(data_dir, name):
    return os.path.join(packed_dir(data_dir), name + ".npy")


def read_meta(data_dir):
    """The packed data's meta.json, or None unless every array it describes is complete."""
    try:
        with open(os.path.join(packed_dir(data_dir), META_FILE)) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != PACK_FORMAT:
        return None
    for name in PACKED_ARRAYS:
        path = array_path(data_dir, name)
        if not os.path.exists(path) or os.path.getsize(path) != meta["bytes"][name]:
            return None
    return meta


def write_json(path, value):
    """Write JSON through a temporary file and a rename: a reader never sees half a file."""
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1)
    os.replace(path + ".tmp", path)


def write_csv(path, header, rows):
    """Write a CSV through a temporary file and a rename; a failure is a DataError and leaves
    the previous file intact."""
    try:
        with open(path + ".tmp", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(path + ".tmp", path)
    except OSError as error:
        raise DataError(f"cannot write {path} ({error.strerror or error}); the previous file is intact") from None
