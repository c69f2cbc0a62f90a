"""CIFAR model zoo: published layouts (keys, order, shapes), parameter counts, features and block semantics.

Layouts come from /work/shared/spec/keys/cifar_*.json, counts from keys/README.md, feature shapes from
classification.md §1.1; block semantics are checked against hand-computed values.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from models import BACKBONES
from models.cifar.published import convert_repdistiller, strip_prefix, unwrap_state_dict
from models.cifar.resnet import BasicBlock
from models.cifar.shufflenetv1 import ShuffleV1Bottleneck, channel_shuffle
from models.cifar.shufflenetv2 import ShuffleV2BasicBlock
from models.cifar.wrn import WideBasicBlock
from utility.errors import CheckpointError

KEYS_DIR = Path("/work/shared/spec/keys")

# keys/README.md, CIFAR-100 table: name -> (number of keys, params)
PUBLISHED = {
    "resnet8": (56, 83_892),
    "resnet14": (92, 181_108),
    "resnet20": (128, 278_324),
    "resnet32": (200, 472_756),
    "resnet44": (272, 667_188),
    "resnet56": (344, 861_620),
    "resnet110": (668, 1_736_564),
    "resnet8x4": (62, 1_233_540),
    "resnet32x4": (206, 7_433_860),
    "ResNet50": (320, 23_705_252),
    "ResNet18": (122, 11_220_132),
    "wrn_16_1": (82, 180_916),
    "wrn_16_2": (83, 703_284),
    "wrn_40_1": (226, 569_780),
    "wrn_40_2": (227, 2_255_156),
    "vgg8": (37, 3_965_028),
    "vgg11": (58, 9_277_284),
    "vgg13": (72, 9_462_180),
    "vgg16": (93, 14_774_436),
    "vgg19": (114, 20_086_692),
    "MobileNetV2": (320, 812_836),
    "ShuffleV1": (296, 949_258),
    "ShuffleV2": (338, 1_355_528),
}

# classification.md §1.1 table: spatial feature list (C, H) without the stem entry f0, pooled width
_NARROW = [(16, 32), (32, 16), (64, 8)]
_WIDE = [(64, 32), (128, 16), (256, 8)]
_VGG = [(128, 16), (256, 8), (512, 4), (512, 4)]
FEATURES = {
    **{name: (_NARROW, 64) for name in ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]},
    "resnet8x4": (_WIDE, 256),
    "resnet32x4": (_WIDE, 256),
    "wrn_16_1": (_NARROW, 64),
    "wrn_40_1": (_NARROW, 64),
    "wrn_16_2": ([(32, 32), (64, 16), (128, 8)], 128),
    "wrn_40_2": ([(32, 32), (64, 16), (128, 8)], 128),
    **{name: (_VGG, 512) for name in ["vgg8", "vgg11", "vgg13", "vgg16", "vgg19"]},
    "MobileNetV2": ([(12, 16), (16, 8), (48, 4), (160, 2)], 1280),
    "ShuffleV1": ([(240, 16), (480, 8), (960, 4)], 960),
    "ShuffleV2": ([(116, 16), (232, 8), (464, 4)], 1024),
    "ResNet50": ([(256, 32), (512, 16), (1024, 8), (2048, 4)], 2048),
    "ResNet18": ([(64, 32), (128, 16), (256, 8), (512, 4)], 512),
}

# RepDistiller's feat[0] (the stem output) per model: channels @ side, spec classification.md 1.1
STEMS = {
    **{name: (16, 32) for name in ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]},
    "resnet8x4": (32, 32), "resnet32x4": (32, 32),
    **{name: (16, 32) for name in ["wrn_16_1", "wrn_40_1", "wrn_16_2", "wrn_40_2"]},
    **{name: (64, 32) for name in ["vgg8", "vgg11", "vgg13", "vgg16", "vgg19"]},
    "MobileNetV2": (16, 16), "ShuffleV1": (24, 32), "ShuffleV2": (24, 32), "ResNet50": (64, 32), "ResNet18": (64, 32),
}

NAMES = sorted(PUBLISHED)


def load_layout(name: str) -> dict[str, list[int]]:
    entries = json.loads((KEYS_DIR / f"cifar_{name}.json").read_text())
    return {key: shape for key, shape in entries.items() if not key.startswith("_")}


def constant_state_dict(layout: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """A state dict in the published layout whose i-th entry is filled with i (cheap, and every
    entry distinguishable, so a value landing in the wrong slot is caught)."""
    state = {}
    for index, (key, shape) in enumerate(layout.items()):
        dtype = torch.long if key.endswith("num_batches_tracked") else torch.float32
        state[key] = torch.full(shape, float(index + 1), dtype=dtype)
    return state


def trainable_count(state: dict[str, torch.Tensor]) -> int:
    return sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))


@functools.cache
def built(name: str) -> nn.Module:
    """One seeded instance per model, shared by the tests that do not change its weights
    (initialising VGG/ResNet50 costs more than the checks themselves)."""
    torch.manual_seed(0)
    return BACKBONES.build(f"cifar.{name}")


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """The test machine is shared; one intra-op thread avoids oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    built.cache_clear()


