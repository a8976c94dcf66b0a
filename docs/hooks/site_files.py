"""MkDocs hook: files the site shows that do not live under docs/.

- The pictures of measured results stay where the benchmarks write them
  (benchmarks/results/**.png); the site serves them at the same path, so a page at the docs'
  root shows one as `benchmarks/results/es_curves.png`, as the README did.
- Pages that the navigation names but that other work has not written yet (a rule, a results
  page) are generated as a short "pending" page rather than failing the strict build or
  leaving a dead link; the real file, once it is added under docs/, replaces it.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
PICTURES = ("benchmarks/results",)
PENDING = (
    "This page is pending: the work it describes is being written on another branch and "
    "replaces this page when it lands. Until then, see the [rules](<ROOT>rules/index.md), "
    "the [results](<ROOT>results.md) and `creditlab --help`.\n"
)


def _nav_paths(nav) -> list[str]:
    found = []
    if isinstance(nav, str):
        if nav.endswith(".md") and "://" not in nav:
            found.append(nav)
    elif isinstance(nav, list):
        for item in nav:
            found += _nav_paths(item)
    elif isinstance(nav, dict):
        for value in nav.values():
            found += _nav_paths(value)
    return found


def _title(path: str) -> str:
    stem = Path(path).stem.replace("-", " ").replace("_", " ")
    return stem if path.startswith("rules/") else stem.capitalize()


def on_files(files, config):
    for folder in PICTURES:
        for picture in sorted((ROOT / folder).rglob("*.png")):
            path = picture.relative_to(ROOT).as_posix()
            if files.get_file_from_path(path) is None:
                files.append(
                    File(path, str(ROOT), config["site_dir"], config["use_directory_urls"])
                )
    for path in _nav_paths(config["nav"] or []):
        if files.get_file_from_path(path) is None:
            up = "../" * path.count("/")
            text = f"# {_title(path)}\n\n" + PENDING.replace("<ROOT>", up)
            files.append(File.generated(config, path, content=text))
    return files
