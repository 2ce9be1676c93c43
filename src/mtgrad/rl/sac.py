"""Multi-task soft actor-critic with gradient surgery on the actor and the critic.

Soft actor-critic (Haarnoja et al. 2018) over T tasks that share one actor and one pair of critics;
the task is a one-hot id in the observation (multi-task SAC as in PCGrad's and CAGrad's Meta-World
experiments). Every task owns its rows of the batch, so task i's losses

    critic:  L_i^Q(φ) = E_{(s,a,r,s')∈D_i} Σ_{k=1,2} (Q_φk(s,a) − y)²,
             y = r + γ (1 − term) (min_k Q_φ̄k(s', a') − α_i log π(a'|s')),  a' ~ π(·|s')
    actor:   L_i^π(θ) = E_{s∈D_i, a~π_θ(·|s)} [α_i log π_θ(a|s) − min_k Q_φk(s, a)]
    α_i:     L_i^α = −log α_i · E_{s∈D_i} [log π(a|s) + H̄],  H̄ = −|A|

depend only on its own rows, and their per-task gradients come from one vmapped backward
(:func:`mtgrad.grouped_backward`). The gradient method (PCGrad, CAGrad, CAGrad-Fast, …) combines
the T gradients of the critic loss and, separately, of the actor loss (PCGrad App. C, CAGrad
App. B.3: surgery on both); each task's temperature α_i has its own loss and needs none.

With ``shared_alpha`` (mtrl, the papers' protocol) one temperature α serves every task and task
i's temperature loss is mtrl's ``L_i^α = α · E_{s∈D_i}[−log π(a|s) − H̄]``; its T gradients with
respect to log α (one number each) go through the same method as the actor's, as mtrl's
``_compute_gradient`` does for every component.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

import mtgrad
from mtgrad.diagnostics import conflict_rate

from .buffer import Batch
from .config import SACConfig

__all__ = ["Actor", "TwinCritic", "MultiTaskSAC"]


def mlp(inputs: int, hidden: int, layers: int, outputs: int) -> nn.Sequential:
    dims = [inputs] + [hidden] * layers
    body: list[nn.Module] = []
    for a, b in zip(dims, dims[1:]):
        body += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*body, nn.Linear(dims[-1], outputs))


def init_weights(module: nn.Module, scheme: str) -> None:
    """``"xavier"``: xavier-uniform weights and zero biases in every linear layer (mtrl's
    ``weight_init``); ``"torch"``: leave PyTorch's default initialisation."""
    if scheme == "torch":
        return
    if scheme != "xavier":
        raise ValueError(f"unknown init scheme {scheme!r}; known: torch, xavier")
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy: ``a = tanh(μ(s) + σ(s) ε)``, ε ~ N(0, I)."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: int, layers: int, log_std_min: float, log_std_max: float) -> None:
        super().__init__()
        self.net = mlp(obs_dim, hidden, layers, 2 * action_dim)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        mean, raw = self.net(obs).chunk(2, dim=-1)
        # Squashing log σ smoothly into [min, max] (mtrl: [−20, 2]; CleanRL: [−5, 2]) keeps early
        # updates from exploding σ, where clamping would zero its gradient at the bounds.
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(raw) + 1)
        return mean, log_std


def sample_action(mean: Tensor, log_std: Tensor) -> tuple[Tensor, Tensor]:
    """A reparameterised action and its log-density under the squashed Gaussian.

    ``log π(a|s) = log N(u; μ, σ) − Σ_j log(1 − tanh(u_j)²)`` with the stable identity
    ``log(1 − tanh(u)²) = 2 (log 2 − u − softplus(−2u))``.
    """
    eps = torch.randn_like(mean)
    u = mean + log_std.exp() * eps
    # From ε itself rather than (u − μ)/σ, which cancels catastrophically in float32 for tiny σ.
    gauss = -0.5 * eps**2 - log_std - 0.5 * math.log(2 * math.pi)
    squash = 2 * (math.log(2) - u - nn.functional.softplus(-2 * u))
    return torch.tanh(u), (gauss - squash).sum(-1)