def test_every_key_file_has_a_registered_model():
    files = sorted(p.stem.removeprefix("cifar_") for p in KEYS_DIR.glob("cifar_*.json"))
    assert files == NAMES
    for name in NAMES:
        assert f"cifar.{name}" in BACKBONES


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_matches_published_layout(name):
    layout = load_layout(name)
    ours = built(name).state_dict()
    assert list(ours) == list(layout)  # keys and their order
    assert {k: list(v.shape) for k, v in ours.items()} == layout
    keys, params = PUBLISHED[name]
    assert len(ours) == keys
    assert trainable_count(ours) == params
    assert sum(p.numel() for p in built(name).parameters()) == params


@pytest.mark.parametrize("name", NAMES)
def test_published_checkpoint_loads_strictly(name):
    layout = load_layout(name)
    published = constant_state_dict(layout)
    # RepDistiller saves {'model': sd, 'epoch': ...}; a DataParallel run adds 'module.'
    checkpoint = {"epoch": 240, "best_acc": 0.7, "model": {f"module.{k}": v for k, v in published.items()}}
    model = copy.deepcopy(built(name))  # a copy is much cheaper than a fresh initialisation
    model.load_state_dict(convert_repdistiller(checkpoint), strict=True)
    loaded = model.state_dict()
    for key, value in published.items():
        assert torch.equal(loaded[key], value), key


def test_num_classes_changes_only_the_classifier():
    model = BACKBONES.build("cifar.resnet8", num_classes=10)
    assert model.fc.weight.shape == (10, 64)
    assert trainable_count(model.state_dict()) == PUBLISHED["resnet8"][1] - 90 * 65
    assert BACKBONES.build("cifar.ShuffleV2", num_classes=7).linear.out_features == 7


# models whose every stage ends in a ReLU of the preact map (WRN: BN preact; MobileNetV2: no ReLU;
# ShuffleV2: preact before the shuffle; each has its own test below)
RELU_AFTER_STAGE = {n for n in NAMES if not n.startswith(("wrn", "MobileNetV2", "ShuffleV2"))}


@pytest.mark.parametrize("name", NAMES)
def test_forward_features_shapes_and_preact(name):
    model = built(name).eval()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
    spatial, pooled_width = FEATURES[name]
    assert [tuple(f.shape) for f in feats.stages] == [(2, c, h, h) for c, h in spatial]
    assert [tuple(f.shape) for f in feats.preact_stages] == [(2, c, h, h) for c, h in spatial]
    channels, side = STEMS[name]
    assert tuple(feats.stem.shape) == (2, channels, side, side)
    assert tuple(feats.pooled.shape) == (2, pooled_width)
    assert tuple(logits.shape) == (2, 100)
    assert torch.allclose(feats.out, logits, atol=1e-5)
    # pooled is the classifier's input
    modules = dict(model.named_modules())
    classifier = modules.get("fc") or modules.get("linear") or model.classifier
    assert torch.allclose(classifier(feats.pooled), logits, atol=1e-5)
    if name in RELU_AFTER_STAGE:
        for stage, preact in zip(feats.stages, feats.preact_stages, strict=True):
            assert torch.equal(torch.clamp(preact, min=0), stage)
            assert (preact < 0).any()  # a real pre-activation, not the stage itself


