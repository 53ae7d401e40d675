"""Kernel benchmark: sparsecpu.linear (int8, fp32) vs torch and ONNX Runtime kernels on pruned weights.

    python bench/kernels.py [--shapes bert-base|bert-large|gpt2|NxK,...] [--m 128] [--sparsity 0.7,0.8,0.9]
                            [--dtype int8,fp32] [--threads 2] [--repeat 15] [--baselines default|all|LIST]
                            [--json FILE] [--plot FILE.png] [--markdown]

Same as ``sparsecpu bench kernels``; prints the table to stdout and progress to stderr.
"""

import sys

from sparsecpu.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "kernels", *sys.argv[1:]]))
