"""Diagnose an eval-mode accuracy collapse of one Split-Digits run (the seed-0 mid-task collapse at step 1,900).

Runs the protocol of ``split_digits_history.py`` once (AdaB²N κ, λ; or BatchNorm) and records, per training
step, the batch's task counts, loss, gradient norm and, per AdaB²N layer, η_t and the norms of the batch μ, σ²
and of the running statistics; it keeps the ``state_dict`` in ``[--lo, --hi]`` and prints, per step of that
window, the seen-task test accuracy in eval mode, plus the same with the weights of one step and the running
statistics of the previous one (which of the two moved the outputs):

    python benchmarks/adab2n/split_digits_diagnose.py --seed 0 --setting 0.4,0.1 --lo 1895 --hi 1900
    python benchmarks/adab2n/split_digits_diagnose.py --seed 0 --setting 0.4,0.1 --renormalize --lo 1895 --hi 1900
"""

from __future__ import annotations

import argparse
import copy
import statistics

import lightning.pytorch as pl
import torch
from split_digits import DigitsCNN

import lightning_gradlab.adab2n.layers as adab2n_layers
from lightning_gradlab.adab2n.callback import AdaB2N
from lightning_gradlab.callbacks import ContinualEvaluation, ExperienceReplay
from lightning_gradlab.data import SplitDigits


class Recorder(pl.Callback):
    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi, self.rows, self.snaps, self.cur = lo, hi, {}, {}, {}
        original = adab2n_layers.update_running

        def update_running(rm, rv, mean, var, eta_t):  # noqa: ANN001, ANN202
            original(rm, rv, mean, var, eta_t)
            self.cur.setdefault("layers", []).append(
                (eta_t, float(mean.norm()), float(var.norm()), float(rm.norm()), float(rv.norm()))
            )

        adab2n_layers.update_running = update_running

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self.cur = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # noqa: ANN001
        grads = [p.grad.square().sum() for p in pl_module.parameters() if p.grad is not None]
        self.cur["gnorm"] = float(torch.stack(grads).sum().sqrt())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        step = trainer.global_step
        counts = torch.bincount(batch["task"], minlength=5).tolist()
        gnorm, layers = self.cur.get("gnorm", float("nan")), self.cur.get("layers", [])
        self.rows[step] = {"counts": counts, "loss": float(loss), "gnorm": gnorm, "layers": layers}
        if self.lo - 1 <= step <= self.hi:
            self.snaps[step] = copy.deepcopy(pl_module.state_dict())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--setting", default="0.4,0.1", help="kappa,lambd; 'bn' for plain BatchNorm")
    parser.add_argument("--renormalize", action="store_true", help="AdaB2N(renormalize_present_tasks=True)")
    parser.add_argument("--lo", type=int, default=1895)
    parser.add_argument("--hi", type=int, default=1900)
    args = parser.parse_args()
    pl.seed_everything(args.seed, verbose=False)
    recorder = Recorder(args.lo, args.hi)
    callbacks: list[pl.Callback] = [ExperienceReplay(buffer_size=50, seed=args.seed),
        ContinualEvaluation(every_n_steps=50, samples_per_task=None, plot=False, dense_steps=50, dense_every_n_steps=5),
        recorder]  # fmt: skip
    if args.setting != "bn":
        kappa, lambd = map(float, args.setting.split(","))
        callbacks.append(AdaB2N(kappa=kappa, lambd=lambd, renormalize_present_tasks=args.renormalize))
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks)  # fmt: skip
    model, data = DigitsCNN(), SplitDigits(batch_size=10, epochs_per_task=20, seed=args.seed)
    trainer.fit(model, data)
    tests = data.load_tasks()[1]
    model.eval()

    def accuracy(state: dict[str, torch.Tensor], stats: dict[str, torch.Tensor]) -> list[float]:
        model.load_state_dict({k: (stats[k] if "running" in k else v) for k, v in state.items()})
        with torch.no_grad():
            return [round(100 * float((model(ds.tensors[0]).argmax(1) == ds.tensors[1]).float().mean()), 1)
                    for ds in tests[:4]]  # fmt: skip

    rows = recorder.rows
    full = [r["gnorm"] for r in rows.values() if sum(r["counts"]) == 20]
    short = [r["gnorm"] for r in rows.values() if sum(r["counts"]) == 4]  # a pass's last 2 new + 2 replayed
    print(f"gradient norm: 20-sample batches median {statistics.median(full):.2f} max {max(full):.2f}; 4-sample"
          f" batches median {statistics.median(short):.2f} max {max(short):.2f}")  # fmt: skip
    for step in range(args.lo, args.hi + 1):
        r, snaps = rows[step], recorder.snaps
        layers = " | ".join(
            f"eta {e:.4f} |mu| {m:.2f} |var| {v:.2f} |rm| {a:.2f} |rv| {b:.2f}" for e, m, v, a, b in r["layers"]
        )
        print(f"step {step} tasks {r['counts']} loss {r['loss']:.3f} grad {r['gnorm']:.2f} {layers}")
        print(f"    acc tasks 0-3: {accuracy(snaps[step], snaps[step])}; weights of {step} + running stats of"
              f" {step - 1}: {accuracy(snaps[step], snaps[step - 1])}")  # fmt: skip


if __name__ == "__main__":
    main()
