"""Mutual information: estimators and the label information of invertible classifiers' latents.

* `ksg`: non-parametric kNN estimators, KSG-1 (continuous-continuous) and Ross 2014
  (continuous-discrete).
* `critics`: Flax critics scoring (x_i, y_j) pairs (separable, concatenated MLP).
* `variational`: InfoNCE, NWJ and MINE (Donsker-Varadhan with the EMA-corrected gradient)
  lower bounds and `train_critic`.
* `latent`: the label information of an invertible classifier's nuisance latent (Jacobsen et
  al. 2019) and of its logits.
"""
from invjax.information import critics
from invjax.information import ksg
from invjax.information import latent
from invjax.information import variational
from invjax.information.critics import MLP, ConcatCritic, SeparableCritic
from invjax.information.ksg import ksg_mutual_information, mixed_ksg_mutual_information
from invjax.information.latent import (LogitInformation, NuisanceInformation,
                                       fit_logistic_regression, information_summary, latent_codes,
                                       logit_information,
                                       nuisance_information_from_latent,
                                       nuisance_label_information, nuisance_part, project)
from invjax.information.variational import (BOUNDS, CriticEstimate, CriticState, MineEMA,
                                            donsker_varadhan, evaluate_bound, infonce,
                                            mine_ema_init, mine_loss, nwj, train_critic)

__all__ = [
    "BOUNDS", "ConcatCritic", "CriticEstimate", "CriticState", "LogitInformation", "MLP",
    "MineEMA", "NuisanceInformation", "SeparableCritic", "critics", "donsker_varadhan",
    "evaluate_bound", "fit_logistic_regression", "infonce", "information_summary", "ksg", "ksg_mutual_information",
    "latent", "latent_codes", "logit_information", "mine_ema_init", "mine_loss",
    "mixed_ksg_mutual_information", "nuisance_information_from_latent",
    "nuisance_label_information", "nuisance_part", "nwj", "project", "train_critic",
    "variational",
]
