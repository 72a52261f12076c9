r"""Smoke run of teacher -> invertible student distillation + the transfer table (CPU, minutes).

  python -m launch.distill --config=launch/configs/distill_smoke.py --workdir=/tmp/distill_smoke

On the embedded mini CIFAR-10 (1,000 train / 500 test images): a SmallCNN
teacher (400 steps), distilled into a tiny i-RevNet classifier with a pooled
linear head (300 steps, T = 4), then PGD-10 (L_inf 8/255 and L2 0.5) on the
teacher, PGD-10 on the student evaluated on the teacher, and the closed-form
latent attack on the student evaluated on the teacher, on up to 100 test images
the teacher gets right. A plumbing check, not a result: expect teacher and
student accuracies well above chance (10%) but far from a full run.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.dataset = "cifar10_mini"
  config.num_train = 0  # 0: all
  config.num_test = 0
  config.num_classes = 10
  config.progress = True
  config.data_parallel = "auto"  # a mesh over the local devices when there are several

  config.teacher = ml_collections.ConfigDict(dict(
      name="small_cnn", kwargs=dict(widths=(16, 32, 64)), workdir="",  # "": <workdir>/teacher
      num_steps=400, batch_size=64, learning_rate=3e-3, warmup_steps=20, grad_clip=5.0,
      weight_decay=0.0, augment=True, log_every=50, checkpoint_every=200, max_to_keep=1,
      eval_batch_size=250))

  config.student = ml_collections.ConfigDict(dict(
      model=dict(name="irevnet", num_blocks=(1, 1), hidden=16), head="pooled",
      input_offset=0.5, init_batch_size=64, num_steps=300, batch_size=64, learning_rate=2e-3,
      warmup_steps=20, grad_clip=10.0, weight_decay=0.0, jacobian_weight=0.0,
      jacobian_class="teacher", jacobian_temperature=1.0, temperature=4.0, alpha=0.0,
      augment=True, log_every=50, checkpoint_every=150, max_to_keep=1))

  config.attack = ml_collections.ConfigDict(dict(
      num_examples=100, batch_size=100, norms=("linf", "l2"), epsilons=(8 / 255, 0.5),
      pgd_steps=10, latent_method="closed_form", latent_kappa=(0.0,), latent_candidates=3,
      latent_unconstrained=True, lipschitz_examples=16))
  return config
