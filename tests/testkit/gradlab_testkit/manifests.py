"""Entry-point manifests of the test-only plugins (import-light: no torch, no Lightning)."""

from lightning_gradlab.core.manifest import PluginManifest

TEST_ONLY = "test-only plugin of tests/testkit (proves its kind end to end); "

STRATEGY = PluginManifest(
    name="CountingDDPStrategy",
    kind="strategy",
    target="gradlab_testkit.strategy:CountingDDPStrategy",
    summary="DDP whose communication hook all-reduces gradient buckets (mean) and counts them",
    paper=TEST_ONLY + "Li et al. 2020, PyTorch Distributed (arXiv:2006.15704)",
    modifies=("communication_hook",),
    strategy_name="counting_ddp",
)
OPTIMIZER = PluginManifest(
    name="BlockNormalizedSGD",
    kind="optimizer",
    target="gradlab_testkit.optimizer:BlockNormalizedSGD",
    summary="SGD on block-normalised gradients: each module's gradient divided by its norm",
    paper=TEST_ONLY + "Yu et al. 2017, Block-Normalized Gradient Method (arXiv:1707.04822)",
    modifies=("optimizer_step",),
)
MIXIN = PluginManifest(
    name="FloodingMixin",
    kind="mixin",
    target="gradlab_testkit.flooding:FloodingMixin",
    summary="Flooding: train on |L - b| + b, the flood decision taken on the loss reduced over ranks",
    paper=TEST_ONLY + "Ishida et al. 2020, Do We Need Zero Training Loss After Achieving Zero Training Loss?"
    " (ICML, arXiv:2002.08709)",
    modifies=("backward",),
)
SAMPLER = PluginManifest(
    name="StratifiedBatchSampler",
    kind="sampler",
    target="gradlab_testkit.sampler:StratifiedBatchSampler",
    summary="Class-stratified batches: per-class seeded permutations interleaved, rank-sharded, resumable",
    paper=TEST_ONLY + "stratified mini-batch sampling",
    modifies=("train_sampler",),
)
PARAM_GROUP = PluginManifest(
    name="LearnedLogitScale",
    kind="callback",
    target="gradlab_testkit.logit_scale:LearnedLogitScale",
    summary="Adds a learnable logit scale s in its own parameter group (no weight decay, own lr)",
    paper=TEST_ONLY + "Wang et al. 2017, NormFace (arXiv:1704.06369)",
    modifies=("parameter_groups",),
)
