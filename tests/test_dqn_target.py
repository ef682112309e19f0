"""The DQN target network (the worker's and the device arrangement's) is a frozen copy between refreshes.

`nets.set_flat` makes a module's parameters views of the vector it is given, and `QLearner.learn`
pulls into its `flat` in place: a target loaded from `flat` itself followed the online network
update for update, so DQN had no target network (Acrobot-v1's Q-values collapsed to -1/(1-gamma)
everywhere and the greedy policy never reached the goal).
"""

import torch

from esrl import envs
from esrl.config import DQNConfig
from esrl.rl import nets
from esrl.rl.common import Report
from esrl.rl.dqn import DQNSetup, QLearner


class MovingStore:
    """A store whose parameters move by +1 on every push, its version counting pushes."""

    def __init__(self, params: torch.Tensor) -> None:
        self.params, self.version = params.clone(), 0

    def pull(self, out: torch.Tensor) -> int:
        out.copy_(self.params)
        return self.version

    def push(self, grad: torch.Tensor, version: int) -> None:
        self.params.add_(1.0)
        self.version += 1


def test_target_network_holds_still_between_refreshes():
    spec = envs.spec_of("CartPole-v1")
    setup = DQNSetup(DQNConfig(hidden=(8,), target_update=3), spec, seed=0)
    store = MovingStore(nets.get_flat(setup.build_model()))
    learner = QLearner(setup, 0, store)
    batch = (torch.zeros(4, spec.obs_dim), torch.zeros(4, dtype=torch.long), torch.zeros(4),
             torch.zeros(4, spec.obs_dim), torch.zeros(4))
    start = store.params.clone()
    for update in range(7):
        learner.learn(batch, Report())
        refreshed_at = (update // 3) * 3  # versions 0, 3, 6 refresh the target
        expected = start + refreshed_at
        assert torch.allclose(nets.get_flat(learner.target), expected), f"update {update}"
        assert torch.allclose(nets.get_flat(learner.q), start + update)


def test_device_dqn_target_is_a_copy_too():
    """The device arrangement's target, at start and after a load, does not follow its learner's vector."""
    import multiprocessing as mp

    from esrl.rl.common import optim_spec
    from esrl.rl.device_pool import make_arrangement

    setup = DQNSetup(DQNConfig(hidden=(8,)), envs.spec_of("CartPole-v1"), seed=0)
    params = nets.get_flat(setup.build_model())
    arr = make_arrangement("device", setup, params, optim_spec(setup.cfg), 1, mp.get_context("fork"), "cpu")
    before = nets.get_flat(arr.target).clone()
    arr.flat.add_(1.0)  # what an optimizer step does to the learner's vector, in place
    assert torch.equal(nets.get_flat(arr.target), before)
    state = {k: v.clone() for k, v in arr.snapshot()[1].items()}
    arr.load(params + 2.0, state, 5)
    loaded = nets.get_flat(arr.target).clone()
    arr.flat.add_(1.0)
    assert torch.equal(nets.get_flat(arr.target), loaded) and torch.allclose(loaded, params + 2.0)
