"""Non-invertible networks: CIFAR-10 teachers (`cnn`) and the frozen ImageNet
EfficientNet-Lite0 feature extractor (`efficientnet`, weights via `efficientnet_convert`)."""
