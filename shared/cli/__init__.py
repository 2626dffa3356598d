"""The composition root: the ``sluice`` console script and ``sluice dev`` wire the processes."""
