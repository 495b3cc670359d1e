"""ProtoMAML (Triantafillou et al. 2020, "Meta-Dataset"): MAML whose linear head starts each
task from the task's support prototypes instead of a meta-learned initialisation.

With c_n the mean embedding of class n's support images, the head starts at W_n = 2 c_n,
b_n = -|c_n|^2, so its logits equal a prototypical network's (negative squared Euclidean
distance, up to a per-query constant). The inner loop then adapts as MAML does; in training the
initialisation stays in the graph, so the meta-gradient flows through the prototypes into the
body (second order).

The embedding is what the backbone's linear head receives. It is read without a features()
path: a linear head's logits are f W^T + b, so the gradient of sum(A * logits) with respect to
W is A^T f; with A the support one-hot labels divided by the class counts, that gradient is
the class means of f. Any backbone whose head (`head_names`) is one weight [N, F] and one bias
[N] works: Conv4, ResNet-12 and model=module with an nn.Linear head.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mamlpp.algorithms.learner import Learner, _widen
from mamlpp.config import AlgorithmConfig, register_algorithm
from mamlpp.errors import ConfigError
from mamlpp.nn.contract import MetaBackbone
from mamlpp.tasks import EpisodeBatch


def linear_head(net: MetaBackbone) -> tuple[str, str]:
    """(weight name, bias name) of the backbone's linear head; one line when it has none."""
    named = cast(nn.Module, net).named_parameters()  # a meta-backbone is a module
    shapes = {n: p.shape for n, p in named if n in net.head_names}
    weights = [n for n, s in shapes.items() if len(s) == 2]
    biases = [n for n, s in shapes.items() if len(s) == 1]
    if len(shapes) != 2 or len(weights) != 1 or len(biases) != 1:
        raise ConfigError(
            f"config key 'algorithm.name' = 'protomaml' needs a linear head with a weight "
            f"[N, F] and a bias [N]; the head of {type(net).__name__} is "
            f"{ {n: tuple(s) for n, s in shapes.items()} or 'empty' }"
        )
    return weights[0], biases[0]


@register_algorithm("protomaml", config=AlgorithmConfig)
class ProtoMAML(Learner):
    """A Learner whose head starts every task at the support prototypes (see the module)."""

    initial_weights_have_graph = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.head_weight, self.head_bias = linear_head(self.net)

    def initial_fast_weights(self, batch: EpisodeBatch, track_graph: bool) -> dict[str, Tensor]:
        fast = self._initial_fast_weights(len(batch), track_graph)
        c = self.prototypes(batch, fast, track_graph)
        weight, bias = 2 * c, -(c * c).sum(-1)
        if not track_graph:
            weight, bias = weight.detach(), bias.detach()
            adapted = set(self.adapted_names)
            weight.requires_grad_(self.head_weight in adapted)
            bias.requires_grad_(self.head_bias in adapted)
        return {**fast, self.head_weight: weight, self.head_bias: bias}

    def prototypes(
        self, batch: EpisodeBatch, fast: dict[str, Tensor], create_graph: bool
    ) -> Tensor:
        """Class-mean embeddings [B, N, F] of each task's support images under `fast`."""
        probe_w = torch.zeros_like(fast[self.head_weight]).requires_grad_()
        probe_b = torch.zeros_like(fast[self.head_bias])
        weights = {**fast, self.head_weight: probe_w, self.head_bias: probe_b}
        use_running = not create_graph and self.cfg.use_running_stats_eval
        with torch.enable_grad():
            with self._autocast(batch.xs.device):
                logits = _widen(self.net(batch.xs, weights, 0, use_running, None))
            onehot = F.one_hot(batch.ys, logits.shape[-1]).to(logits.dtype)
            share = onehot / onehot.sum(1, keepdim=True).clamp_min(1)
            (c,) = torch.autograd.grad((logits * share).sum(), probe_w, create_graph=create_graph)
        return c
