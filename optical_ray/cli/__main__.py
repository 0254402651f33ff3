"""``python -m optical_ray.cli``: the same as ``optical-ray``."""

import sys

from optical_ray.cli import main

sys.exit(main())
