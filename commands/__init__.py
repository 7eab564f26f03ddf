"""The commands a user runs (``retention train | sweep | compare | evaluate | bench``): the top
layer, above ``lightning_modules``, ``datamodules``, ``conf`` and ``retention``. :mod:`commands.cli`
is the entry point; :mod:`commands.runner` runs one training."""