def test_shufflev2_preact_is_taken_before_the_channel_shuffle():
    torch.manual_seed(3)
    model = BACKBONES.build("cifar.ShuffleV2").eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 3, 32, 32))
    for stage, preact in zip(feats.stages, feats.preact_stages, strict=True):
        n, c, h, w = preact.shape
        activated = torch.clamp(preact, min=0)
        # shuffle with 2 groups by hand: output channel 2j+i is input channel i*c/2 + j
        by_hand = torch.stack([activated[:, : c // 2], activated[:, c // 2 :]], dim=2).reshape(n, c, h, w)
        assert torch.equal(by_hand, stage)
        assert not torch.equal(activated, stage)


def test_mobilenetv2_preact_equals_stages():
    model = BACKBONES.build("cifar.MobileNetV2").eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 3, 32, 32))
    for stage, preact in zip(feats.stages, feats.preact_stages, strict=True):
        assert torch.equal(stage, preact)
        assert (stage < 0).any()  # linear bottleneck: no ReLU at the end of a stage
    assert not any(isinstance(m, nn.ReLU6) for m in model.modules())


def _bn_by_hand(x, weight, bias, mean, var, eps):
    shape = (1, -1, 1, 1)
    return (x - mean.view(shape)) / torch.sqrt(var.view(shape) + eps) * weight.view(shape) + bias.view(shape)


def test_wrn_preact_is_the_next_bn_without_updating_its_statistics():
    torch.manual_seed(4)
    model = BACKBONES.build("cifar.wrn_16_2")
    bns = [model.block2.layer[0].bn1, model.block3.layer[0].bn1, model.bn1]
    for bn in bns:
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(4, 3, 32, 32)

    model.train()
    with torch.no_grad():
        feats = model.forward_features(x)
    for bn, stage, preact in zip(bns, feats.stages, feats.preact_stages, strict=True):
        batch_mean = stage.mean(dim=(0, 2, 3))
        batch_var = stage.var(dim=(0, 2, 3), unbiased=False)
        assert torch.allclose(preact, _bn_by_hand(stage, bn.weight, bn.bias, batch_mean, batch_var, bn.eps), atol=1e-4)
        # one update per forward (the reference's extra preact call would make this 2)
        assert int(bn.num_batches_tracked) == 1

    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
    for bn, stage, preact in zip(bns, feats.stages, feats.preact_stages, strict=True):
        by_hand = _bn_by_hand(stage, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)
        assert torch.allclose(preact, by_hand, atol=1e-5)
        assert int(bn.num_batches_tracked) == 1


def _identity_conv3x3(conv: nn.Conv2d) -> None:
    conv.weight.data.zero_()
    for c in range(conv.out_channels):
        conv.weight.data[c, c, 1, 1] = 1.0


def _neutral_bn(bn: nn.BatchNorm2d) -> None:
    bn.eps = 0.0  # with running stats 0/1 and affine 1/0, BN is exactly the identity in eval mode


def test_resnet_basic_block_adds_then_relu():
    block = BasicBlock(2, 2).eval()
    _identity_conv3x3(block.conv1)
    _identity_conv3x3(block.conv2)
    _neutral_bn(block.bn1)
    _neutral_bn(block.bn2)
    x = torch.tensor([-1.0, 2.0]).view(1, 2, 1, 1).expand(1, 2, 3, 3).contiguous()
    out, preact = block.forward_with_preact(x)
    # branch = relu(x) = [0, 2]; preact = branch + x = [-1, 4]; out = relu(preact) = [0, 4]
    assert torch.equal(preact[0, :, 1, 1], torch.tensor([-1.0, 4.0]))
    assert torch.equal(out[0, :, 1, 1], torch.tensor([0.0, 4.0]))
    assert torch.equal(block(x), out)


def test_wrn_block_shortcut_takes_raw_or_activated_input():
    x = torch.tensor([-1.0, 2.0]).view(1, 2, 1, 1).expand(1, 2, 3, 3).contiguous()

    equal = WideBasicBlock(2, 2, stride=1).eval()
    for m in (equal.bn1, equal.bn2):
        _neutral_bn(m)
    _identity_conv3x3(equal.conv1)
    _identity_conv3x3(equal.conv2)
    # x + conv2(relu(bn2(conv1(relu(bn1(x)))))) = x + relu(x) = [-1, 4]; no ReLU after the add
    assert torch.equal(equal(x)[0, :, 1, 1], torch.tensor([-1.0, 4.0]))

    widening = WideBasicBlock(2, 4, stride=1).eval()
    for m in (widening.bn1, widening.bn2):
        _neutral_bn(m)
    widening.conv1.weight.data.zero_()
    widening.conv2.weight.data.zero_()
    widening.convShortcut.weight.data.zero_()
    widening.convShortcut.weight.data[:2, :, 0, 0] = torch.eye(2)
    # residual branch is zero; the 1x1 projection sees relu(bn1(x)) = [0, 2], not x = [-1, 2]
    assert torch.equal(widening(x)[0, :, 1, 1], torch.tensor([0.0, 2.0, 0.0, 0.0]))


def test_channel_shuffle_order():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]


