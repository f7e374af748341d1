"""Privacy attacks on unlearned models, and the table that runs them against every method.

* :mod:`.membership` — Yeom et al.'s loss-threshold attack (the paper's Table IV).
* :mod:`.population` — loss / confidence / margin ROC AUC and TPR at low FPR, forgotten vs unseen points.
* :mod:`.lira` — per-example likelihood-ratio attacks with shadow models: LiRA and its unlearning form U-LiRA.
* :mod:`.difference` — the model-difference attack (an attacker with the model before and after).
* :mod:`.methods` — the unlearning methods attacked (:class:`Unlearner`: one ``unlearn(trained, forget, data)``
  function, optionally a ``train(data)``), by name; register more with :func:`register_unlearner`.
* :mod:`.worlds` — the target and shadow models, run once per method and cached on disk.
* :mod:`.table` — :func:`run_privacy`, behind ``prune bench privacy``.

See docs/privacy.md for what each attack shows.
"""

from .difference import (
    DIFFERENCE_SCORES,
    difference_scores,
    learned_difference_attack,
    model_difference_attack,
    pair_features,
    precision_at_k,
)
from .lira import (
    assign_shadow_sets,
    likelihood_ratio_attack,
    lira_scores,
    minimum_shadows,
)
from .membership import (
    ATTACK_VARIANTS,
    AttackResult,
    MIAScores,
    loss_threshold_attack,
    mean_loss,
    mia_auc_tpr,
    mia_recall,
    per_example_loss,
)
from .methods import (
    TrainingSet,
    Unlearner,
    get_unlearner,
    register_unlearner,
    resolve_unlearners,
    unlearner_names,
)
from .population import (
    SCORES,
    RocSummary,
    check_disjoint,
    log_probabilities,
    membership_scores,
    population_attack,
    roc_summary,
    scaled_confidence,
    tpr_at_fpr,
)
from .table import PrivacyConfig, run_privacy

__all__ = [
    "per_example_loss", "mean_loss", "loss_threshold_attack", "AttackResult", "mia_recall", "mia_auc_tpr",
    "MIAScores", "ATTACK_VARIANTS",
    "log_probabilities", "membership_scores", "scaled_confidence", "SCORES", "RocSummary", "roc_summary",
    "tpr_at_fpr", "check_disjoint", "population_attack",
    "assign_shadow_sets", "minimum_shadows", "lira_scores", "likelihood_ratio_attack",
    "DIFFERENCE_SCORES", "difference_scores", "precision_at_k", "model_difference_attack", "pair_features",
    "learned_difference_attack",
    "TrainingSet", "Unlearner", "register_unlearner", "unlearner_names", "get_unlearner", "resolve_unlearners",
    "PrivacyConfig", "run_privacy",
]
