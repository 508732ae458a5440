"""``python -m reallod ...``: the same entry point as the ``reallod`` command.

Launchers that start Python modules need it: ``torchrun --nproc-per-node 2 -m reallod train CONFIG``,
``accelerate launch -m reallod train CONFIG``.
"""

from reallod.cli import main

if __name__ == "__main__":
    main()
