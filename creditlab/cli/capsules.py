"""`creditlab capsules`: a capsule network's Figure 4 from a trained run."""

from __future__ import annotations

from pathlib import Path

from creditlab.cli.options import data_dir_arg
from creditlab.errors import UsageError


def register(sub) -> None:
    """`creditlab capsules`: a capsule network's Figure 4 from a trained run."""
    p = sub.add_parser("capsules", help="draw a capsule network's Figure 4 (perturbed capsules)")
    p.add_argument("--run", required=True, help="folder of a `creditlab train` run")
    p.add_argument("--out", default=None, help="PNG to write (default RUN/figure4.png)")
    p.add_argument("--examples", type=int, default=3, help="test digits to show")
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder holding the dataset's files (default: the one the run recorded)",
    )
    p.set_defaults(func=cmd_capsules)


def cmd_capsules(args) -> int:
    from creditlab.figures.capsules import figure4
    from creditlab.training import locks

    data_dir = data_dir_arg(args.data_dir)
    if args.out is not None and Path(args.out).suffix.lower() != ".png":
        raise UsageError(f"--out {args.out}: capsules draws a PNG, so the name must end in .png")
    kind = locks.detect_kind(Path(args.run))
    if kind not in (None, "train"):
        raise UsageError(f"--run {args.run} is a `creditlab {kind}` folder, not a train run's")
    # The figure goes into the run's folder (by default): held, so that a run still training
    # cannot replace best.pt under it, and no other command writes there meanwhile.
    with locks.hold(args.run, "train", flag="--run"):
        path = figure4(args.run, args.out, args.examples, data_dir=data_dir)
    print(f"wrote {path}")
    return 0
