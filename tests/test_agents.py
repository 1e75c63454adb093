"""The DQN agent and its loop: the replay buffer, the TD target, CURL on the shared encoder, a short run."""

import numpy as np
import pytest
import torch

from clcourse.agents import AgentJob, DQNAgent, ReplayBuffer, evaluate_agent, make_agent, train_agent, train_agents
from clcourse.envs import PixelGrid
from clcourse.methods.curl import random_view, to_unit


def test_the_buffer_keeps_the_last_transitions_and_samples_them():
    buffer = ReplayBuffer(3, (1, 2, 2))
    for i in range(5):
        buffer.add(np.full((1, 2, 2), i, np.uint8), i, float(i), np.full((1, 2, 2), i + 1, np.uint8), i == 4)
    assert len(buffer) == 3 and sorted(buffer.action.tolist()) == [2, 3, 4]
    batch = buffer.sample(50, torch.Generator().manual_seed(0))
    assert set(batch["action"].tolist()) == {2, 3, 4}
    assert torch.equal(batch["next_obs"][:, 0, 0, 0].long(), batch["action"] + 1)
    assert torch.equal(batch["done"], (batch["action"] == 4).float())
    with pytest.raises(ValueError, match="cannot sample 4 transitions from a buffer holding 0"):
        ReplayBuffer(3, (1, 2, 2)).sample(4)


def test_the_td_target_stops_at_a_termination():
    torch.manual_seed(0)
    agent = DQNAgent((3, 10, 10), 2, feature_dim=8, layers=1, filters=4, hidden=8, gamma=0.5, lr=0.0)
    obs = torch.randint(0, 256, (4, 3, 10, 10), dtype=torch.uint8)
    batch = {"obs": obs, "next_obs": obs.flip(0), "action": torch.tensor([0, 1, 0, 1]),
             "reward": torch.tensor([1.0, 0.0, 2.0, 0.0]), "done": torch.tensor([1.0, 0.0, 0.0, 1.0])}
    with torch.no_grad():
        q = agent(obs).gather(1, batch["action"][:, None]).squeeze(1)
        best_next = agent(obs.flip(0)).amax(dim=1)  # the target starts as a copy
    target = batch["reward"] + 0.5 * (1 - batch["done"]) * best_next
    losses = agent.update(batch)  # lr 0: nothing moves, the loss is the Huber of q - target
    assert losses["td"] == pytest.approx(torch.nn.functional.smooth_l1_loss(q, target).item(), rel=1e-5)


def test_curl_shares_the_encoder_and_the_target_follows_slowly():
    torch.manual_seed(0)
    agent = DQNAgent((6, 12, 12), 3, crop=10, curl=True, feature_dim=8, layers=1, filters=4, hidden=8,
                     target_tau=0.1, generator=torch.Generator().manual_seed(0))
    assert agent.curl.encoder is agent.encoder
    obs = torch.randint(0, 256, (8, 6, 12, 12), dtype=torch.uint8)
    batch = {"obs": obs, "next_obs": obs, "action": torch.zeros(8, dtype=torch.long), "reward": torch.ones(8),
             "done": torch.zeros(8)}
    before = agent.target["head"][0].weight.clone()
    losses = agent.update(batch)
    assert set(losses) == {"td", "curl"} and np.isfinite(losses["curl"])
    expected = before + 0.1 * (agent.head[0].weight - before)
    torch.testing.assert_close(agent.target["head"][0].weight, expected)
    assert agent(obs).shape == (8, 3)  # acting uses the central crop
    with pytest.raises(ValueError, match="curl=True needs crop"):
        DQNAgent((6, 12, 12), 3, curl=True)


def replay_batch(n=8, shape=(6, 12, 12)):
    obs = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    return {"obs": obs, "next_obs": obs.flip(0), "action": torch.arange(n) % 3, "reward": torch.ones(n),
            "done": torch.zeros(n)}


