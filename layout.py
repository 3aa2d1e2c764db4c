"""The layout of a prepared data directory, shared by prepare_data.py (which writes it) and
data.py (which reads it). Kept free of torch so that `prepare_data.py` answers a no-op run fast.

    data/
      tiny-imagenet-200.zip          downloaded (or given with --zip)
      tiny-imagenet-200/             the extracted zip, as the notebook has it
        .extracted.json              marker: extraction complete, its source and its id
        val_processed/<wnid>/*.JPEG  val/ restructured into class folders (the notebook's step)
        val_processed/.complete      marker
      packed/                        uint8 arrays that data.py memory-maps
        train_x.npy train_y.npy val_x.npy val_y.npy
        meta.json                    written last: classes, names, counts, bytes, source, and
                                     the id of the extracted folder the arrays were packed from
        val_boxes.npy                each val image's object box (val_annotations.txt), for
                                     explain.py --box-score; optional (older prepares lack it)

A prepare builds the new folder and arrays beside the old ones (`*.partial`) and swaps them in
at the end, so a failed prepare leaves the directory as it was. Readers accept the packed
arrays only when the extracted folder beside them (if any) carries the id recorded in
meta.json: parts of two different prepares are never read together.

A source is where the data came from: {"zip": name, "bytes": size}, {"synthetic": {sizes,
seed}} for `--synthetic`, or {"zip": None, "reused": True} for a folder extracted by another
tool. prepare_data.py never replaces data from one source by another without --force.

Also here: how every output file is written (atomically, flushed to disk) and the staging and
swapping of folders. Not here: the run directory's files (rundir.py), the arrays' contents (data.py).
"""
import csv
import hashlib
import json
import os
import shutil

from cli import shell_command
from errors import DataError

ZIP_NAME = "tiny-imagenet-200.zip"
SYNTHETIC_ZIP_NAME = "tiny-imagenet-200-synthetic.zip"  # what `prepare_data.py --synthetic` generates
SYNTHETIC_FILE = "SYNTHETIC"  # at the root of a dataset that synthetic.py generated
DATASET_DIR = "tiny-imagenet-200"
EXTRACTED_MARKER = ".extracted.json"
VAL_PROCESSED_DIR = "val_processed"
VAL_PROCESSED_MARKER = ".complete"
PACKED_DIR = "packed"
META_FILE = "meta.json"
PACKED_ARRAYS = ("train_x", "train_y", "val_x", "val_y")
VAL_BOXES_FILE = "val_boxes.npy"  # (N, 4) int16: x0, y0, x1, y1, inclusive pixels, in val_x's order
PACK_FORMAT = 2  # 2: meta.json records the extracted folder it belongs to


def packed_dir(data_dir):
    return os.path.join(data_dir, PACKED_DIR)


def array_path(data_dir, name):
    return os.path.join(packed_dir(data_dir), name + ".npy")


def read_json(path):
    """The JSON value in path, or None when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def inspect_prepared(data_dir):
    """(meta, None) when the packed data is complete and belongs with the extracted folder
    beside it; otherwise (None, what is wrong)."""
    meta = read_json(os.path.join(packed_dir(data_dir), META_FILE))
    if not isinstance(meta, dict):
        return None, "no prepared data"
    if meta.get("format") != PACK_FORMAT:
        return None, "data prepared by an older version of prepare_data.py"
    for name in PACKED_ARRAYS:
        path = array_path(data_dir, name)
        if not os.path.exists(path) or os.path.getsize(path) != meta["bytes"][name]:
            return None, f"incomplete packed data ({name}.npy is missing or truncated)"
    folder = os.path.join(data_dir, DATASET_DIR)
    if os.path.isdir(folder):  # absent is fine: training needs only the arrays
        marker = read_json(os.path.join(folder, EXTRACTED_MARKER)) or {}
        if marker.get("id") != meta["extracted_id"]:
            return None, f"packed arrays and the {DATASET_DIR}/ folder from different prepare runs (one failed or was interrupted)"
    return meta, None


def present_source(data_dir):
    """The recorded source of what data_dir holds (packed or only extracted, in any format),
    or None when it holds neither."""
    meta = read_json(os.path.join(packed_dir(data_dir), META_FILE))
    if isinstance(meta, dict) and meta.get("source"):
        return meta["source"]
    folder = os.path.join(data_dir, DATASET_DIR)
    marker = read_json(os.path.join(folder, EXTRACTED_MARKER))
    if isinstance(marker, dict):
        return marker_source(marker)
    return {"zip": None, "reused": True} if os.path.isdir(folder) else None


def marker_source(marker):
    """An extraction marker's source (markers from before sources were recorded name the zip)."""
    if marker.get("source"):
        return marker["source"]
    return {"zip": None, "reused": True} if marker.get("reused") else {"zip": marker.get("zip"), "bytes": marker.get("bytes")}


def is_synthetic(source):
    return "synthetic" in source or source.get("zip") == SYNTHETIC_ZIP_NAME


