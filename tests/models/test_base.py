"""Shared model machinery: building a model draws its weights from its own seeded RNG."""

import pytest
import torch

from models.factory import create_model
from tests.models.conftest import tiny_vgsg
from tests.models.test_ssan import tiny_ssan
from tests.models.test_vfe_tps import tiny_vfe_tps

CONFIGS = {"clip": lambda: "tiny-clip", "vgsg": tiny_vgsg, "vfe-tps": tiny_vfe_tps,
           "ssan": tiny_ssan}


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_building_a_model_leaves_the_callers_rng_untouched(family):
    torch.manual_seed(123)
    expected = torch.rand(3)  # what the caller's next draw is without a model build
    torch.manual_seed(123)
    first = create_model(CONFIGS[family]())
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(7)  # another caller state: the weights depend on config.seed only
    second = create_model(CONFIGS[family]())
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(),
                                    strict=True):
        assert torch.equal(a, b), name
