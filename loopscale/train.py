"""Old path of the trainer, kept for ``python -m loopscale.train RUN_DIR`` (documented, and in users'
scripts): the trainer is :mod:`loopscale.training.train`."""

from loopscale.training.train import main, train_run  # noqa: F401

if __name__ == "__main__":
    main()