def test_td_on_whole_frames_sees_what_the_agent_acts_on():
    torch.manual_seed(0)
    agent = DQNAgent((6, 12, 12), 3, crop=12, pad=2, curl=True, td_on_crops=False, feature_dim=8, layers=1,
                     filters=4, hidden=8, gamma=0.5, lr=0.0, generator=torch.Generator().manual_seed(0))
    batch = replay_batch()
    with torch.no_grad():
        q = agent(batch["obs"]).gather(1, batch["action"][:, None]).squeeze(1)
        target = batch["reward"] + 0.5 * agent(batch["next_obs"]).amax(dim=1)
    first, second = agent.update(batch), agent.update(batch)  # lr 0: the same TD loss twice, whatever the views
    expected = torch.nn.functional.smooth_l1_loss(q, target).item()
    assert first["td"] == pytest.approx(expected, rel=1e-5) and second["td"] == pytest.approx(expected, rel=1e-5)
    assert first["curl"] != second["curl"]  # CURL's views are drawn afresh


def test_gradients_are_clipped_to_the_norm_asked():
    torch.manual_seed(0)
    agent = DQNAgent((6, 12, 12), 3, crop=10, curl=True, feature_dim=8, layers=1, filters=4, hidden=8,
                     grad_clip=1e-3, generator=torch.Generator().manual_seed(0))
    norms = []
    step = agent.optimizer.step

    def record_then_step():
        norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in agent.parameters()
                                                           if p.grad is not None])).item())
        step()

    agent.optimizer.step = record_then_step
    agent.update(replay_batch())
    assert norms[0] == pytest.approx(1e-3, rel=1e-4)  # the loss's gradient is far larger: clipped to 1e-3
    with pytest.raises(ValueError, match="grad_clip must be None or > 0"):
        DQNAgent((6, 12, 12), 3, grad_clip=0.0)


def test_a_separate_curl_update_steps_its_own_optimiser_after_the_td_step():
    torch.manual_seed(0)
    agent = DQNAgent((6, 12, 12), 3, crop=10, curl=True, separate_curl_update=True, feature_dim=8, layers=1,
                     filters=4, hidden=8, generator=torch.Generator().manual_seed(0))
    td_params = {id(p) for group in agent.optimizer.param_groups for p in group["params"]}
    curl_params = {id(p) for group in agent.curl_optimizer.param_groups for p in group["params"]}
    encoder = {id(p) for p in agent.encoder.parameters()}
    assert td_params == encoder | {id(p) for p in agent.head.parameters()}  # no W in the TD step
    assert curl_params == encoder | {id(agent.curl.weight)}  # no head in CURL's
    weight = agent.curl.weight.detach().clone()
    losses = agent.update(replay_batch())
    assert set(losses) == {"td", "curl"} and not torch.equal(agent.curl.weight, weight)
    assert all(len(agent.curl_optimizer.state[p]) > 0 for p in agent.encoder.parameters())  # CURL stepped f too
    joint = DQNAgent((6, 12, 12), 3, crop=10, curl=True, separate_curl_update=False, feature_dim=8, layers=1,
                     filters=4, hidden=8, generator=torch.Generator().manual_seed(0))
    assert not hasattr(joint, "curl_optimizer")  # one step on the weighted sum, W among its parameters
    assert any(p is joint.curl.weight for group in joint.optimizer.param_groups for p in group["params"])
    joint_weight = joint.curl.weight.detach().clone()
    assert set(joint.update(replay_batch())) == {"td", "curl"} and not torch.equal(joint.curl.weight, joint_weight)


def test_make_agent_builds_crops_or_shifts():
    env = PixelGrid()
    side = env.observation_space.shape[-1]
    assert make_agent("dqn", env).crop is None
    assert make_agent("crops", env).crop == side - side // 8
    shifted = make_agent("curl", env, shift=3, curl_logit_scale=0.1)
    assert (shifted.crop, shifted.pad, shifted.curl.pad, shifted.curl.logit_scale) == (side, 3, 3, 0.1)
    assert make_agent("dqn", env, shift=3).pad == 0  # no views to shift
    with pytest.raises(ValueError, match="crop_margin .* or shift .*, not both"):
        make_agent("crops", env, crop_margin=2, shift=2)
    with pytest.raises(ValueError, match="pad must be an int >= 0, and > 0 only with crop"):
        DQNAgent((6, 12, 12), 3, pad=2)


