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
#
# SPPD trains on sibling steps whose values differ by Δv = v(chosen) − v(rejected) > 0.5, with
# the loss −log σ(β·h − γ·Δv): the implicit reward margin β·h has to exceed the value margin.

# %%
from sppd_lib import viz

# %% tags=["parameters"]
run_dir = None  # a run directory; None: the latest run under runs/

# %%
viz.setup_notebook()
run = viz.load_run(run_dir)

# %% [markdown]
# ## Trees and pairs per iteration
# Complete paths per tree, pairs found, and the tokens the tree sampler generated against
# a flat sampler writing the same complete paths in full.

# %%
viz.tree_stats_figure(run)

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
# Every iteration's phases (SFT, DPO, SPPD) laid end to end; dotted lines mark iterations.

# %%
viz.training_curves(run)
