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

The command and its decisions live here; the zip and its extraction in extraction.py, the val
restructuring and the packing in packing.py, the worker pool in workers.py.
"""
import sys

if __name__ == "__main__":  # before the imports below, which take a moment
    from cli import exit_quietly_on_ctrl_c

    exit_quietly_on_ctrl_c()

import os
import shutil
import time

from cli import ArgumentParser
from errors import DataError
from extraction import OFFICIAL_MD5, OFFICIAL_URL, ensure_extracted, folder_looks_complete, matches, zip_identity
from layout import (
    DATASET_DIR,
    EXTRACTED_MARKER,
    SYNTHETIC_ZIP_NAME,
    ZIP_NAME,
    ensure_dir,
    present_source,
    read_json,
    read_meta,
)
from packing import (
    add_missing_val_boxes,
    commit,
    discard_leftovers,
    discard_unfinished_work,
    ensure_val_restructured,
    finish_interrupted_commit,
    pack,
)

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
