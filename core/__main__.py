"""Command line: python -m core {train,export,eval,data,cka,stitch,invert,precompute,sweep,store,
operator-link} ..."""
from __future__ import annotations

import argparse
import os

# idle OpenMP threads sleep instead of spinning (the machine is often shared)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import json  # noqa: E402
import sys  # noqa: E402

from core import cli  # noqa: E402
from core.jobs.results import plain  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (register, _run) in cli.COMMANDS.items():
        register(sub.add_parser(name, help=_run.__doc__))
    args = parser.parse_args(argv)
    try:
        result = cli.COMMANDS[args.command][1](args)
    except cli.RobustLensError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(plain(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
