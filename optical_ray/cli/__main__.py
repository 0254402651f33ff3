"""``python -m optical_ray.cli``: the same as ``optical-ray``."""

import sys

from optical_ray.cli.parser import main

sys.exit(main())
