"""The paper protocol of multi-task SAC, setting by setting, against what mtrl and the official
CAGrad code do (docs/rl.md, "Protocols")."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

import mtgrad
from mtgrad.rl import PROTOCOLS, MultiTaskSAC, preset
from mtgrad.rl.rewards import RewardNormalizer
from mtgrad.rl.sac import init_weights, sample_action
from mtgrad.rl.train import _updates_at, build_method


def test_the_paper_protocol_is_mtrls_setup_on_every_preset():
    for name in ("mt10", "mt50", "quick"):
        v3, paper = preset(name), preset(name, "paper")
        assert (paper.fixed_goals, paper.normalize_rewards, paper.reward_rate, paper.use_one_hot) == (True, True, 0.001, False)
        assert (paper.shared_alpha, paper.max_episode_steps, paper.eval_episodes, paper.update_burst) == (True, 150, 1, True)
        assert (paper.init, paper.cagrad_solver, paper.cagrad_rescale, paper.fast_rescale) == ("xavier", "mtrl", 1, 2)
        assert paper.pcgrad_reduction == "mean" and paper.protocol == "paper"
        # The preset's sizes stay; only the protocol's fields change.
        assert (paper.hidden, paper.batch_per_task, paper.total_steps) == (v3.hidden, v3.batch_per_task, v3.total_steps)
        assert (v3.fixed_goals, v3.normalize_rewards, v3.shared_alpha, v3.use_one_hot, v3.protocol) == (False, False, False, True, "v3")
    assert preset("mt10", "paper", eval_episodes=3).eval_episodes == 3  # explicit changes win
    with pytest.raises(ValueError, match="unknown protocol 'papr'; known: v3, paper"):
        preset("mt10", "papr")
    assert set(PROTOCOLS) == {"v3", "paper"}


@pytest.mark.parametrize("change, match", [
    ({"init": "he"}, "init"), ({"cagrad_solver": "sgd"}, "cagrad_solver"), ({"cagrad_rescale": 3}, "cagrad_rescale"),
    ({"reward_rate": 0.0}, "reward_rate"), ({"pcgrad_reduction": "max"}, "pcgrad_reduction"), ({"protocol": "v1"}, "protocol"),
])
def test_bad_protocol_settings_are_rejected(change, match):
    with pytest.raises(ValueError, match=match):
        preset("quick", **change)


def test_the_methods_shorthands_follow_the_protocol():
    paper, v3 = preset("mt10", "paper"), preset("mt10")
    cagrad = build_method("cagrad", paper, 10, 0)
    assert (cagrad.c, cagrad.rescale, cagrad.solver) == (0.9, 1, "mtrl")  # the official run
    fast = build_method("cagrad_fast", paper, 10, 0)
    assert (fast.c, fast.num_gradients, fast.rescale) == (0.9, 4, 2)
    assert build_method("pcgrad", paper, 10, 0).reduction == "mean"
    assert (build_method("cagrad", v3, 10, 0).rescale, build_method("pcgrad", v3, 10, 0).reduction) == (0, "sum")
    assert build_method("cagrad:rescale=0", paper, 10, 0).rescale == 0  # a spec's own value wins


def test_a_bad_spec_is_reported_as_written_with_the_defaults_named_apart():
    v3 = preset("mt10")
    with pytest.raises(ValueError, match=r"^spec 'pcgrad:foo=1' \(with the benchmark's reduction=sum\): pcgrad does not take"):
        build_method("pcgrad:foo=1", v3, 10, 0)
    with pytest.raises(ValueError, match=r"^spec 'cagrad:c=x' \(with the benchmark's solver=exact,rescale=0\): c must be"):
        build_method("cagrad:c=x", v3, 10, 0)
    with pytest.raises(ValueError, match=r"^spec '  pcgrad:foo=1' \(with the benchmark's reduction=sum\)"):
        build_method("  pcgrad:foo=1", v3, 10, 0)  # the added options, not a slice of the full spec
    with pytest.raises(ValueError, match=r"^spec 'mgda:x=1': mgda does not take"):  # nothing added
        build_method("mgda:x=1", v3, 10, 0)


def _garage_normalized_rewards(stream: np.ndarray, alpha: float) -> np.ndarray:
    # mtenv's NormalizedEnvWrapper (garage): one wrapper per environment, scalar state.
    out = np.empty_like(stream)
    for task in range(stream.shape[1]):
        mean, var = 0.0, 1.0
        for t, r in enumerate(stream[:, task]):
            mean = (1 - alpha) * mean + alpha * r
            var = (1 - alpha) * var + alpha * (r - mean) ** 2
            out[t, task] = r / (math.sqrt(var) + 1e-8)
    return out


def test_reward_normaliser_matches_mtenvs_formula_and_round_trips():
    # Two steps by hand (rate 0.5): μ = 0.5, σ² = 0.5 + 0.5·0.25 = 0.625 → 1/√0.625; then
    # μ = 1.25, σ² = 0.3125 + 0.5·0.5625 = 0.59375 → 2/√0.59375.
    by_hand = RewardNormalizer(1, 0.5)
    np.testing.assert_allclose([by_hand.normalize(np.array([1.0]))[0], by_hand.normalize(np.array([2.0]))[0]],
                               [1 / math.sqrt(0.625), 2 / math.sqrt(0.59375)], rtol=1e-7)
    rng = np.random.default_rng(0)
    # Meta-World-like: dense rewards of very different scales per task, a jump in the middle.
    stream = np.stack([rng.uniform(0, 1, 3000), 10 * rng.uniform(0, 1, 3000) + np.r_[np.zeros(1500), 5 * np.ones(1500)]], 1)
    for alpha in (0.001, 0.05):
        norm = RewardNormalizer(2, alpha)
        got = np.stack([norm.normalize(r) for r in stream])
        np.testing.assert_allclose(got, _garage_normalized_rewards(stream, alpha), rtol=1e-12)
    half = RewardNormalizer(2)
    for r in stream[:1000]:
        half.normalize(r)
    resumed = RewardNormalizer(2)
    resumed.load_state_dict(half.state_dict())
    np.testing.assert_array_equal(resumed.normalize(stream[1000]), half.normalize(stream[1000]))
    with pytest.raises(ValueError, match="one reward per task"):
        half.normalize(np.zeros(3))
    with pytest.raises(ValueError, match="3 tasks do not fit 2"):
        half.load_state_dict(RewardNormalizer(3).state_dict())


def test_the_update_burst_is_mtrls_schedule():
    cfg = preset("quick", "paper", random_steps=5, updates_per_step=2)
    assert [_updates_at(cfg, s) for s in range(1, 10)] == [0, 0, 0, 0, 0, 5, 2, 2, 2]
    assert [_updates_at(cfg.replace(update_burst=False), s) for s in range(4, 8)] == [0, 0, 2, 2]
    assert [_updates_at(cfg.replace(random_steps=0), s) for s in range(1, 3)] == [2, 2]


def test_xavier_init_is_uniform_in_the_glorot_bound_with_zero_biases():
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(400, 300), torch.nn.ReLU(), torch.nn.Linear(300, 8))
    init_weights(layer, "xavier")
    for linear in (layer[0], layer[2]):
        bound = math.sqrt(6 / (linear.in_features + linear.out_features))
        w = linear.weight
        assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
        assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
        assert abs(w.std().item() - bound / math.sqrt(3)) < 0.05 * bound  # the uniform law's std
    before = [p.clone() for p in layer.parameters()]
    init_weights(layer, "torch")
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters()))


def _shared_alpha_agent(method: mtgrad.methods.Method, T: int = 3):
    # α ≠ 1, so that mtrl's factor α in the temperature's gradient is seen.
    cfg = preset("quick", "paper", hidden=32, layers=2, init_temperature=0.3)
    torch.manual_seed(0)
    sac = MultiTaskSAC(cfg, 6, 2, T, actor_method=mtgrad.Mean(), critic_method=mtgrad.Mean(), alpha_method=method)
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(T, 16, 6, generator=g)
    batch = (obs, torch.rand(T, 16, 2, generator=g) * 2 - 1, torch.randn(T, 16, generator=g), obs.roll(1, 1), torch.zeros(T, 16))
    return sac, batch


@pytest.mark.parametrize("method", [mtgrad.PCGrad(order="fixed"), mtgrad.CAGrad(0.9, rescale=1, solver="mtrl"), mtgrad.Mean()])
def test_a_shared_temperatures_task_gradients_go_through_the_method(method):
    sac, batch = _shared_alpha_agent(method)
    assert sac.log_alpha.shape == (1,)
    seen = {}
    step = sac.alpha_opt.step
    sac.alpha_opt.step = lambda: (seen.update(grad=sac.log_alpha.grad.clone()), step())
    actor_step = sac.actor_opt.step
    sac.actor_opt.step = lambda: (actor_step(), seen.update(rng=torch.get_rng_state()))
    sac.update(batch)
    # The same fresh sample the update drew after the actor's step, from the updated actor.
    torch.set_rng_state(seen["rng"])
    with torch.no_grad():
        logp = sample_action(*sac.actor(batch[0]))[1]
    log_alpha = torch.tensor(math.log(sac.cfg.init_temperature))  # its value before the first step
    # d/d(log α) of mtrl's α·E_i[−log π − H̄] is α·E_i[−log π − H̄], one number per task.
    per_task = (log_alpha.exp() * (-logp - sac.target_entropy).mean(-1)).to(torch.float64)[:, None]
    want = mtgrad.aggregate(per_task, method).to(torch.float32)
    torch.testing.assert_close(seen["grad"], want, rtol=1e-5, atol=1e-7)


def test_a_shared_temperature_without_a_method_is_refused():
    with pytest.raises(ValueError, match="alpha_method"):
        MultiTaskSAC(preset("quick", "paper", hidden=8, layers=1), 6, 2, 3, mtgrad.Mean(), mtgrad.Mean())


metaworld = pytest.importorskip("metaworld", reason="the rl extra (metaworld) is not installed")
pytestmark = pytest.mark.usefixtures("metaworld_goals_memo")  # conftest: goal lists built once a session

from mtgrad.rl import make_envs, parse_benchmark, train  # noqa: E402


def _goals(envs) -> np.ndarray:
    return np.stack([env.unwrapped._target_pos for env in envs.envs])


def test_a_fixed_goal_stays_across_resets_and_is_the_evaluations_goal():
    tasks = parse_benchmark("custom:reach-v3,push-v3")
    fixed = make_envs(tasks, 3, 150, fixed_goals=True)
    evaluation = make_envs(tasks, 3, 150, evaluation=True, fixed_goals=True)
    evaluation.call("seed", 10_003)  # the trainer reseeds evaluation's sampling stream
    drawn = make_envs(tasks, 3, 150)
    goals, drawn_goals = [], []
    for _ in range(4):
        fixed.reset()
        drawn.reset()
        goals.append(_goals(fixed))
        drawn_goals.append(_goals(drawn))
    evaluation.reset()
    assert all(np.array_equal(g, goals[0]) for g in goals)
    np.testing.assert_array_equal(_goals(evaluation), goals[0])
    assert not all(np.array_equal(g, drawn_goals[0]) for g in drawn_goals)  # v3: a new goal per reset
    other = make_envs(tasks, 4, 150, fixed_goals=True)
    other.reset()
    assert not np.array_equal(_goals(other), goals[0])  # another seed, other goals
    for envs in (fixed, evaluation, drawn, other):
        envs.close()


TINY_PAPER = preset(
    "quick", "paper", benchmark="custom:reach-v3,push-v3", total_steps=100, random_steps=25, max_episode_steps=25,
    hidden=16, layers=1, batch_per_task=8, buffer_per_task=500, eval_every=50, checkpoint_every=1,
)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # ~30 s of Meta-World stepping; tests/test_rl.py resumes a plain run in the default suite
def test_a_paper_protocol_run_extended_and_killed_resumes_identically_with_its_reward_statistics(tmp_path):
    cfg = TINY_PAPER.replace(eval_every=30)  # 50 steps end off the schedule: a final evaluation at 50
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(cfg, "rlw", str(straight), progress=False, tensorboard=False)
    train(cfg.replace(total_steps=50), "rlw", str(split), progress=False, tensorboard=False)
    assert [int(r["step"]) for r in _rows(split / "eval.csv")] == [30, 50]
    # Extended to 100 steps, "killed" mid-episode after the next checkpoint, resumed.
    train(cfg, "rlw", str(split), progress=False, tensorboard=False, stop_after=85)
    train(cfg, "rlw", str(split), progress=False, tensorboard=False)
    for name in ("train.csv", "eval.csv"):
        assert _rows(straight / name) == _rows(split / name)
    assert [int(r["step"]) for r in _rows(straight / "eval.csv")] == [30, 60, 90, 100]
    # Rerunning a finished command returns its summary without training again.
    before = (straight / "train.csv").read_text()
    again = train(cfg, "rlw", str(straight), progress=False, tensorboard=False)
    assert again["steps"] == 100 and (straight / "train.csv").read_text() == before
    rows = _rows(straight / "train.csv")
    # One shared temperature: every task logs the same α.
    assert all(r["alpha/reach-v3"] == r["alpha/push-v3"] for r in rows[1:])
    # The logs keep raw returns, not the normalised rewards the agent learns from: the first
    # episode (random actions only) logs the same returns with and without normalisation.
    raw = tmp_path / "raw"
    train(cfg.replace(normalize_rewards=False, total_steps=25), "rlw", str(raw), progress=False, tensorboard=False)
    assert _rows(raw / "train.csv")[0]["mean_return"] == rows[0]["mean_return"]
    with pytest.raises(ValueError, match="past --steps .* or use --fresh"):
        train(cfg.replace(total_steps=50), "rlw", str(straight), progress=False, tensorboard=False)


def test_the_cli_chooses_the_protocol_by_name_and_says_which_preset_a_custom_set_takes(monkeypatch, capsys):
    from mtgrad.cli import main
    from mtgrad.rl import report

    seen = []
    monkeypatch.setattr(report, "run_methods", lambda cfg, methods, seeds, out, **kw: seen.append(cfg) or [])
    monkeypatch.setattr(report, "summary_table", lambda summaries: "")
    assert main(["rl", "--protocol", "paper", "--benchmark", "mt10", "--eval-episodes", "2"]) == 0
    assert seen[-1] == preset("mt10", "paper", eval_episodes=2)
    assert main(["rl", "--benchmark", "custom:reach-v3"]) == 0
    assert seen[-1].protocol == "v3" and seen[-1].hidden == preset("quick").hidden
    assert "custom:reach-v3 has no preset of its own; using the quick preset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["rl", "--set", "protocol=paper"])
    assert "use --protocol" in capsys.readouterr().err


def test_the_sessions_goal_memo_returns_what_a_new_draw_returns(metaworld_goals_memo):
    # The memo (conftest) stands in for Meta-World's goal draw in every RL test: it must be exact.
    import numpy as np

    benchmark = metaworld.MT1("reach-v3", seed=3)  # through the memo
    args = (benchmark._train_classes, {"reach-v3": metaworld._env_dict.ML1_ARGS_KWARGS["reach-v3"]}, metaworld._MT_OVERRIDE)
    before = np.random.get_state()
    fresh = metaworld_goals_memo.unmemoised(*args, seed=3)
    after = np.random.get_state()  # a seeded draw leaves NumPy's global state alone
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and before[2:] == after[2:]
    assert [t.data for t in benchmark.train_tasks] == [t.data for t in fresh]
    assert [t.data for t in metaworld.MT1("reach-v3", seed=3).train_tasks] == [t.data for t in fresh]
    assert [t.data for t in metaworld.MT1("reach-v3", seed=4).train_tasks] != [t.data for t in fresh]
