"""Face backbones: published layouts (keys, order, shapes, parameter counts), checkpoint conversion,
forward shapes, hint and attention semantics, initialisation and option errors.

Layout facts come from spec/keys/*.json and the parameter table of spec/keys/README.md. Big models
are built on the meta device (no memory, no init cost): key names, order, shapes and strict loading
are the same there.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models import BACKBONES
from models.face.iresnet import IBasicBlock
from models.face.published import from_a_skd, from_adadistill, from_f_skd, from_insightface, to_a_skd
from utility.errors import CheckpointError, ConfigError

KEYS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "spec" / "keys"

# key file -> (backbone, constructor keywords, converter, state-dict entries, params total, params trainable),
# counts from spec/keys/README.md (trainable = total minus the frozen `features.weight` for F-SKD pooling E).
LAYOUTS = {
    "f_skd_iresnet50_ir": ("face.iresnet50", {}, from_f_skd, 475, 43_590_848, 43_590_336),
    "f_skd_iresnet50_cbam": ("face.iresnet50", {"attention": "cbam"}, from_f_skd, 715, 43_822_156, 43_821_644),
    "f_skd_iresnet50_ir_student_hint": ("face.iresnet50", {"hints": True}, from_f_skd, 499, 43_940_928, 43_940_416),
    "f_skd_iresnet50_cbam_student_hint": (
        "face.iresnet50", {"attention": "cbam", "hints": True}, from_f_skd, 739, 44_172_236, 44_171_724),
    "f_skd_iresnet18_ir": ("face.iresnet18", {}, from_f_skd, 187, 24_025_600, 24_025_088),
    "f_skd_iresnet18_ir_student_hint": ("face.iresnet18", {"hints": True}, from_f_skd, 211, 24_375_680, 24_375_168),
    "f_skd_v1_iresnet50_ir_gap": ("face.iresnet50", {"pooling": "A"}, from_f_skd, 463, 30_743_232, 30_743_232),
    "f_skd_v1_iresnet50_cbam_gap": (
        "face.iresnet50", {"attention": "cbam", "pooling": "A"}, from_f_skd, 703, 30_974_540, 30_974_540),
    "adadistill_iresnet50": ("face.iresnet50", {}, from_adadistill, 475, 43_590_848, 43_590_336),
    "adadistill_iresnet100": ("face.iresnet100", {}, from_adadistill, 925, 65_156_160, 65_155_648),
    "adadistill_mobilefacenet": ("face.mobilefacenet", {}, from_adadistill, 331, 1_199_488, 1_199_488),
    "a_skd_cbam_resnet50": (
        "face.iresnet50", {"attention": "cbam_a_skd", "dropout": 0.4}, from_a_skd, 547, 43_814_000, 43_814_000),
}


def published_layout(name: str) -> list[tuple[str, list[int]]]:
    with open(KEYS_DIR / f"{name}.json") as handle:
        entries = json.load(handle)
    return [(key, shape) for key, shape in entries.items() if not key.startswith("_")]


def tagged_state_dict(layout: list[tuple[str, list[int]]]) -> OrderedDict[str, torch.Tensor]:
    """A published-format state dict whose i-th entry is filled with i, so a misrouted key shows
    (expanded scalars: the shapes are real, the memory is not)."""
    return OrderedDict(
        (key, torch.tensor(index, dtype=torch.long if key.endswith("num_batches_tracked") else torch.float32).expand(shape))
        for index, (key, shape) in enumerate(layout)
    )


def build_on_meta(name: str, **kwargs):
    with torch.device("meta"):
        return BACKBONES.build(name, **kwargs)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_published_layout(name):
    """Counts from the spec table; with the key files, exact keys, order, shapes and a strict load
    of a published-format state dict (after conversion) whose values land on the matching keys."""
    backbone, kwargs, convert, entries, total, trainable = LAYOUTS[name]
    model = build_on_meta(backbone, **kwargs)
    assert len(model.state_dict()) == entries
    assert sum(p.numel() for p in model.parameters()) == total
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable
    if not KEYS_DIR.is_dir():
        pytest.skip(f"published key files not found at {KEYS_DIR}")

    layout = published_layout(name)
    ours = [(key, list(value.shape)) for key, value in model.state_dict().items()]
    if convert is from_a_skd:  # other names: the same order and shapes once renamed
        assert [(key, list(value.shape)) for key, value in to_a_skd(model.state_dict()).items()] == layout
    else:
        assert ours == layout
    converted = convert(tagged_state_dict(layout))
    assert list(converted) == [key for key, _ in ours]
    model.load_state_dict(converted, strict=True, assign=True)
    for index, (key, value) in enumerate(model.state_dict().items()):
        assert value[(0,) * value.dim()].item() == index, key


def test_every_face_key_file_is_covered():
    if not KEYS_DIR.is_dir():
        pytest.skip(f"published key files not found at {KEYS_DIR}")
    face_files = {path.stem for path in KEYS_DIR.glob("*.json") if path.stem.startswith(("a_skd_", "f_skd_", "adadistill_"))}
    assert face_files - {"f_skd_mbf_large"} == set(LAYOUTS)  # F-SKD's mbf_large is not a Distillery model


def test_real_model_loads_a_skd_named_checkpoint():
    """A CPU model takes an A-SKD-named checkpoint with strict=True; every value reaches its module."""
    torch.manual_seed(0)
    model = BACKBONES.build("face.iresnet18", attention="cbam_a_skd", pooling="A")
    published = to_a_skd({key: torch.rand_like(value.float()).to(value.dtype) for key, value in model.state_dict().items()})
    model.load_state_dict(from_a_skd(published), strict=True)
    assert torch.equal(model.layer2[0].attention.channel_mlp[0].weight, published["layer2.0.channel_layer.shared_mlp.0.weight"])
    assert torch.equal(model.layer2[0].attention.spatial_conv.weight, published["layer2.0.spatial_layer.conv.weight"])
    assert torch.equal(model.layer2[0].downsample[1].running_var, published["layer2.0.shortcut_layer.1.running_var"])
    assert torch.equal(model.layer3[1].prelu.weight, published["layer3.1.res_layer.3.weight"])
    assert torch.equal(model.layer3[1].conv2.weight, published["layer3.1.res_layer.4.weight"])
    assert torch.equal(model.prelu.weight, published["input_layer.2.weight"])
    head = to_a_skd({"bn2.bias": torch.zeros(1), "fc.weight": torch.zeros(1), "features.running_mean": torch.zeros(1)})
    assert list(head) == ["output_layer.0.bias", "output_layer.3.weight", "output_layer.4.running_mean"]


def test_conversion_helpers():
    weight = torch.zeros(2)
    wrapped = OrderedDict([("module.conv1.weight", weight), ("module.fc.bias", weight)])
    assert list(from_insightface(wrapped)) == ["conv1.weight", "fc.bias"]
    assert list(from_adadistill(wrapped)) == ["conv1.weight", "fc.bias"]
    f_skd = OrderedDict([("conv1.weight", weight), ("conv_bridge.weight", weight), ("conv_bridge.bias", weight),
                         ("hint_layer1.hint.weight", weight)])
    assert list(from_f_skd(f_skd)) == ["conv1.weight", "hint_layer1.hint.weight"]
    assert list(from_a_skd({"module.input_layer.0.weight": weight})) == ["conv1.weight"]
    with pytest.raises(CheckpointError, match="hint_layer1"):
        to_a_skd({"hint_layer1.hint.weight": weight})
    with pytest.raises(CheckpointError, match="self_attention"):
        from_a_skd({"self_attention_target.weight": weight})


@pytest.fixture(scope="module")
def student_at_112():
    """One F-SKD CBAM student with hints (iresnet18, eval mode) run on two 112x112 images."""
    torch.manual_seed(0)
    model = BACKBONES.build("face.iresnet18", attention="cbam", hints=True).eval()
    with torch.no_grad():
        for hint in (model.hint_layer1, model.hint_layer2, model.hint_layer3, model.hint_layer4):
            hint.bn.running_mean.uniform_(-1, 1)  # so a skipped BN would show
        model.bn2.running_mean.uniform_(-1, 1)
        images = torch.randn(2, 3, 112, 112)
        return model, images, model.forward_features(images), model(images)


def trunk_stages(model, images):
    """The iResNet trunk's stage maps before any hint layer, run layer by layer by hand."""
    x = model.prelu(model.bn1(model.conv1(images)))
    maps = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)[0]
        maps.append(x)
    return maps


