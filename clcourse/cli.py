"""The ``clcourse`` command.

Each subcommand is one ``add_<name>_command(subparsers)`` function that
registers its parser and sets ``func`` (the function that runs it, returning
the exit status); :func:`build_parser` calls them in turn, so a new command
(``train``, ``doctor``...) is one more such function in :data:`COMMANDS`.
Heavy imports happen inside the command functions, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def add_grade_command(subparsers) -> None:
    """``clcourse grade PATH... [--set NN] [--jobs N] [--timeout S] [--csv FILE] [--json FILE] ...``."""
    parser = subparsers.add_parser(
        "grade", help="score submitted exercise notebooks, each in its own sandbox",
        description="Run each submission's code cells in a sandboxed worker, call the function each task of "
                    "its exercise set names on inputs drawn from a hidden seed, and compare the results with "
                    "the reference in the grader's own process. Prints a score table per task; see "
                    "exercises/README.md for what is and is not protected.")
    parser.add_argument("paths", nargs="+", metavar="PATH", type=Path, help="notebooks to grade")
    parser.add_argument("--set", dest="exercise_set", metavar="NN",
                        help="grade every notebook as exercise set NN (default: from its metadata and file name)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="submissions graded at once (default: 1)")
    parser.add_argument("--timeout", type=float, default=60, metavar="S",
                        help="seconds each code cell may run (default: 60)")
    parser.add_argument("--task-timeout", type=float, default=120, metavar="S",
                        help="seconds each task's check may take (default: 120)")
    parser.add_argument("--notebook-timeout", type=float, default=900, metavar="S",
                        help="seconds for a whole submission, cells and checks (default: 900)")
    defaults = _limits_defaults()
    for flag, name, what in (("--memory-mb", "memory_mb", "memory of a submission's worker, MiB"),
                             ("--cpu-seconds", "cpu_seconds", "CPU time of each of its processes, s"),
                             ("--file-mb", "file_mb", "largest file it may write, and its tmpfs size, MiB"),
                             ("--processes", "processes", "processes it may run at once"),
                             ("--output-kb", "output_kb", "of its output kept in the JSON report, KiB")):
        parser.add_argument(flag, dest=name, type=int, default=defaults[name], metavar="N",
                            help=f"{what} (default: {defaults[name]})")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, metavar="N",
                       help="the hidden seed of the checks' inputs (default: a fresh random one, in the JSON report)")
    seeds.add_argument("--seed-file", type=Path, metavar="FILE",
                       help="read the hidden seed from FILE (keep it out of the course repository)")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="also write the scores as CSV")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the scores as JSON")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="a progress bar over the submissions (default: when stderr is a terminal)")
    parser.set_defaults(func=run_grade)


def _limits_defaults() -> dict:
    from dataclasses import asdict

    from clcourse.grading.sandbox import Limits

    return asdict(Limits())


def run_grade(args: argparse.Namespace) -> int:
    """Grade ``args.paths``; exit status 1 on bad arguments, 2 when a notebook's exercise set is unknown."""
    import hashlib

    from clcourse.grading import grader
    from clcourse.grading.sandbox import Limits

    missing = [str(p) for p in args.paths if not p.is_file()]
    if missing:
        print(f"clcourse grade: no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 1
    try:
        seed = args.seed
        if args.seed_file is not None:
            text = args.seed_file.read_text(encoding="utf-8").strip()
            if not text:
                raise ValueError(f"--seed-file {args.seed_file} is empty")
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 2
        limits = Limits(**{k: getattr(args, k) for k in _limits_defaults()})
        options = grader.GradingOptions(cell_timeout=args.timeout, task_timeout=args.task_timeout,
                                        notebook_timeout=args.notebook_timeout, limits=limits,
                                        exercise_set=args.exercise_set,
                                        **({} if seed is None else {"seed": seed}))
        if args.exercise_set is not None:
            grader.exercise_set_of(args.paths[0], args.exercise_set)
        if args.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    except (OSError, ValueError) as exc:
        print(f"clcourse grade: {exc}", file=sys.stderr)
        return 1

    def write_reports(scores) -> None:  # after every notebook: a submission that kills the grader loses only itself
        if args.csv:
            grader.write_csv(scores, args.csv)
        if args.json:
            grader.write_json(scores, args.json, seed=options.seed)

    hide = [str(p.resolve()) for p in (args.csv, args.json, args.seed_file) if p is not None]
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    scores = grader.grade_notebooks(args.paths, options, jobs=args.jobs, hide=hide, on_graded=write_reports,
                                    progress=progress)
    print(grader.format_table(scores, width=shutil.get_terminal_size((110, 24)).columns))
    return 2 if any(not s.exercise_set for s in scores) else 0


def add_exercises_command(subparsers) -> None:
    """``clcourse exercises build [--source DIR] [--out DIR] [--check]``."""
    parser = subparsers.add_parser("exercises", help="manage the exercise notebooks")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = actions.add_parser(
        "build", help="write student notebooks from the solution sources",
        description="Replace every '### BEGIN SOLUTION' ... '### END SOLUTION' region of the source "
                    "notebooks by a stub raising NotImplementedError, and write the results.")
    build.add_argument("--source", type=Path, default=Path("exercises/source"), metavar="DIR",
                       help="solution notebooks (default: exercises/source)")
    build.add_argument("--out", type=Path, default=Path("exercises"), metavar="DIR",
                       help="where the student notebooks go (default: exercises)")
    build.add_argument("--check", action="store_true",
                       help="write nothing; exit 1 if a student notebook is out of date")
    build.set_defaults(func=run_exercises_build)


def run_exercises_build(args: argparse.Namespace) -> int:
    """Build (or with ``--check`` verify) the student notebooks."""
    from clcourse.grading.build import build_exercises

    try:
        results = build_exercises(args.source, args.out, check_only=args.check)
    except (FileNotFoundError, ValueError) as exc:
        print(f"clcourse exercises build: {exc}", file=sys.stderr)
        return 1
    for path, changed in results:
        state = ("out of date" if args.check else "written") if changed else "up to date"
        print(f"{path}: {state}")
    return 1 if args.check and any(changed for _, changed in results) else 0


# The names of clcourse.recipes.METHODS / DATASETS, repeated so that --help need not import torch
# (tests/test_cli.py checks that they agree).
TRAIN_METHODS = ("simclr", "moco", "supcon", "swav", "nnclr", "pcl", "byol", "simsiam", "barlow-twins",
                 "pixel-contrast", "pcrl", "sscl")
TRAIN_DATASETS = ("digits", "shapes", "cifar10", "stl10", "folder", "scenes", "lesions", "reviews")


def _dataset_name(text: str) -> str:
    """argparse type of --dataset: a name of TRAIN_DATASETS, or folder:PATH."""
    name, _, path = text.partition(":")
    if name not in TRAIN_DATASETS or (name == "folder") != bool(path):
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(d for d in TRAIN_DATASETS if d != 'folder')} or folder:PATH, got {text!r}")
    return text


