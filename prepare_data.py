"""Get Tiny ImageNet ready for training: download (or take a local zip), extract once,
restructure val/ into class folders once, and pack the images into uint8 arrays.

    python prepare_data.py                                  # download into data/
    python prepare_data.py --zip ~/tiny-imagenet-200.zip    # use a local zip as given
    python prepare_data.py --synthetic --data-dir data-smoke  # generated data, no download

Every stage writes to a temporary path and writes its marker last, so a run killed at any
point is completed by the next one, and a second run does nothing. The new extracted folder
and packed arrays replace the old ones only once both are complete: a failed run leaves the
data directory as it was. Data prepared from one source (a zip, or --synthetic) is never
replaced by another without --force.
"""
import sys

if __name__ == "__main__":  # before the imports below, which take a moment
    from cli import exit_quietly_on_ctrl_c

    exit_quietly_on_ctrl_c()

import hashlib
import multiprocessing
import os
import shutil
import signal
import time
import uuid
import urllib.error
import urllib.request
import zipfile
import zlib

import numpy as np
from PIL import Image

from cli import ArgumentParser, progress_bar, shell_command
from constants import IMAGE_SIZE
from errors import DataError
from layout import (
    DATASET_DIR,
    EXTRACTED_MARKER,
    META_FILE,
    PACK_FORMAT,
    PACKED_DIR,
    SYNTHETIC_FILE,
    SYNTHETIC_ZIP_NAME,
    VAL_BOXES_FILE,
    VAL_PROCESSED_DIR,
    VAL_PROCESSED_MARKER,
    ZIP_NAME,
    ensure_dir,
    flush_to_disk,
    is_synthetic,
    marker_source,
    packed_dir,
    present_source,
    read_json,
    read_meta,
    write_atomically,
    write_json,
)

OFFICIAL_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
OFFICIAL_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
# torchvision's IMG_EXTENSIONS: the files ImageFolder takes as images.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MAX_UNCOMPRESSED_BYTES = 4 << 30  # the real zip expands to ~0.5 GB; refuse zip bombs
MAX_ENTRIES = 500_000
# Pool tasks carry only a chunk's index: the work lists reach the workers at fork. So every task
# fits in the task pipe at once, and a Ctrl-C's pool.terminate() cannot deadlock on a task
# handler blocked in a full pipe (a CPython Pool race that big tasks trigger).
DECODE_CHUNK = 512  # images per task: ~200 tasks for the full set
EXTRACT_CHUNK = 1000  # files per task


# ---------------------------------------------------------------- getting the zip


def md5_of(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url, dest, expected_md5):
    """Download url to dest through dest.part (resumed when the server allows), check the MD5,
    and only then rename it into place."""
    part = dest + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # the .part is already complete
            response = None
        else:
            raise DataError(f"cannot download {url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DataError(
            f"cannot download {url} ({reason}); download it elsewhere and pass --zip PATH"
        ) from None
    if response is not None:
        with response:
            resumed = response.status == 206
            total = int(response.headers.get("Content-Length") or 0) + (have if resumed else 0)
            mode = "ab" if resumed else "wb"
            with open(part, mode) as f, progress_bar(total or None, "download", "B", initial=have if resumed else 0) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    f.write(block)
                    bar.update(len(block))
    actual_md5 = md5_of(part)
    if expected_md5 and actual_md5 != expected_md5.lower():
        os.remove(part)  # a bad download must not be resumed from
        raise DataError(f"MD5 of the download from {url} is {actual_md5}, expected {expected_md5}")
    os.replace(part, dest)
    return dest


def find_zip(args):
    """The zip to extract: --zip as given, the one already in the data dir, or a download."""
    if args.zip:
        if args.md5 and md5_of(args.zip) != args.md5.lower():
            raise DataError(f"MD5 of {args.zip} is {md5_of(args.zip)}, expected {args.md5}: is it the right file?")
        return args.zip
    default = os.path.join(args.data_dir, ZIP_NAME)
    if os.path.isfile(default):
        return default
    print(f"downloading {args.url} to {default}")
    return download(args.url, default, args.md5 or (OFFICIAL_MD5 if args.url == OFFICIAL_URL else None))


# ---------------------------------------------------------------- extraction


def zip_identity(zip_path):
    return {"zip": os.path.basename(zip_path), "bytes": os.path.getsize(zip_path)}


def corrupt_zip_advice(zip_path, data_dir):
    """What to do about a damaged zip: ours is downloaded again, the user's own is theirs to replace."""
    if os.path.abspath(zip_path) == os.path.abspath(os.path.join(data_dir, ZIP_NAME)):
        return f"delete it and run `{shell_command('prepare_data.py', '--data-dir', data_dir)}` to download it again"
    return "get a fresh copy of it (is the download or copy complete?)"


