"""Pixel environments for reinforcement learning from images: MiniGrid layouts drawn as small RGB frames.

CURL (lesson 14) learns control from pixels. MiniGrid [1] draws its grid worlds in numpy, so a frame costs a
fraction of a millisecond on any CPU and needs no display; Gymnasium [2] gives the environment API and its checker.
:class:`PixelGrid` wraps a MiniGrid layout as an environment whose observation is the last ``frames`` frames of
the whole grid, stacked channel-first (uint8 [3 * frames, S, S]; one frame does not show which way the agent
moves), and whose actions are MiniGrid's first ``actions`` (turn left, turn right, forward: all an empty room
needs). ``distractors=True`` paints the floor with coloured squares that drift every step: pixels that change
without mattering, the kind of clutter a pixel encoder must learn to ignore.

Registered with Gymnasium as ``clcourse/PixelGrid-v0`` when this module is imported, so that
``gymnasium.make("clcourse/PixelGrid-v0", layout=..., frames=...)`` (or, without importing it first,
``gymnasium.make("clcourse.envs:clcourse/PixelGrid-v0")``) builds one.

[1] Chevalier-Boisvert et al., Minigrid & Miniworld: Modular & Customizable Reinforcement Learning Environments
    for Goal-Oriented Tasks, NeurIPS 2023 (Datasets and Benchmarks).
[2] Towers et al., Gymnasium: A Standard Interface for Reinforcement Learning Environments, 2024.
"""

from __future__ import annotations

from collections import deque

import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid layouts with Gymnasium)
import numpy as np
from gymnasium import spaces

__all__ = ["ENV_ID", "PixelGrid"]

ENV_ID = "clcourse/PixelGrid-v0"
DISTRACTOR_SQUARES = 12  # coloured squares drawn on the floor per episode
_FRAME_CACHE_SIZE = 4096  # grid states whose drawing a PixelGrid keeps (an empty 8x8 room has 144)


