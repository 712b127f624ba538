"""Split-Digits: scikit-learn's bundled digits as a class-incremental task sequence (no download)."""

from __future__ import annotations

from torch.utils.data import Dataset, TensorDataset

from lightning_gradlab.continual.data import ContinualDataModule, resolve_class_groups, split_by_classes
from lightning_gradlab.core.validation import check_float, check_int
from lightning_gradlab.demo.digits import digits_tensors, stratified_split


class SplitDigits(ContinualDataModule):
    """Digits (1,797 8×8 images, 10 classes) as 5 tasks × 2 classes, class-incremental.

    Each class is split into train/test with a seeded stratified split (``test_fraction`` of every
    class is held out); task ``i`` holds the classes ``class_order[2i], class_order[2i+1]``. The
    test split of a task is its evaluation set. Images are float32 ``(1, 8, 8)`` in [0, 1].

    Args:
        batch_size: per-rank training batch size.
        eval_batch_size: batch size of the validation/test loaders.
        epochs_per_task: passes over each task.
        seed: seed of the train/test split and of the training order.
        class_order: permutation of 0..9 defining the tasks (default: 0, 1, ..., 9).
        classes_per_task: classes per task; a divisor of 10 (default 2, i.e. 5 tasks).
        test_fraction: fraction of each class held out for evaluation, in (0, 1).
        drop_last: only full training batches.
        num_workers: ``DataLoader`` workers.
        task: ``None`` for the whole sequence in one ``fit``, or the single task to train on.

    Example::

        dm = SplitDigits(batch_size=10, epochs_per_task=1, seed=0)
        trainer = Trainer(max_epochs=1, callbacks=[ExperienceReplay(buffer_size=100)])
        trainer.fit(ContinualClassifier(), dm)
    """

    def __init__(
        self,
        batch_size: int = 10,
        eval_batch_size: int = 256,
        epochs_per_task: int = 1,
        seed: int = 0,
        class_order: list[int] | None = None,
        classes_per_task: int = 2,
        test_fraction: float = 0.3,
        drop_last: bool = False,
        num_workers: int = 0,
        task: int | None = None,
    ) -> None:
        # validate now rather than at setup: the class groups depend only on the settings
        self._groups = resolve_class_groups(range(10), classes_per_task, class_order=class_order)
        check_float("SplitDigits", "test_fraction", test_fraction, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        if task is not None:
            check_int("SplitDigits", "task", task, 0, len(self._groups) - 1)
        self.class_order = list(range(10)) if class_order is None else [int(c) for c in class_order]
        self.test_fraction = float(test_fraction)
        super().__init__(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            epochs_per_task=epochs_per_task,
            seed=seed,
            drop_last=drop_last,
            num_workers=num_workers,
            task=task,
        )

    def load_tasks(self) -> tuple[list[Dataset], list[Dataset], list[list[int]]]:
        x, y = digits_tensors()
        train, test = stratified_split(y, (1.0 - self.test_fraction, self.test_fraction), self.seed)
        train_sets, test_sets = [], []
        for idx, datasets in ((train, train_sets), (test, test_sets)):
            for task_idx in split_by_classes(y[idx], class_groups=self._groups):
                datasets.append(TensorDataset(x[idx[task_idx]], y[idx[task_idx]]))
        return train_sets, test_sets, [list(g) for g in self._groups]
