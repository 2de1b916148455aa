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
# # Step-tree explorer
#
# One problem's SPPD step tree per figure: x is the depth of a step, colour its value
# (Monte-Carlo, Bellman or PRM), the symbol its kind (◆ problem, ● step, ★ correct answer,
# ✕ wrong answer, ■ ended without an answer). Green and red edges lead from a shared prefix to
# the chosen and the rejected step of a preference pair. Hover a node for its text, mean
# log-prob, value and pairs.

# %%
from sppd_lib import viz

# %% tags=["parameters"]
run_dir = None  # a run directory; None: the latest run under runs/
iteration = None  # None: the last iteration with trees
featured_first = 3  # static part: the first problems ...
featured_most_pairs = 3  # ... and the problems with the most pairs
interactive = True  # False in HTML exports, where widgets cannot run

# %%
viz.setup_notebook()
run = viz.load_run(run_dir)

# %% [markdown]
# ## Explorer
# Pick an iteration and a problem; hide deep steps or steps of low value.

# %%
viz.explorer_view(run, iteration, interactive)

# %% [markdown]
# ## Selected trees
# The first problems of the iteration, then those with the most pairs.

# %%
for figure in viz.featured_tree_figures(run, iteration, featured_first, featured_most_pairs):
    figure.show()
