#!/usr/bin/env bash
# Refresh the KaTeX files that the documentation site serves itself (docs/assets/katex/).
# The site must build and render offline, so KaTeX is vendored, not loaded from a CDN: this
# script takes the package from the npm registry once, and keeps only what a browser needs:
# katex.min.js, the auto-render extension, katex.min.css and the woff2 fonts (every browser
# that runs KaTeX reads woff2; the CSS is rewritten to name woff2 alone, so that no font it
# names is missing from the site).
# Usage: bash tools/vendor_katex.sh [VERSION]   (default: the version vendored now)
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-0.16.47}"
dest=docs/assets/katex
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "katex@$version" >/dev/null && tar xzf katex-*.tgz)
dist="$tmp/package/dist"
rm -rf "$dest" && mkdir -p "$dest/fonts" "$dest/contrib"
cp "$dist/katex.min.js" "$dest/"
cp "$dist/contrib/auto-render.min.js" "$dest/contrib/"
cp "$dist"/fonts/*.woff2 "$dest/fonts/"
cp "$tmp/package/LICENSE" "$dest/LICENSE.txt"
python3 - "$dist/katex.min.css" "$dest/katex.min.css" <<'PY'
import re, sys
css = open(sys.argv[1], encoding="utf-8").read()
# src:url(X.woff2) format("woff2"),url(X.woff) format("woff"),url(X.ttf) format("truetype")
css = re.sub(r'(url\([^)]*\.woff2\) format\("woff2"\))(,url\([^)]*\) format\("[a-z]+"\))+', r"\1", css)
open(sys.argv[2], "w", encoding="utf-8").write(css)
PY
echo "KaTeX $version" > "$dest/VERSION.txt"
echo "vendored KaTeX $version into $dest"