def test_iresnet_forward_shapes_at_112(student_at_112):
    model, images, features, embedding = student_at_112
    assert embedding.shape == (2, 512) and torch.allclose(features.out, embedding)
    with torch.no_grad():
        raw_stages = trunk_stages(model, images)
    for maps in (features.stages, raw_stages):
        assert [tuple(m.shape) for m in maps] == [(2, 64, 56, 56), (2, 128, 28, 28), (2, 256, 14, 14), (2, 512, 7, 7)]
    assert features.pooled.shape == (2, 25088)
    assert len(features.attention) == 8 and features.attention[0][1].shape == (2, 1, 56, 56)


def test_hints_feed_stages_but_not_the_trunk(student_at_112):
    model, images, features, _ = student_at_112
    with torch.no_grad():
        raw_stages = trunk_stages(model, images)
        for index in range(4):
            raw, stage = raw_stages[index], features.stages[index]
            hint = getattr(model, f"hint_layer{index + 1}")
            by_hand = F.conv2d(raw, hint.hint.weight)
            by_hand = (by_hand - hint.bn.running_mean[None, :, None, None]) / torch.sqrt(
                hint.bn.running_var[None, :, None, None] + hint.bn.eps)
            assert torch.allclose(stage, by_hand, atol=1e-4)
            assert not torch.allclose(stage, raw)
            if index < 3:  # the next stage runs on the raw map
                next_stage = getattr(model, f"layer{index + 2}")(raw)[0]
                assert torch.allclose(next_stage, raw_stages[index + 1], atol=1e-5)
        # The embedding comes from the raw layer-4 map.
        embedding = model.features(model.fc(model.bn2(raw_stages[-1]).flatten(1)))
    assert torch.allclose(embedding, features.out, atol=1e-4)
    without_bn = build_on_meta("face.iresnet18", hints=True, hint_bn=False)
    assert without_bn.hint_layer2.bn is None
    assert [k for k in without_bn.state_dict() if k.startswith("hint_layer")] == [
        f"hint_layer{i}.hint.weight" for i in range(1, 5)]


