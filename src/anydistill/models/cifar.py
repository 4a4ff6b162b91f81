"""The CIFAR networks of the distillation literature's CIFAR-100 benchmark (RepDistiller, Tian et
al. 2020; mdistiller and ReviewKD use the same): ResNets with basic blocks, wide ResNets and VGG
with batch normalisation, in plain torch.

Every model is ``stem`` (absent in VGG), ``stages`` (``stages.0``, ``stages.1``...: the feature maps
``[B, C, H, W]`` RepDistiller's ``is_feat`` returns), ``penultimate`` (the pooled feature
``[B, D]``) and ``head`` (the linear classifier), so a recipe taps the same paths on any of them.
Initialisations follow RepDistiller's (they change what a 240-epoch run reaches).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from anydistill.core.recipe import PositiveInt


def _pooled() -> OrderedDict[str, nn.Module]:
    """Global average pooling to ``[B, C]``: RepDistiller's ``AvgPool2d(8)`` on 32x32 inputs, but
    adaptive, so other input sizes work."""
    return OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten())


def _check_input(name: str, input_shape: tuple[int, ...]) -> None:
    if len(input_shape) != 3:
        raise ValueError(f"{name} takes images (C, H, W); the data gives {tuple(input_shape)}. Use mlp or cnn1d for other inputs.")


class BasicBlock(nn.Module):
    """ResNet's post-activation basic block: two 3x3 conv-BN, plus the shortcut (a strided 1x1
    conv-BN when the shape changes), then ReLU.

    ``preact`` is a no-op module on the residual sum before the last ReLU, there to be tapped:
    OFD distils these pre-ReLU features (RepDistiller's ``preact=True``).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        reshape = stride != 1 or in_channels != out_channels
        self.shortcut = (nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))
                         if reshape else nn.Identity())
        self.preact = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(self.preact(branch + self.shortcut(x)))


class CifarResNet(nn.Module):
    """conv3x3-BN-ReLU, three stages of basic blocks (strides 1, 2, 2), global average pooling and
    a linear head: RepDistiller's ``ResNet`` with ``block_name='basicblock'``."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, depth: int, widths: list[int]):
        super().__init__()
        _check_input("cifar-resnet", input_shape)
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"cifar-resnet's depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110); got {depth}.")
        if len(widths) != 4:
            raise ValueError(f"cifar-resnet takes 4 widths (the stem's, then each stage's), e.g. [32, 64, 128, 256]; got {widths}.")
        blocks = (depth - 2) // 6
        self.stem = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(input_shape[0], widths[0], 3, padding=1, bias=False), bn=nn.BatchNorm2d(widths[0]), relu=nn.ReLU()))
        stages, in_channels = [], widths[0]
        for out_channels, stride in zip(widths[1:], (1, 2, 2)):
            stages.append(nn.Sequential(*[BasicBlock(in_channels if i == 0 else out_channels, out_channels, stride if i == 0 else 1)
                                          for i in range(blocks)]))
            in_channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.penultimate = nn.Sequential(_pooled())
        self.head = nn.Linear(in_channels, num_classes)
        for module in self.modules():  # RepDistiller's: He-normal convs (fan out); BatchNorm and Linear keep torch's defaults
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.penultimate(self.stages(self.stem(x))))


def cifar_resnet(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    depth: PositiveInt = 32,
    widths: list[int] = [32, 64, 128, 256],  # noqa: B006
) -> CifarResNet:
    """RepDistiller's CIFAR ResNet: ``[B, 3, 32, 32] -> [B, num_classes]``.

    ``depth`` = 6n + 2 (n basic blocks per stage); ``widths`` = [stem, stage 0, stage 1, stage 2].
    RepDistiller's resnet8x4 is depth 8 with widths [32, 64, 128, 256], resnet32x4 depth 32 with
    the same widths; resnet56 / resnet20 are widths [16, 16, 32, 64].

    Module paths: ``stem`` (conv-BN-ReLU, ``[B, widths[0], 32, 32]``), ``stages.0`` .. ``stages.2``
    (``[B, widths[i+1], 32 / 16 / 8, ...]``, after the last block's ReLU; block j of stage i is
    ``stages.i.j``, its pre-ReLU sum ``stages.i.j.preact``), ``penultimate`` (the pooled
    ``[B, widths[3]]``) and ``head`` (the logits).

    Parameters with 100 classes: resnet8x4 1,233,540 and resnet32x4 7,433,860, RepDistiller's
    1.23M and 7.43M.
    """
    return CifarResNet(input_shape, num_classes, depth, list(widths))


class PreActBlock(nn.Module):
    """The wide ResNet's pre-activation basic block: BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus the
    shortcut (a strided 1x1 conv of the activated input when the shape changes, as Zagoruyko &
    Komodakis' code and RepDistiller do; the input itself otherwise)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        reshape = stride != 1 or in_channels != out_channels
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False) if reshape else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        branch = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        return branch + (self.shortcut(activated) if self.shortcut is not None else x)


