"""The ``clcourse`` command's ``train`` and ``doctor`` (``grade`` and ``exercises`` are tested in test_grading.py)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from clcourse import cli, recipes
from clcourse.runs import load_embeddings
from fake_datasets import write_image_folder

# Small and short: a few steps at a small batch, one label draw per probe.
FAST = ["--dataset", "digits", "--profile", "quick", "--batch-size", "64", "--draws", "1", "--device", "cpu"]


def train(out, *args):
    return cli.main(["train", *args, *FAST, "--out", str(out)])


def test_python_dash_m_help_lists_the_commands():
    result = subprocess.run([sys.executable, "-m", "clcourse", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in ("lab", "train", "rl", "embed", "doctor", "grade", "exercises"):
        assert command in result.stdout


def test_train_help_and_choices_agree_with_the_recipes(capsys):
    assert cli.TRAIN_METHODS == recipes.METHODS and cli.TRAIN_DATASETS == recipes.DATASETS
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--help"])
    assert exit_.value.code == 0
    assert "--resume" in capsys.readouterr().out


def test_train_simclr_writes_checkpoint_history_and_metrics_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, "simclr", "--steps", "3") == 0
    assert {p.name for p in out.iterdir()} >= {"last.pt", "history.json", "metrics.json"}
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("knn", "linear_probe", "config", "device", "train_seconds", "elapsed_seconds",
                "images_per_second", "steps", "effective_rank", "expected", "world_size"):
        assert key in metrics, key
    assert metrics["steps"] == 3 and metrics["world_size"] == 1 and metrics["device"] == "cpu"
    assert 0 <= metrics["knn"]["accuracy"] <= 1
    assert set(metrics["linear_probe"]) == {"1%", "10%", "100%"}
    assert metrics["linear_probe"]["100%"]["n_labels"] == 1257
    assert metrics["linear_probe"]["1%"]["n_labels"] < metrics["linear_probe"]["10%"]["n_labels"] < 1257
    assert all(p["draws"] == 1 for p in metrics["linear_probe"].values())
    assert metrics["config"]["batch_size"] == 64 and metrics["config"]["steps"] == 3
    first = json.loads((out / "history.json").read_text())
    assert len(first["step_loss"]) == 3
    printed = capsys.readouterr().out
    assert "linear probe 10%" in printed and "kNN (k=20)" in printed

    assert train(out, "simclr", "--steps", "5", "--resume") == 0
    resumed = json.loads((out / "history.json").read_text())
    assert len(resumed["step_loss"]) == 5
    assert resumed["step_loss"][:3] == first["step_loss"]  # continued, not restarted


@pytest.mark.parametrize("method", ["moco", "supcon", "nnclr", "pcl"])
def test_train_moco_supcon_nnclr_and_pcl(tmp_path, method):
    out = tmp_path / method
    assert train(out, method, "--steps", "2", "--temperature", "0.3") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["config"]["temperature"] == 0.3
    assert (out / "last.pt").is_file()


@pytest.mark.parametrize("method", ["pixel-contrast", "pcrl"])
def test_train_the_dense_methods_on_their_own_data(tmp_path, capsys, method):
    """Quick profile with a 2-step budget (and 2 fine-tuning steps for pcrl): data, training, evaluation, files."""
    out = tmp_path / method
    options = ["--profile", "quick", "--steps", "2", "--batch-size", "16", "--device", "cpu", "--out", str(out)]
    assert cli.main(["train", method, *options, *(["--finetune-steps", "2"] if method == "pcrl" else [])]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["steps"], metrics["test_images"], metrics["config"]["batch_size"]) == (2, 500, 16)
    printed = capsys.readouterr().out
    if method == "pixel-contrast":
        assert metrics["dataset"] == "scenes" and metrics["num_classes"] == 7 and "mIoU" in printed
    else:
        assert metrics["dataset"] == "lesions" and metrics["config"]["finetune_steps"] == 2
        assert metrics["finetune"]["steps"] == 2 and metrics["finetune"]["labelled_images"] == 200
        assert "Dice           lesion" in printed
    assert cli.main(["embed", str(out), "--out", str(tmp_path / "h.npy")]) == 2
    assert "a dense method" in capsys.readouterr().err


def test_train_sscl_on_the_reviews_writes_its_aspect_scores(tmp_path, capsys):
    """Quick profile with a 3-step budget: word vectors, training, the aspect protocol, files; embed refuses it."""
    out = tmp_path / "sscl"
    assert cli.main(["train", "sscl", "--profile", "quick", "--steps", "3", "--batch-size", "16", "--device", "cpu",
                     "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["dataset"], metrics["steps"], metrics["test_sentences"]) == ("reviews", 3, 600)
    assert list(metrics["f1"]) == ["food", "service", "price", "ambience"] and len(metrics["mapping"]) == 12
    assert 0 <= metrics["macro_f1"] <= 1 and (out / "last.pt").is_file()
    assert "macro-F1" in capsys.readouterr().out
    assert cli.main(["embed", str(out), "--out", str(tmp_path / "h.npy")]) == 2
    assert "a sscl run, of sentences" in capsys.readouterr().err


def test_a_method_on_a_dataset_of_the_other_kind_exits_2_with_a_message(capsys):
    assert cli.main(["train", "sscl", "--dataset", "digits", "--profile", "quick", "--device", "cpu"]) == 2
    assert "sscl detects the aspects of sentences: it trains on reviews" in capsys.readouterr().err
    assert cli.main(["train", "sscl", "--temperature", "0.1", "--profile", "quick", "--device", "cpu"]) == 2
    assert "--temperature do not apply" in capsys.readouterr().err
    assert cli.main(["train", "simclr", "--dataset", "reviews", "--profile", "quick", "--device", "cpu"]) == 2
    assert "reviews holds sentences, not images" in capsys.readouterr().err
    assert cli.main(["train", "pixel-contrast", "--dataset", "digits", "--profile", "quick", "--device", "cpu"]) == 2
    assert "use --dataset scenes" in capsys.readouterr().err
    assert cli.main(["train", "simclr", "--dataset", "lesions", "--profile", "quick", "--device", "cpu"]) == 2
    assert "lesions is a segmentation dataset" in capsys.readouterr().err


def test_missing_cifar10_is_a_clear_error_with_exit_status_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLCOURSE_DATA", str(tmp_path / "empty"))
    status = cli.main(["train", "simclr", "--dataset", "cifar10", "--profile", "quick", "--steps", "1",
                       "--device", "cpu", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2
    assert "cifar-10-batches-py" in err and "To get them" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_bad_requests_exit_2_with_a_message(tmp_path, monkeypatch, capsys):
    assert cli.main(["train", "simclr", "--dataset", "stl10", "--profile", "quick", "--device", "cpu"]) == 2
    assert "full profile only" in capsys.readouterr().err
    assert cli.main(["train", "simclr", "--steps", "1", "--batch-size", "5000", "--profile", "quick",
                     "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "larger than the dataset" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun: a time budget cannot be shared
    assert cli.main(["train", "simclr", "--seconds", "5"]) == 2
    assert "--steps or --epochs" in capsys.readouterr().err


def test_doctor_reports_every_section(capsys, tmp_path):
    assert cli.main(["doctor", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for section in ("[versions]", "[device]", "[datasets]", "[browser test]", "[install]"):
        assert section in out
    for item in ("python", "torch", "torchvision", "numpy", "scikit-learn", "umap-learn", "jupyterlab",
                 "ipywidgets", "profile", "threads", "cifar10", "stl10", "chromium", "playwright", "clcourse"):
        assert item in out, item
    assert f"missing at {tmp_path}" in out


def test_train_on_your_folder_then_export_the_representations(tmp_path, capsys):
    root = write_image_folder(tmp_path / "pictures", per_class=8)  # 12 training, 4 test images
    out = tmp_path / "run"
    status = cli.main(["train", "simclr", "--dataset", f"folder:{root}", "--profile", "quick", "--steps", "2",
                       "--batch-size", "8", "--image-size", "16", "--draws", "1", "--device", "cpu", "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "folder" and metrics["config"]["data_path"] == str(root)
    assert metrics["linear_probe"]["100%"]["n_labels"] == 12

    assert cli.main(["embed", str(out), "--out", str(tmp_path / "h.npy")]) == 0
    assert cli.main(["embed", str(out), "--out", str(tmp_path / "h.csv")]) == 0
    assert "h.labels.npy" in capsys.readouterr().out
    features, labels = load_embeddings(tmp_path / "h.npy")
    from_csv, csv_labels = load_embeddings(tmp_path / "h.csv")
    assert features.shape == (4, 128) and labels.tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(from_csv, features, rtol=1e-6, atol=1e-7)
    assert csv_labels.tolist() == labels.tolist()
    assert (tmp_path / "h.csv").read_text().startswith("label,h0,h1,")
    assert cli.main(["embed", str(out), "--out", str(tmp_path / "train.npy"), "--split", "train"]) == 0
    assert load_embeddings(tmp_path / "train.npy")[0].shape == (12, 128)


def test_folder_and_embed_errors_exit_2_with_a_message(tmp_path, capsys):
    assert cli.main(["train", "simclr", "--dataset", f"folder:{tmp_path / 'nowhere'}", "--steps", "1",
                     "--profile", "quick", "--device", "cpu", "--out", str(tmp_path / "run")]) == 2
    assert "no folder at" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "simclr", "--dataset", "folder"])  # no path: argparse's usage error
    assert "folder:PATH" in capsys.readouterr().err
    assert cli.main(["embed", str(tmp_path), "--out", str(tmp_path / "h.npy")]) == 2
    assert "no trained run" in capsys.readouterr().err
    assert cli.main(["embed", str(tmp_path), "--out", str(tmp_path / "h.txt")]) == 2
    assert ".npy or .csv" in capsys.readouterr().err


def test_lab_seeds_the_workspace_prints_the_lesson_url_and_starts_jupyterlab(tmp_path, monkeypatch, capsys):
    started = []
    monkeypatch.setattr("os.execv", lambda program, command: started.append(command))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "env"))
    assert cli.main(["lab", "--workspace", str(tmp_path / "work"), "--port", "9123", "--no-browser"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "work" / "lessons" / "00_welcome.ipynb").is_file()
    assert (tmp_path / "work" / "exercises" / "03_ntxent.ipynb").is_file()
    assert "workspace: lessons/00_welcome.ipynb: added" in out
    url = next(line.strip() for line in out.splitlines() if line.strip().startswith("http"))
    token = url.split("token=")[1]
    assert url == f"http://localhost:9123/lab/tree/lessons/00_welcome.ipynb?token={token}" and len(token) == 32
    command = started[0]
    assert command[1:4] == ["-m", "jupyter", "lab"] and f"--IdentityProvider.token={token}" in command
    assert f"--ServerApp.root_dir={tmp_path / 'work'}" in command and "--no-browser" in command
    overrides = json.loads((tmp_path / "env" / "share" / "jupyter" / "lab" / "settings" / "overrides.json").read_text())
    assert overrides["@jupyterlab/apputils-extension:notification"]["fetchNews"] == "false"
    assert overrides["@jupyterlab/apputils-extension:kernels-settings"]["commsOverSubshells"] == "disabled"
    assert cli.main(["lab", "--workspace", str(tmp_path / "work"), "--lesson", "99_nothing"]) == 2


def test_rl_trains_an_agent_and_writes_its_run(tmp_path, capsys):
    out = tmp_path / "run"
    status = cli.main(["rl", "curl", "--layout", "MiniGrid-Empty-5x5-v0", "--steps", "60", "--eval-every", "30",
                   "--eval-episodes", "2", "--out", str(out), "--no-progress", "--device", "cpu"])
    assert status == 0 and (out / "last.pt").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_steps"] == [30, 60] and metrics["settings"]["agent"] == "curl"
    # lesson 14's agent by default: crops 1 px smaller than the 20-px frames, 16 filters
    weights = torch.load(out / "last.pt", weights_only=True)["agent"]
    assert metrics["settings"]["crop_margin"] == 1 and weights["encoder.convs.0.weight"].shape[0] == 16
    assert weights["encoder.fc.weight"].shape[1] == 16 * ((19 - 3) // 2 + 1 - 2) ** 2  # 19-px crops
    assert "greedy return at the end" in capsys.readouterr().out
    assert cli.main(["rl", "dqn", "--layout", "MiniGrid-Nowhere-v0", "--steps", "10", "--out", str(tmp_path / "x")]) == 2
    assert "registered MiniGrid id" in capsys.readouterr().err
