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
# # Comparing runs
#
# Several runs side by side, e.g. a γ sweep (γ = 0 is Step-DPO) or value estimators.

# %%
from sppd_lib import viz

# %% tags=["parameters"]
run_dirs = []  # run directories to compare
metric = "pass@1"  # the metric of the figure
interactive = True  # False in HTML exports (sppd report): a link back to the index

# %%
viz.setup_notebook()
runs = [viz.load_run(path) for path in run_dirs]
viz.runs_header(runs, "Comparing runs", index_link=not interactive)

# %%
viz.compare_runs_figure(runs, metric)

# %% [markdown]
# ## Final scores
# First and last evaluated iteration of every run, benchmark and metric.

# %%
viz.final_scores_view(runs)

# %% [markdown]
# ## What differs between the runs' configs

# %%
viz.config_diff_table(runs)
