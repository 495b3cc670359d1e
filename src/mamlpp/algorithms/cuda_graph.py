"""CUDA-graph replay of the batched meta-step's forward and backward.

A MAML++ meta-step launches thousands of small kernels (every inner step runs a forward, a
backward with create_graph, and the target forward; the meta-backward runs through all of it
twice over). On a GPU the step is launch-bound, so the whole forward + backward is captured once
and replayed. The shapes are static and the step has no host synchronisation
(`Learner.forward_backward`). The switches that change the graph (derivative order,
multi-step loss on/off) select a capture; the multi-step-loss weights and the inputs are copied
into static tensors before each replay. The running-statistics update (hundreds of tiny
kernels) is captured with them. The optimizer step and gradient clipping stay eager: a handful
of foreach kernels, so Adam needs no capturable state and checkpoints keep their format.

torch.compile cannot replace this: it does not support double backward (autograd.grad with
create_graph=True inside the compiled region), which second-order MAML needs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mamlpp.errors import ConfigError, first_line
from mamlpp.nn.layers import BatchStats, apply_batch_stats
from mamlpp.tasks import EpisodeBatch

WARMUP_STEPS = 3

# (batch, second_order, step_weights, batch-statistics sink) -> (loss sum, accuracy sum): the
# meta-step's forward and backward into .grad, without host synchronisation.
StepFunction = Callable[
    [EpisodeBatch, bool, "Tensor | None", list[BatchStats]], tuple[Tensor, Tensor]
]


class GraphedMetaStep:
    """Callable (batch, second_order, step_weights) -> (loss sum, accuracy sum, []).

    Gradients are written into the parameters' .grad tensors allocated during capture; the
    caller must not reset them between replays (OuterStep.train_step does not in graph mode).
    """

    def __init__(self, step: StepFunction, zero_grad: Callable[..., None]) -> None:
        """`step` is captured; `zero_grad(set_to_none=True)` clears gradients before capture."""
        self.step = step
        self.zero_grad = zero_grad
        self.key: tuple | None = None
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(
        self, batch: EpisodeBatch, second_order: bool, step_weights: Tensor | None
    ) -> tuple[Tensor, Tensor, list[BatchStats]]:
        """Replay for this batch; the running statistics are updated inside the graph, so the
        returned list of statistics still to apply is empty."""
        key = (
            second_order,
            step_weights is not None,
            tuple(t.shape for t in vars(batch).values()),
        )
        if key != self.key:
            self._capture(batch, second_order, step_weights)
            self.key = key
        for static, new in zip(vars(self.inputs).values(), vars(batch).values()):
            static.copy_(new)
        if step_weights is not None:
            assert self.weights is not None  # captured with step weights (they are in the key)
            self.weights.copy_(step_weights)
        assert self.graph is not None  # captured above
        self.graph.replay()
        return self.loss_sum, self.acc_sum, []

    def _capture(
        self, batch: EpisodeBatch, second_order: bool, step_weights: Tensor | None
    ) -> None:
        """Warm up on a side stream (cuDNN/cuBLAS set-up must not be captured), then capture.

        Neither warm-up nor capture changes the model: the optimizer does not step and the
        batch statistics they report are dropped.
        """
        self.graph = None  # frees the previous phase's memory pool with its tensors
        self.inputs = type(batch)(*(t.clone() for t in vars(batch).values()))
        self.weights = None if step_weights is None else step_weights.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self.zero_grad(set_to_none=True)
                self.step(self.inputs, second_order, self.weights, [])
        torch.cuda.current_stream().wait_stream(side)
        self.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        sink: list[BatchStats] = []
        try:
            with torch.cuda.graph(graph):
                self.loss_sum, self.acc_sum = self.step(
                    self.inputs, second_order, self.weights, sink
                )
                apply_batch_stats(sink)  # in place on the buffers; independent of the Adam step
        except RuntimeError as err:
            raise ConfigError(
                f"config key 'speed.cuda_graphs' = True: capturing the meta-step failed "
                f"({first_line(err)}); set speed.cuda_graphs=false"
            ) from err
        self.graph = graph