def dataset_members(archive):
    """(root prefix, file members under it) of a Tiny ImageNet zip, after safety checks."""
    infos = archive.infolist()
    if len(infos) > MAX_ENTRIES:
        raise DataError(f"the zip has {len(infos):,} entries, more than a Tiny ImageNet zip ({MAX_ENTRIES:,} max)")
    total = 0
    for info in infos:
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            raise DataError(f"the zip has an entry that escapes the target directory: {name!r}")
        total += info.file_size
    if total > MAX_UNCOMPRESSED_BYTES:
        raise DataError(f"the zip would expand to {total / 1e9:.1f} GB, more than the {MAX_UNCOMPRESSED_BYTES / 1e9:.1f} GB allowed")
    names = {info.filename for info in infos}
    roots = [n[: -len("wnids.txt")] for n in names if n.endswith("wnids.txt") and n.count("/") <= 1]
    if not roots:
        raise DataError("this zip is not Tiny ImageNet: it has no wnids.txt")
    root = min(roots, key=len)
    for required in ("val/val_annotations.txt", "words.txt"):
        if root + required not in names:
            raise DataError(f"this zip is not Tiny ImageNet: it has no {required}")
    if not any(n.startswith(root + "train/") for n in names):
        raise DataError("this zip is not Tiny ImageNet: it has no train/ folder")
    members = [info for info in infos if info.filename.startswith(root) and not info.is_dir()]
    return root, members, total


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


def extract(zip_path, target, data_dir, source=None):
    """Extract the zip's dataset folder into target (a staging folder). Its marker, written
    last, records the source (the zip's identity unless given) and a new id that the packed
    arrays will record."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"{zip_path} is not a readable zip ({error}): {corrupt_zip_advice(zip_path, data_dir)}") from None
    with archive:
        root, members, total = dataset_members(archive)
    # Room for the extracted files, the val copies and the packed arrays.
    check_free_space(os.path.dirname(os.path.abspath(target)), int(total * 2.5))
    shutil.rmtree(target, ignore_errors=True)
    for folder in {os.path.dirname(info.filename[len(root) :]) for info in members}:
        os.makedirs(os.path.join(target, folder), exist_ok=True)
    # Both cores write files: each worker opens the zip once and takes chunks of members.
    names = [info.filename for info in members]
    starts = range(0, len(names), EXTRACT_CHUNK)
    with process_pool(initializer=open_worker_zip, initargs=(zip_path, root, target, names)) as pool, progress_bar(
        len(names), "extract", "files"
    ) as bar:
        for done, error in pool.imap_unordered(extract_chunk, starts):
            if error:
                raise DataError(f"{zip_path} is corrupt at {error}: {corrupt_zip_advice(zip_path, data_dir)}")
            bar.update(done)
    write_json(os.path.join(target, EXTRACTED_MARKER), {"source": source or zip_identity(zip_path), "id": uuid.uuid4().hex})


START_METHOD = None  # the platform's default (fork on Linux, spawn on macOS and Windows); tests force spawn


def process_pool(initializer=None, initargs=()):
    """One worker per core, started by the platform's default method: workers get their state
    from initializer(*initargs) alone, never from a forked parent's memory. Ctrl-C is for the
    main process, which then stops the workers: where the platform has signal masks (not on
    Windows), SIGINT is blocked while the pool starts (so no worker can die half-started and hang
    the pool, and a Ctrl-C meanwhile is delivered to the main process right after), and workers
    ignore it."""
    set_sigint_blocked(True)
    try:
        return multiprocessing.get_context(START_METHOD).Pool(
            os.cpu_count(), initializer=start_worker, initargs=(initializer, initargs)
        )
    finally:
        set_sigint_blocked(False)


def set_sigint_blocked(blocked):
    if hasattr(signal, "pthread_sigmask"):  # (absent on Windows, where no signal can interrupt the start)
        signal.pthread_sigmask(signal.SIG_BLOCK if blocked else signal.SIG_UNBLOCK, {signal.SIGINT})


def start_worker(initializer, initargs):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_sigint_blocked(False)
    if initializer is not None:
        initializer(*initargs)


_worker_zip = None  # (archive, root prefix, destination, member names) in each extraction worker


def open_worker_zip(zip_path, root, destination, names):
    global _worker_zip
    _worker_zip = (zipfile.ZipFile(zip_path), root, destination, names)


def extract_chunk(start):
    """Write the members from start on (EXTRACT_CHUNK of them); return (count, None) or
    (0, "member (reason)")."""
    archive, root, destination, names = _worker_zip
    names = names[start : start + EXTRACT_CHUNK]
    for name in names:
        try:
            data = archive.read(name)
        except (zipfile.BadZipFile, EOFError, zlib.error) as error:
            return 0, f"{name} ({error})"
        with open(os.path.join(destination, name[len(root) :]), "wb") as out:
            out.write(data)
    return len(names), None


def folder_matches_zip(folder, zip_path):
    """True when every file of the zip's dataset folder is in folder with its size."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            root, members, _ = dataset_members(archive)
    except zipfile.BadZipFile:
        return False
    for info in members:
        path = os.path.join(folder, info.filename[len(root) :])
        if not os.path.exists(path) or os.path.getsize(path) != info.file_size:
            return False
    return True


