"""ImageNet-style backbones: torchvision layouts (keys, order, shapes), parameter counts for the scene
datasets' class numbers, DCT multiscale feature shapes, and block semantics checked by hand.

Layouts come from /work/shared/spec/keys/torchvision_*.json, counts from keys/README.md, feature shapes
from classification.md §1.2.
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

from models import BACKBONES
from models.imagenet.mobilenet_v2 import make_divisible
from models.imagenet.published import convert_torchvision
from models.imagenet.resnet import Bottleneck

KEYS_DIR = Path("/work/shared/spec/keys")

# keys/README.md, ImageNet-style table: name -> (keys, {num_classes: params})
PUBLISHED = {
    "resnet18": (122, {1000: 11_689_512, 1055: 11_717_727, 397: 11_380_173, 67: 11_210_883}),
    "resnet34": (218, {1000: 21_797_672, 1055: 21_825_887, 397: 21_488_333, 67: 21_319_043}),
    "resnet50": (320, {1000: 25_557_032, 1055: 25_669_727, 397: 24_321_485, 67: 23_645_315}),
    "resnet152": (932, {1000: 60_192_808, 1055: 60_305_503, 397: 58_957_261, 67: 58_281_091}),
    "mobilenet_v2": (314, {1000: 3_504_872, 1055: 3_575_327, 397: 2_732_429, 67: 2_309_699}),
}
NAMES = sorted(PUBLISHED)

# classification.md §1.2: multiscale features at 224 (a0..a3 as (C, H)) and the pooled width a4
FEATURES_224 = {
    "resnet18": ([(64, 56), (128, 28), (256, 14), (512, 7)], 512),
    "resnet34": ([(64, 56), (128, 28), (256, 14), (512, 7)], 512),
    "resnet50": ([(256, 56), (512, 28), (1024, 14), (2048, 7)], 2048),
    "resnet152": ([(256, 56), (512, 28), (1024, 14), (2048, 7)], 2048),
    "mobilenet_v2": ([(24, 56), (32, 28), (96, 14), (1280, 7)], 1280),
}


@functools.cache
def built(name: str) -> nn.Module:
    """One seeded 1000-class instance per model, shared by the tests that do not change its weights."""
    torch.manual_seed(0)
    return BACKBONES.build(f"imagenet.{name}")


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """The test machine is shared; one intra-op thread avoids oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    built.cache_clear()


def load_layout(name: str) -> dict[str, list[int]]:
    entries = json.loads((KEYS_DIR / f"torchvision_{name}.json").read_text())
    return {key: shape for key, shape in entries.items() if not key.startswith("_")}


def trainable_count(state: dict[str, torch.Tensor]) -> int:
    return sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))


def classifier_of(model: nn.Module) -> nn.Linear:
    return model.fc if hasattr(model, "fc") else model.classifier[1]


def test_every_key_file_has_a_registered_model():
    files = sorted(p.stem.removeprefix("torchvision_") for p in KEYS_DIR.glob("torchvision_*.json"))
    assert files == NAMES
    for name in [*NAMES, "resnet101"]:
        assert f"imagenet.{name}" in BACKBONES


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_matches_torchvision_layout(name):
    layout = load_layout(name)
    ours = built(name).state_dict()
    assert list(ours) == list(layout)  # keys and their order
    assert {k: list(v.shape) for k, v in ours.items()} == layout
    keys, params = PUBLISHED[name]
    assert len(ours) == keys
    assert trainable_count(ours) == params[1000]


@pytest.mark.parametrize("name", NAMES)
def test_published_checkpoint_loads_strictly(name):
    layout = load_layout(name)
    # entry i filled with i: cheap, and a value landing in the wrong slot is caught
    published = {
        key: torch.full(shape, float(i + 1), dtype=torch.long if key.endswith("num_batches_tracked") else torch.float32)
        for i, (key, shape) in enumerate(layout.items())
    }
    model = copy.deepcopy(built(name))
    # torchvision weights are a bare state dict; DCT saves {'model_state_dict': sd} from a DataParallel model
    model.load_state_dict(convert_torchvision(published), strict=True)
    dct_checkpoint = {"epoch": 60, "model_state_dict": {f"module.{k}": v for k, v in published.items()}}
    model.load_state_dict(convert_torchvision(dct_checkpoint), strict=True)
    loaded = model.state_dict()
    for key, value in published.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", *(pytest.param(n, marks=pytest.mark.slow)
                                                            for n in ("resnet34", "resnet50", "resnet152"))])
def test_parameter_counts_for_scene_datasets(name):
    layout = load_layout(name)
    for num_classes, params in PUBLISHED[name][1].items():
        model = BACKBONES.build(f"imagenet.{name}", num_classes=num_classes)
        state = model.state_dict()
        changed = [k for k in layout if list(state[k].shape) != layout[k]]
        assert trainable_count(state) == params
        assert classifier_of(model).out_features == num_classes
        # only the classifier depends on the number of classes
        assert changed == ([] if num_classes == 1000 else [k for k in layout if k.rsplit(".", 1)[0] in ("fc", "classifier.1")])


@pytest.mark.parametrize("name, size", [("resnet18", 224), ("mobilenet_v2", 224), ("resnet34", 64), ("resnet50", 64),
                                        pytest.param("resnet152", 224, marks=pytest.mark.slow)])
