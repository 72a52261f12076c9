r"""Full CIFAR-10: ResNet-18 teacher -> i-RevNet student, then the transfer table (GPU/TPU).

  python -m launch.distill --config=launch/configs/distill_cifar10.py \
      --workdir=runs/distill_cifar10 --data_dir=../shared/data/cifar10
  # reuse a finished teacher run:
  python -m launch.distill --config=launch/configs/distill_cifar10.py \
      --config.teacher.workdir=runs/distill_cifar10/teacher --workdir=runs/distill_cifar10_b \
      --data_dir=../shared/data/cifar10

Without `--data_dir` the data come from tensorflow-datasets (`cifar10`). Data
parallel over all local devices; relaunching the same command resumes.

Targets (NOT run inside invjax yet): a CIFAR ResNet-18 reaches about 93-95% test
accuracy with flips + crops in ~30k-40k steps of batch 128; the i-RevNet student
(pooled linear head) should approach the teacher within a few points, with a
teacher/student agreement around 90%. The transfer table attacks the first 1,000
correctly classified test images with PGD-20 (L_inf 8/255, L2 0.5) and the
Jacobian-aware latent attack.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.dataset = "cifar10"
  config.num_train = 0
  config.num_test = 0
  config.num_classes = 10
  config.progress = True
  config.data_parallel = "auto"

  config.teacher = ml_collections.ConfigDict(dict(
      name="resnet18", kwargs=dict(), workdir="",  # "": <workdir>/teacher
      num_steps=40_000, batch_size=128, learning_rate=2e-3, warmup_steps=1_000, grad_clip=5.0,
      weight_decay=5e-4, augment=True, log_every=200, checkpoint_every=2_000, max_to_keep=2,
      eval_every=4_000, eval_batch_size=500))

  config.student = ml_collections.ConfigDict(dict(
      model=dict(name="irevnet", num_blocks=(6, 6, 6), hidden=64), head="pooled",
      input_offset=0.5, init_batch_size=512, num_steps=60_000, batch_size=128,
      learning_rate=1e-3, warmup_steps=2_000, grad_clip=10.0, weight_decay=5e-4,
      # Jacobian matching off; when on, T_j = 4 (T_j = 1 was unstable on an i-RevNet, README)
      jacobian_weight=0.0, jacobian_class="teacher", jacobian_temperature=4.0,
      temperature=4.0, alpha=0.1, augment=True, log_every=200, checkpoint_every=2_000,
      max_to_keep=2))

  config.attack = ml_collections.ConfigDict(dict(
      num_examples=1000, batch_size=250, norms=("linf", "l2"), epsilons=(8 / 255, 0.5),
      pgd_steps=20, latent_method="jacobian", latent_kappa=(0.0,), latent_candidates=3,
      latent_unconstrained=True, lipschitz_examples=64))
  return config