def test_shufflev1_downsampling_block_concatenates_branch_then_avgpool_shortcut():
    block = ShuffleV1Bottleneck(24, 240 - 24, stride=2, groups=3).eval()
    block.bn3.weight.data.zero_()  # branch output becomes exactly 0
    x = torch.ones(1, 24, 4, 4)
    out, preact = block.forward_with_preact(x)
    assert out.shape == (1, 240, 2, 2)
    assert torch.equal(out[:, :216], torch.zeros(1, 216, 2, 2))
    # AvgPool(3, s2, p1) counting the zero padding: windows cover 4, 6, 6 and 9 ones out of 9
    expected = torch.tensor([[4.0, 6.0], [6.0, 9.0]]) / 9.0
    assert torch.allclose(out[0, 216:], expected.expand(24, 2, 2))
    assert torch.equal(preact, out)  # everything non-negative here


def test_shufflev2_basic_block_keeps_first_half_and_interleaves():
    block = ShuffleV2BasicBlock(4).eval()
    block.bn3.weight.data.zero_()
    block.bn3.bias.data.fill_(-1.0)  # branch pre-ReLU is -1 everywhere, post-ReLU 0
    x = torch.arange(4.0).view(1, 4, 1, 1) + 1.0  # channels [1, 2, 3, 4]
    out, preact = block.forward_with_preact(x)
    assert out.flatten().tolist() == [1.0, 0.0, 2.0, 0.0]  # shuffle(cat[[1, 2], [0, 0]])
    assert preact.flatten().tolist() == [1.0, 2.0, -1.0, -1.0]  # cat before shuffle, before ReLU


def test_mobilenetv2_residual_only_when_stride_one_and_same_width():
    model = BACKBONES.build("cifar.MobileNetV2").eval()
    widening, repeated = model.blocks[1][0], model.blocks[1][1]  # 8 -> 12 (stride 1), 12 -> 12
    assert not widening.use_res_connect and repeated.use_res_connect
    for block in (widening, repeated):
        block.conv[7].weight.data.zero_()  # last BN -> branch is exactly 0
    x8 = torch.randn(1, 8, 4, 4)
    x12 = torch.randn(1, 12, 4, 4)
    assert torch.equal(widening(x8), torch.zeros(1, 12, 4, 4))
    assert torch.equal(repeated(x12), x12)
    assert [int(c) for c in [model.blocks[i][-1].conv[6].out_channels for i in range(7)]] == [8, 12, 16, 32, 48, 80, 160]


