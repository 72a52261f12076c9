r"""Smoke run of every attack on a tiny invertible classifier it trains itself (CPU, minutes).

  python -m launch.attack --config=launch/configs/attack_smoke.py --workdir=/tmp/attack_smoke

Trains a 1-level additive Glow classifier (linear head on the flat latent) for 300
steps on the embedded mini CIFAR-10 (1,000 images) into `<workdir>/classifier`
(reused on a rerun), then attacks the correctly classified images among the first
100 test images with FGSM, PGD-10, Carlini-Wagner and the three latent attacks,
plus the invariance (metameric) attack. Expect a clean accuracy around 0.3 (it is a
plumbing check, not a model) and every attack near 100% success at the largest
epsilon, the latent attacks in a fraction of PGD's time.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.dataset = "cifar10_mini"
  config.num_classes = 10
  # The classifier: flow name + constructor kwargs (as in launch/train_classifier.py).
  config.model = ml_collections.ConfigDict(dict(
      name="glow", num_levels=1, num_steps=2, hidden=16, coupling="additive"))
  config.head = "slice"
  config.slice_dims = None
  config.input_offset = -0.5  # the model sees x - 0.5, as in launch/train_classifier.py
  config.checkpoint_dir = ""  # "": <workdir>/classifier, trained below if missing
  config.train_steps = 300
  config.batch_size = 64
  config.learning_rate = 1e-3
  config.nll_weight = 0.0
  # The attacks.
  config.attacks = ("fgsm", "pgd", "cw", "latent_closed_form", "latent_jacobian",
                    "latent_jacobian_linear", "latent_optimize", "invariance")
  config.num_examples = 100
  config.norm = "linf"
  config.epsilons = (1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255)
  config.pgd_steps = 10
  config.cw_steps = 50
  config.cw_search_steps = 3
  config.latent_iters = 3
  config.latent_candidates = 3  # top-3 classes per Jacobian-aware step (0: all)
  config.latent_opt_steps = 20
  return config