class WideResNet(nn.Module):
    """conv3x3, three groups of pre-activation blocks (strides 1, 2, 2), BN-ReLU, global average
    pooling and a linear head (Zagoruyko & Komodakis 2016, without dropout, as RepDistiller)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, depth: int, widen: int):
        super().__init__()
        _check_input("wide-resnet", input_shape)
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"wide-resnet's depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40); got {depth}.")
        blocks = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(input_shape[0], widths[0], 3, padding=1, bias=False)
        stages, in_channels = [], widths[0]
        for out_channels, stride in zip(widths[1:], (1, 2, 2)):
            stages.append(nn.Sequential(*[PreActBlock(in_channels if i == 0 else out_channels, out_channels, stride if i == 0 else 1)
                                          for i in range(blocks)]))
            in_channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.penultimate = nn.Sequential(OrderedDict(bn=nn.BatchNorm2d(in_channels), relu=nn.ReLU(), **_pooled()))
        self.head = nn.Linear(in_channels, num_classes)
        for module in self.modules():  # RepDistiller's: He-normal convs (fan out), zero Linear bias
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.penultimate(self.stages(self.stem(x))))


def wide_resnet(input_shape: tuple[int, ...], num_classes: int, *, depth: PositiveInt = 40, widen: PositiveInt = 2) -> WideResNet:
    """A wide ResNet WRN-depth-widen: ``[B, 3, 32, 32] -> [B, num_classes]``.

    ``depth`` = 6n + 4 (n blocks per group), group widths 16 * widen, 32 * widen, 64 * widen after
    a 16-channel stem. RepDistiller's wrn_40_2 is depth 40, widen 2; wrn_16_2 depth 16, widen 2.

    Module paths: ``stem`` (the first conv, ``[B, 16, 32, 32]``), ``stages.0`` .. ``stages.2``
    (each group's output, ``[B, 16 / 32 / 64 * widen, 32 / 16 / 8, ...]``, before any BN: the blocks
    are pre-activation), ``penultimate`` (BN, ReLU, pooling: ``[B, 64 * widen]``) and ``head``.
    The pre-ReLU features RepDistiller's ``preact=True`` gives are the BN outputs that follow each
    group: ``stages.1.0.bn1``, ``stages.2.0.bn1`` and ``penultimate.bn``.

    Parameters with 100 classes: WRN-40-2 2,255,156 and WRN-16-2 703,284, RepDistiller's 2.25M and
    0.70M.
    """
    return WideResNet(input_shape, num_classes, depth, widen)


VGG_STAGES = {  # RepDistiller's cfgs: conv widths per stage ("S", "A", "B", "D", "E")
    8: [[64], [128], [256], [512], [512]],
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    16: [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    19: [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


class VGG(nn.Module):
    """Five stages of conv3x3-BN-ReLU layers with 2x2 max-pooling between them, global average
    pooling and a linear head: RepDistiller's VGG with ``batch_norm=True``."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, depth: int):
        super().__init__()
        _check_input("vgg", input_shape)
        if depth not in VGG_STAGES:
            raise ValueError(f"vgg's depth must be one of {sorted(VGG_STAGES)} (RepDistiller's configurations); got {depth}.")
        # RepDistiller pools before the last stage only for 64x64 inputs (Tiny-ImageNet): 32x32
        # CIFAR images reach the last two stages at 4x4.
        pooled_before = {1, 2, 3} | ({4} if input_shape[1] >= 64 else set())
        stages, in_channels = [], input_shape[0]
        for i, widths in enumerate(VGG_STAGES[depth]):
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            if i in pooled_before:
                layers["pool"] = nn.MaxPool2d(2)
            for j, out_channels in enumerate(widths):
                layers[f"conv{j}"] = nn.Conv2d(in_channels, out_channels, 3, padding=1)
                layers[f"bn{j}"] = nn.BatchNorm2d(out_channels)
                layers[f"relu{j}"] = nn.ReLU()
                in_channels = out_channels
            stages.append(nn.Sequential(layers))
        self.stages = nn.Sequential(*stages)
        self.penultimate = nn.Sequential(_pooled())
        self.head = nn.Linear(in_channels, num_classes)
        for module in self.modules():  # RepDistiller's: He-normal convs (fan out), zero biases, N(0, 0.01) head
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.penultimate(self.stages(x)))


def vgg(input_shape: tuple[int, ...], num_classes: int, *, depth: PositiveInt = 13) -> VGG:
    """RepDistiller's CIFAR VGG with batch normalisation: ``[B, 3, 32, 32] -> [B, num_classes]``.

    ``depth`` picks the configuration: 8 (one conv per stage: 64, 128, 256, 512, 512), 11, 13 (two
    per stage), 16 or 19. Stage i > 0 starts with a 2x2 max-pool, except the last on inputs under
    64 pixels (as RepDistiller), so on 32x32 the stages are 32, 16, 8, 4 and 4 pixels wide.

    Module paths: ``stages.0`` .. ``stages.4`` (``[B, 64 / 128 / 256 / 512 / 512, H_i, W_i]``, after
    the stage's last ReLU, before the next pool), inside a stage ``pool``, ``conv{j}``, ``bn{j}``
    and ``relu{j}`` (the pre-ReLU feature of a stage is its last ``bn{j}``), ``penultimate`` (the
    pooled ``[B, 512]``) and ``head``.

    Parameters with 100 classes: vgg8 3,965,028 and vgg13 9,462,180, RepDistiller's 3.96M and 9.46M.
    """
    return VGG(input_shape, num_classes, depth)
