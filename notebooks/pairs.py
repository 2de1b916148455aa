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
# # Pairs as text

# %%
from sppd_lib import viz

# %% tags=["parameters"]
run_dir = None  # a run directory, e.g. "../runs/demo"; None: the newest under runs/ (it says which)
interactive = True  # False in HTML exports (sppd report): no widgets, a link back to the index

# %%
viz.setup_notebook()
run = viz.load_run(run_dir)
viz.run_header(run, "Pairs as text", index_link=not interactive)

# %% [markdown]
# Every sibling step pair the trainer saw: the prefix they share (click it for all of it),
# the chosen and the rejected step, their values, Δv, the margin the train config gives it,
# the implicit reward margin β·h the first and the last time it was trained on, and whether
# it was learned (β·h > margin). Click a header to sort; filter by iteration, depth, learned
# or any text. In Python: `viz.pairs_frame(run)` is the same table as a DataFrame.

# %%
viz.no_pair_reasons(run)

# %%
viz.pairs_table(run)
