"Chapter 14: BasicBlock and ResNet against PyTorch, gradients, bad input."
import numpy as np
import pytest

import neuralbook as nb
from neuralbook.resnet import BasicBlock, ResNet


def _copy_to_torch(block, tblock):
    import torch
    with torch.no_grad():
        for name, p in block.named_parameters():
            tblock.get_parameter(name).copy_(torch.tensor(p.data))


def _torch_block(cin, cout, stride):
    import torch
    from torch import nn as tnn

    class TBlock(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False); self.bn1 = tnn.BatchNorm2d(cout)
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False); self.bn2 = tnn.BatchNorm2d(cout)
            self.downsample = (tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout))
                               if stride != 1 or cin != cout else None)

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return torch.relu(out + (x if self.downsample is None else self.downsample(x)))
    return TBlock().double()


@pytest.mark.parametrize("cin,cout,stride", [(4, 4, 1), (4, 6, 1), (3, 6, 2)])
def test_basic_block_matches_torch(cin, cout, stride):
    torch = pytest.importorskip("torch")
    nb.manual_seed(0)
    blk = BasicBlock(cin, cout, stride).double()
    tblk = _torch_block(cin, cout, stride)
    _copy_to_torch(blk, tblk)
    x = np.random.default_rng(1).standard_normal((3, cin, 7, 7))
    xs, tx = nb.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    out, tout = blk(xs), tblk(tx)
    np.testing.assert_allclose(out.data, tout.detach().numpy(), atol=1e-10)
    g = np.random.default_rng(2).standard_normal(out.shape)
    out.backward(nb.tensor(g)); tout.backward(torch.tensor(g))
    np.testing.assert_allclose(xs.grad.data, tx.grad.numpy(), atol=1e-9)
    for name, p in blk.named_parameters():
        np.testing.assert_allclose(p.grad.data, tblk.get_parameter(name).grad.numpy(), atol=1e-9, err_msg=name)


def test_shapes_and_projection():
    blk = BasicBlock(8, 16, stride=2)
    assert blk(nb.tensor(np.zeros((2, 8, 8, 8), np.float32))).shape == (2, 16, 4, 4)
    assert blk.downsample is not None and BasicBlock(8, 8).downsample is None
    net = ResNet(layers=(1, 1), widths=(4, 8), in_channels=1, num_classes=3)
    assert net(nb.tensor(np.zeros((5, 1, 8, 8), np.float32))).shape == (5, 3)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"BasicBlock: expected input \(N, 8, H, W\), got \(2, 4, 8, 8\)"):
        BasicBlock(8, 8)(nb.tensor(np.zeros((2, 4, 8, 8), np.float32)))
    with pytest.raises(ValueError, match="ResNet: layers"):
        ResNet(layers=(1, 1), widths=(4,))