def test_a_short_run_records_episodes_and_evaluations():
    torch.manual_seed(0)
    env, eval_env = PixelGrid(max_steps=10), PixelGrid(max_steps=10)
    agent = DQNAgent(env.observation_space.shape, 3, crop=36, curl=True, feature_dim=8, layers=1, filters=4,
                     hidden=8, generator=torch.Generator().manual_seed(0))
    run = train_agent(agent, env, 60, eval_env=eval_env, eval_every=30, eval_episodes=2, warmup=40, batch_size=8,
                      progress=False)
    assert run.episode_steps and all(0 < s <= 60 for s in run.episode_steps)
    assert run.eval_steps == [30, 60] and len(run.losses) == 20
    assert 0.0 <= evaluate_agent(agent, eval_env, 2, seed=0) <= 1.0
    with pytest.raises(ValueError, match="warmup >= batch_size"):
        train_agent(agent, env, 10, warmup=4, batch_size=8)


def test_an_evaluation_gives_the_same_mean_however_many_environments_play_it():
    torch.manual_seed(0)
    env = PixelGrid(max_steps=12)
    agent = DQNAgent(env.observation_space.shape, 3, crop=36, feature_dim=8, layers=1, filters=4, hidden=8)
    alone = evaluate_agent(agent, env, 5, seed=3)
    side_by_side = evaluate_agent(agent, [PixelGrid(max_steps=12) for _ in range(3)], 5, seed=3)  # waves of 3 and 2
    assert side_by_side == pytest.approx(alone, abs=1e-12)
    assert evaluate_agent(agent, env, 5, seed=4, epsilon=1.0) != alone  # the seed and epsilon matter
    with pytest.raises(ValueError, match="episodes >= 1 and at least one environment"):
        evaluate_agent(agent, [], 5, seed=0)


def test_the_agent_crops_the_stored_bytes_as_it_would_crop_the_floats():
    frames = torch.randint(0, 256, (4, 9, 40, 40), dtype=torch.uint8)
    agent = DQNAgent((9, 40, 40), 3, crop=36, feature_dim=8, layers=1, filters=4, hidden=8,
                     generator=torch.Generator().manual_seed(1))
    views = agent._view(frames, train=True)
    assert views.dtype == torch.float32 and views.shape == (4, 9, 36, 36)
    expected = random_view(to_unit(frames), 36, 0, torch.Generator().manual_seed(1))
    assert torch.equal(views, expected)


def test_runs_in_worker_processes_match_runs_in_this_one():
    job = dict(steps=60, env=dict(max_steps=10), agent=dict(feature_dim=8, layers=1, filters=4, hidden=8),
               train=dict(eval_every=30, eval_episodes=2, warmup=40, batch_size=8))
    jobs = [AgentJob("curl", 0, **job), AgentJob("dqn", 1, **job)]
    here = train_agents(jobs, workers=1, progress=False)
    spawned = train_agents(jobs, workers=2, progress=False)
    for (agent, run), (other_agent, other_run) in zip(here, spawned):
        assert run.eval_returns == other_run.eval_returns and run.losses == other_run.losses
        for a, b in zip(agent.state_dict().values(), other_agent.state_dict().values()):
            assert torch.equal(a, b)  # the trained weights come back
    assert here[0][0].curl is not None and here[1][0].curl is None
    with pytest.raises(ValueError, match="non-empty sequence of AgentJob"):
        train_agents([], workers=1)
    with pytest.raises(ValueError, match="workers must be a positive int"):
        train_agents(jobs, workers=0)
