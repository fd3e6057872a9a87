"""Engine pieces for mmengine runners: optimizer constructor, hooks, checkpoint loading.

They are registered in mmengine's root registries by :mod:`sn_mm.registry`.
"""
from . import optim  # noqa: F401
from . import sn_ratio_hook  # noqa: F401
from . import pretrained  # noqa: F401
from . import batch_average_hook  # noqa: F401
from . import ssn_radius_hook  # noqa: F401
from . import exact_resume_hook  # noqa: F401
from . import finite_check_hook  # noqa: F401