def test_forward_features_shapes_and_preact(name, size):
    model = built(name).eval()
    torch.manual_seed(1)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
    spatial, pooled_width = FEATURES_224[name]
    expected = [(2, c, h * size // 224, h * size // 224) for c, h in spatial]
    assert [tuple(f.shape) for f in feats.stages] == expected
    assert [tuple(f.shape) for f in feats.preact_stages] == expected
    assert tuple(feats.pooled.shape) == (2, pooled_width)
    assert tuple(logits.shape) == (2, 1000)
    assert torch.allclose(feats.out, logits, atol=1e-5)
    assert torch.allclose(classifier_of(model)(feats.pooled), logits, atol=1e-5)
    assert torch.allclose(feats.pooled, feats.stages[-1].mean(dim=(2, 3)), atol=1e-5)
    if name.startswith("resnet"):
        for stage, preact in zip(feats.stages, feats.preact_stages, strict=True):
            assert torch.equal(torch.clamp(preact, min=0), stage)
            assert (preact < 0).any()
    else:
        for stage, preact in zip(feats.stages[:3], feats.preact_stages[:3], strict=True):
            assert torch.equal(stage, preact)  # linear bottlenecks end these stages
        assert torch.equal(torch.clamp(feats.preact_stages[3], 0, 6), feats.stages[3])


def test_resnet_bottleneck_by_hand():
    block = Bottleneck(8, 2).eval()  # 8 -> 2 -> 2 -> 8, identity shortcut
    block.conv1.weight.data.zero_()
    block.conv1.weight.data[:, :2, 0, 0] = torch.eye(2)  # keep channels 0 and 1
    block.conv2.weight.data.zero_()
    block.conv2.weight.data[[0, 1], [0, 1], 1, 1] = 1.0
    block.conv3.weight.data.zero_()
    block.conv3.weight.data[:2, :, 0, 0] = torch.eye(2)  # back into channels 0 and 1
    for bn in (block.bn1, block.bn2, block.bn3):
        bn.eps = 0.0  # exact identity in eval mode with the default statistics
    x = torch.tensor([-1.0, 2.0, -3.0, 4.0, 0.0, 1.0, -2.0, 3.0]).view(1, 8, 1, 1)
    out, preact = block.forward_with_preact(x)
    # branch = relu on channels 0, 1 only: [0, 2, 0, ...]; preact = x + branch; out = relu(preact)
    assert preact.flatten().tolist() == [-1.0, 4.0, -3.0, 4.0, 0.0, 1.0, -2.0, 3.0]
    assert out.flatten().tolist() == [0.0, 4.0, 0.0, 4.0, 0.0, 1.0, 0.0, 3.0]
    assert torch.equal(block(x), out)


def test_resnet_v1_5_strides_and_stem():
    model = built("resnet50")
    assert model.layer2[0].conv1.stride == (1, 1) and model.layer2[0].conv2.stride == (2, 2)
    assert model.layer2[0].downsample[0].stride == (2, 2)
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert isinstance(model.maxpool, nn.MaxPool2d)


def test_make_divisible_rounding():
    assert make_divisible(32 * 0.75) == 24
    assert make_divisible(16 * 0.35) == 8  # never below the divisor
    assert make_divisible(11) == 16  # 8 would be more than 10% below 11
    assert make_divisible(1280 * 1.4) == 1792
    assert make_divisible(20) == 24  # int(20 + 4) // 8 * 8


def test_mobilenet_v2_blocks_by_hand():
    model = BACKBONES.build("imagenet.mobilenet_v2", num_classes=10).eval()
    first, repeated = model.features[1], model.features[3]  # 32 -> 16 (t = 1), 24 -> 24 (stride 1)
    assert not first.use_res_connect and repeated.use_res_connect
    assert len(first.conv) == 3 and len(repeated.conv) == 4  # no expansion conv when t = 1
    repeated.conv[3].weight.data.zero_()  # final BN -> branch exactly 0
    x = torch.randn(1, 24, 5, 5)
    assert torch.equal(repeated(x), x)
    # ReLU6: push the head BN far positive; the last stage saturates at 6 while its preact does not
    model.features[18][1].bias.data.fill_(100.0)
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 64, 64))
    assert torch.equal(feats.stages[3], torch.full_like(feats.stages[3], 6.0))
    assert feats.preact_stages[3].min() > 50
    assert isinstance(model.classifier[0], nn.Dropout) and model.classifier[0].p == 0.2


def test_initialisation_follows_torchvision():
    resnet = built("resnet18")
    weight = resnet.layer4[1].conv2.weight  # kaiming normal, fan_out = 512 * 9
    assert abs(weight.std().item() / math.sqrt(2.0 / (512 * 9)) - 1) < 0.02
    assert torch.equal(resnet.layer4[1].bn2.weight, torch.ones(512))
    bound = 1 / math.sqrt(512)  # fc keeps PyTorch's default init
    assert resnet.fc.weight.abs().max() <= bound and resnet.fc.bias.abs().max() <= bound

    mobile = built("mobilenet_v2")
    assert abs(mobile.classifier[1].weight.std().item() / 0.01 - 1) < 0.02
    assert torch.equal(mobile.classifier[1].bias, torch.zeros(1000))
    weight = mobile.features[17].conv[2].weight  # 960 -> 320 1x1, fan_out = 320
    assert abs(weight.std().item() / math.sqrt(2.0 / 320) - 1) < 0.02
