"""GlobalBatchNorm2d conversion keeps each batch norm's state, device and dtype."""

import torch
from torch import nn

from biam.utils.dist_bn import GlobalBatchNorm2d, convert_to_global_bn


def test_conversion_keeps_state_and_float64():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).to(torch.float64)
    with torch.no_grad():
        model[1].running_mean.uniform_()
        model[1].weight.uniform_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    converted = convert_to_global_bn(model)
    assert isinstance(converted[1], GlobalBatchNorm2d)
    assert converted[1].weight.dtype == converted[1].running_mean.dtype == torch.float64
    for k, v in converted.state_dict().items():
        assert torch.equal(v, before[k]), k
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    assert converted.eval()(x).dtype == torch.float64  # eval mode: plain BatchNorm2d, no mixed dtypes
