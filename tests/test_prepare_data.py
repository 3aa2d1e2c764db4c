"""prepare_data.py: packing, idempotence, crash recovery, download, and bad inputs."""
import functools
import hashlib
import io
import http.server
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest
from conftest import ROOT, TINY
from PIL import Image

import extraction
import layout
import packing
import prepare_data
import workers
from layout import read_meta
from synthetic import write_synthetic_zip


def run_prepare(*argv):
    return prepare_data.main([str(a) for a in argv])


def arrays(data_dir):
    return {name: np.load(os.path.join(data_dir, "packed", name + ".npy")) for name in ("train_x", "train_y", "val_x", "val_y")}


def test_packs_every_image_with_sorted_wnid_labels(prepared_once):
    meta = read_meta(prepared_once)
    a = arrays(prepared_once)
    n_train = TINY["classes"] * TINY["train_per_class"]
    assert a["train_x"].shape == (n_train, 64, 64, 3) and a["train_x"].dtype == np.uint8
    assert a["val_x"].shape == (TINY["classes"] * TINY["val_per_class"], 64, 64, 3)
    assert meta["classes"] == sorted(meta["classes"]) and len(meta["classes"]) == TINY["classes"]
    assert meta["synthetic"] is True
    assert np.bincount(a["train_y"]).tolist() == [TINY["train_per_class"]] * TINY["classes"]
    assert meta["class_names"][0].startswith("synthetic")


def test_grayscale_jpegs_become_three_equal_channels(prepared_once):
    root = os.path.join(prepared_once, "tiny-imagenet-200", "train")
    gray = [
        os.path.join(d, f) for d, _, files in sorted(os.walk(root)) for f in sorted(files)
        if f.endswith(".JPEG") and Image.open(os.path.join(d, f)).mode == "L"
    ]
    assert gray, "the tiny zip should hold a grayscale JPEG"
    files = packing.labelled_files(root, read_meta(prepared_once)["classes"])
    index = [path for path, _ in files].index(gray[0])
    pixels = arrays(prepared_once)["train_x"][index]
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    assert (pixels[..., 0] == np.asarray(Image.open(gray[0]))).all()


def test_second_run_is_a_fast_no_op(prepared, capsys, monkeypatch):
    """Fast by what it does not do (no timing: a loaded machine would make that a race): it
    neither hashes the zip nor decodes an image nor rewrites a file."""
    before = {f: os.stat(os.path.join(prepared, "packed", f)).st_mtime_ns for f in os.listdir(os.path.join(prepared, "packed"))}
    for module, slow in ((packing, "decode"), (extraction, "md5_of"), (extraction, "extract"), (prepare_data, "pack")):
        monkeypatch.setattr(module, slow, lambda *args, name=slow, **kwargs: pytest.fail(f"a no-op run called {name}"))
    assert run_prepare("--data-dir", prepared) == 0
    assert "nothing to do" in capsys.readouterr().out
    after = {f: os.stat(os.path.join(prepared, "packed", f)).st_mtime_ns for f in os.listdir(os.path.join(prepared, "packed"))}
    assert before == after


def test_no_op_run_from_the_command_line_never_imports_torch(prepared):
    """The command line's no-op costs the interpreter's start-up and little else: torch (about
    2 s of imports here) is never loaded by prepare_data.py."""
    report = "import atexit, runpy, sys; atexit.register(lambda: print('torch loaded:', 'torch' in sys.modules)); " \
             f"sys.argv = ['prepare_data.py', '--data-dir', {prepared!r}]; runpy.run_path('prepare_data.py', run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", report], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and "nothing to do" in result.stdout
    assert "torch loaded: False" in result.stdout


def test_force_redoes_everything(prepared, tiny_zip):
    marker = os.path.join(prepared, "tiny-imagenet-200", ".extracted.json")
    os.remove(os.path.join(prepared, "tiny-imagenet-200", "wnids.txt"))  # damage that only re-extraction repairs
    assert run_prepare("--zip", tiny_zip, "--data-dir", prepared, "--force") == 0
    assert os.path.exists(marker) and read_meta(prepared) is not None
    assert os.path.exists(os.path.join(prepared, "tiny-imagenet-200", "wnids.txt"))


