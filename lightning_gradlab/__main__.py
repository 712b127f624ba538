"""``python -m lightning_gradlab`` is the ``gradlab`` command."""

from lightning_gradlab.core.entry import main

if __name__ == "__main__":
    main()
