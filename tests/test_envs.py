"""The pixel MiniGrid environment: Gymnasium's checker, stacked frames, seeding, distractors, registration."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from clcourse.envs import ENV_ID, PixelGrid


@pytest.mark.parametrize("distractors", [False, True])
def test_gymnasiums_checker_passes_without_warnings(distractors):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(gym.make(ENV_ID, distractors=distractors, render_mode="rgb_array").unwrapped)


def test_observations_stack_the_last_frames_oldest_first():
    env = PixelGrid("MiniGrid-Empty-5x5-v0", tile_size=8, frames=3)
    first, _ = env.reset(seed=0)
    assert first.shape == (9, 40, 40) and first.dtype == np.uint8
    assert np.array_equal(first[:3], first[6:])  # a reset repeats its frame
    second, *_ = env.step(2)  # forward
    assert np.array_equal(second[:6], first[3:])  # the stack moved by one frame
    assert not np.array_equal(second[6:], first[6:])  # the agent moved
    assert env.action_space.n == 3


def test_the_same_seed_gives_the_same_episode():
    a, b = PixelGrid("MiniGrid-Empty-Random-6x6-v0"), PixelGrid("MiniGrid-Empty-Random-6x6-v0")
    starts = [a.reset(seed=s)[0] for s in range(4)]
    assert all(np.array_equal(o, b.reset(seed=s)[0]) for s, o in enumerate(starts))
    assert not all(np.array_equal(starts[0], o) for o in starts[1:])  # random starts differ


def test_remembered_drawings_are_minigrids_own_as_the_grid_changes():
    env = PixelGrid("MiniGrid-DoorKey-5x5-v0", tile_size=4, actions=7)
    rng = np.random.default_rng(0)
    changed = set()
    for episode in range(3):
        env.reset(seed=episode)
        for _ in range(200):  # random actions pick up the key, open the door, drop things: the grid changes
            *_, terminated, truncated, _ = env.step(int(rng.integers(7)))
            assert np.array_equal(env._stack[-1],
                                  env.grid.get_frame(highlight=False, tile_size=4))
            changed.add(env.grid.grid.encode().tobytes())
            if terminated or truncated:
                break
    assert len(changed) > 1  # the check covered more than one grid state
    assert 0 < len(env._drawn) < 200 * 3  # states are revisited, and drawn once each


def test_layout_options_reach_the_layout():
    room = PixelGrid("MiniGrid-Empty-8x8-v0", layout_options={"agent_start_pos": None})
    starts = [room.reset(seed=s)[0] for s in range(4)]
    assert not all(np.array_equal(starts[0], o) for o in starts[1:])  # the fixed start became random
    with pytest.raises(ValueError, match="layout_options .* do not fit MiniGrid-Empty-8x8-v0"):
        PixelGrid("MiniGrid-Empty-8x8-v0", layout_options={"doors": 2})


def test_distractors_paint_only_the_floor_and_drift():
    plain, noisy = PixelGrid(), PixelGrid(distractors=True)
    clean, _ = plain.reset(seed=1)
    busy, _ = noisy.reset(seed=1)
    floor = (clean[6:] == 0).all(axis=0)
    assert np.array_equal(busy[6:][:, ~floor], clean[6:][:, ~floor])  # walls, agent and goal untouched
    assert (busy[6:][:, floor] > 0).any()
    moved, *_ = noisy.step(0)  # turning left: the agent stays, the squares drift
    assert not np.array_equal(moved[6:][:, floor], busy[6:][:, floor])


def test_gymnasium_builds_it_by_id_and_bad_settings_are_named():
    env = gym.make(ENV_ID, layout="MiniGrid-Empty-6x6-v0", frames=2, render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (6, 48, 48) and env.render().shape == (48, 48, 3)
    with pytest.raises(ValueError, match="registered MiniGrid id"):
        PixelGrid("MiniGrid-Nowhere-v0")
    with pytest.raises(ValueError, match=r"actions must be an int in \[1, 7\]"):
        PixelGrid(actions=8)
    with pytest.raises(ValueError, match=r"action must be an int in \[0, 3\)"):
        PixelGrid().step(5)


def test_placing_the_agent_shows_it_there_standing_still():
    env = PixelGrid("MiniGrid-Empty-Random-6x6-v0", tile_size=4, frames=2)
    env.reset(seed=0)
    obs = env.place((2, 3), 1)
    assert obs.shape == (6, 24, 24) and np.array_equal(obs[:3], obs[3:])  # a standstill: both frames alike
    assert tuple(env.grid.agent_pos) == (2, 3) and env.grid.agent_dir == 1
    expected = env.grid.get_frame(highlight=False, tile_size=4).transpose(2, 0, 1)
    assert np.array_equal(obs[3:], expected)
    assert not np.array_equal(env.place((2, 3), 2), obs)  # the direction shows
    with pytest.raises(ValueError, match="holds a wall"):
        env.place((0, 0), 0)
    with pytest.raises(ValueError, match="direction be in 0..3"):
        env.place((2, 2), 4)