def add_train_command(subparsers) -> None:
    """``clcourse train METHOD [--dataset NAME] [--epochs N | --steps N | --seconds S] [options]``."""
    parser = subparsers.add_parser(
        "train", help="train a method from its recipe, evaluate it, write checkpoints and metrics",
        description="Train a method with the recipe of the profile (clcourse/recipes.py), then evaluate it: "
                    "the image methods' encoder by kNN and linear probes with 1%%, 10%% and 100%% of the labels; "
                    "pixel-contrast (on scenes) by the mIoU of its segmentation; pcrl (on lesions) by the "
                    "lesion Dice after fine-tuning its U-Net on a few labelled slices; sscl (on reviews) by the "
                    "per-aspect F1 and macro-F1 of the aspects it detects in review sentences. "
                    "Writes DIR/last.pt (after an epoch, at most every 30 s, and at the end), DIR/history.json "
                    "and DIR/metrics.json. "
                    "Under 'torchrun --nproc_per_node=K -m clcourse train ...' an image method trains with "
                    "DistributedDataParallel (gloo on CPUs, nccl on GPUs), negatives gathered from every "
                    "process; --batch-size is the global batch. The dense methods and sscl train on one process.")
    parser.add_argument("method", choices=TRAIN_METHODS, metavar="METHOD", help=f"one of {', '.join(TRAIN_METHODS)}")
    parser.add_argument("--dataset", type=_dataset_name, metavar="NAME",
                        help="digits, shapes, cifar10, stl10 or folder:PATH (your images, one sub-folder per "
                             "class) (default: digits in the quick profile, cifar10 in the full one; stl10 is "
                             "full only); pixel-contrast trains on scenes, pcrl on lesions, sscl on reviews (their "
                             "default)")
    parser.add_argument("--profile", choices=("quick", "full", "auto"), default=None,
                        help="default: $CLCOURSE_PROFILE, else auto (quick on a CPU, full on a GPU)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, metavar="N", help="train N epochs (default: the recipe's budget)")
    budget.add_argument("--steps", type=int, metavar="N", help="train N optimiser steps")
    budget.add_argument("--seconds", type=float, metavar="S", help="train S seconds (not with torchrun)")
    parser.add_argument("--batch-size", type=int, metavar="B",
                        help="global batch size (SGD recipes scale the learning rate with it)")
    parser.add_argument("--image-size", type=int, metavar="S", help="side of the images the encoder sees")
    parser.add_argument("--temperature", type=float, metavar="T", help="temperature of the loss")
    parser.add_argument("--lr", type=float, metavar="LR", help="learning rate")
    parser.add_argument("--seed", type=int, metavar="N", help="seed of weights, data order and views (default: 0)")
    parser.add_argument("--draws", type=int, metavar="N", help="label draws of the 1%% and 10%% probes")
    parser.add_argument("--finetune-steps", type=int, metavar="N",
                        help="steps of the fine-tuning that evaluates pcrl (default: the recipe's)")
    parser.add_argument("--device", metavar="DEV", help="cpu, cuda, cuda:1, mps (default: the best available)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="output folder (default: runs/METHOD-DATASET-PROFILE)")
    parser.add_argument("--resume", action="store_true", help="continue from DIR/last.pt if it exists")
    parser.add_argument("--data-root", type=Path, metavar="DIR",
                        help="where CIFAR-10 / STL-10 live (default: $CLCOURSE_DATA, else data/)")
    parser.add_argument("--download", action="store_true", help="download CIFAR-10 / STL-10 when missing")
    parser.set_defaults(func=run_train)


def _fail(command: str, message: str, status: int = 2) -> int:
    print(f"clcourse {command}: {message}", file=sys.stderr)
    return status


def run_train(args: argparse.Namespace) -> int:
    """Build the recipe from the options and train it (:func:`clcourse.runs.train_run`); 2 for bad input."""
    import os

    import torch

    from clcourse import distributed
    from clcourse.data import DatasetNotFoundError
    from clcourse.device import fit_threads_to_cpus, get_device, get_profile
    from clcourse.recipes import get_recipe
    from clcourse.runs import train_run

    if args.method == "sscl":
        unused = [flag for flag, value in (("--image-size", args.image_size), ("--temperature", args.temperature),
                                           ("--draws", args.draws), ("--finetune-steps", args.finetune_steps))
                  if value is not None]
        if unused:
            return _fail("train", f"sscl trains on sentences with unscaled cosines and scores them by F1: "
                                  f"{', '.join(unused)} do not apply; expected the budget, --batch-size, --lr, "
                                  "--seed or --device")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and args.seconds is not None:
        return _fail("train", "--seconds cannot be used with torchrun: processes would stop at different "
                              "steps and wait for each other; give --steps or --epochs")
    try:
        if world > 1:
            cuda = torch.cuda.is_available() and (args.device or "cuda").startswith("cuda")
            device = distributed.setup_from_env("nccl" if cuda else "gloo")
        else:
            device = get_device(args.device)
        fit_threads_to_cpus()
        recipe = get_recipe(args.method, get_profile(args.profile, device).name, args.dataset).override(
            epochs=args.epochs, steps=args.steps, seconds=args.seconds, batch_size=args.batch_size,
            image_size=args.image_size, temperature=args.temperature, lr=args.lr, seed=args.seed,
            probe_draws=args.draws, finetune_steps=args.finetune_steps)
        out = args.out or Path("runs") / f"{recipe.method}-{recipe.dataset}-{recipe.profile}"
        train_run(recipe, out, device, resume=args.resume, root=args.data_root, download=args.download)
    except (DatasetNotFoundError, FileNotFoundError, ValueError) as exc:
        # Every process fails alike; one message is enough.
        return _fail("train", str(exc)) if distributed.rank() == 0 else 2
    finally:
        distributed.cleanup()
    return 0


def add_rl_command(subparsers) -> None:
    """``clcourse rl AGENT [--layout ID] [--steps N] [--seed N]``: train a pixel agent (CURL or a baseline)."""
    from clcourse.agents import AGENT_KINDS

    parser = subparsers.add_parser(
        "rl", help="train a DQN agent from pixels in a MiniGrid layout: with CURL, with crops alone, or plain",
        description="Train a DQN agent on stacked RGB frames of a MiniGrid layout (clcourse.envs.PixelGrid) for a "
                    "number of environment steps: 'curl' adds CURL's contrastive loss on the agent's encoder and "
                    "trains on random crops, 'crops' trains on random crops alone, 'dqn' on whole frames. "
                    "Evaluates the greedy policy every --eval-every steps. Writes DIR/last.pt (the agent) and "
                    "DIR/metrics.json (the settings, the training episodes' returns and the evaluation curve).")
    parser.add_argument("agent", choices=list(AGENT_KINDS), metavar="AGENT", help=f"one of {', '.join(AGENT_KINDS)}")
    parser.add_argument("--layout", default="MiniGrid-Empty-Random-6x6-v0", metavar="ID",
                        help="a MiniGrid id (default: MiniGrid-Empty-Random-6x6-v0)")
    parser.add_argument("--steps", type=int, default=4000, metavar="N", help="environment steps (default: 4000)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="default: 0")
    parser.add_argument("--tile-size", type=int, default=4, metavar="PX", help="pixels per grid cell (default: 4)")
    parser.add_argument("--frames", type=int, default=3, metavar="N", help="frames stacked (default: 3)")
    parser.add_argument("--distractors", action="store_true", help="paint the floor with drifting squares")
    parser.add_argument("--eval-every", type=int, default=500, metavar="N", help="default: 500")
    parser.add_argument("--eval-episodes", type=int, default=20, metavar="N", help="default: 20")
    parser.add_argument("--crop-margin", type=int, default=1, metavar="PX",
                        help="pixels a crop is smaller than the frames (default: 1, lesson 14's)")
    parser.add_argument("--filters", type=int, default=16, metavar="N",
                        help="filters of the encoder's 2 convolutions (default: 16, lesson 14's)")
    parser.add_argument("--lr", type=float, default=1e-3, metavar="LR", help="Adam's learning rate (default: 1e-3)")
    parser.add_argument("--device", metavar="DEV", help="cpu, cuda, mps (default: the best available)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="default: runs/rl-AGENT-LAYOUT-seedN")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar (default: yes)")
    parser.set_defaults(func=run_rl)


def run_rl(args: argparse.Namespace) -> int:
    """Train the agent (:func:`clcourse.agents.train_agent`) and write its run folder; 2 for bad input."""
    import dataclasses
    import json

    from clcourse.agents import make_agent, train_agent
    from clcourse.device import get_device
    from clcourse.envs import PixelGrid

    out = args.out or Path("runs") / f"rl-{args.agent}-{args.layout}-seed{args.seed}"
    try:
        def env():
            return PixelGrid(args.layout, tile_size=args.tile_size, frames=args.frames, distractors=args.distractors)

        train_env = env()
        agent = make_agent(args.agent, train_env, args.seed, crop_margin=args.crop_margin, filters=args.filters,
                           lr=args.lr).to(get_device(args.device))
        out.mkdir(parents=True, exist_ok=True)
        run = train_agent(agent, train_env, args.steps, seed=args.seed, eval_env=env(), eval_every=args.eval_every,
                          eval_episodes=args.eval_episodes, checkpoint=out / "last.pt", progress=args.progress)
    except ValueError as exc:
        return _fail("rl", str(exc))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
    (out / "metrics.json").write_text(json.dumps({"settings": settings, **dataclasses.asdict(run)}, indent=1))
    final = f"{run.eval_returns[-1]:.3f}" if run.eval_returns else "not evaluated"
    print(f"wrote {out}/last.pt and {out}/metrics.json; greedy return at the end: {final}")
    return 0


def add_embed_command(subparsers) -> None:
    """``clcourse embed RUN --out FILE [--data NAME] [--split train|test]``."""
    parser = subparsers.add_parser(
        "embed", help="export a trained run's representations and labels (.npy or .csv)",
        description="Encode images with the encoder of a run written by 'clcourse train --out RUN' and write "
                    "the representations h = f(x) with their labels: FILE.npy (+ FILE.labels.npy) or FILE.csv "
                    "(label,h0,h1,...). clcourse.viz.explore_embeddings(FILE) opens them in the embedding "
                    "explorer. Runs of the dense methods (pixel-contrast, pcrl) are refused: they have no labelled "
                    "image representation; their scores are in their metrics.json.")
    parser.add_argument("run", type=Path, metavar="RUN", help="a run folder (last.pt and metrics.json)")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="FILE.npy or FILE.csv")
    parser.add_argument("--data", type=_dataset_name, metavar="NAME",
                        help="the images to encode: digits, shapes, cifar10, stl10 or folder:PATH "
                             "(default: the run's dataset)")
    parser.add_argument("--split", choices=("train", "test"), default="test", help="default: test")
    parser.add_argument("--device", metavar="DEV", help="cpu, cuda, mps (default: cpu)")
    parser.add_argument("--data-root", type=Path, metavar="DIR",
                        help="where CIFAR-10 / STL-10 live (default: $CLCOURSE_DATA, else data/)")
    parser.set_defaults(func=run_embed)


def run_embed(args: argparse.Namespace) -> int:
    """Export the representations (:func:`clcourse.runs.embed_run`); 2 for bad input."""
    from clcourse.data import DatasetNotFoundError
    from clcourse.runs import embed_run

    try:
        written = embed_run(args.run, args.out, dataset=args.data, split=args.split, device=args.device,
                            root=args.data_root)
    except (DatasetNotFoundError, FileNotFoundError, ValueError) as exc:
        return _fail("embed", str(exc))
    print("wrote " + ", ".join(map(str, written)))
    return 0


def add_lab_command(subparsers) -> None:
    """``clcourse lab [--port N] [--workspace DIR] [--lesson NN_topic] [--no-browser]``: what ``make lab`` runs."""
    parser = subparsers.add_parser(
        "lab", help="open the course in JupyterLab, in a workspace of your own",
        description="Copy the lessons and exercises into your workspace (new ones only; a lesson you changed is "
                    "never overwritten: a newer version goes beside it as NN_topic.new.ipynb), then start "
                    "JupyterLab there and print the one URL that opens the first lesson.")
    parser.add_argument("--port", type=int, default=8888, metavar="N", help="default: 8888")
    parser.add_argument("--workspace", type=Path, metavar="DIR",
                        help="default: $CLCOURSE_WORKSPACE, else workspace/ in the checkout (ignored by git)")
    parser.add_argument("--lesson", default="00_welcome", metavar="NN_topic", help="default: 00_welcome")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser window")
    parser.set_defaults(func=run_lab)


def run_lab(args: argparse.Namespace) -> int:
    """Synchronise the workspace, print the lesson's URL and replace this process with JupyterLab."""
    import os
    import secrets

    from clcourse.workspace import default_workspace, sync_workspace

    workspace = (args.workspace or default_workspace()).resolve()
    for change in sync_workspace(workspace):
        print(f"workspace: {change}")
    lesson = workspace / "lessons" / f"{args.lesson}.ipynb"
    if not lesson.is_file():
        return _fail("lab", f"no lesson {args.lesson!r} in {workspace / 'lessons'}")
    _write_lab_overrides()
    token = secrets.token_hex(16)
    url = f"http://localhost:{args.port}/lab/tree/lessons/{lesson.name}?token={token}"
    print(f"\nYour workspace: {workspace}\nOpen the course at\n\n    {url}\n", flush=True)
    command = [sys.executable, "-m", "jupyter", "lab", f"--port={args.port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={workspace}", "--LabApp.news_url=None",
               str(lesson)]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    if args.no_browser:
        command.append("--no-browser")
    os.execv(sys.executable, command)  # JupyterLab takes over this process: Ctrl+C and signals reach it
    return 0  # not reached


# JupyterLab settings defaults for this environment (overrides.json: a learner's own settings still win).
LAB_OVERRIDES = {
    # no "get notified about Jupyter news?" pop-up over the lesson
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false"},
    # No kernel subshell for widget comms. JupyterLab creates one (a control-channel create_subshell_request) when
    # a kernel shows its first widget, e.g. a training cell's tqdm bar; the kernel's status "idle" for that request
    # is taken by JupyterLab and jupyter_server as the whole kernel's, so the status bar and /api/sessions said
    # "Idle" until that cell ended. ipykernel routes a notebook widget's messages to the main shell anyway.
    "@jupyterlab/apputils-extension:kernels-settings": {"commsOverSubshells": "disabled"},
}


def _write_lab_overrides() -> None:
    """Write LAB_OVERRIDES into this environment's JupyterLab overrides.json (no news pop-up, no comm subshells)."""
    import json

    path = Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    try:
        settings = json.loads(path.read_text()) if path.is_file() else {}
        changed = False
        for plugin, values in LAB_OVERRIDES.items():
            current = settings.setdefault(plugin, {})
            for key, value in values.items():
                if current.get(key) != value:
                    current[key] = value
                    changed = True
        if changed:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(settings, indent=2) + "\n")
    except (OSError, ValueError) as error:  # a read-only or hand-edited environment: JupyterLab's defaults stay
        print(f"clcourse lab: could not write JupyterLab's settings defaults to {path}: {error}", file=sys.stderr)


def add_doctor_command(subparsers) -> None:
    """``clcourse doctor``: what the course will run with, and what is missing."""
    parser = subparsers.add_parser(
        "doctor", help="print versions, device, profile, datasets and the browser-test set-up",
        description="Check the environment the course runs in. Always exits 0: it reports, it does not judge.")
    parser.add_argument("--data-root", type=Path, metavar="DIR",
                        help="where CIFAR-10 / STL-10 are looked for (default: $CLCOURSE_DATA, else data/)")
    parser.set_defaults(func=run_doctor)


DOCTOR_PACKAGES = ("torch", "torchvision", "numpy", "scikit-learn", "umap-learn", "jupyterlab", "ipywidgets")

# Files whose presence means a dataset is usable (torchvision's own check also hashes them: slow).
DATASET_FILES = {
    "cifar10": ("cifar-10-batches-py", ("data_batch_1", "data_batch_5", "test_batch", "batches.meta")),
    "stl10": ("stl10_binary", ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin")),
}


def _installed_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _install_state() -> str:
    """How ``clcourse`` is installed, relative to the checkout this code runs from."""
    import json
    from importlib.metadata import distributions
    from urllib.parse import unquote, urlparse

    checkout = Path(__file__).resolve().parents[1]
    # Run from the checkout, its own clcourse.egg-info is found too: prefer the metadata
    # that pip wrote (the one with direct_url.json, PEP 610).
    found = sorted(distributions(name="clcourse"), key=lambda d: d.read_text("direct_url.json") is None)
    if not found:
        return f"not installed: running from {checkout} (pip install -e . there)"
    dist = found[0]
    direct = dist.read_text("direct_url.json")
    info = json.loads(direct) if direct else {}
    if info.get("dir_info", {}).get("editable"):
        source = Path(unquote(urlparse(info["url"]).path)).resolve()
        where = "this checkout" if source == checkout else f"another checkout, not this one ({checkout})"
        return f"editable from {source} ({where})"
    return f"installed {dist.version} (not editable): edits in {checkout} need a reinstall"


def _doctor_report(data_root: Path | None) -> list[tuple[str, list[tuple[str, str]]]]:
    """The sections of ``clcourse doctor``: (title, [(name, value), ...])."""
    import importlib.util
    import os
    import platform

    import torch

    from clcourse.data import default_root
    from clcourse.device import describe_device, get_device, get_profile, usable_cpus

    versions = [("python", platform.python_version())] + [(p, _installed_version(p)) for p in DOCTOR_PACKAGES]
    device = get_device()
    device_rows = [("device", describe_device(device))]
    if torch.cuda.is_available():
        device_rows.append(("cuda", f"{torch.version.cuda}, {torch.cuda.device_count()} GPU(s)"))
    try:
        profile = get_profile(device=device)
        device_rows.append(("profile", f"{profile.name} (requested {profile.requested})"))
    except ValueError as exc:
        device_rows.append(("profile", f"invalid: {exc}"))
    threads, cpus = torch.get_num_threads(), usable_cpus()
    device_rows.append(("threads", f"torch {threads}, usable cpus {cpus} (of {os.cpu_count()})"
                        + (" -- more threads than cpus: set OMP_NUM_THREADS" if threads > cpus else "")))

    root = data_root or default_root()
    data_rows = [("root", str(root.resolve())), ("digits", "present (bundled with scikit-learn)"),
                 ("shapes", "present (generated)")]
    for name, (folder, files) in DATASET_FILES.items():
        path = root / folder
        missing = [f for f in files if not (path / f).is_file()]
        if not missing:
            data_rows.append((name, f"present at {path.resolve()}"))
        else:
            data_rows.append((name, f"missing at {path.resolve()} (clcourse train ... --download, or "
                                    f"clcourse.data.{name}(download=True))"))

    chromium = next((p for p in ("/usr/bin/chromium",) if Path(p).is_file()), None)
    chromium = chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    browser_rows = [
        ("chromium", chromium or "not found (the browser test is skipped)"),
        ("playwright", "importable" if importlib.util.find_spec("playwright")
         else "not installed (pip install -e '.[test]')"),
    ]
    return [("versions", versions), ("device", device_rows), ("datasets", data_rows),
            ("browser test", browser_rows), ("install", [("clcourse", _install_state())])]


def run_doctor(args: argparse.Namespace) -> int:
    """Print the doctor's report; always exit 0."""
    for title, rows in _doctor_report(args.data_root):
        print(f"[{title}]")
        width = max(len(name) for name, _ in rows)
        for name, value in rows:
            print(f"  {name:<{width}}  {value}")
    return 0


COMMANDS = (add_lab_command, add_grade_command, add_exercises_command, add_train_command, add_rl_command,
            add_embed_command, add_doctor_command)


def build_parser() -> argparse.ArgumentParser:
    """The ``clcourse`` argument parser with every command of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="clcourse", description="A hands-on course on contrastive learning.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``clcourse`` command line (``argv`` defaults to ``sys.argv[1:]``); return the exit status."""
    args = build_parser().parse_args(argv)
    return args.func(args)