def folder_looks_complete(folder):
    """Without a zip to compare with: every class has training images and every annotated
    val image exists."""
    try:
        wnids = read_wnids(folder)
        if not all(os.listdir(os.path.join(folder, "train", w, "images")) for w in wnids):
            return False
        return all(os.path.exists(os.path.join(folder, "val", "images", f)) for f, _ in read_val_annotations(folder))
    except (OSError, DataError):
        return False


def staging_dir(target):
    return target + ".partial"


def matches(present, requested, folder, zip_path):
    """Whether data from source `present` is what was asked for: `requested` (None: any zip,
    never generated data); a folder extracted by another tool matches a --zip it holds whole."""
    if requested is None:
        return not is_synthetic(present)
    if present == requested:
        return True
    return bool(present.get("reused")) and zip_path is not None and folder_matches_zip(folder, zip_path)


def reusable_extraction(folder, requested, zip_path):
    """True when folder holds a finished extraction (its marker) of what was asked for. A marker
    from before sources and ids were recorded gets them."""
    marker = read_json(os.path.join(folder, EXTRACTED_MARKER))
    if not isinstance(marker, dict) or not matches(marker_source(marker), requested, folder, zip_path):
        return False
    if "id" not in marker or "source" not in marker:
        write_json(os.path.join(folder, EXTRACTED_MARKER), {"source": marker_source(marker), "id": uuid.uuid4().hex})
    return True


def ensure_extracted(args, requested, fresh):
    """The extracted dataset folder to pack from: the one in place when it is what was asked
    for (or complete, when extracted by another tool), a finished staging folder of an
    interrupted run, or a new extraction into the staging folder (always when fresh)."""
    target = os.path.join(args.data_dir, DATASET_DIR)
    staged = staging_dir(target)
    if not fresh:
        for folder in (target, staged):
            if reusable_extraction(folder, requested, args.zip):
                return folder
        if os.path.isdir(target) and not os.path.exists(os.path.join(target, EXTRACTED_MARKER)):
            # Extracted by another tool (the notebook, unzip): reuse it when it is complete.
            default_zip = os.path.join(args.data_dir, ZIP_NAME)
            reference = args.zip or (default_zip if os.path.isfile(default_zip) else None)
            if folder_matches_zip(target, reference) if reference else folder_looks_complete(target):
                print(f"reusing the extracted folder {target}")
                source = requested if args.synthetic else {"zip": None, "reused": True}
                write_json(os.path.join(target, EXTRACTED_MARKER), {"source": source, "id": uuid.uuid4().hex})
                return target
            print(f"{target} is incomplete (files of {reference or 'the dataset'} are missing): extracting again")
    extract(find_zip(args), staged, args.data_dir, requested if args.synthetic else None)
    return staged


# ---------------------------------------------------------------- the val restructuring


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


# ---------------------------------------------------------------- packing


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


# ---------------------------------------------------------------- the command


def requested_source(args):
    """What the data must come from: a given zip, synthetic parameters, or (None) any real
    Tiny ImageNet zip (the data dir's own, or a download)."""
    if args.synthetic:
        keys = ("classes", "train_per_class", "val_per_class", "seed")
        return {"synthetic": {key: getattr(args, key) for key in keys}}
    return zip_identity(args.zip) if args.zip else None


def describe_source(source, data_dir):
    if source is None:
        return f"the real Tiny ImageNet ({os.path.join(data_dir, ZIP_NAME)} or a download)"
    if "synthetic" in source:
        s = source["synthetic"]
        return (f"synthetic data ({s['classes']} classes, {s['train_per_class']} train and {s['val_per_class']} val "
                f"images per class, seed {s['seed']})")
    if source.get("reused"):
        return f"a {DATASET_DIR}/ folder extracted by another tool"
    return f"{source['zip']} ({source['bytes']:,} bytes)" if source.get("bytes") else f"{source['zip']}"


def check_paths(args):
    ensure_dir(args.data_dir, f"the data directory {args.data_dir}", ": choose another --data-dir")
    if args.zip and os.path.isdir(args.zip):
        raise DataError(f"--zip {args.zip} is a directory: give the zip file itself (tiny-imagenet-200.zip)")
    if args.zip and not os.path.isfile(args.zip):
        raise DataError(f"--zip {args.zip}: no such file")


