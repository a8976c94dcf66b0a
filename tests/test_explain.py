"""`creditlab explain`: its numbers against autograd, its checks, its picture, its errors.

autograd is the oracle here (explain.py itself never uses it): every step's hand-written and
engine gradients and deltas, and the numbers the command prints, are compared with
torch.autograd on the same networks and examples.
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from creditlab import RULES, cli, explain
from creditlab.errors import UsageError
from creditlab.rules.base import Rule

STEPS = ("a", "b", "c", "d", "e")
NUMBER = re.compile(r"[+-](?:\d+\.?\d*|\.\d+)(?:e[+-]\d+)?")
ACTS = {"identity": lambda s: s, "tanh": torch.tanh, "sigmoid": torch.sigmoid}


def autograd_oracle(net, x, y):
    """dE/dparam and delta_j = dE_n/ds_j per example, by autograd on a forward pass written
    here from the network's groups and parameters (mse, the mean over the batch)."""
    params = {n: p.detach().clone().requires_grad_(True) for n, p in net.parameters().items()}
    z = {net.input_name: x}
    s = {}
    for j in net.order[1:]:
        g = net.groups[j]
        s_j = sum(z[i] @ params[f"W[{i}->{j}]"] for i in g.ins) + params[f"b[{j}]"]
        s_j.retain_grad()
        s[j] = s_j
        z[j] = ACTS[g.act.name](s_j)
    o = net.output_name
    E = (0.5 * (z[o] - y).pow(2).sum(dim=1)).mean()
    E.backward()
    n = x.shape[0]
    grads = {name: p.grad for name, p in params.items()}
    deltas = {j: s_j.grad * n for j, s_j in s.items()}  # E is the mean: dE_n/ds = N dE/ds
    return grads, deltas


@pytest.fixture(scope="module")
def result():
    return explain.explain(seed=0)


def test_the_five_steps_run_in_order(result):
    assert [s.key for s in result.steps] == list(STEPS)
    assert result.ok
    text = result.text()
    for key in STEPS:
        assert f"({key}) " in text


