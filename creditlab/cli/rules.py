"""`creditlab rules`: the learning rules, their options and recommended settings."""

from __future__ import annotations


def register(sub) -> None:
    """`creditlab rules`: the learning rules and their options."""
    p = sub.add_parser("rules", help="list the learning rules and their options")
    p.set_defaults(func=cmd_rules)


def cmd_rules(args) -> int:
    from creditlab.rules import RULES
    from creditlab.rules.machinery.space import describe as describe_space
    from creditlab.training.settings import describe as describe_settings

    for name, cls in sorted(RULES.items()):
        print(f"{name:10s} {cls.summary}")
        print(f"{'':10s}   recommended: {describe_settings(cls.recommended)}")
        for family, extra in cls.recommended_for.items():
            print(f"{'':10s}   recommended on {family} networks: {describe_settings(extra)}")
        for key, opt in cls.options.items():
            print(f"{'':10s}   {name}.{key}={opt.default!r} ({opt.type.__name__}) {opt.help}")
        if cls.search_space:
            print(f"{'':10s}   search space (creditlab tune):")
            for line in describe_space(cls):
                print(f"{'':10s}     {line}")
    return 0
