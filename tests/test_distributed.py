"""train.py under `torchrun --standalone --nproc_per_node=2` on CPU (Gloo)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import evaluate
import prepare_data
import resume
import train
from conftest import ROOT, train_saying_after_the_first_step, wait_for_line
from errors import DataError
from totals import resume_point

pytestmark = pytest.mark.slow
COMMON = ["--batch-size", "16", "--eval-batch-size", "16", "--log-every", "2", "--device", "cpu", "--no-amp"]


def torchrun(*args, processes=2, check=True):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "train.py", *args]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-3000:]
    return result


def single(*args):
    result = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory):
    """4 classes, 96 training images, 36 val images: val split 7 and test split 29, both odd."""
    data_dir = str(tmp_path_factory.mktemp("odd") / "data")
    argv = ["--synthetic", "--data-dir", data_dir, "--classes", "4", "--train-per-class", "24", "--val-per-class", "9", "--seed", "3"]
    assert prepare_data.main(argv) == 0
    return data_dir


def load(path):
    return torch.load(path, weights_only=True)


def evaluates_to(checkpoint, expected, tmp_path, split="test"):
    """evaluate.py on `checkpoint` gives the top-1, top-5 and loss the run recorded."""
    out = tmp_path / f"{split}.json"
    assert evaluate.main([str(checkpoint), "--split", split, "--batch-size", "16", "--device", "cpu", "--json", str(out)]) == 0
    measured = json.load(open(out))
    assert (measured["top1"], measured["top5"]) == (expected["top1"], expected["top5"]), split
    assert abs(measured["loss"] - expected["loss"]) < 1e-5, split


def test_two_ranks_train_a_batchnorm_model_with_an_ema_identically_and_record_what_evaluate_py_gives(odd_data, tmp_path):
    """With the improved recipe (clipping sees the all-reduced gradients) and an EMA: each rank's
    EMA averages its own rank's BatchNorm statistics; rank 0's are evaluated and saved, so the
    checkpoint reproduces the recorded figures."""
    tiny_cnn = ["--model", "cnn", "--channels", "8,16", "--hidden-dim", "32"]
    recipe = ["--recipe", "improved", "--ema-decay", "0.9"]
    result = torchrun("--data-dir", odd_data, "--run-dir", str(tmp_path / "r"), "--epochs", "2", *COMMON, *tiny_cnn, *recipe)
    assert "parameters identical on all 2 ranks" in result.stdout
    assert "cnn has BatchNorm: each of the 2 processes normalises its own share" in result.stdout
    assert result.stdout.count("epoch 2/2:") == 1  # only rank 0 prints
    assert "test (final EMA weights, epoch 2)" in result.stdout
    checkpoint = load(tmp_path / "r" / "last.pt")
    assert checkpoint["config"]["world_size"] == 2 and checkpoint["config"]["grad_clip"] == 1.0
    assert checkpoint["ema"]["updates"] == 2 * 6  # 96 images / 16 a step, 2 epochs
    assert not any(key.startswith(("module.", "_orig_mod.")) for key in checkpoint["model"])
    evaluates_to(tmp_path / "r" / "last.pt", json.load(open(tmp_path / "r" / "test_metrics.json"))["final"], tmp_path)


def test_more_ranks_than_evaluation_images_leave_a_rank_an_empty_shard_and_still_count_every_image(tmp_path):
    """5 val images: a val split of 1 image, so rank 1's shard of it is empty."""
    data_dir = str(tmp_path / "data")
    assert prepare_data.main(["--synthetic", "--data-dir", data_dir, "--classes", "5", "--train-per-class", "8",
                              "--val-per-class", "1"]) == 0
    run_dir = tmp_path / "r"
    torchrun("--data-dir", data_dir, "--run-dir", str(run_dir), "--epochs", "1", *COMMON)
    assert load(run_dir / "last.pt")["progress"]["history"][-1]["val_top1"] in (0.0, 1.0)  # one image
    assert json.load(open(run_dir / "test_metrics.json"))["final"]["images"] == 4


