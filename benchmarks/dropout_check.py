"""Train with the fast CPU dropout mask (models/blocks.py's dropout_mask) or with stock F.dropout, all else
equal, to check that the mask does not change training (fp32; the last argument is a
prepared data dir).

    python benchmarks/dropout_check.py fast 0 /tmp/d1
    python benchmarks/dropout_check.py reference 0 /tmp/d1
"""
import os
import sys

import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from models import blocks  # noqa: E402
import train  # noqa: E402



def main(mode, seed, data_dir):
    if mode == "reference":
        blocks.dropout = lambda x, p, training: F.dropout(x, p, training)
    return train.main(["--data-dir", data_dir, "--epochs", "3", "--seed", seed, "--no-amp", "--device", "cpu",
                       "--run-dir", f"runs/dropout_{mode}_{seed}"])


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