def newest_source(data_dir):
    """The source of the most recent prepare of data_dir, finished or not: what a hint to finish
    the job must ask for (pending arrays, then the extracted folder, the arrays in place, and a
    staged extraction kept by a Ctrl-C)."""
    folder = os.path.join(data_dir, DATASET_DIR)
    for path, is_marker in ((os.path.join(packed_dir(data_dir) + ".partial", META_FILE), False),
                            (os.path.join(folder, EXTRACTED_MARKER), True),
                            (os.path.join(packed_dir(data_dir), META_FILE), False),
                            (os.path.join(folder + ".partial", EXTRACTED_MARKER), True)):
        record = read_json(path)
        if isinstance(record, dict) and (is_marker or record.get("source")):
            return marker_source(record) if is_marker else record["source"]
    return None


def prepare_advice(data_dir, force=False):
    """'run `<the command that prepares data_dir again from its own source>`'."""
    source = newest_source(data_dir) or {}
    sizes = source.get("synthetic")
    if is_synthetic(source) and not sizes:  # generated by an older version, which did not record its sizes
        return "run your `python prepare_data.py --synthetic ...` command again with --force"
    flags = ["--synthetic", "--classes", sizes["classes"], "--train-per-class", sizes["train_per_class"],
             "--val-per-class", sizes["val_per_class"], "--seed", sizes["seed"]] if sizes else []
    return f"run `{shell_command('prepare_data.py', *flags, '--data-dir', data_dir, *(['--force'] if force else []))}`"


def read_meta(data_dir):
    """The packed data's meta.json, or None unless the data is complete and consistent."""
    return inspect_prepared(data_dir)[0]


def data_identity(meta):
    """What makes two prepared data directories the same data, from their meta.json: the source
    they were prepared from, the image counts and the class list (not where they lie, nor when
    they were prepared)."""
    classes = hashlib.sha256("\n".join(meta["classes"]).encode()).hexdigest()[:16]
    return {"source": meta["source"], "counts": meta["counts"], "classes_sha256": classes, "synthetic": meta["synthetic"]}


def ensure_dir(path, what, advice=""):
    """Create the directory path (and its parents); a DataError says so, in the terms of `what`,
    when it is a file, cannot be created or is not writable."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise DataError(f"{what} is a file, not a directory{advice}")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create {what} ({error.strerror or error}){advice}") from None
    if not os.access(path, os.W_OK):
        raise DataError(f"{what} is not writable{advice}")


def check_output_path(path, flag):
    """Make sure a file can be written at path before the work that produces it starts:
    create its folder, refuse a directory or an unwritable place."""
    if os.path.isdir(path) or path.endswith(("/", os.sep)):
        raise DataError(f"{flag} {path} is a directory: give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    ensure_dir(folder, f"the folder {folder} of {flag} {path}")


def flush_to_disk(path):
    """Wait until the file's bytes are on the disk, not only in the page cache: renamed onto an
    older file without this, a power loss can leave an empty file (ext4's delayed allocation)."""
    fd = os.open(path, os.O_RDWR)  # (Windows flushes only a handle open for writing)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path, write):
    """write(temporary_path) writes the file, which is flushed to the disk and then renamed onto
    path: a reader never sees half a file, nor a power loss an empty one. A failure is a DataError
    that leaves the previous file intact and no temporary file behind. The one way every output of
    the kit is written (JSON, CSV, checkpoints, PNG)."""
    tmp = path + ".tmp"
    try:
        write(tmp)
        flush_to_disk(tmp)
        os.replace(tmp, path)
    except OSError as error:
        raise DataError(f"cannot write {path} ({error.strerror or error}); the previous file is intact") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, value, default=None):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(value, f, indent=1, default=default)

    write_atomically(path, write)


def write_csv(path, header, rows):
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)

    write_atomically(path, write)


def csv_value(value):
    """A cell: a list as 'a;b' (a path may hold spaces), None as an empty cell."""
    if isinstance(value, list):
        return ";".join(map(str, value))
    return "" if value is None else value


def write_rows(rows, header, json_path=None, csv_path=None):
    """The rows (dicts) as a JSON list and as CSV with the header's columns, each file announced
    in a line: what --json and --csv write in the analysis scripts."""
    if json_path:
        write_json(json_path, rows)
        print(f"json: {json_path}")
    if csv_path:
        write_csv(csv_path, header, ([csv_value(row.get(key)) for key in header] for row in rows))
        print(f"csv: {csv_path}")


def check_free_space(directory, needed_bytes):
    free = shutil.disk_usage(directory).free
    if free < needed_bytes:
        raise DataError(f"not enough disk space in {directory}: {needed_bytes / 1e9:.2f} GB needed, {free / 1e9:.2f} GB free")


def replace_dir(tmp, target):
    """Move a finished tmp directory onto target, replacing whatever was there."""
    if os.path.exists(target):
        trash = target + ".old"
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(target, trash)
        os.replace(tmp, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, target)


def staging_dir(target):
    return target + ".partial"