def test_folder_extracted_by_the_notebook_is_reused_without_a_zip(tmp_path, tiny_zip, prepared_once):
    data_dir = tmp_path / "data"
    with zipfile.ZipFile(tiny_zip) as archive:  # what shutil.unpack_archive leaves: no markers
        archive.extractall(data_dir)
    assert run_prepare("--data-dir", data_dir) == 0  # no zip here, no download attempted
    for name, values in arrays(prepared_once).items():
        assert (arrays(data_dir)[name] == values).all()


def test_half_extracted_folder_is_extracted_again(tmp_path, tiny_zip):
    data_dir = tmp_path / "data"
    with zipfile.ZipFile(tiny_zip) as archive:
        archive.extractall(data_dir, members=archive.namelist()[: len(archive.namelist()) // 2])
    shutil.copy(tiny_zip, data_dir / "tiny-imagenet-200.zip")
    assert run_prepare("--data-dir", data_dir) == 0
    assert read_meta(data_dir)["counts"]["train"] == TINY["classes"] * TINY["train_per_class"]


@pytest.mark.parametrize("leftover", ["extract", "restructure", "pack"])
def test_leftovers_of_an_interrupted_run_are_completed(prepared, tiny_zip, prepared_once, leftover):
    """Recreate what a kill leaves behind at each stage; the next run must finish the job."""
    root = os.path.join(prepared, "tiny-imagenet-200")
    if leftover != "pack":
        os.remove(os.path.join(prepared, "packed", "meta.json"))
    if leftover == "extract":
        os.rename(root, root + ".partial")
        os.remove(os.path.join(root + ".partial", ".extracted.json"))
    elif leftover == "restructure":
        os.rename(os.path.join(root, "val_processed"), os.path.join(root, "val_processed.partial"))
    else:
        os.rename(os.path.join(prepared, "packed"), os.path.join(prepared, "packed.partial"))
        with open(os.path.join(prepared, "packed.partial", "val_x.npy"), "r+b") as f:
            f.truncate(1000)
    assert run_prepare("--zip", tiny_zip, "--data-dir", prepared) == 0
    for name, values in arrays(prepared_once).items():
        assert (arrays(prepared)[name] == values).all()


def start_and_kill_when(command, path, timeout=60):
    """Start command and SIGKILL it as soon as path appears; True when it was still working then."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    working = process.poll() is None
    process.kill()
    process.wait()
    return working


def test_killed_at_any_stage_nothing_half_done_is_read_and_the_next_run_finishes(tmp_path):
    """SIGKILL real runs during extraction and during packing, of a first prepare and of a
    --force re-prepare: readers never see partial data, the old data survives a killed
    re-prepare, and the next run gives what a clean run gives."""
    big_zip = write_synthetic_zip(str(tmp_path / "big.zip"), classes=4, train_per_class=1500, val_per_class=50, seed=1)
    data_dir = tmp_path / "data"
    command = [sys.executable, "prepare_data.py", "--zip", big_zip, "--data-dir", str(data_dir)]
    for stage in ("tiny-imagenet-200.partial", "packed.partial"):
        assert start_and_kill_when(command, data_dir / stage), f"the run ended before {stage} appeared"
        assert read_meta(data_dir) is None
    assert subprocess.run(command, cwd=ROOT, capture_output=True).returncode == 0
    clean = tmp_path / "clean"
    assert run_prepare("--zip", big_zip, "--data-dir", clean) == 0
    for stage in ("tiny-imagenet-200.partial", "packed.partial"):
        assert start_and_kill_when([*command, "--force"], data_dir / stage)
        assert read_meta(data_dir) is not None  # the previous data, whole
        for name, values in arrays(clean).items():
            assert (arrays(data_dir)[name] == values).all(), name
    assert subprocess.run([*command, "--force"], cwd=ROOT, capture_output=True).returncode == 0
    assert not (data_dir / "packed.partial").exists() and not (data_dir / "tiny-imagenet-200.partial").exists()
    for name, values in arrays(clean).items():
        assert (arrays(data_dir)[name] == values).all(), name


# ---------------------------------------------------------------- download


@pytest.fixture
def http_server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1 for the download tests."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(QuietHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def test_download_checks_md5_and_prepares(http_server, tiny_zip, tmp_path):
    www, url = http_server
    shutil.copy(tiny_zip, www / "t.zip")
    data_dir = tmp_path / "data"
    assert run_prepare("--data-dir", data_dir, "--url", f"{url}/t.zip", "--md5", md5(tiny_zip)) == 0
    assert md5(data_dir / "tiny-imagenet-200.zip") == md5(tiny_zip)
    assert not (data_dir / "tiny-imagenet-200.zip.part").exists()
    assert read_meta(data_dir) is not None


def test_download_with_wrong_md5_keeps_nothing(http_server, tiny_zip, tmp_path, capsys):
    www, url = http_server
    shutil.copy(tiny_zip, www / "t.zip")
    data_dir = tmp_path / "data"
    assert run_prepare("--data-dir", data_dir, "--url", f"{url}/t.zip", "--md5", "0" * 32) == 2
    assert "MD5" in capsys.readouterr().err
    assert not (data_dir / "tiny-imagenet-200.zip").exists() and not (data_dir / "tiny-imagenet-200.zip.part").exists()


def test_offline_download_fails_with_one_clear_line(tmp_path, capsys):
    assert run_prepare("--data-dir", tmp_path / "data" / "tiny", "--url", "http://127.0.0.1:9/none.zip") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot download") and "--zip" in err and "\n" not in err
    assert not (tmp_path / "data").exists()  # the failed first prepare leaves no empty folders behind


# ---------------------------------------------------------------- bad inputs


def rewrite_zip(src, dst, drop=(), replace=None, add=None):
    """Copy a zip, dropping entries whose name ends with any of `drop` and replacing/adding some."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename.endswith(tuple(drop)):
                continue
            data = next((v for k, v in replace.items() if info.filename.endswith(k)), None)
            zout.writestr(info.filename, data if data is not None else zin.read(info))
        for name, data in (add or {}).items():
            zout.writestr(name, data)
    return dst


def expect_error(capsys, argv, *fragments):
    assert run_prepare(*argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bars
    assert err.startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_missing_zip(tmp_path, capsys):
    expect_error(capsys, ["--zip", tmp_path / "nope.zip", "--data-dir", tmp_path / "d"], "no such file")


def test_truncated_zip(tmp_path, tiny_zip, capsys):
    truncated = tmp_path / "t.zip"
    truncated.write_bytes(open(tiny_zip, "rb").read()[:5000])
    expect_error(capsys, ["--zip", truncated, "--data-dir", tmp_path / "d"], "not a readable zip")


def test_local_zip_with_wrong_md5(tmp_path, tiny_zip, capsys):
    expect_error(capsys, ["--zip", tiny_zip, "--md5", "0" * 32, "--data-dir", tmp_path / "d"], "MD5")


@pytest.mark.parametrize("missing", ["wnids.txt", "val_annotations.txt"])
def test_zip_that_is_not_tiny_imagenet(tmp_path, tiny_zip, capsys, missing):
    bad = rewrite_zip(tiny_zip, tmp_path / "bad.zip", drop=[missing])
    expect_error(capsys, ["--zip", bad, "--data-dir", tmp_path / "d"], "not Tiny ImageNet", missing.split("/")[-1])


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/evil.txt", "tiny-imagenet-200/../../evil.txt"])
def test_zip_entries_that_escape_the_target(tmp_path, tiny_zip, capsys, name):
    bad = rewrite_zip(tiny_zip, tmp_path / "bad.zip", add={name: "x"})
    expect_error(capsys, ["--zip", bad, "--data-dir", tmp_path / "d"], "escapes")
    assert not (tmp_path / "evil.txt").exists()


def test_zip_bomb_is_refused(tmp_path, tiny_zip, capsys, monkeypatch):
    monkeypatch.setattr(extraction, "MAX_UNCOMPRESSED_BYTES", 1000)
    expect_error(capsys, ["--zip", tiny_zip, "--data-dir", tmp_path / "d"], "would expand")


def test_undecodable_jpeg_is_named(tmp_path, tiny_zip, capsys):
    wnid = "n90000000"
    bad = rewrite_zip(tiny_zip, tmp_path / "bad.zip", replace={f"{wnid}_3.JPEG": b"not a jpeg"})
    expect_error(capsys, ["--zip", bad, "--data-dir", tmp_path / "d"], "cannot decode", f"{wnid}_3.JPEG")


def test_annotation_with_unknown_class(tmp_path, tiny_zip, capsys):
    with zipfile.ZipFile(tiny_zip) as z:
        annotations = z.read("tiny-imagenet-200/val/val_annotations.txt").decode()
    annotations = annotations.replace("n90000001", "n12345678", 1)
    bad = rewrite_zip(tiny_zip, tmp_path / "bad.zip", replace={"val_annotations.txt": annotations})
    expect_error(capsys, ["--zip", bad, "--data-dir", tmp_path / "d"], "n12345678", "not in wnids.txt")


def test_not_enough_disk_space(tmp_path, tiny_zip, capsys, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    expect_error(capsys, ["--zip", tiny_zip, "--data-dir", tmp_path / "d"], "not enough disk space")


def test_data_dir_that_is_not_writable(tmp_path, tiny_zip, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    expect_error(capsys, ["--zip", tiny_zip, "--data-dir", blocker / "data"], "cannot create the data directory")


def test_meta_records_its_source(prepared_once, tiny_zip):
    assert read_meta(prepared_once)["source"] == {"zip": os.path.basename(tiny_zip), "bytes": os.path.getsize(tiny_zip)}
    marker = json.load(open(os.path.join(prepared_once, "tiny-imagenet-200", ".extracted.json")))
    assert marker["source"] == read_meta(prepared_once)["source"] and marker["id"] == read_meta(prepared_once)["extracted_id"]


def snapshot(data_dir):
    """Every file under data_dir with its size and modification time."""
    return {os.path.relpath(os.path.join(d, f), data_dir): (os.stat(os.path.join(d, f)).st_size, os.stat(os.path.join(d, f)).st_mtime_ns)
            for d, _, files in os.walk(data_dir) for f in files}


def test_a_failed_prepare_leaves_the_directory_exactly_as_it_was(prepared, tmp_path, tiny_zip, capsys):
    """--force with a zip holding one undecodable JPEG: the old extracted folder (whose
    test/images --predict reads) and the old arrays stay, and nothing partial is left behind."""
    bad = rewrite_zip(tiny_zip, tmp_path / "bad.zip", replace={"n90000000_3.JPEG": b"not a jpeg"})
    before = snapshot(prepared)
    expect_error(capsys, ["--zip", bad, "--data-dir", prepared, "--force"], "cannot decode")
    assert snapshot(prepared) == before
    assert read_meta(prepared) is not None


def test_another_source_never_replaces_prepared_data_without_force(prepared, tmp_path, tiny_zip, capsys):
    before = snapshot(prepared)
    err = expect_error(capsys, ["--synthetic", "--data-dir", prepared], "already holds data prepared from tiny.zip",
                       "not from synthetic data (10 classes", "--force")
    other = write_synthetic_zip(str(tmp_path / "other.zip"), classes=3, train_per_class=8, val_per_class=4, seed=5)
    expect_error(capsys, ["--zip", other, "--data-dir", prepared], "from tiny.zip", "not from other.zip", "--force")
    assert snapshot(prepared) == before and len(err.splitlines()) == 1
    assert run_prepare("--zip", other, "--data-dir", prepared, "--force") == 0
    assert read_meta(prepared)["source"]["zip"] == "other.zip" and read_meta(prepared)["counts"]["train"] == 24


def test_a_plain_run_keeps_data_from_any_zip_but_not_generated_data(prepared, tmp_path, capsys):
    assert run_prepare("--data-dir", prepared) == 0  # prepared from tiny.zip: nothing to do
    generated = tmp_path / "generated"
    assert run_prepare("--synthetic", "--classes", "2", "--train-per-class", "4", "--val-per-class", "5", "--data-dir", generated) == 0
    assert run_prepare("--synthetic", "--classes", "2", "--train-per-class", "4", "--val-per-class", "5", "--data-dir", generated) == 0
    assert "nothing to do" in capsys.readouterr().out
    expect_error(capsys, ["--data-dir", generated], "holds data prepared from synthetic data (2 classes", "--force")


def test_readers_refuse_parts_from_different_prepare_runs(prepared, tmp_path, tiny_zip):
    """What a kill between the two final renames leaves: the new folder, the old arrays."""
    import data

    other = write_synthetic_zip(str(tmp_path / "other.zip"), classes=3, train_per_class=8, val_per_class=4, seed=5)
    elsewhere = tmp_path / "elsewhere"
    assert run_prepare("--zip", other, "--data-dir", elsewhere) == 0
    shutil.rmtree(os.path.join(prepared, "tiny-imagenet-200"))
    shutil.copytree(elsewhere / "tiny-imagenet-200", os.path.join(prepared, "tiny-imagenet-200"))
    assert read_meta(prepared) is None
    with pytest.raises(data.DataError, match="from different prepare runs") as refused:
        data.load_packed(prepared)
    command = shlex.split(str(refused.value).split("`")[1])  # the command the message prints, run as printed
    assert command[:2] == ["python", "prepare_data.py"]
    assert subprocess.run([sys.executable, *command[1:]], cwd=ROOT, capture_output=True).returncode == 0
    assert read_meta(prepared)["counts"]["train"] == 24  # it finished the job


def test_prepared_data_without_its_extracted_folder_still_loads(prepared):
    import data

    shutil.rmtree(os.path.join(prepared, "tiny-imagenet-200"))  # to save space: the arrays are enough
    assert len(data.make_splits(data.load_packed(prepared))["test"][1]) == 32


def test_zip_that_is_a_directory_and_data_dir_that_is_a_file(tmp_path, tiny_zip, capsys):
    expect_error(capsys, ["--zip", tmp_path, "--data-dir", tmp_path / "d"], "is a directory", "the zip file itself")
    assert not (tmp_path / "d").exists()
    blocker = tmp_path / "file"
    blocker.write_text("a file")
    expect_error(capsys, ["--zip", tiny_zip, "--data-dir", blocker], "is a file, not a directory")


def test_a_damaged_zip_of_the_users_own_is_not_to_be_deleted(tmp_path, tiny_zip, capsys):
    truncated = tmp_path / "t.zip"
    truncated.write_bytes(open(tiny_zip, "rb").read()[:5000])
    err = expect_error(capsys, ["--zip", truncated, "--data-dir", tmp_path / "d"], "not a readable zip", "fresh copy")
    assert "delete" not in err
    data_dir = tmp_path / "d2"
    data_dir.mkdir()
    shutil.copy(truncated, data_dir / "tiny-imagenet-200.zip")  # the data dir's own (downloaded) zip
    expect_error(capsys, ["--data-dir", data_dir], "delete it and run `python prepare_data.py --data-dir")


def test_truncated_array_is_never_used(prepared):
    with open(os.path.join(prepared, "packed", "train_x.npy"), "r+b") as f:
        f.truncate(4096)
    assert read_meta(prepared) is None


class RangeHandler(QuietHandler):
    """Serves `Range: bytes=N-` requests with 206, like a real download server."""

    range_starts = []

    def send_head(self):
        requested = self.headers.get("Range")
        if not requested:
            return super().send_head()
        start = int(requested.split("=")[1].rstrip("-"))
        RangeHandler.range_starts.append(start)
        path = self.translate_path(self.path)
        data = open(path, "rb").read()
        self.send_response(206)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        return io.BytesIO(data[start:])


def test_an_interrupted_download_resumes_from_its_part_file(tmp_path, tiny_zip):
    www = tmp_path / "www"
    www.mkdir()
    shutil.copy(tiny_zip, www / "t.zip")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        half = open(tiny_zip, "rb").read()[: os.path.getsize(tiny_zip) // 2]
        (data_dir / "tiny-imagenet-200.zip.part").write_bytes(half)  # what a killed download leaves
        url = f"http://127.0.0.1:{server.server_address[1]}/t.zip"
        assert run_prepare("--data-dir", data_dir, "--url", url, "--md5", md5(tiny_zip)) == 0
        assert md5(data_dir / "tiny-imagenet-200.zip") == md5(tiny_zip)
        assert RangeHandler.range_starts == [len(half)]  # only the missing half was fetched
    finally:
        server.shutdown()


def test_ctrl_c_stops_cleanly_and_the_next_run_finishes(tmp_path):
    """Ctrl-C reaches the whole process group (main process and pool workers), during extraction
    and during packing: one message, exit 130, no traceback from any worker, and the same command
    then completes."""
    big_zip = write_synthetic_zip(str(tmp_path / "big.zip"), classes=4, train_per_class=1000, val_per_class=50, seed=2)
    for phase, marker in (("extraction", layout.DATASET_DIR), ("packing", layout.PACKED_DIR)):
        data_dir = tmp_path / phase
        command = [sys.executable, "prepare_data.py", "--zip", big_zip, "--data-dir", str(data_dir)]
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        staged = data_dir / layout.staging_dir(marker)  # exists from the phase's start until the end
        deadline = time.monotonic() + 60
        while not staged.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        # Freeze the main process (it hands out the work), so that the Ctrl-C lands in the phase
        # however busy the machine is. Its workers stay running: a group stop can catch a worker
        # being forked and leave it stopped.
        os.kill(process.pid, signal.SIGSTOP)
        assert process.poll() is None and staged.exists(), f"{phase} was never seen under way"
        os.killpg(process.pid, signal.SIGINT)
        os.kill(process.pid, signal.SIGCONT)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 130, err[-1000:]
        assert "run the same command again" in err
        assert "Traceback" not in err and "ForkPoolWorker" not in err
        assert read_meta(data_dir) is None
        assert subprocess.run(command, cwd=ROOT, capture_output=True).returncode == 0
        assert read_meta(data_dir)["counts"]["train"] == 4000


def test_data_of_an_older_version_or_only_extracted_is_not_replaced_by_another_source(prepared, tmp_path, tiny_zip, capsys):
    meta_path = os.path.join(prepared, "packed", "meta.json")
    old = json.load(open(meta_path))
    del old["extracted_id"]
    json.dump({**old, "format": 1}, open(meta_path, "w"))  # what the previous version wrote
    expect_error(capsys, ["--synthetic", "--data-dir", prepared], "already holds data prepared from tiny.zip", "--force")
    notebook = tmp_path / "notebook"
    with zipfile.ZipFile(tiny_zip) as archive:  # a folder the notebook extracted, nothing packed
        archive.extractall(notebook)
    before = snapshot(notebook)
    expect_error(capsys, ["--synthetic", "--data-dir", notebook], "a tiny-imagenet-200/ folder extracted by another tool")
    assert snapshot(notebook) == before
    assert run_prepare("--zip", tiny_zip, "--data-dir", notebook) == 0  # the zip it was extracted from: reused
    assert "reusing the extracted folder" in capsys.readouterr().out


def test_a_plain_run_never_adopts_an_interrupted_synthetic_extraction(tmp_path, monkeypatch, capsys):
    data_dir = tmp_path / "d"
    with monkeypatch.context() as patch:
        patch.setattr(prepare_data, "pack", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
        assert run_prepare("--synthetic", "--classes", "2", "--train-per-class", "4", "--data-dir", data_dir) == 130
    assert (data_dir / "tiny-imagenet-200.partial" / ".extracted.json").exists()  # kept, for the same command
    expect_error(capsys, ["--data-dir", data_dir, "--url", "http://127.0.0.1:9/none.zip"], "cannot download")
    assert run_prepare("--synthetic", "--classes", "2", "--train-per-class", "4", "--data-dir", data_dir) == 0
    assert read_meta(data_dir)["source"]["synthetic"]["classes"] == 2
    assert not (data_dir / "tiny-imagenet-200.partial").exists()


def test_a_disk_error_half_way_is_one_line_and_leaves_nothing_behind(prepared, tmp_path, tiny_zip, monkeypatch, capsys):
    def disk_full(*args):
        raise OSError(28, "No space left on device")

    class FullDisk:  # the packed array opened for the decoded images, on a disk that is full
        def __init__(self, file):
            self.file = file

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self.file.close()

        def seek(self, offset):
            self.file.seek(offset)

        write = staticmethod(disk_full)

    def open_on_a_full_disk(path, mode="r", *args, **kwargs):
        file = open(path, mode, *args, **kwargs)
        return FullDisk(file) if mode == "r+b" else file

    before = snapshot(prepared)
    monkeypatch.setattr(packing, "open", open_on_a_full_disk, raising=False)
    monkeypatch.setattr(workers.multiprocessing, "get_context", lambda kind: ThreadContext())
    assert run_prepare("--zip", tiny_zip, "--data-dir", prepared, "--force") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: No space left on device") and not any("Traceback" in line for line in err)
    assert snapshot(prepared) == before


class ThreadContext:
    """A pool of threads in place of processes, so that a monkeypatch reaches the workers."""

    def Pool(self, processes, initializer, initargs):
        from multiprocessing.pool import ThreadPool

        work_initializer, work_initargs = initargs  # process_pool's: start_worker sets signals, not for threads
        return ThreadPool(processes, initializer=work_initializer, initargs=work_initargs)


def test_the_hint_for_unusable_synthetic_data_names_its_sizes(tmp_path):
    import data

    data_dir = tmp_path / "d"
    assert run_prepare("--synthetic", "--classes", "2", "--train-per-class", "4", "--data-dir", data_dir) == 0
    os.remove(data_dir / "packed" / "val_x.npy")
    with pytest.raises(data.DataError) as refused:
        data.load_packed(str(data_dir))
    command = str(refused.value).split("`")[1]
    assert command == f"python prepare_data.py --synthetic --classes 2 --train-per-class 4 --val-per-class 50 --seed 0 --data-dir {data_dir}"
    assert subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=ROOT, capture_output=True).returncode == 0


def test_a_kill_inside_the_final_swap_is_finished_by_the_printed_command(prepared, monkeypatch):
    """--force --synthetic over real data, killed after the new folder was renamed into place
    and before the new arrays were: readers refuse the mix, and the command they print (the
    synthetic one, with its sizes) completes the swap instead of preparing again."""
    import data

    with monkeypatch.context() as patch:
        patch.setattr(prepare_data, "commit", lambda data_dir, root: layout.replace_dir(
            root, os.path.join(data_dir, "tiny-imagenet-200")))  # the first rename only: then the kill
        assert run_prepare("--synthetic", "--classes", "2", "--train-per-class", "4", "--force", "--data-dir", prepared) == 0
    assert read_meta(prepared) is None
    with pytest.raises(data.DataError, match="from different prepare runs") as refused:
        data.load_packed(prepared)
    command = shlex.split(str(refused.value).split("`")[1])
    assert command[2:4] == ["--synthetic", "--classes"]
    result = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and "nothing to do" in result.stdout  # swapped in, not prepared again
    assert read_meta(prepared)["counts"]["train"] == 8 and read_meta(prepared)["synthetic"]
    assert sorted(os.listdir(prepared)) == ["packed", "tiny-imagenet-200", "tiny-imagenet-200-synthetic.zip"]
