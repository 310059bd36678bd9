"""``python -m advlab``: the ``advlab`` command (:func:`advlab.cli.main.main`), also under
``torchrun --nproc_per_node N -m advlab train ...`` (see :mod:`advlab.train.distributed`)."""

from advlab.cli.main import main

if __name__ == "__main__":
    main()
