"""`creditlab explain`: the derivation of backpropagation, executed number by number."""

from __future__ import annotations

import sys

from creditlab.cli.options import rule_opts
from creditlab.errors import UsageError


def register(sub) -> None:
    """`creditlab explain`: the derivation of backpropagation, executed."""
    p = sub.add_parser(
        "explain",
        help="the derivation of backpropagation, executed on a tiny network, number by number",
    )
    p.add_argument("--seed", type=int, default=0, help="draws the weights and examples (default 0)")
    from creditlab.rules import RULES

    p.add_argument(
        "--rule",
        default=None,
        help="also show where this rule departs from backpropagation: " + ", ".join(sorted(RULES)),
    )
    p.add_argument(
        "--rule-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of --rule, e.g. fa.scale=1.0 (repeatable)",
    )
    p.add_argument(
        "--out",
        default="explain.svg",
        help="the picture of the deltas flowing backwards: .svg, .png or .pdf (default "
        "%(default)s)",
    )
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--no-picture", action="store_true", help="print only; write no picture")
    p.set_defaults(func=cmd_explain)


def cmd_explain(args) -> int:
    from creditlab.explain import explain

    opts = rule_opts(args.rule_opt, args.rule) if args.rule else {}
    if args.rule_opt and not args.rule:
        raise UsageError("--rule-opt needs --rule (the options are the rule's)")
    out = None if args.no_picture else args.out
    result = explain(seed=args.seed, rule=args.rule, rule_opts=opts, out=out, force=args.force)
    print(result.text(), end="")
    if result.picture is not None:
        print(f"wrote {result.picture}")
    if not result.ok:
        print("creditlab: a check above does not match (see DOES NOT MATCH)", file=sys.stderr)
        return 1
    return 0