def test_embedding_head_flattens_in_chw_order_and_freezes_bn1d(student_at_112):
    model, images, features, _ = student_at_112
    with torch.no_grad():
        normalised = model.bn2(trunk_stages(model, images)[-1])
    c, h, w = 300, 2, 5
    assert torch.equal(features.pooled[:, c * 49 + h * 7 + w], normalised[:, c, h, w])
    assert not model.features.weight.requires_grad and torch.all(model.features.weight == 1)
    assert model.features.bias.requires_grad
    a_skd = build_on_meta("face.iresnet18", attention="cbam_a_skd", dropout=0.4)
    assert a_skd.features.weight.requires_grad and a_skd.dropout.p == 0.4


def test_mobilefacenet_forward_at_112():
    torch.manual_seed(0)
    model = BACKBONES.build("face.mobilefacenet").eval()
    images = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        features = model.forward_features(images)
        embedding = model(images)
        by_hand = model.output_layer.bn(model.output_layer.linear(
            model.output_layer.conv_6_dw(features.stages[-1]).flatten(1)))
    assert embedding.shape == (2, 512) and torch.allclose(features.out, embedding)
    assert [tuple(m.shape) for m in features.stages] == [(2, 64, 56, 56), (2, 64, 28, 28), (2, 128, 14, 14), (2, 512, 7, 7)]
    assert features.pooled.shape == (2, 512) and features.attention == []
    assert torch.allclose(by_hand, embedding, atol=1e-5)
    wide = build_on_meta("face.mobilefacenet", num_features=128)
    assert wide.output_layer.linear.weight.shape == (128, 512)