class TwinCritic(nn.Module):
    """Two independent Q networks; ``forward`` returns both, stacked: ``(2, *batch)``."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.q1 = mlp(obs_dim + action_dim, hidden, layers, 1)
        self.q2 = mlp(obs_dim + action_dim, hidden, layers, 1)

    def forward(self, obs: Tensor, action: Tensor) -> Tensor:
        x = torch.cat([obs, action], dim=-1)
        return torch.stack([self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)])


def refuse_loss_weighting(kind: type, which: str) -> None:
    """A ``ValueError`` for a loss weighting: SAC's surgery combines per-task gradients."""
    if issubclass(kind, mtgrad.methods.LossWeighting):
        raise ValueError(
            f"{kind.__name__} is a loss weighting; multi-task SAC takes gradient methods "
            f"(mean, pcgrad, cagrad, cagrad_fast, mgda, …) for its {which}"
        )


class MultiTaskSAC:
    """The agent: networks, per-task temperatures, optimizers and one update step.

    Args:
        cfg: hyperparameters.
        obs_dim, action_dim, num_tasks: the environment's sizes.
        actor_method, critic_method: any mtgrad method; :class:`mtgrad.Mean` (equal weights) takes
            the plain path of one backward of the mean loss, which is what "multi-task SAC" is.
        device: where the networks live.
        alpha_method: the method for the shared temperature's task gradients
            (``cfg.shared_alpha``); a separate instance of the actor's method, so that its state
            (e.g. PCGrad's generator) is its own. Required with ``shared_alpha``.

    Loss weightings (UW, DWA, FAMO, …) are refused: their own parameters and hooks need a
    training loop that SAC's three optimizers do not provide, and they would silently not learn.
    """

    def __init__(
        self,
        cfg: SACConfig,
        obs_dim: int,
        action_dim: int,
        num_tasks: int,
        actor_method: mtgrad.methods.Method,
        critic_method: mtgrad.methods.Method,
        device: torch.device | str = "cpu",
        alpha_method: mtgrad.methods.Method | None = None,
    ) -> None:
        if cfg.shared_alpha and alpha_method is None:
            raise ValueError("a shared temperature (cfg.shared_alpha) needs an alpha_method for its task gradients")
        for which, method in (("actor", actor_method), ("critic", critic_method), ("temperature", alpha_method)):
            if method is not None:
                refuse_loss_weighting(type(method), which)
        self.cfg, self.num_tasks, self.device = cfg, num_tasks, torch.device(device)
        self.actor = Actor(obs_dim, action_dim, cfg.hidden, cfg.layers, cfg.log_std_min, cfg.log_std_max).to(device)
        self.critic = TwinCritic(obs_dim, action_dim, cfg.hidden, cfg.layers).to(device)
        self.critic_target = TwinCritic(obs_dim, action_dim, cfg.hidden, cfg.layers).to(device)
        init_weights(self.actor, cfg.init)
        init_weights(self.critic, cfg.init)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        temperatures = 1 if cfg.shared_alpha else num_tasks
        self.log_alpha = torch.full((temperatures,), math.log(cfg.init_temperature), device=device, requires_grad=True)
        self.target_entropy = -float(action_dim) if cfg.target_entropy is None else cfg.target_entropy
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr)
        self.actor_method, self.critic_method = actor_method, critic_method
        self.alpha_method = alpha_method if cfg.shared_alpha else None

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        mean, log_std = self.actor(obs)
        return torch.tanh(mean) if deterministic else sample_action(mean, log_std)[0]

    def update(self, batch: Batch) -> dict[str, Tensor]:
        """One gradient step of critic, actor and temperatures; returns detached statistics."""
        obs, action, reward, next_obs, terminated = batch
        alpha = self.log_alpha.detach().exp().expand(self.num_tasks)
        with torch.no_grad():
            next_action, next_logp = sample_action(*self.actor(next_obs))
            next_q = self.critic_target(next_obs, next_action).min(0).values - alpha[:, None] * next_logp
            target = reward + self.cfg.discount * (1 - terminated) * next_q

        critic = self.critic

        def critic_loss(params: dict[str, Tensor], rows: tuple[Tensor, ...]) -> Tensor:
            o, a, y = rows
            return ((functional_call(critic, params, (o, a)) - y) ** 2).mean(-1).sum(0)

        self.critic_opt.zero_grad(set_to_none=True)
        critic_record = self._surgery(critic, critic_loss, (obs, action, target), self.critic_method, "error")
        self.critic_opt.step()

        actor = self.actor
        frozen = {name: p.detach() for name, p in critic.named_parameters()}

        def actor_loss(params: dict[str, Tensor], rows: tuple[Tensor, ...]) -> Tensor:
            o, temperature = rows
            a, logp = sample_action(*functional_call(actor, params, (o,)))
            q = functional_call(critic, frozen, (o, a)).min(0).values
            return (temperature[..., None] * logp - q).mean(-1)

        self.actor_opt.zero_grad(set_to_none=True)
        actor_record = self._surgery(actor, actor_loss, (obs, alpha), self.actor_method, "different")
        self.actor_opt.step()

        # A fresh sample from the updated actor (as CleanRL does): the surgery returns only the
        # per-task losses, not the log-densities inside them.
        with torch.no_grad():
            logp = sample_action(*self.actor(obs))[1]
        self.alpha_opt.zero_grad(set_to_none=True)
        if self.alpha_method is None:
            alpha_loss = -(self.log_alpha * (logp + self.target_entropy).mean(-1)).sum()
            alpha_loss.backward()
        else:
            losses = self.log_alpha.exp() * (-logp - self.target_entropy).mean(-1)  # (T,): mtrl's form
            if isinstance(self.alpha_method, mtgrad.Mean):
                losses.mean().backward()
            else:
                mtgrad.backward(losses, [self.log_alpha], self.alpha_method)
        self.alpha_opt.step()

        with torch.no_grad():
            target_params = list(self.critic_target.parameters())
            torch._foreach_lerp_(target_params, list(critic.parameters()), self.cfg.tau)
        return {
            "critic_loss": critic_record[0], "actor_loss": actor_record[0], "alpha": alpha,
            "critic_weights": critic_record[1], "actor_weights": actor_record[1],
            "critic_conflict": critic_record[2], "actor_conflict": actor_record[2],
        }

    def _surgery(self, model: nn.Module, task_loss: Any, rows: Any, method: Any, randomness: str) -> tuple[Tensor, Tensor, Tensor]:
        """Per-task losses, the task weights used, and the fraction of task pairs whose gradients
        conflict (negative cosine; NaN when no per-task gradients were computed)."""
        T = self.num_tasks
        if isinstance(method, mtgrad.Mean):
            # The losses are written so that, called on all rows (T, B, ...) at once, they return
            # the T per-task losses: the equal-weights update is then one plain backward.
            losses = task_loss(dict(model.named_parameters()), rows)
            losses.mean().backward()
            weights = losses.new_full((T,), 1.0 / T, dtype=torch.float64)
            return losses.detach(), weights, losses.new_full((), float("nan"), dtype=torch.float64)
        record = mtgrad.grouped_backward(model, task_loss, rows, method, randomness=randomness)
        weights = record.weights if record.weights is not None else torch.full((T,), float("nan"), dtype=torch.float64)
        if record.gramian is None:
            return record.losses, weights, torch.tensor(float("nan"), dtype=torch.float64)
        return record.losses, weights, conflict_rate(record.gramian)

    def state_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(), "log_alpha": self.log_alpha.detach().clone(),
            "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
            "alpha_opt": self.alpha_opt.state_dict(),
            "actor_method": self.actor_method.state_dict(), "critic_method": self.critic_method.state_dict(),
            "alpha_method": None if self.alpha_method is None else self.alpha_method.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.alpha_opt.load_state_dict(state["alpha_opt"])
        self.actor_method.load_state_dict(state["actor_method"])
        self.critic_method.load_state_dict(state["critic_method"])
        if self.alpha_method is not None:
            self.alpha_method.load_state_dict(state["alpha_method"])
