"""A DQN agent that learns from pixels, with CURL's contrastive task on its encoder, and the loop that trains it.

DQN [1] learns Q(s, a), the return expected after action a in state s, by regressing Q towards
r + gamma max_a' Q_target(s', a') on transitions drawn from a replay buffer, with a slowly updated copy of the
network as the target. From pixels, the encoder that turns frames into a state is learnt from that regression
alone. CURL [2] adds its contrastive loss on the same encoder (:class:`clcourse.methods.curl.CURL`); the agent's
own update then sees random crops too, as in CURL; crops without the contrastive loss are the augmentation
alone (RAD [3], the ablation later work asked for). The three agents differ only in ``crop`` and ``curl``.

This loop is not :func:`clcourse.train.fit`: the data are not a dataset but what the agent meets while acting.
It reuses the package's encoder (:class:`clcourse.encoders.PixelEncoder`), loss, crops, checkpoints
(:func:`clcourse.train.save_checkpoint`) and progress bars.

[1] Mnih et al., Human-level control through deep reinforcement learning (DQN), Nature 2015.
[2] Srinivas, Laskin et al., CURL: Contrastive Unsupervised Representations for Reinforcement Learning, ICML 2020.
[3] Laskin et al., Reinforcement Learning with Augmented Data (RAD), NeurIPS 2020.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from clcourse.encoders import PixelEncoder
from clcourse.envs import PixelGrid
from clcourse.methods.curl import CURL, center_crop, random_view, to_unit
from clcourse.train import save_checkpoint
from clcourse.workers import on_one_thread, run_in_workers

__all__ = ["AGENT_KINDS", "AgentJob", "AgentRun", "DQNAgent", "ReplayBuffer", "evaluate_agent", "make_agent",
           "run_job", "train_agent", "train_agents"]

# The three agents compared: DQN on whole frames, on random crops, and with CURL (crops and the contrastive loss).
AGENT_KINDS = {"dqn": dict(crops=False, curl=False), "crops": dict(crops=True, curl=False),
               "curl": dict(crops=True, curl=True)}
# An update's cost relative to pixel DQN's (CURL's adds a second encoder pass and step): which runs to start first.
AGENT_COST = {"dqn": 1.0, "crops": 1.0, "curl": 1.8}


class ReplayBuffer:
    """The last ``capacity`` transitions, observations stored as uint8.

    ``add(obs, action, reward, next_obs, terminated)`` with observations uint8 [C, H, W]; ``sample(n, generator)``
    returns a dict of tensors drawn uniformly with replacement: ``obs``, ``next_obs`` uint8 [n, C, H, W],
    ``action`` int64 [n], ``reward`` float32 [n], ``done`` float32 [n] (1 where the episode terminated: no
    bootstrapping past it; a time limit is not a termination).
    """

    def __init__(self, capacity: int, obs_shape: tuple[int, ...]):
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        self.obs = np.zeros((capacity, *obs_shape), dtype=np.uint8)
        self.next_obs = np.zeros_like(self.obs)
        self.action = np.zeros(capacity, dtype=np.int64)
        self.reward = np.zeros(capacity, dtype=np.float32)
        self.done = np.zeros(capacity, dtype=np.float32)
        self.capacity, self.size, self._next = capacity, 0, 0

    def __len__(self) -> int:
        return self.size

    def add(self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray, terminated: bool) -> None:
        i = self._next
        self.obs[i], self.next_obs[i] = obs, next_obs
        self.action[i], self.reward[i], self.done[i] = action, reward, float(terminated)
        self._next, self.size = (i + 1) % self.capacity, min(self.size + 1, self.capacity)

    def sample(self, n: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        if n < 1 or self.size == 0:
            raise ValueError(f"cannot sample {n} transitions from a buffer holding {self.size}")
        rows = torch.randint(0, self.size, (n,), generator=generator).numpy()
        return {"obs": torch.from_numpy(self.obs[rows]), "next_obs": torch.from_numpy(self.next_obs[rows]),
                "action": torch.from_numpy(self.action[rows]), "reward": torch.from_numpy(self.reward[rows]),
                "done": torch.from_numpy(self.done[rows])}


class DQNAgent(nn.Module):
    """DQN [1] on pixels, optionally with crops and CURL's contrastive loss [2] on its encoder (module docstring).

    Args:
        obs_shape: (C, H, W) of the observations (uint8).
        actions: the number of discrete actions.
        crop: side of the random crops the updates see (the agent acts on the central crop); None: whole frames.
        pad: the crops are taken from the frames padded by this many repeated edge pixels; with ``crop`` = the
            frames' side that is the random shift of CURL's Atari code (pad 4 of 84 px) and DrQ.
        curl: add CURL's contrastive loss (needs ``crop``), weighted ``curl_weight``.
        td_on_crops: the TD loss sees random crops (True: as the issue's CURL and CURL's control-suite code,
            whose critic trains on crops); False: it sees what the agent acts on, as CURL's Atari code, and CURL's
            anchors are then a separate random crop through the encoder.
        separate_curl_update: CURL's loss takes its own optimiser step after the TD step (its own Adam over the
            encoder and W: the two updates interleave, as CURL's control-suite code steps its critic and then its
            contrastive head); False: one step on the weighted sum of both losses (its Atari code). Adam scales
            each step by its own gradients, so a contrastive loss hundreds of times larger than the TD loss
            cannot drown the TD loss's direction in the encoder: with the sum, CURL did not learn the 8x8 room
            (benchmarks/README.md).
        feature_dim, layers, filters: the :class:`PixelEncoder`'s code size, depth and width.
        gamma: the discount; lr: Adam's learning rate for everything; target_tau: the target network's Polyak
            step after each update; curl_momentum: the key encoder's momentum; curl_logit_scale: the factor of
            CURL's bilinear logits (:class:`CURL`'s ``logit_scale``); grad_clip: clip the gradients' global norm
            to this (CURL's Atari code: 10); None: no clipping.
        generator: CPU generator of the crops and the replay samples.

    ``forward(obs)`` gives Q-values [B, actions] of uint8 observations [B, C, H, W].
    """

    def __init__(self, obs_shape: tuple[int, int, int], actions: int, *, crop: int | None = None, pad: int = 0,
                 curl: bool = False, td_on_crops: bool = True, separate_curl_update: bool = True,
                 curl_weight: float = 1.0, feature_dim: int = 50,
                 layers: int = 2, filters: int = 32, hidden: int = 128, gamma: float = 0.99, lr: float = 1e-3,
                 target_tau: float = 0.01, curl_momentum: float = 0.95, curl_logit_scale: float = 1.0,
                 grad_clip: float | None = None, generator: torch.Generator | None = None):
        super().__init__()
        channels, height, width = obs_shape
        if curl and crop is None:
            raise ValueError("curl=True needs crop: CURL's anchor and positive are two random crops")
        if crop is not None and not 1 <= crop <= min(height, width):
            raise ValueError(f"crop must be in [1, {min(height, width)}] (the frames' side), got {crop}")
        if not isinstance(pad, int) or isinstance(pad, bool) or pad < 0 or (pad and crop is None):
            raise ValueError(f"pad must be an int >= 0, and > 0 only with crop (it pads the frames before "
                             f"cropping), got pad={pad!r} with crop={crop}")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be None or > 0 (the largest gradient norm), got {grad_clip}")
        self.obs_shape, self.actions, self.crop, self.pad = tuple(obs_shape), actions, crop, pad
        self.gamma, self.target_tau, self.curl_weight = gamma, target_tau, curl_weight
        self.td_on_crops, self.grad_clip = td_on_crops, grad_clip
        self.separate_curl_update = separate_curl_update and curl
        side = crop or height
        self.encoder = PixelEncoder(channels, side, feature_dim, layers, filters)
        self.head = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(), nn.Linear(hidden, actions))
        self.target = copy.deepcopy(nn.ModuleDict({"encoder": self.encoder, "head": self.head})).requires_grad_(False)
        self.curl = CURL(self.encoder, crop, curl_momentum, generator, pad, curl_logit_scale) if curl else None
        self.generator = generator
        if self.separate_curl_update:
            self.optimizer = torch.optim.Adam([*self.encoder.parameters(), *self.head.parameters()], lr=lr)
            self.curl_optimizer = torch.optim.Adam([*self.encoder.parameters(), self.curl.weight], lr=lr)
        else:
            self.optimizer = torch.optim.Adam(self.parameters(), lr=lr)

    def _view(self, frames: Tensor, train: bool) -> Tensor:
        if self.crop is None:
            return to_unit(frames)
        # cut the stored bytes and convert only the crop
        crops = random_view(frames, self.crop, self.pad, self.generator) if train else center_crop(frames, self.crop)
        return to_unit(crops)

    def forward(self, obs: Tensor) -> Tensor:
        return self.head(self.encoder(self._view(obs, train=False)))

    @torch.no_grad()
    def act(self, obs: np.ndarray, epsilon: float, rng: np.random.Generator) -> int:
        """epsilon-greedy: a random action with probability epsilon, else the argmax of Q at the observation."""
        if rng.random() < epsilon:
            return int(rng.integers(self.actions))
        device = next(self.parameters()).device
        return int(self(torch.from_numpy(obs)[None].to(device)).argmax(dim=1))

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One gradient step on a replay batch: the TD loss (Huber) and, with CURL, its contrastive loss; then the
        key encoder's and the target's moving averages. Returns the losses."""
        device = next(self.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        views = self._view(batch["obs"], train=self.td_on_crops)
        codes = self.encoder(views)
        q = self.head(codes).gather(1, batch["action"][:, None]).squeeze(1)
        with torch.no_grad():
            following = self.target["head"](self.target["encoder"](self._view(batch["next_obs"],
                                                                              train=self.td_on_crops)))
            target = batch["reward"] + self.gamma * (1 - batch["done"]) * following.amax(dim=1)
        losses = {"td": F.smooth_l1_loss(q, target)}
        if self.curl is not None and not self.separate_curl_update:
            losses["curl"] = self.curl_weight * self._contrast(codes, batch["obs"])
        self._step(self.optimizer, sum(losses.values()))
        if self.separate_curl_update:
            # CURL's control-suite code: the critic's step first, then CURL's through the updated encoder
            codes = self.encoder(views) if self.td_on_crops else None
            losses["curl"] = self.curl_weight * self._contrast(codes, batch["obs"])
            self._step(self.curl_optimizer, losses["curl"])
        if self.curl is not None:
            self.curl.on_step_end()
        with torch.no_grad():
            online = list(self.encoder.parameters()) + list(self.head.parameters())
            for target_p, online_p in zip(self.target.parameters(), online):
                target_p.lerp_(online_p, self.target_tau)
        return {name: value.item() for name, value in losses.items()}


    def _contrast(self, codes: Tensor | None, obs: Tensor) -> Tensor:
        """CURL's loss: anchors the TD loss's crops (their codes [B, D]) as in CURL's control-suite code; with TD on
        whole frames (``codes`` None), a view of their own through the encoder."""
        return self.curl.contrast(codes, obs) if self.td_on_crops else self.curl.training_step(obs)

    def _step(self, optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], self.grad_clip)
        optimizer.step()


def make_agent(kind: str, env: gym.Env, seed: int = 0, crop_margin: int | None = None, shift: int | None = None,
               **settings) -> DQNAgent:
    """An agent of ``AGENT_KINDS[kind]`` for ``env``'s observations and actions, its weights and crops seeded.

    Crops are ``crop_margin`` pixels smaller than the frames (default: an eighth of their side, as CURL's 84 of
    100), so a crop moves the picture by up to that many pixels and loses that much of its border. With
    ``shift`` instead, the views are random shifts by up to ``shift`` px that keep the frame's size (crops of
    the frames padded by ``shift`` repeated edge pixels, as CURL's Atari code). ``settings`` go to
    :class:`DQNAgent`.
    """
    if kind not in AGENT_KINDS:
        raise ValueError(f"kind must be one of {', '.join(AGENT_KINDS)}, got {kind!r}")
    if shift is not None and crop_margin is not None:
        raise ValueError(f"give crop_margin (smaller crops) or shift (shifts of the whole frame), not both: got "
                         f"crop_margin={crop_margin}, shift={shift}")
    shape = env.observation_space.shape
    margin = max(1, shape[-1] // 8) if crop_margin is None else crop_margin
    crop, pad = None, 0
    if AGENT_KINDS[kind]["crops"]:
        crop, pad = (shape[-1], shift) if shift is not None else (shape[-1] - margin, 0)
    torch.manual_seed(seed)
    return DQNAgent(shape, int(env.action_space.n), crop=crop, pad=pad, curl=AGENT_KINDS[kind]["curl"],
                    generator=torch.Generator().manual_seed(seed), **settings)


@dataclass
class AgentRun:
    """What :func:`train_agent` recorded: per finished training episode its last environment step and return; per
    evaluation the environment step and the mean greedy return; per update the losses."""

    episode_steps: list[int] = field(default_factory=list)
    episode_returns: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_returns: list[float] = field(default_factory=list)
    losses: list[dict[str, float]] = field(default_factory=list)


@torch.no_grad()
def evaluate_agent(agent: DQNAgent, env: gym.Env | Sequence[gym.Env], episodes: int, seed: int,
                   epsilon: float = 0.05) -> float:
    """Mean return of ``episodes`` episodes acting (epsilon-)greedily, episode i in an environment reset with
    seed ``seed + i`` and drawing its random actions from its own generator (seeded ``[seed, i]``).

    ``env`` may be several environments of one kind: their episodes then run side by side, one forward pass of
    the agent per step for all of them (an evaluation of 20 episodes costs about as many passes as its longest
    episode has steps, not as all its steps together). The mean is the same whichever number of environments
    plays the episodes.
    """
    envs = [env] if isinstance(env, gym.Env) else list(env)
    if not isinstance(episodes, int) or episodes < 1 or not envs:
        raise ValueError(f"need episodes >= 1 and at least one environment, got {episodes!r} and {len(envs)}")
    device, total = next(agent.parameters()).device, 0.0
    for first in range(0, episodes, len(envs)):
        wave = range(first, min(first + len(envs), episodes))
        rngs = {i: np.random.default_rng([seed, i]) for i in wave}
        obs = {i: envs[i - first].reset(seed=seed + i)[0] for i in wave}
        while obs:
            running = list(obs)
            if epsilon < 1:
                greedy = agent(torch.from_numpy(np.stack([obs[i] for i in running])).to(device)).argmax(dim=1).tolist()
            else:  # the random policy: no action of the agent's is ever taken
                greedy = [0] * len(running)
            for i, action in zip(running, greedy):
                if rngs[i].random() < epsilon:
                    action = int(rngs[i].integers(agent.actions))
                obs[i], reward, terminated, truncated, _ = envs[i - first].step(action)
                total += reward
                if terminated or truncated:
                    del obs[i]
    return total / episodes


def train_agent(agent: DQNAgent, env: gym.Env, steps: int, *, seed: int = 0, eval_env: gym.Env | None = None,
                eval_every: int = 500, eval_episodes: int = 10, eval_epsilon: float = 0.05,
                buffer_size: int = 10_000, batch_size: int = 32, warmup: int = 500, epsilon_start: float = 1.0,
                epsilon_end: float = 0.05, epsilon_fraction: float = 0.5, checkpoint: str | Path | None = None,
                progress: bool = True) -> AgentRun:
    """Act in ``env`` for ``steps`` environment steps, epsilon-greedy (epsilon falling linearly from
    ``epsilon_start`` to ``epsilon_end`` over the first ``epsilon_fraction`` of the steps), one update per step
    after ``warmup`` random steps, and every ``eval_every`` steps the mean return over ``eval_episodes`` episodes of
    ``eval_env`` acting greedily but for ``eval_epsilon`` (0.05 as DQN's evaluations: a fully greedy policy can
    turn in place forever). The step budget, not the time, fixes a run. ``checkpoint``: where the agent's weights
    go at the end. Returns the :class:`AgentRun`.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if batch_size < 2 or warmup < batch_size:
        raise ValueError(f"need batch_size >= 2 and warmup >= batch_size, got {batch_size} and {warmup}")
    rng, run = np.random.default_rng(seed), AgentRun()
    # the evaluation's episodes run side by side, one environment each (copies made before any is used)
    eval_envs = None if eval_env is None else [eval_env, *(copy.deepcopy(eval_env) for _ in range(eval_episodes - 1))]
    buffer = ReplayBuffer(buffer_size, env.observation_space.shape)
    obs, _ = env.reset(seed=seed)
    episode_return, episode = 0.0, 0
    for step in tqdm(range(1, steps + 1), desc="env steps", disable=not progress, leave=False):
        epsilon = max(epsilon_end, epsilon_start - (epsilon_start - epsilon_end) * step / (epsilon_fraction * steps))
        action = int(rng.integers(agent.actions)) if step <= warmup else agent.act(obs, epsilon, rng)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, next_obs, terminated)
        episode_return += reward
        obs = next_obs
        if terminated or truncated:
            run.episode_steps.append(step)
            run.episode_returns.append(episode_return)
            episode += 1
            obs, _ = env.reset(seed=seed + 1000 * episode)
            episode_return = 0.0
        if step > warmup:
            run.losses.append(agent.update(buffer.sample(batch_size, agent.generator)))
        if eval_env is not None and step % eval_every == 0:
            run.eval_steps.append(step)
            run.eval_returns.append(evaluate_agent(agent, eval_envs, eval_episodes, seed=10_000 + seed,
                                                   epsilon=eval_epsilon))
    if checkpoint is not None:
        save_checkpoint(checkpoint, {"agent": agent.state_dict(), "steps": steps})
    return run


@dataclass(frozen=True)
class AgentJob:
    """One training run of :func:`train_agents`: agent ``kind`` (a key of :data:`AGENT_KINDS`) with seed ``seed``
    for ``steps`` environment steps in ``PixelGrid(**env)``, evaluated in another. ``agent`` holds keywords of
    :func:`make_agent` (``crop_margin``, ``lr``, ...), ``train`` keywords of :func:`train_agent` (``eval_every``,
    ...)."""

    kind: str
    seed: int
    steps: int
    env: dict = field(default_factory=dict)
    agent: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)

    def build(self) -> tuple[DQNAgent, gym.Env]:
        """The job's untrained agent (on the CPU) and its training environment."""
        env = PixelGrid(**self.env)
        return make_agent(self.kind, env, self.seed, **self.agent), env


def run_job(job: AgentJob) -> tuple[AgentRun, dict[str, Tensor]]:
    """Train ``job``'s agent on one CPU thread; its record and its trained weights (CPU tensors).

    One thread, whichever process runs it: a DQN-sized step is too small for threads to speed it up, and the
    same thread count makes a job's result the same in a worker process as in this one.
    """
    return on_one_thread(_train_job, job)


def _train_job(job: AgentJob) -> tuple[AgentRun, dict[str, Tensor]]:
    agent, env = job.build()
    run = train_agent(agent, env, job.steps, seed=job.seed, eval_env=PixelGrid(**job.env), progress=False,
                      **job.train)
    return run, agent.state_dict()


def train_agents(jobs: Sequence[AgentJob], workers: int | None = None,
                 progress: bool = True) -> list[tuple[DQNAgent, AgentRun]]:
    """Train every job, ``workers`` at a time in separate processes; (trained agent, record) per job, in order.

    A DQN update is small, so one thread per run and runs side by side use a machine's cores best (two runs on
    2 cores take about the time of one). ``workers``: default one per usable CPU (at most one per job); 1 trains
    in this process, one job after another. The results do not depend on ``workers``: each job is seeded and
    runs on one thread.
    """
    jobs = list(jobs)
    if not jobs or not all(isinstance(job, AgentJob) for job in jobs):
        raise ValueError(f"jobs must be a non-empty sequence of AgentJob, got {jobs!r}")
    results = run_in_workers(_train_job, jobs, workers, cost=lambda job: AGENT_COST[job.kind] * job.steps,
                             progress=progress)
    trained = []
    for i, job in enumerate(jobs):
        run, weights = results[i]
        agent, _ = job.build()
        agent.load_state_dict(weights)
        trained.append((agent, run))
    return trained
