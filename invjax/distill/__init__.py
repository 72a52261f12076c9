"""Teacher -> invertible student distillation and the attack-transfer evaluation.

Modules:
  core      KD and Jacobian-matching losses, `distill` (the training), gradient cosine,
            agreement
  student   `train_student` (initialise + distil, resumable), `fidelity`
  transfer  `transfer_table` (do attacks on the student transfer to the teacher?),
            its markdown, `compare_runs`
"""
from invjax.distill.core import (agreement, class_log_prob_gradient, distill, distillation_loss,
                                 gradient_alignment_loss, gradient_cosine, kd_loss, make_loss_fn,
                                 student_logits_fn)
from invjax.distill.student import fidelity, train_student
from invjax.distill.transfer import (TransferTable, compare_runs, comparison_markdown, markdown,
                                     transfer_table)

__all__ = ["TransferTable", "agreement", "class_log_prob_gradient", "compare_runs",
           "comparison_markdown", "distill", "distillation_loss", "fidelity",
           "gradient_alignment_loss", "gradient_cosine", "kd_loss", "make_loss_fn", "markdown",
           "student_logits_fn", "train_student", "transfer_table"]
