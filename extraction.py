"""Getting Tiny ImageNet's zip (a download with resume and MD5, or a local file) and extracting
its dataset folder once, checked member by member (zip bombs, paths that escape, damaged
entries), in parallel, into a staging folder swapped in at the end. Not here: the val
restructuring and packing (packing.py), the command (prepare_data.py).
"""
import hashlib
import os
import shutil
import uuid
import urllib.error
import urllib.request
import zipfile
import zlib

from cli import progress_bar, shell_command
from errors import DataError
from layout import (
    DATASET_DIR,
    EXTRACTED_MARKER,
    ZIP_NAME,
    check_free_space,
    is_synthetic,
    marker_source,
    read_json,
    staging_dir,
    write_json,
)
from packing import read_val_annotations, read_wnids
from workers import process_pool

# Pool tasks carry only a chunk's index: the work lists reach the workers at their start. So every
# task fits in the task pipe at once, and a Ctrl-C's pool.terminate() cannot deadlock on a task
# handler blocked in a full pipe (a CPython Pool race that big tasks trigger).


OFFICIAL_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


OFFICIAL_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"


MAX_UNCOMPRESSED_BYTES = 4 << 30  # the real zip expands to ~0.5 GB; refuse zip bombs


MAX_ENTRIES = 500_000


EXTRACT_CHUNK = 1000  # files per task


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
