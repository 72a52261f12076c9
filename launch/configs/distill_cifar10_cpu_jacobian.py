r"""`distill_cifar10_cpu.py` with Jacobian matching (Srinivas & Fleuret 2018) in the distillation.

  python -m launch.distill --config=launch/configs/distill_cifar10_cpu_jacobian.py \
      --config.teacher.workdir=runs/distill_cifar10_cpu/teacher \
      --workdir=runs/distill_cifar10_cpu_jacobian --data_dir=../shared/data/cifar10

The same teacher (reuse a finished `distill_cifar10_cpu.py` run's, as above; or let it train in
`<workdir>/teacher`: same seed, but on another kind of CPU XLA:CPU picks other kernels and the
weights differ: 81.2% on an AVX-512 machine, 80.5% on an AMD EPYC without AVX-512) and the same student and schedule; the loss gains
`jacobian_weight * 2 (1 - cos(g_student, g_teacher))` on the input gradients of the teacher's
predicted class at temperature `jacobian_temperature` (`invjax.distill`). A student step costs
about twice as much (a double backward pass). The question it answers: do attacks crafted on
the student, the latent-inversion ones included, transfer better to the teacher when the two
models' input gradients point the same way? `python -m launch.distill --workdir=C
--compare=baseline=<baseline workdir>,jacobian=<this workdir>` puts runs side by side.
Measured (README, 2026-12-02, same teacher; beta 3 / beta 10): cosine 0.138 -> 0.237 / 0.333,
PGD-20 transfer at 8/255 0.402 -> 0.754 / 0.936, latent (linear decode, margin 40) 0.266 ->
0.518 / 0.698; student 25 vs 13 min on that CPU.
"""
import ml_collections

from launch.configs import distill_cifar10_cpu


def get_config() -> ml_collections.ConfigDict:
  config = distill_cifar10_cpu.get_config()
  config.student.update(dict(jacobian_weight=10.0, jacobian_class="teacher",
                             jacobian_temperature=4.0))
  return config