class PixelGrid(gym.Env):
    """A MiniGrid layout seen from above as stacked RGB frames (module docstring).

    Args:
        layout: a registered MiniGrid id, e.g. ``"MiniGrid-Empty-5x5-v0"``.
        tile_size: pixels per grid cell; the frame is (cells x tile_size) pixels square.
        frames: how many of the last frames the observation stacks (3 channels each).
        actions: MiniGrid's first ``actions`` actions (3: left, right, forward; 7: all).
        distractors: paint the floor with drifting coloured squares, new ones every episode.
        max_steps: the episode's step limit (None: the layout's own).
        render_mode: ``"rgb_array"`` makes :meth:`render` return the latest frame [S, S, 3].
        layout_options: keywords for the layout's constructor, e.g. ``{"agent_start_pos": None}`` for a random
            start in an empty room (``MiniGrid-Empty-Random-6x6-v0`` is the 6x6 room with that option).

    Observation: uint8 [3 * frames, S, S], oldest frame first. Reward and termination are MiniGrid's (reaching
    the goal gives 1 - 0.9 * steps / max_steps).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, layout: str = "MiniGrid-Empty-5x5-v0", tile_size: int = 8, frames: int = 3, actions: int = 3,
                 distractors: bool = False, max_steps: int | None = None, render_mode: str | None = None,
                 layout_options: dict | None = None):
        if not isinstance(tile_size, int) or tile_size < 2:
            raise ValueError(f"tile_size must be an int >= 2 (pixels per cell), got {tile_size!r}")
        if not isinstance(frames, int) or frames < 1:
            raise ValueError(f"frames must be a positive int, got {frames!r}")
        if not isinstance(actions, int) or not 1 <= actions <= 7:
            raise ValueError(f"actions must be an int in [1, 7] (MiniGrid has 7), got {actions!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        options = dict(layout_options or {}) | ({} if max_steps is None else {"max_steps": max_steps})
        try:
            self.grid = gym.make(layout, **options).unwrapped
        except TypeError as error:
            raise ValueError(f"layout_options {layout_options!r} do not fit {layout} ({error})") from None
        except gym.error.Error as error:
            raise ValueError(f"layout must be a registered MiniGrid id such as 'MiniGrid-Empty-5x5-v0', got "
                             f"{layout!r} ({error})") from None
        self.layout, self.tile_size, self.frames, self.distractors = layout, tile_size, frames, distractors
        self.render_mode = render_mode
        self.size = self.grid.width * tile_size
        if self.grid.height != self.grid.width:
            raise ValueError(f"layout must be square, {layout} is {self.grid.width} x {self.grid.height} cells")
        self.observation_space = spaces.Box(0, 255, (3 * frames, self.size, self.size), np.uint8)
        self.action_space = spaces.Discrete(actions)
        self._stack: deque[np.ndarray] = deque(maxlen=frames)
        self._squares = np.zeros((0, 6), dtype=np.int64)  # per square: y, x, side, r, g, b
        self._drawn: dict[tuple, np.ndarray] = {}

    def _grid_frame(self) -> np.ndarray:
        """MiniGrid's drawing of the grid now, [S, S, 3] uint8 (read-only), remembered by grid state.

        Drawing costs three times MiniGrid's step and a room has few states (the cells' contents, the agent's
        cell and direction), so each is drawn once: an agent's training and evaluation revisit them thousands of
        times (benchmarks/README.md).
        """
        state = (self.grid.grid.encode().tobytes(), tuple(self.grid.agent_pos), int(self.grid.agent_dir))
        frame = self._drawn.get(state)
        if frame is None:
            if len(self._drawn) >= _FRAME_CACHE_SIZE:
                self._drawn.clear()
            frame = self.grid.get_frame(highlight=False, tile_size=self.tile_size)
            frame.flags.writeable = False
            self._drawn[state] = frame
        return frame

    def _frame(self) -> np.ndarray:
        """The grid now, [S, S, 3] uint8, the floor painted with the distractors when they are on."""
        frame = self._grid_frame()
        if self.distractors:
            floor = (frame == 0).all(axis=-1)
            paint = np.zeros_like(frame)
            shift = self.grid.step_count  # the squares drift one pixel right and down per step
            for y, x, side, *colour in self._squares:
                rows = (np.arange(y, y + side) + shift) % self.size
                cols = (np.arange(x, x + side) + shift) % self.size
                paint[np.ix_(rows, cols)] = colour
            frame = np.where(floor[..., None], paint, frame)
        return frame

    def _observation(self) -> np.ndarray:
        return np.concatenate([f.transpose(2, 0, 1) for f in self._stack], axis=0)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.grid.reset(seed=int(self.np_random.integers(2**31 - 1)))
        if self.distractors:
            n = DISTRACTOR_SQUARES
            corners = [self.np_random.integers(0, self.size, n) for _ in range(2)]
            sides = self.np_random.integers(2, max(3, self.tile_size), n)
            colours = [self.np_random.integers(60, 256, n) for _ in range(3)]
            self._squares = np.stack([*corners, sides, *colours], axis=1)
        frame = self._frame()
        self._stack.extend([frame] * self.frames)
        return self._observation(), {}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an int in [0, {self.action_space.n}), got {action!r}")
        _, reward, terminated, truncated, _ = self.grid.step(int(action))
        self._stack.append(self._frame())
        return self._observation(), float(reward), bool(terminated), bool(truncated), {}

    def place(self, cell: tuple[int, int], direction: int) -> np.ndarray:
        """Put the agent in grid cell ``cell`` = (x, y) facing ``direction`` (0 right, 1 down, 2 left, 3 up) of the
        current episode, and return the observation of a standstill there: uint8 [3 * frames, S, S], every frame
        the same. For looking at what an agent makes of each state; call :meth:`reset` first."""
        x, y = cell
        if not (0 <= x < self.grid.width and 0 <= y < self.grid.height) or not 0 <= direction <= 3:
            raise ValueError(f"cell must lie in the {self.grid.width} x {self.grid.height} grid and direction be in "
                             f"0..3, got {cell} and {direction}")
        inside = self.grid.grid.get(x, y)
        if inside is not None and not inside.can_overlap():
            raise ValueError(f"cell {cell} holds a {inside.type}: the agent cannot stand there")
        self.grid.agent_pos, self.grid.agent_dir = (x, y), direction
        self._stack.extend([self._frame()] * self.frames)
        return self._observation()

    def render(self):
        if self.render_mode == "rgb_array":
            return self._stack[-1].copy()
        return None

    def close(self):
        self.grid.close()


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point=PixelGrid)
