"""From the extracted folder to the packed arrays: val/ restructured into class folders (the
notebook's step), the object boxes of val_annotations.txt, every image decoded once into uint8
arrays by a pool of workers, meta.json written last, and the commit that swaps the new folder and
arrays in. Not here: the zip (extraction.py), the command (prepare_data.py).
"""
import os
import shutil
import sys

import numpy as np
from PIL import Image

from cli import progress_bar
from constants import IMAGE_EXTENSIONS, IMAGE_SIZE
from errors import DataError
from layout import (
    DATASET_DIR,
    EXTRACTED_MARKER,
    META_FILE,
    PACK_FORMAT,
    PACKED_DIR,
    SYNTHETIC_FILE,
    VAL_BOXES_FILE,
    VAL_PROCESSED_DIR,
    VAL_PROCESSED_MARKER,
    check_free_space,
    flush_to_disk,
    packed_dir,
    read_json,
    replace_dir,
    staging_dir,
    write_atomically,
    write_json,
)
from workers import process_pool


DECODE_CHUNK = 512  # images per task: ~200 tasks for the full set


def read_wnids(root):
    with open(os.path.join(root, "wnids.txt")) as f:
        wnids = [line.strip() for line in f if line.strip()]
    if not wnids:
        raise DataError(f"{root}/wnids.txt lists no classes")
    return wnids


def read_val_annotations(root):
    """[(file name, wnid)] from val/val_annotations.txt, checked against wnids.txt."""
    return [(name, wnid) for name, wnid, _, _ in read_val_annotation_rows(root)]


def read_val_annotation_rows(root):
    """[(file name, wnid, the box's fields, where the line is)] from val/val_annotations.txt,
    the wnids checked against wnids.txt (the boxes are read by val_boxes_in_packed_order)."""
    wnids = set(read_wnids(root))
    path = os.path.join(root, "val", "val_annotations.txt")
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 2:
                raise DataError(f"{path}:{number}: expected '<file>\\t<wnid>...', got {line.strip()!r}")
            if fields[1] not in wnids:
                raise DataError(f"{path}:{number}: {fields[0]} is labelled {fields[1]}, which is not in wnids.txt")
            rows.append((fields[0], fields[1], fields[2:6], f"{path}:{number}"))
    return rows


def parse_box(fields, where):
    """(x0, y0, x1, y1) from four fields, or None when there are not four."""
    if len(fields) < 4:
        return None
    try:
        x0, y0, x1, y1 = map(int, fields)
    except ValueError:
        raise DataError(f"{where}: the box {' '.join(fields)} is not four integers") from None
    if not (0 <= x0 <= x1 < IMAGE_SIZE and 0 <= y0 <= y1 < IMAGE_SIZE):
        raise DataError(f"{where}: the box {x0} {y0} {x1} {y1} is not inside the {IMAGE_SIZE}x{IMAGE_SIZE} image")
    return x0, y0, x1, y1


def val_boxes_in_packed_order(root, classes):
    """(file names, labels, (N, 4) int16 boxes) of the val images in the order pack() packs them
    (by class, then by file name: labelled_files' order), or None when an annotation has no box.
    A malformed box is a DataError naming its line."""
    label_of = {wnid: label for label, wnid in enumerate(classes)}
    rows = sorted(read_val_annotation_rows(root), key=lambda row: (label_of[row[1]], row[0]))
    boxes = [parse_box(fields, where) for _, _, fields, where in rows]
    if not rows or any(box is None for box in boxes):
        return None
    return [row[0] for row in rows], np.array([label_of[row[1]] for row in rows]), np.array(boxes, dtype=np.int16)


def boxes_for(root, classes, val_files):
    """The boxes of the val images packed from val_files (paths, in packed order), or (None, why
    not). Boxes are an extra for explain.py: a problem with them never stops a prepare."""
    try:
        found = val_boxes_in_packed_order(root, classes)
    except DataError as error:
        return None, f"a box in val_annotations.txt is malformed ({error})"
    if found is None:
        return None, "val_annotations.txt does not give every val image a box"
    if found[0] != [os.path.basename(path) for path in val_files]:  # (a val_processed/ made by another tool)
        return None, "the packed val images are not the ones val_annotations.txt lists"
    return found[2], None


def write_val_boxes(out_dir, boxes):
    def write(tmp):
        with open(tmp, "wb") as f:  # (np.save given a path would append .npy to the temporary name)
            np.save(f, boxes)

    write_atomically(os.path.join(out_dir, VAL_BOXES_FILE), write)


def stored_val_boxes_fit(data_dir, count):
    """Whether packed/ holds one box per packed val image."""
    try:
        return np.load(os.path.join(packed_dir(data_dir), VAL_BOXES_FILE), mmap_mode="r").shape == (count, 4)
    except (OSError, ValueError):
        return False


