"""Kernel benchmark: sparsecpu.linear (int8, fp32) vs F.linear and torch._int_mm on BERT-base shapes.

    python bench/kernels.py [--m 128] [--sparsity 0.7,0.8,0.9] [--shapes 768x768,3072x768,768x3072]
                            [--dtypes int8,fp32] [--threads 2] [--repeat 15] [--json FILE]

Same as ``sparsecpu bench kernels``; prints the table to stdout and progress to stderr.
"""

import sys

from sparsecpu.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "kernels", *sys.argv[1:]]))
