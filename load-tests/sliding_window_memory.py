"""Peak memory of sliding-window inference on a large volume (512 x 512 x 400 by default).

Runs the ``sliding_window_infer`` operator's numerics (:func:`sliding_window` then the argmax) in a
fresh process on a float32 volume of the given size, with a pointwise two-class model standing in for
Triton (the network's own memory is Triton's, not the worker's), and prints the peak resident set
size against the input's size: what a worker needs beyond the volume it loaded.

    python load-tests/sliding_window_memory.py [--shape 400,512,512] [--patch 128,128,128] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time
import numpy as np
from radstream.consumers.operators.sliding_window import argmax_uint8, sliding_window
shape, patch = (tuple(int(v) for v in a.split(",")) for a in sys.argv[1:3])
batch = int(sys.argv[3])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
x = np.random.default_rng(0).random(shape, dtype=np.float32)
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

def model(t):  # [B, 1, ...] -> [B, 2, ...] probabilities, pointwise
    p = (t[:, 0] > 0.5).astype(np.float32)
    return np.stack([1.0 - p, p], axis=1)

t0 = time.perf_counter()
probs, calls = sliding_window(x, patch, model, overlap=0.5, batch_size=batch)
labels = argmax_uint8(probs)  # as the operator does
del probs
seconds = time.perf_counter() - t0
agree = float((labels == (x > 0.5)).mean())
print(json.dumps({"shape": shape, "patch": patch, "batch": batch, "calls": calls, "seconds": seconds,
                  "input_mb": x.nbytes / 2**20, "rss_start_mb": before / 1024, "rss_loaded_mb": loaded / 1024,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "agreement_with_whole_volume": agree}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="400,512,512", help="slices,rows,columns")
    ap.add_argument("--patch", default="128,128,128")
    ap.add_argument("--batch", type=int, default=4)
    a = ap.parse_args()
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, a.shape, a.patch, str(a.batch)], capture_output=True,
                         text=True, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["peak_over_input"] = row["peak_rss_mb"] / row["input_mb"]
    # what the inference needs beyond the interpreter and its libraries, in units of the input volume
    row["growth_over_input"] = (row["peak_rss_mb"] - row["rss_start_mb"]) / row["input_mb"]
    row["wall_s"] = time.perf_counter() - t
    row["parent_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
