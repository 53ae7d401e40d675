"""The ``sparsecpu`` command: ``info`` (more subcommands arrive with the benchmark harness)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional


def _cmd_info(args: argparse.Namespace) -> int:
    import sparsecpu

    d = sparsecpu.info()
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"sparsecpu {d['version']}")
    print(f"cpu:          {d['cpu']} ({d['vendor']})")
    print(f"features:     {' '.join(d['features'])}")
    print(f"detected isa: {d['detected_isa']}")
    print(f"active isa:   {d['isa']}")
    print(f"threads:      {d['threads']}")
    for op, name in d["kernels"].items():
        print(f"  {op:<14} {name}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``sparsecpu`` console script and ``python -m sparsecpu``."""
    parser = argparse.ArgumentParser(prog="sparsecpu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="detected CPU features, ISA level, kernels and threads")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(fn=_cmd_info)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
