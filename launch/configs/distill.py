r"""Teacher CNN -> invertible student distillation, then the attack transfer table.

  python -m launch.distill --config=launch/configs/distill.py:smoke --workdir=/tmp/distill_smoke
  python -m launch.distill --config=launch/configs/distill.py:cpu \
      --workdir=runs/distill_cifar10_cpu --data_dir=../shared/data/cifar10
  python -m launch.distill --config=launch/configs/distill.py:cpu,jacobian \
      --config.teacher.workdir=runs/distill_cifar10_cpu/teacher \
      --workdir=runs/distill_cifar10_cpu_jacobian --data_dir=../shared/data/cifar10
  python -m launch.distill --config=launch/configs/distill.py \
      --workdir=runs/distill_cifar10 --data_dir=../shared/data/cifar10
  # side by side: python -m launch.distill --workdir=C --compare=baseline=A,jacobian=B

`smoke`: on the embedded mini CIFAR-10 (1,000 train / 500 test images), a SmallCNN teacher
(400 steps) distilled into a tiny i-RevNet classifier with a pooled linear head (300 steps,
T = 4), then PGD-10 (L_inf 8/255 and L2 0.5) on the teacher, PGD-10 on the student evaluated
on the teacher, and the closed-form latent attack on the student evaluated on the teacher, on
up to 100 test images the teacher gets right. A plumbing check, not a result.

`cpu`: all 50,000 CIFAR-10 training images on a CPU: a SmallCNN teacher (widths 32-64-128)
and a 6-block i-RevNet student (hidden 32, pooled linear head), 4,000 steps of batch 128
each, then PGD-20 and the Jacobian-aware latent attack (margins 0, 5, 20 and 40, and once
without the epsilon ball; its latent target decoded exactly and to first order) on the first
500 test images the teacher gets right, and the student's local Lipschitz constants in both
directions. `cpu,jacobian` adds Jacobian matching (Srinivas & Fleuret 2018; beta 10, T_j 4):
the loss gains `jacobian_weight * 2 (1 - cos(g_student, g_teacher))` on the input gradients of
the teacher's predicted class; a student step costs about twice as much. Reuse the teacher of
a finished `cpu` run with `--config.teacher.workdir` (a teacher retrained on another kind of
CPU gets other weights: XLA:CPU picks other kernels). Results: docs/results/transfer.md.

Default (no argument): full CIFAR-10 for a GPU/TPU, ResNet-18 teacher -> 18-block i-RevNet
student (NOT run inside invjax yet; a CIFAR ResNet-18 reaches about 93-95% with flips + crops
in ~30k-40k steps of batch 128); the transfer table attacks the first 1,000 correctly
classified test images with PGD-20 (L_inf 8/255, L2 0.5) and the Jacobian-aware latent attack.
"""
import ml_collections

from launch.configs import parse_arg


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  arg = parse_arg(arg, smoke=False, cpu=False, jacobian=False)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_train = 0  # 0: all
  config.num_test = 0
  config.num_classes = 10
  config.progress = True
  config.data_parallel = "auto"  # a mesh over the local devices when there are several
  if arg.smoke:
    config.dataset = "cifar10_mini"
    config.teacher = dict(
        name="small_cnn", kwargs=dict(widths=(16, 32, 64)), workdir="",  # "": <workdir>/teacher
        num_steps=400, batch_size=64, learning_rate=3e-3, warmup_steps=20, grad_clip=5.0,
        weight_decay=0.0, augment=True, log_every=50, checkpoint_every=200, max_to_keep=1,
        eval_every=0, eval_batch_size=250)
    config.student = dict(
        model=dict(name="irevnet", num_blocks=(1, 1), hidden=16), head="pooled",
        input_offset=0.5, init_batch_size=64, num_steps=300, batch_size=64, learning_rate=2e-3,
        warmup_steps=20, grad_clip=10.0, weight_decay=0.0, jacobian_weight=0.0,
        jacobian_class="teacher", jacobian_temperature=1.0, temperature=4.0, alpha=0.0,
        augment=True, log_every=50, checkpoint_every=150, max_to_keep=1)
    config.attack = dict(
        num_examples=100, batch_size=100, norms=("linf", "l2"), epsilons=(8 / 255, 0.5),
        pgd_steps=10, latent_method="closed_form", latent_kappa=(0.0,),
        latent_decode_step=("exact",), latent_candidates=3, latent_unconstrained=True,
        lipschitz_examples=16, autoattack_examples=0, autoattack_steps=100,
        autoattack_queries=5000)
    return config
  config.dataset = "cifar10"
  config.teacher = dict(
      name="resnet18", kwargs=dict(), workdir="",  # "": <workdir>/teacher
      num_steps=40_000, batch_size=128, learning_rate=2e-3, warmup_steps=1_000, grad_clip=5.0,
      weight_decay=5e-4, augment=True, log_every=200, checkpoint_every=2_000, max_to_keep=2,
      eval_every=4_000, eval_batch_size=500)
  config.student = dict(
      model=dict(name="irevnet", num_blocks=(6, 6, 6), hidden=64), head="pooled",
      input_offset=0.5, init_batch_size=512, num_steps=60_000, batch_size=128,
      learning_rate=1e-3, warmup_steps=2_000, grad_clip=10.0, weight_decay=5e-4,
      # Jacobian matching off; when on, T_j = 4 (T_j = 1 was unstable on an i-RevNet)
      jacobian_weight=0.0, jacobian_class="teacher", jacobian_temperature=4.0,
      temperature=4.0, alpha=0.1, augment=True, log_every=200, checkpoint_every=2_000,
      max_to_keep=2)
  config.attack = dict(
      num_examples=1000, batch_size=250, norms=("linf", "l2"), epsilons=(8 / 255, 0.5),
      pgd_steps=20, latent_method="jacobian", latent_kappa=(0.0,),
      latent_decode_step=("exact",), latent_candidates=3, latent_unconstrained=True,
      lipschitz_examples=64,
      # PGD vs AutoAttack standard (100 iterations, Square 5,000 queries) on the first
      # `autoattack_examples` test images (0: skip), teacher and student side by side
      autoattack_examples=1000, autoattack_steps=100, autoattack_queries=5000)
  if arg.cpu:
    config.teacher.update(dict(
        name="small_cnn", kwargs=dict(), num_steps=4_000, batch_size=128, learning_rate=3e-3,
        warmup_steps=100, weight_decay=0.0, log_every=100, checkpoint_every=500,
        eval_every=1_000, eval_batch_size=500))
    config.student.update(dict(
        model=dict(name="irevnet", num_blocks=(2, 2, 2), hidden=32), init_batch_size=256,
        num_steps=4_000, batch_size=128, learning_rate=2e-3, warmup_steps=100,
        weight_decay=0.0, alpha=0.1, log_every=100, checkpoint_every=500))
    config.attack.update(dict(num_examples=500, batch_size=250,
                              latent_kappa=(0.0, 5.0, 20.0, 40.0),
                              latent_decode_step=("exact", "linear"), lipschitz_examples=32,
                              autoattack_examples=500))
  if arg.jacobian:
    config.student.update(dict(jacobian_weight=10.0, jacobian_class="teacher",
                               jacobian_temperature=4.0))
  return config