def test_gap_pooling_is_the_mean_of_layer4():
    model = BACKBONES.build("face.iresnet18", pooling="A").eval()
    assert not hasattr(model, "fc") and not hasattr(model, "bn2")
    images = torch.randn(2, 3, 32, 32)
    features = model.forward_features(images)
    assert torch.allclose(features.out, trunk_stages(model, images)[-1].mean(dim=(2, 3)), atol=1e-6)
    assert torch.equal(features.pooled, features.out)


@pytest.mark.parametrize("attention", ["cbam", "cbam_a_skd"])
def test_cbam_maps_of_iresnet50(attention):
    torch.manual_seed(0)
    model = BACKBONES.build("face.iresnet50", attention=attention, pooling="A")
    features = model.forward_features(torch.randn(2, 3, 16, 16))  # stage maps 8, 4, 2, 1
    assert len(features.attention) == 24 and len(features.attention_logits) == 24
    widths = [64] * 3 + [128] * 4 + [256] * 14 + [512] * 3
    sizes = [8] * 3 + [4] * 4 + [2] * 14 + [1] * 3
    for (gate_c, gate_s), (logit_c, logit_s), width, size in zip(
            features.attention, features.attention_logits, widths, sizes):
        assert gate_c.shape == logit_c.shape == (2, width, 1, 1)
        assert gate_s.shape == logit_s.shape == (2, 1, size, size)
        assert torch.allclose(torch.sigmoid(logit_c), gate_c) and torch.allclose(torch.sigmoid(logit_s), gate_s)
        assert not torch.allclose(logit_c, gate_c)


def test_a_skd_cbam_block_by_hand():
    """A-SKD block: channel logits MLP(avg) + MLP(max) (no bias), spatial 3x3 conv on [mean, max],
    identity shortcut, no activation after the sum."""
    torch.manual_seed(0)
    block = IBasicBlock(16, 16, 1, None, "cbam_a_skd").eval()
    x = torch.randn(2, 16, 6, 6)
    out, _, (logit_c, logit_s) = block(x)
    residual = block.bn3(block.conv2(block.prelu(block.bn2(block.conv1(block.bn1(x))))))
    w1, w2 = block.attention.channel_mlp[0].weight[:, :, 0, 0], block.attention.channel_mlp[2].weight[:, :, 0, 0]
    assert w1.shape == (1, 16)  # reduction 16

    def mlp(v):
        return torch.relu(v @ w1.T) @ w2.T

    channel = mlp(residual.mean(dim=(2, 3))) + mlp(residual.amax(dim=(2, 3)))
    assert torch.allclose(logit_c[:, :, 0, 0], channel, atol=1e-5)
    scaled = residual * torch.sigmoid(channel)[:, :, None, None]
    pooled = torch.stack([scaled.mean(1), scaled.amax(1)], dim=1)
    spatial = F.conv2d(pooled, block.attention.spatial_conv.weight, padding=1)
    assert torch.allclose(logit_s, spatial, atol=1e-5)
    assert torch.allclose(out, scaled * torch.sigmoid(spatial) + x, atol=1e-5)