def add_missing_val_boxes(data_dir, meta):
    """Data packed before the boxes were stored gets them from the extracted folder's
    val_annotations.txt, without packing the images again. Returns a line saying what happened,
    or None when there was nothing to do."""
    if stored_val_boxes_fit(data_dir, meta["counts"]["val"]):
        return None
    root = os.path.join(data_dir, DATASET_DIR)
    val_dir = os.path.join(root, VAL_PROCESSED_DIR)
    if not (os.path.exists(os.path.join(root, "val", "val_annotations.txt")) and os.path.isdir(val_dir)):
        return (f"note: no val boxes stored (explain.py --box-score needs them), and no extracted {root}/ to read "
                "them from: prepare again with --force to add them")
    boxes, why_not = boxes_for(root, meta["classes"], [path for path, _ in labelled_files(val_dir, meta["classes"])])
    if boxes is None:
        return f"note: no val boxes stored (explain.py --box-score needs them): {why_not}"
    write_val_boxes(packed_dir(data_dir), boxes)
    return f"added the val images' object boxes to {packed_dir(data_dir)}/ (for explain.py --box-score)"


def link_or_copy(src, dst):
    try:
        os.link(src, dst)  # same bytes, no extra space; the notebook copies
    except OSError:
        shutil.copyfile(src, dst)


def ensure_val_restructured(root):
    """val/images + val_annotations.txt -> val_processed/<wnid>/<file>, like the notebook."""
    target = os.path.join(root, VAL_PROCESSED_DIR)
    marker = os.path.join(target, VAL_PROCESSED_MARKER)
    if os.path.exists(marker):
        return target
    pairs = read_val_annotations(root)
    if os.path.isdir(target) and all(os.path.exists(os.path.join(target, w, f)) for f, w in pairs):
        open(marker, "w").close()  # made by the notebook, and complete
        return target
    tmp = target + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    for wnid in {w for _, w in pairs}:
        os.makedirs(os.path.join(tmp, wnid))
    for file_name, wnid in pairs:
        src = os.path.join(root, "val", "images", file_name)
        if not os.path.exists(src):
            raise DataError(f"val_annotations.txt names {file_name}, which is not in {root}/val/images")
        link_or_copy(src, os.path.join(tmp, wnid, file_name))
    open(os.path.join(tmp, VAL_PROCESSED_MARKER), "w").close()
    replace_dir(tmp, target)
    return target


def image_files(folder):
    """Image files below folder, in ImageFolder's order (sorted os.walk, sorted names)."""
    files = []
    for directory, _, names in sorted(os.walk(folder, followlinks=True)):
        files += [os.path.join(directory, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)]
    return files


def labelled_files(folder, classes):
    """[(path, label)] for an ImageFolder-style folder, labels indexing the sorted class list."""
    pairs = []
    for label, wnid in enumerate(classes):
        class_dir = os.path.join(folder, wnid)
        if os.path.isdir(class_dir):
            pairs += [(path, label) for path in image_files(class_dir)]
    return pairs


