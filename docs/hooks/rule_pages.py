"""MkDocs hook: each rule's options, defaults and recommended settings, read from its class.

A rule page (docs/rules/NAME.md) holds the marker `<!-- rule-options: NAME -->`; the rules'
index holds `<!-- rules-table -->`. At build time the markers become tables made from the
registry (`creditlab.rules.RULES`): the same `summary`, `recommended`, `options` and
`search_space` that `creditlab rules` prints, so a default is written once, in the rule's file.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = re.compile(r"<!-- rule-options: ([a-z0-9_]+) -->")
TABLE = "<!-- rules-table -->"


def _registry():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from creditlab.rules import RULES

    return RULES


def _cell(text) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def options_markdown(name: str) -> str:
    from creditlab.rules.machinery.space import describe as describe_space
    from creditlab.training.settings import describe as describe_settings

    rules = _registry()
    if name not in rules:
        raise KeyError(f"docs: no rule named {name!r} (rules: {', '.join(sorted(rules))})")
    cls = rules[name]
    out = [
        f"**In one line** (`creditlab rules`): {cls.summary}",
        "",
        f"**Recommended training settings** (used wherever the command line sets none): "
        f"{describe_settings(cls.recommended)}.",
        "",
    ]
    for family, extra in cls.recommended_for.items():
        out += [f"On {family} networks: {describe_settings(extra)}.", ""]
    if cls.options:
        out += [
            f"**Options**, given as `--rule-opt {name}.KEY=VALUE`:",
            "",
            "| option | type | default | what it does |",
            "|---|---|---|---|",
        ]
        for key, opt in cls.options.items():
            help_text = opt.help
            if opt.choices:
                help_text += f" (one of {', '.join(map(str, opt.choices))})"
            out.append(
                f"| `{name}.{key}` | {opt.type.__name__} | `{opt.default!r}` | {_cell(help_text)} |"
            )
        out.append("")
    else:
        out += ["This rule has no options.", ""]
    if cls.search_space:
        out += ["**What `creditlab tune` searches** for this rule:", ""]
        out += [f"- `{line}`" for line in describe_space(cls)]
        out.append("")
    if cls.any_kind:
        kinds = "every kind of group (convolutions, capsules, ...), and several outputs"
    else:
        kinds = "dense networks with one output"
    out.append(f"**Networks it trains:** {kinds}.")
    return "\n".join(out) + "\n"


def table_markdown(files) -> str:
    out = ["| rule | in one line | recommended settings |", "|---|---|---|"]
    from creditlab.training.settings import describe as describe_settings

    for name, cls in sorted(_registry().items()):
        has_page = files.get_file_from_path(f"rules/{name}.md") is not None
        link = f"[`{name}`]({name}.md)" if has_page else f"`{name}`"
        settings = describe_settings(cls.recommended)
        out.append(f"| {link} | {_cell(cls.summary)} | {_cell(settings)} |")
    return "\n".join(out) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    # A rule page written without the marker (or a pending one) still gets the generated
    # options, unless it has an options section of its own.
    own = re.fullmatch(r"rules/([a-z0-9_]+)\.md", page.file.src_uri)
    if (
        own
        and own.group(1) in _registry()
        and not OPTIONS.search(markdown)
        and not re.search(r"^#+ .*\boptions\b", markdown, re.I | re.M)
    ):
        markdown += f"\n\n## Options and defaults\n\n<!-- rule-options: {own.group(1)} -->\n"
    markdown = OPTIONS.sub(lambda m: options_markdown(m.group(1)), markdown)
    if TABLE in markdown:
        markdown = markdown.replace(TABLE, table_markdown(files))
    return markdown
