"""recon.png from `creditlab train` and Figure 4 from `creditlab capsules`, on a small capsule
network trained briefly on digits."""

import json

import torch

from creditlab import cli
from creditlab.figures.capsules import STEPS, load_run, perturbation_grid
from tests.test_capsules import small_capsnet


def test_train_writes_recon_png_and_capsules_draws_figure4(tmp_path, capsys):
    spec = tmp_path / "caps.json"
    spec.write_text(json.dumps(small_capsnet(n=10).spec()))
    run = tmp_path / "run"
    args = ["train", "--dataset", "digits", "--model", str(spec), "--epochs", "1"]
    args += ["--optimizer", "adam", "--lr", "0.003", "--out", str(run), "--quiet"]
    args += ["--augment", "shift:1", "--rule", "fa"]
    assert cli.main(args) == 0
    assert (run / "recon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((run / "results.json").read_text())
    assert results["test_accuracy"] > 0.3  # the capsule lengths score the classes
    assert cli.main(["capsules", "--run", str(run), "--examples", "2"]) == 0
    assert (run / "figure4.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    net, _ = load_run(run)
    x = torch.rand(1, 64)
    grid, predicted = perturbation_grid(net, x)
    assert grid.shape == (6, len(STEPS), 64)
    assert predicted == int(net.predict(x).norm(dim=2).argmax())
    middle = net.forward(x).z[net.outputs[1].name]
    torch.testing.assert_close(grid[:, STEPS.index(0.0)], middle.expand(6, 64))


def test_capsules_without_a_run_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["capsules", "--run", str(tmp_path / "nothing")]) == 2
    assert "holds no finished training run" in capsys.readouterr().err


def test_bad_augment_is_a_usage_error(tmp_path, capsys):
    code = cli.main(["train", "--augment", "rotate:3", "--out", str(tmp_path / "r"), "--quiet"])
    assert code == 2
    assert "unknown augmentation 'rotate:3'; valid: shift:K" in capsys.readouterr().err
