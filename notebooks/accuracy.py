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
# # Accuracy per iteration
#
# Iteration 0 is the starting model. pass@1 is greedy decoding; maj@N, vote@N and best@N
# pick one of N samples by majority, by value-weighted vote and by the best value. Bars are
# 95% Wilson intervals.

# %%
from sppd_lib import viz

# %% tags=["parameters"]
run_dir = None  # a run directory; None: the latest run under runs/

# %%
viz.setup_notebook()
run = viz.load_run(run_dir)

# %%
viz.accuracy_figure(run)

# %% [markdown]
# ## All scores
# accuracy [95% interval] correct/problems

# %%
viz.summary_table(run)

# %% [markdown]
# ## Change since iteration 0, problem by problem
# gained: wrong → right; lost: right → wrong. A small McNemar p says the change is unlikely
# to be chance; it uses the pairing, so it is sharper than comparing the two intervals.

# %%
viz.change_table(run)
