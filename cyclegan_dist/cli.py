"""``python -m cyclegan_dist <command>``: train, prepare, fid, validate-submission, export.

A mistake in the input prints one line (``error: ...``) and exits 2; internal errors keep their traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Sequence

from cyclegan_dist.errors import UserError


def add_train_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a CycleGAN (one process, or one per rank under torchrun)")
    p.add_argument("--config", default="smoke", help="YAML file or experiment name in configs/ (default: smoke)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. --set data.root=/data/shards train.steps=200000")
    p.add_argument("--run-dir", default=None, help="where checkpoints, metrics and samples go (default runs/<experiment>/local)")
    p.add_argument("--resume", default="auto", help="auto (newest complete checkpoint, if any) | never | CHECKPOINT_DIR")
    p.add_argument("--name", default=None, help="run name shown in W&B (default: the run directory's name)")
    p.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="checkpoint and exit after N steps of this invocation (continue later with --resume auto)")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from cyclegan_dist.entry import run
    from cyclegan_dist.train.runtime import request_stop

    for signum in (signal.SIGUSR1, signal.SIGTERM):  # checkpoint at the next step, then exit cleanly
        signal.signal(signum, lambda *_: request_stop())
    result = run(args.config, args.overrides, run_dir=args.run_dir, resume=args.resume, run_name=args.name,
                 stop_after=args.stop_after)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in result.items() if k != "metrics"}, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cyclegan_dist", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    from cyclegan_dist.data.prepare import add_prepare_parser
    from cyclegan_dist.eval.commands import add_fid_parser, add_validate_submission_parser
    from cyclegan_dist.eval.export_command import add_export_parser

    add_prepare_parser(sub)
    add_fid_parser(sub)
    add_validate_submission_parser(sub)
    add_export_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Several ranks: skip interpreter teardown, where gloo rarely aborts after a finished run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
