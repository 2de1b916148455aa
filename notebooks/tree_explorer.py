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

# %%
from sppd_lib import viz

# %% tags=["parameters"]
run_dir = None  # a run directory, e.g. "../runs/demo"; None: the newest under runs/ (it says which)
interactive = True  # False in HTML exports (sppd report): no widgets, a link back to the index
iteration = None  # the iteration shown first; None: the last one with trees

# %%
viz.setup_notebook()
run = viz.load_run(run_dir)
viz.run_header(run, "Step trees", index_link=not interactive)

# %% [markdown]
# One problem's SPPD step tree: x is the depth of a step, colour its value (Monte-Carlo,
# Bellman or PRM), the symbol its kind (◆ problem, ● step, ★ correct answer, ✕ wrong answer,
# ■ ended without an answer). Blue solid and orange dashed edges lead from a shared prefix to
# the chosen and the rejected step of a preference pair; the pairs are listed as text below
# the tree. Hover a node for its text, mean log-prob, value and pairs. Pick an iteration,
# search or sort the problems (by pairs, correct paths, id) and pick one; in JupyterLab also
# hide deep steps or steps of low value.

# %%
viz.explorer_view(run, iteration, interactive)
