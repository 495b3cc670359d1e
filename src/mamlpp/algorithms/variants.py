"""What each named MAML variant sets: an adaptation policy and an inner rule.

`conf/algorithm/<name>.yaml` is how a run chooses one (each is registered here as a Learner
with those keys); this table is the same definition in Python (a test checks the two agree),
and `variant_learner` builds one without Hydra.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

from mamlpp.algorithms.inner_lr import (
    FixedLR,
    InnerLearningRates,
    PerElementLR,
    PerLayerPerStepLR,
)
from mamlpp.algorithms.learner import Learner
from mamlpp.config import AlgorithmConfig, FirstOrderConfig, register_algorithm
from mamlpp.nn.contract import MetaBackbone


@dataclass(frozen=True)
class Variant:
    """`adapt`: which weights the inner loop changes (algorithms.adaptation); `inner_rule`:
    how (algorithms.inner_lr)."""

    name: str
    adapt: str
    inner_rule: type[InnerLearningRates]
    reference: str


MAML = Variant("maml", "all", FixedLR, "Finn et al. 2017")
# MAML++ (Antoniou et al. 2019) also switches on MSL, DA, BNRS/BNWB and cosine annealing,
# which are the outer step's and the backbone's, not the learner's.
MAMLPP = Variant("mamlpp", "all", PerLayerPerStepLR, "Antoniou et al. 2019")
# ANIL, "Almost No Inner Loop": the body is meta-learned but fixed inside the inner loop.
ANIL = Variant("anil", "head", FixedLR, "Raghu et al. 2020")
# BOIL, "Body Only update in Inner Loop": the head is meta-learned but fixed inside it.
BOIL = Variant("boil", "body", FixedLR, "Oh et al. 2021")
# Meta-SGD: a learned step size per parameter element, shared by the inner steps.
METASGD = Variant("metasgd", "all", PerElementLR, "Li et al. 2017")

VARIANTS = {v.name: v for v in (MAML, MAMLPP, ANIL, BOIL, METASGD)}

# Each is a Learner with its YAML's keys; FOMAML is MAML with second_order=false.
for _variant in VARIANTS:
    register_algorithm(_variant, config=AlgorithmConfig)(Learner)
register_algorithm("fomaml", config=FirstOrderConfig)(Learner)


def variant_learner(
    variant: Variant, net: MetaBackbone, cfg: AlgorithmConfig | None = None, **learner_kwargs
) -> Learner:
    """A Learner of `net` with the variant's adaptation policy and inner rule; `cfg` gives the
    other inner-loop switches (inner_lr, inner_steps, ...; defaults when None)."""
    cfg = replace(cfg or AlgorithmConfig(), name=variant.name, adapt=variant.adapt)
    rule = partial(variant.inner_rule, init_lr=cfg.inner_lr)
    return Learner(cfg, net, inner_rule=rule, **learner_kwargs)
