"""Non-invertible networks: CIFAR-10 teachers (`cnn`), the Parseval residual CNN
(`parseval_cnn`) and the frozen ImageNet EfficientNet-Lite0 feature extractor
(`efficientnet`, weights via `efficientnet_convert`, convolutions in `tf_conv`)."""
from invjax.nets import cnn
from invjax.nets import efficientnet
from invjax.nets import efficientnet_convert
from invjax.nets import parseval_cnn
from invjax.nets import tf_conv
from invjax.nets.cnn import ResNet18, SmallCNN, make_teacher
from invjax.nets.efficientnet import EfficientNetLite0
from invjax.nets.efficientnet_convert import load_pretrained
from invjax.nets.parseval_cnn import ParsevalCNN

__all__ = [
    "EfficientNetLite0",
    "ParsevalCNN",
    "ResNet18",
    "SmallCNN",
    "cnn",
    "efficientnet",
    "efficientnet_convert",
    "load_pretrained",
    "make_teacher",
    "parseval_cnn",
    "tf_conv",
]
