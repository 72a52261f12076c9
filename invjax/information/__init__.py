"""Mutual-information estimators."""
from invjax.information import ksg
from invjax.information.ksg import ksg_mutual_information, mixed_ksg_mutual_information

__all__ = ["ksg", "ksg_mutual_information", "mixed_ksg_mutual_information"]
