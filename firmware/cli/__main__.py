"""``python -m firmware.cli`` runs the ``nokbox`` command."""

import sys

from .main import main

if __name__ == "__main__":  # importing this module (pkgutil.walk_packages) runs nothing
    sys.exit(main())