def test_f_skd_cbam_block_by_hand():
    """F-SKD block: Linear MLP with bias, spatial 7x7 conv + BN on [max, mean], projected shortcut."""
    torch.manual_seed(0)
    downsample = torch.nn.Sequential(torch.nn.Conv2d(32, 32, 1, stride=2, bias=False), torch.nn.BatchNorm2d(32))
    block = IBasicBlock(32, 32, 2, downsample, "cbam").eval()
    spatial_bn = block.attention.SpatialGate.spatial.bn
    assert spatial_bn.momentum == 0.01
    with torch.no_grad():
        spatial_bn.running_mean.fill_(0.3)
        spatial_bn.running_var.fill_(2.0)
    x = torch.randn(2, 32, 8, 8)
    out, _, (logit_c, logit_s) = block(x)
    residual = block.bn3(block.conv2(block.prelu(block.bn2(block.conv1(block.bn1(x))))))
    first, second = block.attention.ChannelGate.mlp[1], block.attention.ChannelGate.mlp[3]
    assert first.bias is not None and second.bias is not None

    def mlp(v):
        return second(torch.relu(first(v)))

    channel = mlp(residual.mean(dim=(2, 3))) + mlp(residual.amax(dim=(2, 3)))
    assert torch.allclose(logit_c[:, :, 0, 0], channel, atol=1e-5)
    scaled = residual * torch.sigmoid(channel)[:, :, None, None]
    pooled = torch.stack([scaled.amax(1), scaled.mean(1)], dim=1)
    spatial = F.conv2d(pooled, block.attention.SpatialGate.spatial.conv.weight, padding=3)
    spatial = (spatial - 0.3) / math.sqrt(2.0 + 1e-5)
    assert torch.allclose(logit_s, spatial, atol=1e-5)
    assert out.shape == (2, 32, 4, 4)
    assert torch.allclose(out, scaled * torch.sigmoid(spatial) + downsample(x), atol=1e-5)


def test_initialisation_follows_each_reference():
    torch.manual_seed(0)
    f_skd = BACKBONES.build("face.iresnet18", attention="cbam", pooling="A")
    assert abs(f_skd.layer3[1].conv1.weight.std().item() - 0.1) < 0.003  # N(0, 0.1^2)
    linear = f_skd.layer4[0].attention.ChannelGate.mlp[1]  # PyTorch default: |w| <= 1/sqrt(fan_in)
    assert linear.weight.abs().max().item() <= 1 / math.sqrt(512) + 1e-6
    a_skd = BACKBONES.build("face.iresnet18", attention="cbam_a_skd", pooling="A")
    conv = a_skd.layer3[1].conv1.weight  # xavier uniform: |w| <= sqrt(6 / (fan_in + fan_out))
    bound = math.sqrt(6 / (256 * 9 + 256 * 9))
    assert 0.95 * bound < conv.abs().max().item() <= bound
    assert torch.all(a_skd.prelu.weight == 0.25)
    mobile = BACKBONES.build("face.mobilefacenet")
    project = mobile.conv_4.model[0].project.conv.weight  # kaiming normal, fan_out = 128
    assert abs(project.std().item() - math.sqrt(2 / 128)) < 0.005
    assert mobile.output_layer.bn.weight is None  # BatchNorm1d without affine parameters


def test_bad_options_raise_config_errors():
    for kwargs in ({"attention": "cbam"}, {"pooling": "A"}, {"hints": True}, {"dropout": 0.4}):
        with pytest.raises(ConfigError, match="mobilefacenet"):
            BACKBONES.build("face.mobilefacenet", **kwargs)
    with pytest.raises(ConfigError, match="ATTENTION"):
        BACKBONES.build("face.iresnet18", attention="se")
    with pytest.raises(ConfigError, match="POOLING"):
        BACKBONES.build("face.iresnet18", pooling="B")
    with pytest.raises(ConfigError, match="EMBEDDING_SIZE"):
        BACKBONES.build("face.iresnet18", pooling="A", num_features=256)
    assert build_on_meta("face.iresnet18", num_features=256).fc.weight.shape == (256, 25088)


@pytest.mark.slow
def test_blocks_compile_without_graph_breaks():
    for attention in ("none", "cbam", "cbam_a_skd"):
        downsample = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 1, stride=2, bias=False), torch.nn.BatchNorm2d(16))
        block = IBasicBlock(16, 16, 2, downsample, attention)
        out, _, _ = torch.compile(block, backend="eager", fullgraph=True)(torch.randn(2, 16, 8, 8))
        assert out.shape == (2, 16, 4, 4)


@pytest.mark.slow
def test_iresnet100_forward_at_112():
    model = BACKBONES.build("face.iresnet100").eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 112, 112))
    assert features.out.shape == (1, 512) and len(features.stages) == 4
