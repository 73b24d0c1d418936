"""Old path of the submitit job callable, kept so that jobs queued in SLURM before the move (pickled as
``loopscale.job.TrainJob``) still load: the class is :class:`loopscale.submit.job.TrainJob`."""

from loopscale.submit.job import TrainJob  # noqa: F401
