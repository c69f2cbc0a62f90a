"""ImageNet-style backbones with torchvision's layout (scene recognition), registered as `imagenet.*`."""

from models.imagenet import mobilenet_v2, resnet  # noqa: F401
