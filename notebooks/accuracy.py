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

# %%
from sppd_lib import viz

# %% tags=["parameters"]
run_dir = None  # a run directory, e.g. "../runs/demo"; None: the newest under runs/ (it says which)
interactive = True  # False in HTML exports (sppd report): no widgets, a link back to the index

# %%
viz.setup_notebook()
run = viz.load_run(run_dir)
viz.run_header(run, "Accuracy", index_link=not interactive)

# %% [markdown]
# Iteration 0 is the starting model. pass@1 is greedy decoding; maj@N, vote@N and best@N
# pick one of N samples by majority, by value-weighted vote and by the best value. Bars are
# 95% Wilson intervals; n is the number of problems of each benchmark.

# %%
viz.accuracy_figure(run)

# %% [markdown]
# ## Coverage: pass@k
# pass@k against k, from the trees of the training prompts and from the sampled evaluation
# (when eval.num_samples > 0), one line per iteration (unbiased estimator, mean over the
# problems with at least k samples). Training that sharpens the policy raises pass@1 and may
# lower pass@k at large k. The paths of a tree share prefixes: its curve is what the tree
# found, not k independent samples.

# %%
viz.pass_at_k_figure(run)

# %% [markdown]
# ## All scores
# accuracy [95% interval] correct/problems

# %%
viz.summary_table(run)

# %% [markdown]
# ## Change between iterations, problem by problem
# First → last evaluated iteration, then each consecutive step. gained: wrong → right; lost:
# right → wrong. A small McNemar p says the change is unlikely to be chance; it uses the
# pairing, so it is sharper than comparing the two intervals.

# %%
viz.changes_table(run)

# %% [markdown]
# ## Response length

# %%
viz.response_length_figure(run)

# %% [markdown]
# ## How the grader saw the greedy responses
# Problems per status: correct, wrong, no_answer (no final answer found), unparsable (an
# answer the grader could not read), timeout and error (the grader gave up: counted wrong).

# %%
viz.grader_status_table(run)

# %% [markdown]
# ## Problems gained and lost
# The gold answer and both greedy responses side by side, the extracted answer marked (blue:
# right, orange: wrong). In JupyterLab pick any two iterations; the HTML page shows first →
# last and each consecutive step. Filter by benchmark or change, or type any text.

# %%
viz.responses_view(run, interactive)
