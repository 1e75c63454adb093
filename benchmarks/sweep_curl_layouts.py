"""Which MiniGrid layouts does a pixel DQN learn within a lesson's budget, and does CURL change how fast?

    .venv/bin/python benchmarks/sweep_curl_layouts.py [--layouts ...] [--steps 3000] [--seeds 0 1] [--threads 1]

For each layout (:class:`clcourse.envs.PixelGrid`, ``--tile-size`` px tiles, 3 stacked frames, the 3 navigation
actions) and seed, the three agents of :mod:`clcourse.agents` for the same number of environment steps: ``dqn``
(whole frames), ``crops`` (random crops, the augmentation alone) and ``curl`` (crops and the contrastive loss). Every
``--eval-every`` steps, the mean return over ``--eval-episodes`` episodes at epsilon 0.05 (random starts where the
layout has them, or everywhere with ``--random-start``). Prints each run's evaluation curve, its seconds, and a
table of the return at each evaluation, averaged over the seeds.
A layout is worth a lesson when pixel DQN's return clearly rises within the steps and the random policy's is low.

[1] Srinivas, Laskin et al., CURL: Contrastive Unsupervised Representations for Reinforcement Learning, ICML 2020.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from clcourse.agents import AGENT_KINDS, make_agent, train_agent
from clcourse.envs import PixelGrid


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layouts", nargs="+", default=["MiniGrid-Empty-5x5-v0", "MiniGrid-Empty-Random-6x6-v0"])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--agents", nargs="+", default=list(AGENT_KINDS), choices=list(AGENT_KINDS))
    parser.add_argument("--tile-size", type=int, default=4)
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--distractors", action="store_true", help="drifting squares on the floor")
    parser.add_argument("--curl-weight", type=float, default=1.0, help="weight of CURL's loss (default 1)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (default 1e-3)")
    parser.add_argument("--crop-margin", type=int, help="pixels a crop is smaller than the frame (default S / 8)")
    parser.add_argument("--random-start", action="store_true",
                        help="start the agent anywhere (agent_start_pos=None, for the fixed-start empty rooms)")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--shift", type=int, help="views are random shifts by up to this many px (pad and crop back "
                                                  "to the frame's size, CURL's Atari code) instead of smaller crops")
    parser.add_argument("--td-whole", action="store_true",
                        help="the TD loss sees whole frames, not the views (CURL's Atari code)")
    parser.add_argument("--logit-scale", type=float, default=1.0, help="CURL's bilinear logits x this (Atari: 0.1)")
    parser.add_argument("--grad-clip", type=float, help="clip the gradient norm (CURL's Atari code: 10)")
    parser.add_argument("--joint-curl-update", action="store_true",
                        help="one optimiser step on the sum of the TD and CURL losses (CURL's Atari code), instead of "
                             "CURL's own step after the TD step (its control-suite code, the default)")
    parser.add_argument("--curl-momentum", type=float, default=0.95, help="the key encoder's (Atari code: 0.999)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    table: dict[tuple[str, str], list[list[float]]] = {}
    for layout in args.layouts:
        def env():
            options = {"agent_start_pos": None} if args.random_start else None
            return PixelGrid(layout, tile_size=args.tile_size, distractors=args.distractors, layout_options=options)

        probe = env()
        side = probe.size
        random_return = evaluate_agent_random(probe, 50)
        print(f"{layout}{' with distractors' if args.distractors else ''}: {side} px frames, random policy return "
              f"{random_return:.3f}, {distinct_share(probe):.0f}% of a random batch of 32 distinct", flush=True)
        for seed in args.seeds:
            for name in args.agents:
                agent = make_agent(name, probe, seed, crop_margin=args.crop_margin, shift=args.shift,
                                   filters=args.filters, curl_weight=args.curl_weight, lr=args.lr,
                                   td_on_crops=not args.td_whole, curl_logit_scale=args.logit_scale,
                                   grad_clip=args.grad_clip, curl_momentum=args.curl_momentum,
                                   separate_curl_update=not args.joint_curl_update)
                start = time.perf_counter()
                run = train_agent(agent, env(), args.steps, seed=seed, eval_env=env(), eval_every=args.eval_every,
                                  eval_episodes=args.eval_episodes, progress=False)
                seconds = time.perf_counter() - start
                table.setdefault((layout, name), []).append(run.eval_returns)
                curve = " ".join(f"{r:.2f}" for r in run.eval_returns)
                print(f"  seed {seed} {name}: {curve} ({seconds:.0f} s)", flush=True)
    steps = list(range(args.eval_every, args.steps + 1, args.eval_every))
    print("\n| layout | agent | " + " | ".join(f"return at {s}" for s in steps) + " |")
    print("| --- | --- |" + " ---: |" * len(steps))
    for (layout, name), curves in table.items():
        means = [statistics.mean(c[i] for c in curves) for i in range(len(steps))]
        print(f"| {layout} | {name} | " + " | ".join(f"{m:.2f}" for m in means) + " |")


def distinct_share(env: PixelGrid, batches: int = 20, batch_size: int = 32) -> float:
    """Percentage of distinct observations in batches of random-policy observations (CURL's negatives are the
    batch's other rows: a repeated observation is a negative identical to the positive)."""
    observations, shares = [], []
    obs, _ = env.reset(seed=0)
    env.action_space.seed(0)
    for step in range(2000):
        observations.append(obs.tobytes())
        obs, _, terminated, truncated, _ = env.step(int(env.action_space.sample()))
        if terminated or truncated:
            obs, _ = env.reset(seed=step)
    rng = torch.Generator().manual_seed(0)
    for _ in range(batches):
        rows = torch.randint(0, len(observations), (batch_size,), generator=rng).tolist()
        shares.append(100 * len({observations[r] for r in rows}) / batch_size)
    return statistics.mean(shares)


def evaluate_agent_random(env: PixelGrid, episodes: int) -> float:
    """Mean return of the uniformly random policy over ``episodes`` episodes."""
    total = 0.0
    for episode in range(episodes):
        env.reset(seed=episode)
        env.action_space.seed(episode)
        done = False
        while not done:
            _, reward, terminated, truncated, _ = env.step(int(env.action_space.sample()))
            total += reward
            done = terminated or truncated
    return total / episodes


if __name__ == "__main__":
    sys.exit(main())
