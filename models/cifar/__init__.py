"""CIFAR-100 backbones of RepDistiller / mdistiller / ASKD, registered as `cifar.<RepDistiller name>`."""

from models.cifar import mobilenetv2, resnet, resnetv2, shufflenetv1, shufflenetv2, vgg, wrn  # noqa: F401
