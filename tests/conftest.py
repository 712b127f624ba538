"""Shared fixtures: quiet CPU trainers, throw-away plugin distributions on ``sys.path``, and the
test-only plugin kit (``tests/testkit``: one plugin per kind) on ``sys.path`` and ``PYTHONPATH``."""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from lightning_gradlab.core.registry import discover

#: ``gradlab_testkit`` and its ``*.dist-info``: discovered like an installed third-party distribution, in
#: this process (before any test module calls ``discover()``) and in subprocesses (DDP ranks, ``gradlab``).
TESTKIT = Path(__file__).parent / "testkit"
if str(TESTKIT) not in sys.path:
    sys.path.insert(0, str(TESTKIT))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTKIT), os.environ.get("PYTHONPATH")) if p)
    discover.cache_clear()


#: ``gradlab`` arguments for a tiny two-step CPU run of the demo digits classifier, without logs or checkpoints.
CLI_ARGS = [
    "--model=lightning_gradlab.demo.DigitsClassifier",
    "--model.width=8",
    "--data=lightning_gradlab.demo.DigitsDataModule",
    "--trainer.accelerator=cpu",
    "--trainer.logger=false",
    "--trainer.enable_checkpointing=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.max_steps=2",
    "--trainer.limit_val_batches=0",
]


def quiet_trainer(**kwargs: Any) -> pl.Trainer:
    """A CPU Trainer without logger, progress bar or summary; ``kwargs`` override."""
    defaults: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    return pl.Trainer(**{**defaults, **kwargs})


def write_distribution(root: Path, name: str, entry_points: dict[str, str], files: dict[str, str]) -> Path:
    """Write an installed-looking distribution (``*.dist-info`` + modules) under ``root``.

    Putting ``root`` on ``sys.path`` makes its entry points real to ``importlib.metadata``:
    the same path an installed third-party plugin takes, without pip.
    """
    info = root / f"{name.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[lightning_gradlab.plugins]\n{lines}")
    for relative_path, source in files.items():
        path = root / relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return root


@pytest.fixture
def extra_site(tmp_path: Path) -> Iterator[Path]:
    """A directory on ``sys.path`` for :func:`write_distribution`; discovery is re-run before and after."""
    site = tmp_path / "site"
    site.mkdir()
    sys.path.insert(0, str(site))
    discover.cache_clear()
    yield site
    sys.path.remove(str(site))
    for module in [m for m, mod in sys.modules.items() if str(site) in str(getattr(mod, "__file__", "") or "")]:
        del sys.modules[module]
    discover.cache_clear()


@pytest.fixture(autouse=True)
def run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning writes logs, checkpoints and the CLI's config.yaml under the working directory."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def no_process_group_left() -> Iterator[None]:
    """A single-process DDP fit (``Trainer(strategy="ddp", devices=1)``) leaves its process group
    initialised and its rendezvous variables (``MASTER_PORT``, ``WORLD_SIZE``, ...) in ``os.environ``;
    a later ``ddp_fork`` rank would inherit them and wait for a peer that never comes."""
    environ = dict(os.environ)
    yield
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    os.environ.clear()
    os.environ.update(environ)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory laid out like the MiniLM package's model (``config.json``, weights, ``tokenizer.json``)
    holding a randomly initialised 2-layer, width-32 BERT and a word-level tokenizer of the reviews'
    vocabulary: ``MiniLMClassifier(encoder=<it>)`` runs the MiniLM examples without the 90 MB package."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel

    import lightning_gradlab.demo.reviews as reviews

    directory = tmp_path_factory.mktemp("tiny_encoder")
    phrases = (*reviews.POSITIVE, *reviews.NEGATIVE, *reviews.SUBJECTS, *reviews.INTENSIFIERS, *reviews.NEGATORS)
    words = sorted({w for p in phrases for w in p.split()} | {"was", "but", "although", "even", "though", ",", "."})
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tokenizer.save(str(directory / "tokenizer.json"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, pad_token_id=0,
    )  # fmt: skip
    BertModel(config).save_pretrained(directory)
    return directory