@pytest.mark.parametrize("seed", [0, 1, 5])
def test_hand_and_engine_numbers_match_autograd(seed):
    result = explain.explain(seed=seed)
    for step in result.steps:
        grads, deltas = autograd_oracle(step.net, step.x, step.y)
        assert set(step.hand) == set(grads) == set(step.engine)
        for name, g in grads.items():
            torch.testing.assert_close(step.hand[name], g, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(step.engine[name], g, rtol=1e-12, atol=1e-14)
        for j, d in deltas.items():
            torch.testing.assert_close(step.deltas[j], d, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(step.engine_deltas[j], d, rtol=1e-12, atol=1e-14)


def test_each_finite_difference_check_passes_and_is_printed(result):
    for step in result.steps:
        assert step.fd_error < 1e-7, step.key
        assert step.engine_error < 1e-14, step.key
        for name, g in step.fd.items():  # the finite differences are themselves near autograd's
            torch.testing.assert_close(g, step.hand[name], rtol=1e-6, atol=1e-8)
    text = result.text()
    assert text.count("matches finite differences to") == len(STEPS)
    assert "DOES NOT MATCH" not in text


def test_a_wrong_gradient_fails_its_check(result):
    """The check can fail: a perturbed hand gradient no longer matches finite differences."""
    step = result.step("a")
    name = next(iter(step.hand))
    kept = step.hand[name].clone()
    try:
        step.hand[name] += 1e-3
        assert not step.ok
        assert step.fd_error > 1e-4
    finally:
        step.hand[name] = kept
    assert step.ok


def _sections(text: str) -> dict[str, list[str]]:
    """The printout cut at each step's heading, "(a) ...", "(b) ...", "(rule fa) ..."."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        head = re.match(r"^\((\w+(?: \w+)?)\) ", line)
        if head:
            current = head.group(1)
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return sections


def _entry(label: str, net) -> tuple[str, tuple[int, ...]]:
    """A table row's label (W_i2,j or b_k1) as a parameter name and an index into it."""

    def unit(u: str) -> tuple[str, int]:
        group, number = u[0], u[1:]
        return group, int(number) - 1 if number else 0

    kind, _, units = label.partition("_")
    if kind == "b":
        j, n = unit(units)
        return f"b[{j}]", (n,)
    (i, a), (j, b) = (unit(u) for u in units.split(","))
    return f"W[{i}->{j}]", (a, b)


def test_printed_numbers_match_autograd(capsys, result):
    """Parse what `creditlab explain` prints and compare it with autograd."""
    assert cli.main(["explain", "--no-picture"]) == 0
    sections = _sections(capsys.readouterr().out)
    assert set(sections) == set(STEPS)
    checked = 0
    for key in STEPS:
        step = result.step(key)
        grads, _ = autograd_oracle(step.net, step.x, step.y)
        for line in sections[key]:
            # (a)-(c): a table row "  W_i2,j   by hand   engine   finite diff."
            row = re.match(r"^\s+([Wb]_[a-z0-9,]+)\s+(\S+)\s+(\S+)\s+(\S+)$", line)
            if row:
                name, index = _entry(row.group(1), step.net)
                for printed in row.group(2, 3, 4):
                    assert float(printed) == pytest.approx(float(grads[name][index]), rel=2e-5)
                checked += 1
            # (d), (e): "    dE/dW[a->b] = [[...], [...]]"
            matrix = re.match(r"^\s+dE/d(\S+\[\S+\]) = (\[.*\])$", line)
            if matrix and matrix.group(1) in grads:
                printed = [float(v) for v in NUMBER.findall(matrix.group(2))]
                expected = grads[matrix.group(1)].reshape(-1).tolist()
                assert printed == pytest.approx(expected, rel=2e-5, abs=1e-9)
                checked += 1
    # every entry of (a)-(c) (6 + 8 + 14 table rows) and every parameter of (d) and (e)
    assert checked == 6 + 8 + 14 + 8 + 8


def test_the_one_path_product_is_printed_and_right(result):
    step = result.step("a")
    line = next(ln for ln in step.lines if ln.strip().startswith("= (") and ln.count("(") == 7)
    factors = [float(v) for v in NUMBER.findall(line)]
    grads, _ = autograd_oracle(step.net, step.x, step.y)
    assert factors[-1] == pytest.approx(float(grads["W[i->j]"]), rel=1e-5)


# ---- rules ------------------------------------------------------------------------------------
def test_fa_departs_at_the_transport_only(capsys):
    assert cli.main(["explain", "--rule", "fa", "--no-picture"]) == 0
    out = capsys.readouterr().out
    assert "(rule fa)" in out and "M_jk stands in W_jk^T's place" in out
    c = explain.compare_rule("fa", {}, seed=0)
    assert c.reproduced is not None and c.reproduced < 1e-14
    assert set(c.feedback) == {"W[a->b]", "W[a->c]", "W[b->c]"}
    for WT, M, _ in c.feedback.values():
        assert WT.shape == M.shape and not torch.allclose(WT, M)
    # The output group's weights keep the exact gradient; the groups below do not.
    for name in ("W[a->c]", "W[b->c]", "b[c]"):
        torch.testing.assert_close(c.updates[name], c.gradient[name])
        assert c.angle[name] < 1e-5
    for name in ("W[x->a]", "W[a->b]", "b[a]"):
        assert c.angle[name] > 1.0
    grads, _ = autograd_oracle(c.net, c.x, c.y)
    for name, g in grads.items():
        torch.testing.assert_close(c.gradient[name], g, rtol=1e-12, atol=1e-14)


def test_a_rule_option_reaches_the_rule():
    small = explain.compare_rule("fa", {"scale": "0.1"}, seed=0)
    large = explain.compare_rule("fa", {"scale": "1.0"}, seed=0)
    (_, M_small, _), (_, M_large, _) = small.feedback["W[b->c]"], large.feedback["W[b->c]"]
    torch.testing.assert_close(M_large, M_small * 10)


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_rule_runs_on_the_tiny_network_or_says_why(name):
    try:
        c = explain.compare_rule(name, {}, seed=0)
    except UsageError as err:
        assert "cannot train the tiny dense networks" in str(err)
        return
    assert set(c.updates) == set(c.gradient)
    for n, u in c.updates.items():
        assert u.shape == c.gradient[n].shape and torch.isfinite(u).all(), n
    text = "\n".join(c.lines)
    assert text.startswith(f"(rule {name}) ")
    assert "all parameters together" in text
    if c.feedback and c.reproduced is not None and c.reproduced < 1e-12:
        assert "M_jk stands in W_jk^T's place" in text


def test_bp_does_not_depart():
    c = explain.compare_rule("bp", {}, seed=0)
    assert "it does not depart from step (d)" in "\n".join(c.lines)
    assert all(a < 1e-5 for a in c.angle.values())


def test_a_rule_that_needs_a_chain_is_shown_on_one():
    """The DAG has merges; a rule that refuses them is compared on the same groups as a chain,
    and says so (found through the registry, whichever rules that is)."""
    chain_only = []
    for name in sorted(RULES):
        try:
            RULES[name]().check(explain.dag_network(0))
        except UsageError:
            chain_only.append(name)
    for name in chain_only:
        c = explain.compare_rule(name, {}, seed=0)
        assert c.net.groups["b"].ins == ["a"]
        assert f"rule {name!r} cannot train the network of (d)" in "\n".join(c.lines)


class _Refuser(Rule):
    name = "refuses-everything"
    summary = "a rule for this test that trains nothing"

    def check(self, net):
        raise UsageError("this rule trains no network at all")


def test_a_rule_that_cannot_train_the_tiny_network_says_so(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(RULES, _Refuser.name, _Refuser)
    code = cli.main(["explain", "--rule", _Refuser.name, "--out", str(tmp_path / "e.svg")])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot train the tiny dense networks" in err
    assert "this rule trains no network at all" in err


def test_no_rule_is_named_in_explain_py():
    source = Path(explain.__file__).read_text()
    for name in RULES:
        assert not re.search(rf"[\"']{re.escape(name)}[\"']", source), name


def test_explain_never_uses_autograd():
    """No name in explain.py's code (its docstrings aside) reaches autograd."""
    for module in ("explain.py", "explain_picture.py"):
        tree = ast.parse(Path(explain.__file__).with_name(module).read_text())
        names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert not names & {"autograd", "func", "backward", "requires_grad", "grad"}, module


# ---- the picture and bad input ----------------------------------------------------------------
def test_the_picture_is_valid_svg_with_the_deltas(tmp_path, capsys, result):
    out = tmp_path / "explain.svg"
    assert cli.main(["explain", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    root = ET.parse(out).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    text = " ".join(t for t in root.itertext())
    d = result.step("d")
    for j in ("a", "b", "c"):
        shown = f"δ_{j} = [" + ", ".join(f"{float(v):+.3f}" for v in d.deltas[j][0]) + "]"
        assert shown in text
    assert "δ_c W_bcᵀ" in text and "δ_c W_acᵀ" in text and "δ_b W_abᵀ" in text


def test_the_picture_as_png(tmp_path):
    out = tmp_path / "explain.png"
    assert cli.main(["explain", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_existing_picture_is_kept_without_force(tmp_path, capsys):
    out = tmp_path / "explain.svg"
    out.write_text("mine")
    assert cli.main(["explain", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--force" in err
    assert out.read_text() == "mine"
    assert cli.main(["explain", "--out", str(out), "--force"]) == 0
    assert out.read_text().lstrip().startswith("<?xml")


def test_the_default_picture_goes_to_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["explain"]) == 0
    assert (tmp_path / "explain.svg").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rule", "telepathy"], "unknown rule 'telepathy'; valid rules: bp"),
        (["--rule", "fa", "--rule-opt", "fa.nope=1"], "unknown option(s) nope for rule 'fa'"),
        (["--rule-opt", "fa.scale=1"], "--rule-opt needs --rule"),
        (["--out", "{tmp}/missing/e.svg"], "does not exist"),
        (["--out", "{tmp}/afile/e.svg"], "does not exist"),
        (["--out", "{tmp}/e.txt"], "SVG, PNG or PDF"),
        (["--out", "{tmp}"], "SVG, PNG or PDF"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(tmp_path, capsys, args, message):
    (tmp_path / "afile").write_text("a file, not a folder")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert cli.main(["explain", *args]) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""  # refused before any work


def test_the_picture_is_the_same_file_for_the_same_seed(tmp_path):
    first, second = tmp_path / "1.svg", tmp_path / "2.svg"
    assert cli.main(["explain", "--out", str(first)]) == 0
    assert cli.main(["explain", "--out", str(second)]) == 0
    assert first.read_bytes() == second.read_bytes()


# ---- the documentation page -------------------------------------------------------------------
DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_the_derivation_page_quotes_real_runs(capsys):
    """Every line of docs/derivation.md's output excerpts is a line that `creditlab explain`
    (or --rule fa, dfa, dtp) prints now, so the page cannot drift from the command."""
    printed = set()
    for extra in ([], ["--rule", "fa"], ["--rule", "dfa"], ["--rule", "dtp"]):
        assert cli.main(["explain", "--no-picture", *extra]) == 0
        printed |= set(capsys.readouterr().out.splitlines())
    page = (DOCS / "derivation.md").read_text()
    blocks = re.findall(r"```text\n(.*?)```", page, flags=re.S)
    quoted = [ln for b in blocks for ln in b.splitlines() if ln.startswith(("(", "  "))]
    quoted = [ln for ln in quoted if ln.strip() != "..."]
    assert len(quoted) > 150
    missing = [ln for ln in quoted if ln not in printed]
    assert not missing, missing[:5]


def test_the_derivation_page_shows_the_picture_of_seed_0(result):
    svg = DOCS / "img" / "explain.svg"
    assert "](img/explain.svg)" in (DOCS / "derivation.md").read_text()
    text = " ".join(ET.parse(svg).getroot().itertext())
    for j in ("a", "b", "c"):
        shown = ", ".join(f"{float(v):+.3f}" for v in result.step("d").deltas[j][0])
        assert f"δ_{j} = [{shown}]" in text