def check_source(args, requested):
    """Refuse (without --force) to replace data that came from another source, whether it is
    packed or only extracted, and whatever version prepared it."""
    present = present_source(args.data_dir)
    folder = os.path.join(args.data_dir, DATASET_DIR)
    unmarked = not os.path.exists(os.path.join(folder, EXTRACTED_MARKER)) and read_meta(args.data_dir) is None
    if present and present.get("reused") and unmarked and not folder_looks_complete(folder):
        present = None  # half an extraction by another tool: nothing worth keeping
    if present is not None and not args.force and not matches(present, requested, folder, args.zip):
        raise DataError(f"{args.data_dir}/ already holds data prepared from {describe_source(present, args.data_dir)}, "
                        f"not from {describe_source(requested, args.data_dir)}: add --force to replace it, "
                        "or choose another --data-dir")


def prepare(args):
    start = time.perf_counter()
    check_paths(args)
    finish_interrupted_commit(args.data_dir)
    requested, meta = requested_source(args), read_meta(args.data_dir)
    if meta is not None and not args.force and matches(meta["source"], requested, os.path.join(args.data_dir, DATASET_DIR), args.zip):
        discard_leftovers(args.data_dir)
        added = add_missing_val_boxes(args.data_dir, meta)
        print(added or f"{args.data_dir}/ is already prepared: nothing to do (--force redoes it)")
        return
    check_source(args, requested)
    try:
        if args.synthetic:
            from synthetic import write_synthetic_zip

            args.zip = os.path.join(args.data_dir, SYNTHETIC_ZIP_NAME)
            write_synthetic_zip(args.zip, args.classes, args.train_per_class, args.val_per_class, seed=args.seed)
        root = ensure_extracted(args, requested, fresh=args.force)
        val_dir = ensure_val_restructured(root)
        meta = pack(args.data_dir, root, val_dir, read_json(os.path.join(root, EXTRACTED_MARKER))["source"])
        commit(args.data_dir, root)
    except BaseException as error:
        # Only a Ctrl-C keeps a finished staged extraction, for the same command to resume from
        # (a --force run would extract again anyway).
        discard_unfinished_work(args.data_dir, keep_extraction=isinstance(error, KeyboardInterrupt) and not args.force)
        raise
    counts = meta["counts"]
    print(
        f"prepared {args.data_dir}/: {counts['train']:,} train images and {counts['val']:,} val images "
        f"(split 20% / 80% into val and test by data.py, as the notebook does), "
        f"{len(meta['classes'])} classes{' (SYNTHETIC)' if meta['synthetic'] else ''}, "
        f"{sum(meta['bytes'].values()) / 1e6:.1f} MB packed, in {time.perf_counter() - start:.1f} s"
    )


def parse_args(argv):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="data", help="where the zip, the extracted folder and the packed arrays go")
    parser.add_argument("--zip", help="a local tiny-imagenet-200.zip, used as given (no download)")
    parser.add_argument("--url", default=OFFICIAL_URL, help="where to download the zip from")
    parser.add_argument("--md5", help=f"expected MD5 of the zip (for the official URL: {OFFICIAL_MD5})")
    parser.add_argument("--force", action="store_true",
                        help="extract, restructure and pack again, replacing data prepared from another source")
    synthetic = parser.add_argument_group("synthetic data (an offline smoke run)")
    synthetic.add_argument("--synthetic", action="store_true", help="generate a small learnable dataset instead")
    synthetic.add_argument("--classes", type=int, default=10, help="number of synthetic classes")
    synthetic.add_argument("--train-per-class", type=int, default=200, help="synthetic training images per class")
    synthetic.add_argument("--val-per-class", type=int, default=50, help="synthetic val images per class (split into val and test)")
    synthetic.add_argument("--seed", type=int, default=0, help="the synthetic data's seed (same seed, same bytes)")
    args = parser.parse_args(argv)
    if args.synthetic and args.zip:
        parser.error("--synthetic and --zip exclude each other")
    for flag in ("classes", "train_per_class", "val_per_class"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    created = first_missing_folder(args.data_dir)
    try:
        prepare(args)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to finish", file=sys.stderr)
        return 130
    except OSError as error:  # a disk that fills up or a folder that turns read-only mid-way
        print(f"error: {error.strerror or error}: {error.filename or args.data_dir}; fix that and run the same "
              "command again", file=sys.stderr)
        return 2
    finally:
        if created is not None and not any(files for _, _, files in os.walk(created)):
            shutil.rmtree(created, ignore_errors=True)  # a failed first prepare leaves no empty folders behind
    return 0


def first_missing_folder(path):
    """The outermost folder of path that does not exist yet (what creating path would create)."""
    path, missing = os.path.abspath(path), None
    while not os.path.exists(path):
        path, missing = os.path.dirname(path), path
    return missing


if __name__ == "__main__":
    sys.exit(main())
