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
# # Pairs, margins and training

# %%
from sppd_lib import viz

# %% tags=["parameters"]
run_dir = None  # a run directory, e.g. "../runs/demo"; None: the newest under runs/ (it says which)
interactive = True  # False in HTML exports (sppd report): no widgets, a link back to the index

# %%
viz.setup_notebook()
run = viz.load_run(run_dir)
viz.run_header(run, "Pairs, margins and training", index_link=not interactive)

# %% [markdown]
# SPPD trains on sibling steps whose values differ by Δv = v(chosen) − v(rejected) > the
# threshold, with the loss −log σ(β·h − margin), margin γ·Δv (dynamic), a constant (fixed)
# or 0 (Step-DPO): the implicit reward margin β·h has to exceed the value margin. The pairs
# themselves, as text, are on the "Pairs as text" page.

# %% [markdown]
# ## Trees and pairs per iteration
# How many trees have 0, 1, 2, ... correct complete paths, pairs found, and the tokens the
# tree sampler generated against a flat sampler writing the same complete paths in full.

# %%
viz.tree_stats_figure(run)

# %% [markdown]
# ## Why trees gave no pair
# Per iteration, from pairs_summary.json.

# %%
viz.no_pair_reasons(run)

# %% [markdown]
# ## Learned pairs
# A pair is learned when its implicit reward margin β·h exceeds the loss margin it was asked
# for (loss below log 2), read the last time it was in a training batch (before that batch's
# update). Reward accuracy counts β·h > 0: the pair is ranked the right way, learned or not.

# %%
viz.learned_table(run)

# %% [markdown]
# ## Held-out pairs: before and after training
# With train.heldout_trees > 0 the pairs of some trees are kept out of training and scored
# after it: does the policy rank pairs it never saw (reward accuracy), and did the chosen
# step's log-prob fall along with the rejected one's (likelihood displacement)?

# %%
viz.heldout_table(run)

# %%
viz.margin_histograms(run)

# %%
viz.pairs_by_depth(run)

# %% [markdown]
# ## Reward margin against value margin
# A pair above the diagonal has a positive loss argument β·h − margin.

# %%
viz.reward_vs_value_margin(run)

# %% [markdown]
# ## Training curves
# Every iteration's phases (SFT, DPO, SPPD) laid end to end; colour is the iteration, grey
# dotted lines start each iteration·phase, and a panel with two lines draws the first solid
# and the second dotted (as its title says).

# %%
viz.training_curves(run)
