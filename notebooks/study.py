# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python (sppd)
#     language: python
#     name: sppd
# ---

# %% [markdown]
# # The margin study
#
# Every arm is trained from the same starting model on the same step trees and pairs, once
# per training seed, and scored greedily on the same held-out problems (SPPD, arXiv
# 2502.13516, Table 4 and Figure 2). `step_dpo` has no margin, `fixed` one constant margin
# (by default the mean of γ·Δv, so it differs from `dynamic` only in the margin's spread),
# `dynamic_g<γ>` the SPPD margin γ·Δv; `sft` and `dpo` are the simple baselines.

# %%
from sppd_lib import viz, viz_study

# %% tags=["parameters"]
study_dir = "studies/study_smoke"  # a study directory (studies/<study_id>)
compare = None  # two arms whose flipped problems are listed; None: the config's choice

# %%
viz.setup_notebook()
study = viz_study.open_study(study_dir)

# %% [markdown]
# ## Arms (Table 4)
# Greedy pass@1, mean over the training seeds [95% t interval across seeds], and the change
# against `step_dpo` (no margin). With 3 seeds the t interval is wide: it is honest about
# training noise, not about the finite set of problems (see the paired comparisons).

# %%
viz_study.arm_table(study)

# %% [markdown]
# ## pass@1 against γ (Figure 2)

# %%
viz_study.gamma_figure(study)

# %% [markdown]
# ## Paired comparisons
# Same problems for both arms: the difference of mean accuracy with a 95% paired bootstrap
# interval over problems; problems that flip when each arm answers by its majority over seeds,
# and the exact McNemar p of those flips. "best" dynamic arms are chosen on these same
# problems, so their comparisons are optimistic.

# %%
viz_study.comparison_table(study)

# %% [markdown]
# ## The value gaps the arms trained on
# A dynamic margin can only differ from a fixed one where Δv varies.

# %%
viz_study.delta_value_figure(study)

# %% [markdown]
# ## Training

# %%
viz_study.training_figure(study)

# %% [markdown]
# ## Problems that flip between two arms

# %%
arm, other = compare or (None, None)
viz_study.flip_table(study, arm, other)