def test_vgg_pools_after_block3_only_for_64_pixel_inputs():
    model = BACKBONES.build("cifar.vgg8").eval()
    with torch.no_grad():
        small = model.forward_features(torch.randn(1, 3, 32, 32))
        large = model.forward_features(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in small.stages] == [16, 8, 4, 4]
    assert [f.shape[-1] for f in large.stages] == [32, 16, 8, 4]


def test_initialisation_follows_the_reference():
    torch.manual_seed(5)
    resnet = BACKBONES.build("cifar.resnet32x4")
    weight = resnet.layer3[1].conv2.weight  # kaiming normal, fan_out = 256 * 9
    assert abs(weight.std().item() / math.sqrt(2.0 / (256 * 9)) - 1) < 0.02
    assert torch.equal(resnet.layer1[0].bn1.weight, torch.ones(64))

    wrn = BACKBONES.build("cifar.wrn_16_2")
    weight = wrn.block3.layer[1].conv1.weight  # N(0, sqrt(2 / (3 * 3 * 128)))
    assert abs(weight.std().item() / math.sqrt(2.0 / (9 * 128)) - 1) < 0.02
    assert torch.equal(wrn.fc.bias, torch.zeros(100)) and wrn.fc.weight.abs().sum() > 0

    vgg = BACKBONES.build("cifar.vgg8")
    assert abs(vgg.classifier.weight.std().item() / 0.01 - 1) < 0.05
    assert torch.equal(vgg.block3[0].bias, torch.zeros(512))

    mobile = BACKBONES.build("cifar.MobileNetV2")
    assert abs(mobile.classifier[0].weight.std().item() / 0.01 - 1) < 0.05

    shuffle = BACKBONES.build("cifar.ShuffleV1")  # PyTorch default: uniform within 1 / sqrt(fan_in)
    bound = 1 / math.sqrt(shuffle.layer3[1].conv1.weight[0].numel())
    assert shuffle.layer3[1].conv1.weight.abs().max() <= bound
    assert shuffle.layer3[1].conv1.weight.abs().max() > 0.9 * bound


def test_same_seed_same_weights():
    torch.manual_seed(6)
    first = BACKBONES.build("cifar.wrn_16_1").state_dict()
    torch.manual_seed(6)
    second = BACKBONES.build("cifar.wrn_16_1").state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_gradients_reach_the_stem():
    model = BACKBONES.build("cifar.resnet8")
    model.forward_features(torch.randn(2, 3, 32, 32)).out.sum().backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0


def test_unwrap_and_strip_prefix():
    weight = torch.ones(2)
    assert unwrap_state_dict({"a": weight}) == {"a": weight}
    assert list(unwrap_state_dict({"epoch": 3, "model": {"b": weight, "a": weight}})) == ["b", "a"]
    assert unwrap_state_dict({"state_dict": {"model": {"a": weight}}}) == {"a": weight}
    assert unwrap_state_dict({"model_state_dict": {"a": weight}, "optimizer": {}}) == {"a": weight}
    assert list(strip_prefix({"module.x.y": weight, "z": weight})) == ["x.y", "z"]
    # CRD criterion keys pass through unchanged
    crd = {"embed_s.linear.weight": weight, "contrast.params": weight}
    assert convert_repdistiller(crd) == crd
    with pytest.raises(CheckpointError, match="no state dict"):
        unwrap_state_dict({"epoch": 3, "best_acc": 0.5})
    with pytest.raises(CheckpointError):
        unwrap_state_dict({})


def test_strict_load_reports_a_wrong_architecture():
    published = constant_state_dict(load_layout("resnet8"))
    model = BACKBONES.build("cifar.resnet14")
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_state_dict(convert_repdistiller({"model": published}), strict=True)


def test_features_run_on_the_input_device_without_hard_coded_cuda():
    model = BACKBONES.build("cifar.resnet8").to(torch.float64).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 32, 32, dtype=torch.float64))
    assert all(f.dtype == torch.float64 for f in feats.stages)
    assert F.softmax(feats.out, dim=1).sum().item() == pytest.approx(1.0)
