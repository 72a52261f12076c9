r"""Passeurs smoke run on the embedded mini CIFAR-10 (1,000 train, 250 + 250 test), 2-core CPU.

  python -m launch.passeurs --config=launch/configs/passeurs_smoke.py --workdir=/tmp/passeurs_smoke

EfficientNet-Lite0 features at 32x32 (native CIFAR resolution), 2 sign-gradient steps
(L_inf <= 2/255) and a 4-split audit. The public accuracy rises well above the private one
(see the notebook colabs/passeurs.ipynb for the same story with numbers); the audit flags
the poisoned set, not the clean one.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.dataset = "cifar10_mini"
  config.data_dir = ""
  config.train_limit = 0  # 0: all
  config.test_limit = 0
  config.public_boundary = 5000  # official test index < 5000: public, else private
  config.extractor = "efficientnet_lite0"  # or "random_conv" (untrained baseline)
  config.resolution = 32
  config.batch_size = 250
  config.steps = 2
  config.methods = "sign"  # "sign", "rotation" or "sign,rotation"
  config.margin = "ovr_hinge"
  config.sign_momentum = 0.0  # > 0: momentum sign steps (poison.sign_step_momentum)
  config.rotation_delta = 0.5
  config.svm_backend = "invjax"  # or "liblinear" (the reference package, for comparison)
  config.svm_C = 1.0
  config.svm_tol = ml_collections.config_dict.placeholder(float)  # None: backend default
  config.audit = True
  config.audit_splits = 4
  config.progress = True
  return config
