"""Generated one-sentence reviews whose sentiment needs syntax, as a LightningDataModule; no download.

A review is one clause (``the plot was not very dull.``) or two joined by ``but``, ``although`` or
``even though``; its label is the polarity of the main clause, flipped by a negator (``not``, ``never``,
``hardly``, ``far from``). Bag-of-words cues therefore cancel: both clauses carry sentiment words, in either
order. Validation and test sentences use only adjectives that training never shows, so a model has to bring
their meaning from pre-training (a frozen sentence encoder with a linear head scores far below a fine-tuned
one: the LoRA examples and ``benchmarks/lora/minilm.py``).
"""

from __future__ import annotations

import random

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_gradlab.core.sampling import ResumableLoader, ShuffledBatchSampler
from lightning_gradlab.core.validation import check_int, check_seed

OWNER = "ReviewsDataModule"

POSITIVE = (
    "good", "great", "excellent", "wonderful", "delightful", "superb", "lovely", "fantastic", "pleasant",
    "enjoyable", "impressive", "brilliant", "charming", "outstanding", "terrific", "splendid", "marvelous",
    "amazing", "beautiful", "fun", "satisfying", "remarkable", "stunning", "perfect",
)  # fmt: skip
NEGATIVE = (
    "bad", "awful", "terrible", "dreadful", "boring", "disappointing", "poor", "horrible", "bland", "mediocre",
    "annoying", "dull", "unpleasant", "awkward", "tedious", "clumsy", "painful", "weak", "messy", "lousy",
    "forgettable", "frustrating", "ugly", "miserable",
)  # fmt: skip
HELD_OUT = 8  # the last 8 adjectives of each polarity appear only in validation and test
SUBJECTS = (
    "the movie", "the food", "the service", "the hotel", "the book", "the phone", "the concert", "the staff",
    "the plot", "the soundtrack", "the coffee", "the ending", "the game", "the battery", "the acting", "the room",
)  # fmt: skip
INTENSIFIERS = ("", "really ", "very ", "quite ", "truly ", "rather ", "extremely ")
NEGATORS = ("not ", "never ", "hardly ", "far from ")


def _clause(rng: random.Random, adjectives: tuple[tuple[str, ...], tuple[str, ...]]) -> tuple[str, int]:
    """``subject was [negator] [intensifier] adjective`` and its polarity (1 positive, 0 negative)."""
    polarity = rng.randrange(2)
    adjective = rng.choice(adjectives[polarity])
    negated = rng.random() < 0.5
    negator = rng.choice(NEGATORS) if negated else ""
    text = f"{rng.choice(SUBJECTS)} was {negator}{rng.choice(INTENSIFIERS)}{adjective}"
    return text, polarity ^ int(negated)


def review(rng: random.Random, seen: bool) -> tuple[str, int]:
    """One review and its label; ``seen`` picks the training adjectives, else the held-out ones."""
    adjectives = tuple(words[:-HELD_OUT] if seen else words[-HELD_OUT:] for words in (NEGATIVE, POSITIVE))
    main, label = _clause(rng, adjectives)
    other, _ = _clause(rng, adjectives)
    form = rng.randrange(4)
    if form == 0:
        return f"{main}.", label
    if form == 1:
        return f"{other}, but {main}.", label
    if form == 2:
        return f"although {other}, {main}.", label
    return f"{main}, even though {other}.", label


def reviews(count: int, seen: bool, seed: int) -> list[tuple[str, int]]:
    """``count`` reviews drawn with ``random.Random(seed)``."""
    rng = random.Random(seed)
    return [review(rng, seen) for _ in range(count)]


class _Reviews(Dataset):
    def __init__(self, items: list[tuple[str, int]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor]:
        text, label = self.items[index]
        return text, torch.tensor(label)


class ReviewsDataModule(pl.LightningDataModule):
    """Batches of ``(list of review strings, labels)``: the model tokenizes (its tokenizer goes with its
    encoder). Training adjectives and held-out ones are disjoint (see the module docstring).

    The training order is a function of ``seed`` and the epoch, sharded under DDP, and resumes mid-epoch
    from a checkpoint (:class:`~lightning_gradlab.core.sampling.ResumableLoader`).

    Args:
        train_size, val_size, test_size: number of reviews in each split.
        batch_size: training batch size per device.
        eval_batch_size: batch size for validation and test.
        seed: seed of the generated reviews and of the shuffling.
    """

    def __init__(
        self,
        train_size: int = 2000,
        val_size: int = 500,
        test_size: int = 1000,
        batch_size: int = 32,
        eval_batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("train_size", train_size), ("val_size", val_size), ("test_size", test_size)):
            check_int(OWNER, name, value, minimum=1)
        check_int(OWNER, "batch_size", batch_size, minimum=1)
        check_int(OWNER, "eval_batch_size", eval_batch_size, minimum=1)
        check_seed(OWNER, "seed", seed)
        self.sizes = (train_size, val_size, test_size)
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed

    def setup(self, stage: str) -> None:
        train_size, val_size, test_size = self.sizes
        held_out = reviews(val_size + test_size, seen=False, seed=self.seed + 1)
        self.train_set = _Reviews(reviews(train_size, seen=True, seed=self.seed))
        self.val_set, self.test_set = _Reviews(held_out[:val_size]), _Reviews(held_out[val_size:])

    def train_dataloader(self) -> ResumableLoader:
        trainer = self.trainer
        sampler = ShuffledBatchSampler(len(self.train_set), self.batch_size, seed=self.seed)
        sampler.distribute(trainer.global_rank if trainer else 0, trainer.world_size if trainer else 1)
        return ResumableLoader(self.train_set, sampler)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, self.eval_batch_size)
