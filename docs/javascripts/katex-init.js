// Render the math that pymdownx.arithmatex wraps in \( \) and \[ \] with the KaTeX that the
// site serves itself (docs/assets/katex). Material's document$ fires on every page load,
// instant navigation included.
function renderMath(root) {
  renderMathInElement(root, {
    delimiters: [
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true },
    ],
    throwOnError: false,
  });
}
if (typeof document$ !== "undefined") {
  document$.subscribe(({ body }) => renderMath(body));
} else {
  document.addEventListener("DOMContentLoaded", () => renderMath(document.body));
}
