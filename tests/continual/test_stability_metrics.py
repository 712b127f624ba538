"""Stability-gap metrics (De Lange et al. 2023): hand-made trajectories, brute force, Metric state, validation."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

from lightning_gradlab.continual.metrics import StabilityMetrics, micro_accuracy
from lightning_gradlab.continual.stability import stability_metrics

NAN = math.nan
# the spec's trajectory: task 0 [.90, .95 | task 1 starts | .40, .60, .80], task 1 [.50, .70, .90]
SPEC = [[0.90, NAN], [0.95, NAN], [0.40, 0.50], [0.60, 0.70], [0.80, 0.90]]
SPEC_TASKS = [0, 0, 1, 1, 1]


def same(a: dict, b: dict) -> bool:
    """Equal keys and bit-identical values (NaN == NaN)."""
    return a.keys() == b.keys() and all(
        float(a[k]) == float(b[k]) or (math.isnan(float(a[k])) and math.isnan(float(b[k]))) for k in a
    )


def random_history(seed: int, num_tasks: int = 4, unseen: float = NAN) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    tasks = [t for t in range(num_tasks) for _ in range(rng.integers(1, 9))]
    values = rng.random((len(tasks), num_tasks))
    for e, t in enumerate(tasks):
        values[e, t + 1 :] = unseen
    return values, tasks


def brute_force(values: np.ndarray, tasks: list[int], windows, beta: int, average: str) -> dict[str, float]:
    """The definitions written out over the whole history (higher is better)."""
    tasks_arr, last, k = np.asarray(tasks), len(tasks) - 1, tasks[-1] + 1
    end = [int(np.nonzero(tasks_arr == i)[0].max()) for i in range(k)]
    first = [int(np.nonzero(tasks_arr == i)[0].min()) for i in range(k)]
    out = {"acc": values[last, :k].mean()}
    mins = [values[end[i] + 1 :, i].min() for i in range(k - 1)]
    out["min_acc"] = np.mean(mins) if mins else NAN
    out["forg"] = np.mean([values[end[i], i] - values[last, i] for i in range(k - 1)]) if k > 1 else NAN
    out["wc_acc"] = np.mean(mins + [values[last, k - 1]])
    averaged = range(k) if average == "seen" else range(k - 1)
    for w in windows:
        drops, rises = [], []
        for i in averaged:
            series = values[first[i] :, i]
            pairs = [(m, n) for n in range(len(series)) for m in range(max(0, n - w + 1), n)]
            drops.append(max([0.0] + [series[m] - series[n] for m, n in pairs]))
            rises.append(max([0.0] + [series[n] - series[m] for m, n in pairs]))
        out[f"wf_{w}"], out[f"wp_{w}"] = (np.mean(drops), np.mean(rises)) if drops else (NAN, NAN)
    lca = [values[tasks_arr == i, i][:beta].mean() for i in range(k) if i < k - 1 or (tasks_arr == i).sum() >= beta]
    out[f"lca_{beta}"] = np.mean(lca) if lca else NAN
    return out


def test_spec_trajectory_exact_values() -> None:
    m = stability_metrics(np.array(SPEC), SPEC_TASKS, windows=(2, 3), lca_beta=2)
    assert m["min_acc"] == pytest.approx(0.40, abs=1e-12)
    assert m["wc_acc"] == pytest.approx(0.5 * 0.90 + 0.5 * 0.40, abs=1e-12)  # 1/k A_2(last) + (1 - 1/k) min-ACC
    assert m["acc"] == pytest.approx((0.80 + 0.90) / 2, abs=1e-12)
    assert m["forg"] == pytest.approx(0.95 - 0.80, abs=1e-12)
    # w=2 pairs are consecutive rows: task 0 drops .95->.40, rises .40->.60 / .60->.80; task 1 only rises .20
    assert m["wf_2"] == pytest.approx((0.55 + 0.0) / 2, abs=1e-12)
    assert m["wp_2"] == pytest.approx((0.20 + 0.20) / 2, abs=1e-12)
    # w=3: task 0 window (.40, .60, .80) rises .40, task 1 window (.50, .70, .90) rises .40
    assert m["wf_3"] == pytest.approx(0.275, abs=1e-12)
    assert m["wp_3"] == pytest.approx(0.40, abs=1e-12)
    assert m["lca_2"] == pytest.approx(((0.90 + 0.95) / 2 + (0.50 + 0.70) / 2) / 2, abs=1e-12)
    assert (m["acc_task_0"], m["acc_task_1"]) == (0.80, 0.90)


def test_default_keys_follow_windows_and_beta() -> None:
    m = stability_metrics(np.array(SPEC), SPEC_TASKS)
    assert list(m) == ["acc", "forg", "min_acc", "wc_acc", "wf_10", "wp_10", "wf_100", "wp_100", "lca_10"] + [
        "acc_task_0",
        "acc_task_1",
    ]
    # task 1 is still learned with 3 < beta evaluations: not counted yet (the authors wait for beta)
    assert m["lca_10"] == pytest.approx((0.90 + 0.95) / 2, abs=1e-12)


@pytest.mark.parametrize("average", ["seen", "previous"])
@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_definitions(seed: int, average: str) -> None:
    values, tasks = random_history(seed)
    got = stability_metrics(values, tasks, windows=(2, 5), lca_beta=3, window_average=average)
    for key, want in brute_force(values, tasks, (2, 5), 3, average).items():
        assert got[key] == pytest.approx(want, abs=1e-12, nan_ok=True), key


def test_windowed_plasticity_counts_the_recovery_after_a_drop() -> None:
    # the authors' WP search skips start values below an earlier one in the window and would give 0 here
    m = stability_metrics(np.array([[0.95, NAN], [0.0, 0.5], [0.9, 0.5]]), [0, 1, 1], windows=(3,), lca_beta=1)
    assert m["wp_3"] == pytest.approx(0.9 / 2, abs=1e-12)
    assert m["wf_3"] == pytest.approx(0.95 / 2, abs=1e-12)


def test_first_task_edge_case() -> None:
    m = stability_metrics(np.array([[0.2, NAN], [0.5, NAN], [0.4, NAN]]), [0, 0, 0], windows=(2,), lca_beta=5)
    assert math.isnan(m["min_acc"]) and math.isnan(m["forg"]) and math.isnan(m["acc_task_1"])
    assert m["wc_acc"] == 0.4 == m["acc"]
    assert m["wf_2"] == pytest.approx(0.1, abs=1e-12) and m["wp_2"] == pytest.approx(0.3, abs=1e-12)
    assert math.isnan(m["lca_5"])  # fewer than beta evaluations of the current task: not counted yet
    assert stability_metrics(np.array([[0.2, NAN], [0.5, NAN]]), [0, 0], lca_beta=2)["lca_2"] == 0.35
    previous = stability_metrics(np.array([[0.2, NAN], [0.5, NAN]]), [0, 0], windows=(2,), window_average="previous")
    assert math.isnan(previous["wf_2"]) and math.isnan(previous["wp_2"])


def test_unseen_task_values_are_ignored() -> None:
    values, tasks = random_history(3)
    garbage, _ = random_history(3, unseen=0.123)
    assert same(stability_metrics(values, tasks), stability_metrics(garbage, tasks))


def test_window_average_previous_versus_seen() -> None:
    seen = stability_metrics(np.array(SPEC), SPEC_TASKS, windows=(2,), window_average="seen")
    previous = stability_metrics(np.array(SPEC), SPEC_TASKS, windows=(2,), window_average="previous")
    assert previous["wf_2"] == pytest.approx(0.55, abs=1e-12) and previous["wp_2"] == pytest.approx(0.2, abs=1e-12)
    assert seen["wf_2"] == pytest.approx(0.275, abs=1e-12)
    assert {k: v for k, v in seen.items() if not k.startswith("w")} == {
        k: v for k, v in previous.items() if not k.startswith("w")
    }


def test_lower_is_better_loss_trajectory() -> None:
    loss = np.array([[0.5, NAN], [0.3, NAN], [2.0, 1.5], [1.2, 0.9], [0.6, 0.4]])
    m = stability_metrics(loss, SPEC_TASKS, windows=(2,), lca_beta=2, higher_is_better=False)
    assert m["acc"] == pytest.approx(0.5, abs=1e-12)
    assert m["forg"] == pytest.approx(0.6 - 0.3, abs=1e-12)  # the loss rose: positive forgetting
    assert m["min_acc"] == pytest.approx(2.0, abs=1e-12)  # worst = largest loss after the task ended
    assert m["wc_acc"] == pytest.approx((0.4 + 2.0) / 2, abs=1e-12)
    assert m["wf_2"] == pytest.approx((1.7 + 0.0) / 2, abs=1e-12)  # largest loss rise
    assert m["wp_2"] == pytest.approx((0.8 + 0.6) / 2, abs=1e-12)  # largest loss fall
    assert m["lca_2"] == pytest.approx((0.4 + 1.2) / 2, abs=1e-12)
    assert m["acc_task_0"] == 0.6
    # exactly the accuracy math on -loss: levels flipped back, differences kept
    flipped = stability_metrics(-loss, SPEC_TASKS, windows=(2,), lca_beta=2)
    for key, value in m.items():
        assert value == (flipped[key] if key in ("forg", "wf_2", "wp_2") else -flipped[key]), key


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_metric_equals_post_hoc_at_every_row(higher_is_better: bool) -> None:
    values, tasks = random_history(7)
    settings = dict(windows=(3, 10), lca_beta=4, higher_is_better=higher_is_better, window_average="seen")
    metric = StabilityMetrics(values.shape[1], **settings)
    for e, (row, task) in enumerate(zip(values, tasks, strict=True)):
        metric.update(torch.from_numpy(row), task)
        online = metric.compute()
        assert all(v.dtype == torch.float64 for v in online.values())
        assert same(online, stability_metrics(values[: e + 1], tasks[: e + 1], **settings)), e


def test_metric_state_dict_round_trip_mid_task() -> None:
    values, tasks = random_history(11)
    full = StabilityMetrics(4, windows=(2, 6), lca_beta=3)
    first = StabilityMetrics(4, windows=(2, 6), lca_beta=3)
    cut = len(tasks) // 2
    for e, (row, task) in enumerate(zip(values, tasks, strict=True)):
        full.update(torch.from_numpy(row), task)
        if e < cut:
            first.update(torch.from_numpy(row), task)
    assert tasks[cut - 1] == tasks[cut] or tasks[cut] > tasks[cut - 1]
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = StabilityMetrics(4, windows=(2, 6), lca_beta=3)
    resumed.load_state_dict(torch.load(buffer))
    assert int(resumed.count) == cut
    for row, task in zip(values[cut:], tasks[cut:], strict=True):
        resumed.update(torch.from_numpy(row), task)
    assert same(resumed.compute(), full.compute())
    with pytest.raises(ValueError, match=r"state_dict\['last'\] has shape \(4,\); expected \(5,\)"):
        StabilityMetrics(5, windows=(2, 6), lca_beta=3).load_state_dict(first.state_dict())


def test_metric_reset_and_ddp_settings() -> None:
    metric = StabilityMetrics(2, windows=(2,), lca_beta=2)
    assert metric.sync_on_compute is False and all(fx is None for fx in metric._reductions.values())
    for row, task in zip(SPEC, SPEC_TASKS, strict=True):
        metric.update(torch.tensor(row), task)
    metric.reset()
    metric.update(torch.tensor([0.7, NAN], dtype=torch.float64), 0)
    assert float(metric.compute()["wc_acc"]) == 0.7


def test_memory_does_not_grow_with_the_history() -> None:
    metric = StabilityMetrics(3, windows=(4, 7), lca_beta=2)
    shapes = {k: tuple(v.shape) for k, v in metric.state_dict().items()}
    for e in range(300):
        metric.update(torch.rand(3, generator=torch.Generator().manual_seed(e)), min(e // 100, 2))
    assert {k: tuple(v.shape) for k, v in metric.state_dict().items()} == shapes
    assert shapes["window"] == (3, 6)


def test_forward_adds_the_row_and_returns_the_history_metrics() -> None:
    """``metric(values, task)`` used to raise on the first row of task 1 ("expected 0 or 0")."""
    by_forward, by_update = StabilityMetrics(2, windows=(2,), lca_beta=2), StabilityMetrics(2, windows=(2,), lca_beta=2)
    for e, (row, task) in enumerate(zip(SPEC, SPEC_TASKS, strict=True)):
        out = by_forward(torch.tensor(row, dtype=torch.float64), task)
        by_update.update(torch.tensor(row, dtype=torch.float64), task)
        assert same(out, by_update.compute()) and same(
            out, stability_metrics(SPEC[: e + 1], SPEC_TASKS[: e + 1], windows=(2,), lca_beta=2)
        )
    assert float(by_forward.compute()["min_acc"]) == pytest.approx(0.4)
    assert set(by_forward.metric_state) == set(by_forward._defaults)  # one state: the torchmetrics states


def test_infinite_values_do_not_poison_the_windows() -> None:
    """An overflowing perplexity (inf) then finite values: WF used to stay NaN (inf - inf) for the whole run."""
    m = stability_metrics([[math.inf], [1.0], [0.5]], [0, 0, 0], windows=(2,), lca_beta=1, higher_is_better=False)
    assert m["wf_2"] == 0.0 and m["wp_2"] == math.inf and m["acc"] == 0.5
    # task 0 overflows while learned and stays at inf: equal infinities are no change, not NaN
    both = stability_metrics([[math.inf, NAN], [math.inf, 2.0], [math.inf, 1.0]], [0, 1, 1], windows=(2,), lca_beta=1,
                             higher_is_better=False)  # fmt: skip
    assert both["forg"] == 0.0 and both["wf_2"] == 0.0 and both["wp_2"] == 0.5
    assert not any(math.isnan(v) for v in both.values())


def test_numpy_torch_and_list_inputs_agree() -> None:
    values, tasks = random_history(5)
    reference = stability_metrics(values, tasks)
    assert same(reference, stability_metrics(torch.from_numpy(values), torch.tensor(tasks)))
    assert same(reference, stability_metrics(values.tolist(), np.asarray(tasks)))


def test_accuracy_is_micro_not_torchmetrics_macro() -> None:
    # one task of a class-incremental split: classes {2, 3}; one class-3 sample predicted as class 0
    target, preds = torch.tensor([2, 2, 2, 3]), torch.tensor([2, 2, 2, 0])
    macro = MulticlassAccuracy(num_classes=10)(preds, target)  # default average="macro"
    # macro: mean recall over classes in targets or predictions {0, 2, 3} = (0 + 1 + 0) / 3
    assert float(macro) == pytest.approx(1 / 3, abs=1e-6)
    ours = micro_accuracy((preds == target).sum(), target.numel())
    assert ours.dtype == torch.float64 and float(ours) == 0.75
    with pytest.raises(ValueError, match=r"total=\[0.0\] is invalid; expected counts > 0"):
        micro_accuracy(torch.tensor([0]), torch.tensor([0]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(windows=(1,)), r"windows=\(1,\) is invalid; expected ints >= 2, counted in evaluations \(not 1\)"),
        (dict(windows=(2.5,)), r"windows=\(2.5,\) is invalid; expected ints >= 2, counted in evaluations \(not 2.5\)"),
        (dict(windows=10), r"windows=10 is invalid; expected a sequence of ints >= 2"),
        (dict(windows=(3, 3)), r"windows=\(3, 3\) is invalid; expected distinct ints >= 2"),
        (dict(lca_beta=0), r"lca_beta=0 is invalid; expected an int >= 1"),
        (dict(window_average="all"), r"window_average='all' is invalid; expected one of 'seen', 'previous'"),
        (dict(higher_is_better="yes"), r"higher_is_better='yes' is invalid; expected True or False"),
    ],
)
def test_invalid_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        stability_metrics(np.array(SPEC), SPEC_TASKS, **kwargs)
    with pytest.raises(ValueError, match=message):
        StabilityMetrics(2, **kwargs)


@pytest.mark.parametrize(
    ("values", "tasks", "message"),
    [
        (SPEC, [0, 0, 1, 0, 1], r"current_task=0 at evaluation 3 is invalid; expected 1 or 2 \(it decreases from 1\)"),
        (SPEC, [0, 0, 1, 1, 2], r"current_task=2 is invalid; expected an int in \[0, 1\]"),
        (SPEC, [0, 0, -1, 1, 1], r"current_task=-1 is invalid; expected an int in \[0, 1\]"),
        ([[0.1, 0.2, 0.3]] * 2, [0, 2], r"current_task=2 at evaluation 1 is invalid; expected 0 or 1: it skips task 1"),
        # a history starting at task 1: the message used to read "expected 0 or 0"
        ([[0.1, NAN]], [1], r"current_task=1 at evaluation 0 is invalid; expected 0 \(the first"),
        ([[0.1, NAN], [0.2, NAN]], [0, 1], r"values\[1\] is NaN at evaluation 1 with current_task=1"),
        ([0.1, 0.2], [0, 0], r"accuracy has shape \(2,\); expected a 2-D \(evaluations, tasks\) array"),
        (np.zeros((0, 2)), [], r"accuracy has shape \(0, 2\); expected a 2-D"),
        (SPEC, [0, 0, 1, 1], r"current_task has 4 entries but accuracy has 5 evaluations \(rows\)"),
        (SPEC, [0.0, 0, 1, 1, 1], r"current_task has shape \(5,\) and dtype float64; expected a 1-D sequence of ints"),
    ],
)
def test_invalid_histories(values, tasks, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        stability_metrics(np.array(values), tasks)


def test_invalid_rows_online() -> None:
    metric = StabilityMetrics(2)
    with pytest.raises(ValueError, match=r"values has shape \(3,\); expected \(num_tasks,\) = \(2,\)"):
        metric.update(torch.tensor([0.1, 0.2, 0.3]), 0)
    with pytest.raises(ValueError, match=r"StabilityMetrics: current_task=0.5 is invalid; expected an int in \[0, 1\]"):
        metric.update(torch.tensor([0.1, 0.2]), 0.5)
    with pytest.raises(ValueError, match=r"StabilityMetrics: num_tasks=0 is invalid; expected an int >= 1"):
        StabilityMetrics(0)
