"""Training one run: the looped model, its optimisers, the data loaders, checkpoints, and the trainer.

``loopscale.training.train.train_run(run_dir)`` trains the run whose config.yaml is in ``run_dir``. This
package imports torch; importing the package itself does not (its modules do). It may import the core
modules, :mod:`loopscale.data`, :mod:`loopscale.probes` and :mod:`loopscale.trackers`; never
:mod:`loopscale.submit`, the analysis, the report or the commands.
"""