def test_two_ranks_with_half_batches_equal_one_process_with_the_whole_batch_and_evaluate_as_it_does(odd_data, tmp_path):
    """Dropout off. Augmentation stays on: every rank augments the same global batch. The ranks'
    evaluation of the odd splits (val 7, test 29 images: uneven shards) counts every image once."""
    args = ["--data-dir", odd_data, "--epochs", "1", "--dropout", "0", *COMMON]
    torchrun(*args, "--run-dir", str(tmp_path / "two"))
    single(*args, "--run-dir", str(tmp_path / "one"))
    two, one = load(tmp_path / "two" / "last.pt")["model"], load(tmp_path / "one" / "last.pt")["model"]
    for key, value in one.items():
        if key.endswith("attn.in_proj_bias"):
            # The key bias shifts every score of a query equally, so softmax ignores it: its exact
            # gradient is zero, and Adam scales the float noise left in its place up to lr-sized
            # steps. Everything else must agree to float tolerance.
            key_bias = slice(value.numel() // 3, 2 * value.numel() // 3)
            assert torch.allclose(value[key_bias], two[key][key_bias], atol=1e-4), key
            value, other = torch.cat([value[: key_bias.start], value[key_bias.stop :]]), torch.cat([two[key][: key_bias.start], two[key][key_bias.stop :]])
            assert torch.allclose(value, other, atol=1e-5), key
        else:
            assert torch.allclose(value, two[key], atol=1e-5), key
    run_dir = tmp_path / "two"
    reported = json.load(open(run_dir / "test_metrics.json"))["final"]
    assert reported["images"] == 29 and 0 < reported["top1"] < 1  # not a trivially perfect model
    history = load(run_dir / "last.pt")["progress"]["history"][-1]
    evaluates_to(run_dir / "last.pt", reported, tmp_path)
    evaluates_to(run_dir / "last.pt", {"top1": history["val_top1"], "top5": history["val_top5"], "loss": history["val_loss"]}, tmp_path, "val")


# train.py under torchrun, its DDP counting the rounds of gradient all-reduce (the hook on the
# first bucket runs once per synchronised backward), printed by rank 0 at the end.
COUNTING_ALL_REDUCES = """
import os
import sys
sys.path.insert(0, {root!r})
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
import train

rounds = []


def count_and_all_reduce(state, bucket):
    rounds.extend([1] if bucket.index() == 0 else [])
    return allreduce_hook(None, bucket)


class CountingDDP(train.DistributedDataParallel):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_comm_hook(None, count_and_all_reduce)


train.DistributedDataParallel = CountingDDP
code = train.main()
print(f"all-reduce rounds {{len(rounds)}} on rank {{os.environ['RANK']}}", flush=True)
sys.exit(code)
"""


def test_gradient_accumulation_under_torchrun_all_reduces_once_per_optimizer_step(odd_data, tmp_path):
    """--grad-accum 3: the first two chunks' backward run under DDP's no_sync, so the gradients
    cross the processes once per optimizer step (96 images / batch 24 = 4 steps), not per chunk.
    (Also, sharing this run: --logger writes one TensorBoard file, rank 0's.)"""
    script = tmp_path / "counting.py"
    script.write_text(COUNTING_ALL_REDUCES.format(root=ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
               "--data-dir", odd_data, "--run-dir", str(tmp_path / "r"), "--epochs", "1", *COMMON[2:],
               "--batch-size", "8", "--grad-accum", "3", "--logger", "tensorboard"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "all-reduce rounds 4 on rank 0" in result.stdout and "all-reduce rounds 4 on rank 1" in result.stdout
    assert load(tmp_path / "r" / "last.pt")["progress"]["step"] == 4
    assert len(list((tmp_path / "r").glob("events.out.tfevents.*"))) == 1  # --logger: rank 0 alone logs


def test_sigterm_stops_every_rank_cleanly(tmp_path):
    data_dir = str(tmp_path / "data")
    argv = ["--synthetic", "--data-dir", data_dir, "--classes", "4", "--train-per-class", "300", "--val-per-class", "5"]
    assert prepare_data.main(argv) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               train_saying_after_the_first_step(tmp_path), "--data-dir", data_dir, "--run-dir", str(tmp_path / "r"),
               "--epochs", "100", *COMMON]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    wait_for_line(process.stdout, "first step done")
    os.killpg(process.pid, signal.SIGTERM)  # what a scheduler does: the launcher and both ranks
    started = time.perf_counter()
    _, err = process.communicate(timeout=120)
    assert time.perf_counter() - started < 60, "the ranks hung"
    assert "--resume" in err
    checkpoint = load(tmp_path / "r" / "last.pt")
    assert checkpoint["progress"]["step"] > 0 and len(checkpoint["rng"]["torch"]) == 2


FAILING_RANK = """
import os, sys
sys.path.insert(0, {root!r})
import data, train
if os.environ["RANK"] == "1":
    original = data.BatchLoader.iterate
    def iterate(self, start_step=0):
        for index, batch in enumerate(original(self, start_step), start_step):
            if self.train and index == 3:
                raise RuntimeError("simulated failure on rank 1")
            yield batch
    data.BatchLoader.iterate = iterate
sys.exit(train.main(sys.argv[1:]))
"""


def test_an_error_on_one_rank_stops_all_ranks_without_hanging(odd_data, tmp_path):
    script = tmp_path / "failing_train.py"
    script.write_text(FAILING_RANK.format(root=ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
               "--data-dir", odd_data, "--run-dir", str(tmp_path / "r"), "--epochs", "3", *COMMON]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "simulated failure on rank 1" in result.stderr
    assert time.perf_counter() - started < 60, "the healthy rank waited for a timeout"


GROUP_AT_EXIT = """
import atexit, sys
import torch.distributed
sys.path.insert(0, {root!r})
import train
atexit.register(lambda: sys.stdout.write(f"group initialised at exit: {{torch.distributed.is_initialized()}}\\n"))  # one write
sys.exit(train.main())
"""


def test_a_bad_input_under_torchrun_is_one_line_per_rank_and_leaves_no_process_group(odd_data, tmp_path):
    """A DataError (raised on every rank alike) ends each rank with exit code 2 and its process
    group destroyed (NCCL warns of, and may hang on, a group left to the interpreter's exit)."""
    script = tmp_path / "train_reporting_its_group.py"
    script.write_text(GROUP_AT_EXIT.format(root=ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
               "--data-dir", odd_data, "--run-dir", str(tmp_path / "r"), *COMMON, "--batch-size", "1000"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "exitcode  : 2" in result.stderr
    assert result.stderr.count("error: --batch-size 1000 is larger than the training set (96 images)") == 2
    assert result.stdout.count("group initialised at exit: False") == 2, result.stdout


SEPARATE_DISKS = """
import os, sys
sys.path.insert(0, {root!r})
import train
os.chdir(os.path.join({machines!r}, "machine" + os.environ["RANK"]))  # a relative --run-dir: one per rank
evaluate, calls = train.evaluate, []
def worse_after_epoch_one(*args, **kwargs):  # validation in every later epoch is worse: the best epoch is 1
    metrics = evaluate(*args, **kwargs)
    calls.append(1)
    return metrics if len(calls) == 1 and "--resume" not in sys.argv else {{**metrics, "top1": -1.0}}
train.evaluate = worse_after_epoch_one
sys.exit(train.main(sys.argv[1:]))
"""


def test_ranks_on_machines_without_a_shared_disk_test_the_best_weights_and_resume_exactly(odd_data, tmp_path):
    """Each rank runs in its own folder, as on machines with no shared filesystem: rank 1 never
    sees what rank 0 wrote. The final test of the best epoch's weights needs no best.pt there,
    neither in the run nor after a resume (rank 1 given only last.pt), and the resumed run ends
    bit-identical to the straight one."""
    def launch(name, *args):
        machines = tmp_path / name
        for rank in (0, 1):
            (machines / f"machine{rank}").mkdir(parents=True, exist_ok=True)
        script = machines / "separate_disks.py"
        script.write_text(SEPARATE_DISKS.format(root=ROOT, machines=str(machines)))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
                   "--data-dir", odd_data, "--run-dir", "r", *COMMON, *args]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return machines / "machine0" / "r", machines / "machine1" / "r", result.stdout

    straight, elsewhere, out = launch("straight", "--epochs", "2")
    assert not elsewhere.exists()  # rank 1 wrote nothing: it had no best.pt to read
    best = json.load(open(straight / "test_metrics.json"))["best"]
    assert best["epoch"] == 1 and "test (best weights, epoch 1)" in out
    report = tmp_path / "best.json"
    assert evaluate.main([str(straight / "best.pt"), "--device", "cpu", "--batch-size", "16", "--json", str(report)]) == 0
    measured = json.load(open(report))
    assert measured["top1"] == best["top1"] and abs(measured["loss"] - best["loss"]) < 1e-5  # epoch 1's weights, not the last

    resumed, elsewhere, _ = launch("resumed", "--epochs", "1")
    elsewhere.mkdir()
    shutil.copy(resumed / "last.pt", elsewhere / "last.pt")  # the checkpoint, not best.pt
    launch("resumed", "--epochs", "2", "--resume", "r/last.pt")
    again = json.load(open(resumed / "test_metrics.json"))["best"]
    assert (again["epoch"], again["top1"], again["loss"]) == (1, best["top1"], best["loss"])  # sent by rank 0
    straight, resumed = load(straight / "last.pt"), load(resumed / "last.pt")
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert [r["train_loss"] for r in straight["progress"]["history"]] == [r["train_loss"] for r in resumed["progress"]["history"]]


def test_a_rank_that_cannot_read_the_resume_checkpoint_stops_every_rank_saying_which(tmp_path):
    """What every rank raises when one machine lacks the file (rank 1's report comes through the
    gather), instead of leaving the others waiting at the next collective."""
    class RankZeroOfTwo(train.Distributed):
        def all_gather(self, value):
            return [value, "rank 1 on node-b: no checkpoint at r/last.pt"]

    path = tmp_path / "last.pt"
    torch.save({"model": {}}, path)  # rank 0 reads its copy
    with pytest.raises(DataError) as raised:
        resume.load_on_every_rank(str(path), RankZeroOfTwo(rank=0, world_size=2))
    message = str(raised.value)
    assert message.startswith(f"--resume {path}: rank 1 on node-b: no checkpoint at r/last.pt.")
    assert "every machine needs it at this path" in message and "rank 0" not in message


def test_a_rank_without_the_partial_totals_resumes_mid_epoch_at_rank_0s_step():
    """Rank 0 alone carries a mid-epoch checkpoint's running totals (they are over all ranks); the
    other ranks start from zero totals but at the same step, or their steps and collectives
    would no longer pair up with rank 0's."""
    step, totals, seconds = resume_point({"step_in_epoch": 5, "partial": None}, torch.device("cpu"))
    assert step == 5 and totals["count"] == 0 and seconds == 0.0
    assert resume_point({"step_in_epoch": 0, "partial": None}, torch.device("cpu"))[0] == 0
