"""Trainable CNN backbones that expose their stages, for fusion blocks to plug into.

Every backbone is a :class:`StagedBackbone`: a stem followed by a list of stages, with
``feature_info`` giving each stage's output channels and stride (as timm does). The
classifier runs the stages one by one so a fusion block can modify the output of any
stage (``F_fused = F_conv * F_res + F_res`` in the SAM-features paper).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lvmlt.registry import Registry

BACKBONES: Registry = Registry("backbone")


@dataclass(frozen=True)
class StageInfo:
    channels: int
    stride: int  # total stride relative to the input image


class StagedBackbone(nn.Module):
    """A stem plus stages; ``forward`` returns the pooled embedding (B x out_dim).

    Attributes:
        stem: module mapping B x 3 x H x W to the first stage's input.
        stages: ``nn.ModuleList``; stage i maps to B x feature_info[i].channels x H/s x W/s.
        feature_info: one :class:`StageInfo` per stage.
        out_dim: channels of the last stage (the pooled embedding size).
    """

    def __init__(self, stem: nn.Module, stages: list[nn.Module], feature_info: list[StageInfo]):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.feature_info = feature_info
        self.out_dim = feature_info[-1].channels

    def forward_maps(self, x: torch.Tensor, after_stage=None) -> torch.Tensor:
        """Run all stages; ``after_stage(i, fmap) -> fmap`` may rewrite stage i's output."""
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if after_stage is not None:
                x = after_stage(i, x)
        return x

    def forward(self, x: torch.Tensor, after_stage=None) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.forward_maps(x, after_stage), 1), 1)


# --- CIFAR-style ResNet-32 (He et al. 2016, section 4.2): 3 stages of 5 basic blocks ---


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            # Projection shortcut (option B): simple, and equal in accuracy at this depth.
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _cifar_resnet(depth: int, widths=(16, 32, 64)) -> StagedBackbone:
    assert (depth - 2) % 6 == 0, "CIFAR ResNet depth must be 6n+2"
    n = (depth - 2) // 6
    stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
    stages, info, cin, stride = [], [], widths[0], 1
    for i, w in enumerate(widths):
        s = 1 if i == 0 else 2
        stride *= s
        blocks = [_BasicBlock(cin, w, s)] + [_BasicBlock(w, w, 1) for _ in range(n - 1)]
        stages.append(nn.Sequential(*blocks))
        info.append(StageInfo(w, stride))
        cin = w
    model = StagedBackbone(stem, stages, info)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


@BACKBONES.register("resnet32")
def resnet32(pretrained: bool = False) -> StagedBackbone:
    """CIFAR-style ResNet-32 for small images (28-64 px); 0.46 M parameters, 64-d embedding."""
    return _cifar_resnet(32)


@BACKBONES.register("resnet8")
def resnet8(pretrained: bool = False) -> StagedBackbone:
    """A tiny CIFAR-style ResNet for smoke tests."""
    return _cifar_resnet(8)


def _timm_resnet(name: str, pretrained: bool) -> StagedBackbone:
    import timm

    net = timm.create_model(name, pretrained=pretrained, num_classes=0)
    stem = nn.Sequential(net.conv1, net.bn1, net.act1, net.maxpool)
    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    info = [StageInfo(f["num_chs"], f["reduction"]) for f in net.feature_info[1:]]
    return StagedBackbone(stem, stages, info)


for _name in ("resnet18", "resnet34", "resnet50"):
    BACKBONES.register(_name)(lambda pretrained=False, _n=_name: _timm_resnet(_n, pretrained))


def build_backbone(name: str, pretrained: bool = False) -> StagedBackbone:
    return BACKBONES.get(name)(pretrained=pretrained)