def decode(path):
    """64x64x3 uint8 pixels, converted to RGB like ImageFolder's loader (grayscale -> 3 channels)."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except Exception as error:  # PIL raises many types for bad files
        raise DataError(f"cannot decode {path}: {error}") from None
    if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise DataError(f"{path} is {pixels.shape[1]}x{pixels.shape[0]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    return pixels


_pack_targets = None  # {split: (x_path, byte offset of image 0, image paths)} in each packing worker


def share_pack_targets(targets):
    global _pack_targets
    _pack_targets = targets


def decode_chunk(task):
    """Decode the images of split `name` from start on (DECODE_CHUNK of them) and write them at
    their byte offset in the .npy being packed: no pixels go back through the pool's pipe, and
    one write per chunk is cheaper than page faults on a shared memory map. Returns
    (count, None) or (0, error message)."""
    name, start = task
    x_path, first_offset, paths = _pack_targets[name]
    paths = paths[start : start + DECODE_CHUNK]
    pixels = np.empty((len(paths), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    try:
        for i, path in enumerate(paths):
            pixels[i] = decode(path)
    except DataError as error:
        return 0, str(error)
    with open(x_path, "r+b") as f:  # (seek and write: os.pwrite does not exist on Windows)
        f.seek(first_offset + start * IMAGE_SIZE * IMAGE_SIZE * 3)
        f.write(pixels.data)
    return len(paths), None


def start_array(out_dir, name, count):
    """Create <name>_x.npy at its full size; (its path, the byte offset of its first image)."""
    if not count:
        raise DataError(f"no {name} images found")
    x_path = os.path.join(out_dir, name + "_x.npy")
    header = np.lib.format.open_memmap(x_path, mode="w+", dtype=np.uint8, shape=(count, IMAGE_SIZE, IMAGE_SIZE, 3))
    return x_path, header.offset


def pack_split(out_dir, name, pairs, pool):
    """Fill <name>_x.npy (made by start_array) and write <name>_y.npy; return their sizes in bytes."""
    x_path, y_path = os.path.join(out_dir, name + "_x.npy"), os.path.join(out_dir, name + "_y.npy")
    with progress_bar(len(pairs), f"pack {name}", "images") as bar:
        for done, error in pool.imap_unordered(decode_chunk, [(name, i) for i in range(0, len(pairs), DECODE_CHUNK)]):
            if error:
                raise DataError(error)
            bar.update(done)
    np.save(y_path, np.array([label for _, label in pairs], dtype=np.int64))
    return {name + "_x": os.path.getsize(x_path), name + "_y": os.path.getsize(y_path)}


def read_class_names(root, classes):
    names = {}
    words = os.path.join(root, "words.txt")
    if os.path.exists(words):
        with open(words) as f:
            for line in f:
                wnid, _, name = line.rstrip("\n").partition("\t")
                names[wnid] = name
    return [names.get(wnid, wnid) for wnid in classes]


def pack(data_dir, root, val_dir, source):
    """Decode train and restructured val into arrays in packed.partial/ and write meta.json
    there last, recording the id of the extracted folder they come from. commit() swaps it in."""
    classes = sorted(read_wnids(root))  # ImageFolder's class_to_idx: sorted folder names
    train_dirs = sorted(e.name for e in os.scandir(os.path.join(root, "train")) if e.is_dir())
    if train_dirs != classes:
        missing = sorted(set(classes) - set(train_dirs)) or sorted(set(train_dirs) - set(classes))
        raise DataError(f"train/ folders and wnids.txt disagree, e.g. on {missing[0]}")
    splits = {"train": labelled_files(os.path.join(root, "train"), classes), "val": labelled_files(val_dir, classes)}
    tmp = staging_dir(packed_dir(data_dir))
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    check_free_space(tmp, sum(len(p) for p in splits.values()) * IMAGE_SIZE * IMAGE_SIZE * 3)
    targets = {name: (*start_array(tmp, name, len(pairs)), [p for p, _ in pairs]) for name, pairs in splits.items()}
    sizes = {}
    with process_pool(initializer=share_pack_targets, initargs=(targets,)) as pool:
        for name, pairs in splits.items():
            sizes.update(pack_split(tmp, name, pairs, pool))
    boxes, why_not = boxes_for(root, classes, [path for path, _ in splits["val"]])
    if boxes is not None:
        write_val_boxes(tmp, boxes)
    else:
        print(f"note: no val boxes stored (explain.py --box-score needs them): {why_not}", file=sys.stderr)
    meta = {
        "format": PACK_FORMAT,
        "classes": classes,
        "class_names": read_class_names(root, classes),
        "counts": {name: len(pairs) for name, pairs in splits.items()},
        "bytes": sizes,
        "synthetic": os.path.exists(os.path.join(root, SYNTHETIC_FILE)),
        "source": source,
        "extracted_id": read_json(os.path.join(root, EXTRACTED_MARKER))["id"],
    }
    for name in os.listdir(tmp):  # the arrays on the disk before meta.json, which says they are complete
        flush_to_disk(os.path.join(tmp, name))
    write_json(os.path.join(tmp, META_FILE), meta)
    return meta


def commit(data_dir, root):
    """Swap the new extracted folder (when it was staged) and the new arrays in. A kill between
    the two renames leaves parts whose ids differ: readers refuse them and the next run finishes."""
    target = os.path.join(data_dir, DATASET_DIR)
    if root != target:
        replace_dir(root, target)
    replace_dir(staging_dir(packed_dir(data_dir)), packed_dir(data_dir))


def discard_unfinished_work(data_dir, keep_extraction):
    """After a failure: the partial arrays are never reused, so they go (they can be most of a
    gigabyte); so does a staged extraction, unless it is complete and may be resumed from."""
    shutil.rmtree(staging_dir(packed_dir(data_dir)), ignore_errors=True)
    staged = staging_dir(os.path.join(data_dir, DATASET_DIR))
    if not (keep_extraction and os.path.exists(os.path.join(staged, EXTRACTED_MARKER))):
        shutil.rmtree(staged, ignore_errors=True)


def finish_interrupted_commit(data_dir):
    """A run killed inside commit() left complete new parts in the staging folders (the arrays'
    meta.json is written last, and records the id of the folder they belong to): swap them in,
    rather than prepare again; then drop what replace_dir() had set aside."""
    pending = read_json(os.path.join(staging_dir(packed_dir(data_dir)), META_FILE))
    target = os.path.join(data_dir, DATASET_DIR)
    if isinstance(pending, dict):
        for folder in (staging_dir(target), target):
            marker = read_json(os.path.join(folder, EXTRACTED_MARKER))
            if isinstance(marker, dict) and marker.get("id") == pending.get("extracted_id"):
                commit(data_dir, folder)
                break
    for name in (DATASET_DIR, PACKED_DIR):
        shutil.rmtree(os.path.join(data_dir, name) + ".old", ignore_errors=True)


def discard_leftovers(data_dir):
    """Staging folders of killed runs, once the data is prepared and nothing will resume from them."""
    for name in (DATASET_DIR, PACKED_DIR):
        shutil.rmtree(staging_dir(os.path.join(data_dir, name)), ignore_errors=True)
