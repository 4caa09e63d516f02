"""``handgrad audit TARGET``: every hand-written rule in a package checked, with no configuration.

* :mod:`.discover`: the package's modules, its ``custom_vjp``/``custom_jvp`` rules and its public
  functions with jaxtyping annotations, and why anything else is skipped;
* :mod:`.inputs`: three draws of inputs per rule, from annotations, the config's specs, or a guess;
* :mod:`.config`: ``[tool.handgrad.audit]`` (specs, domains, ``expect``, ``skip``, patterns);
* :mod:`.checks`: ``check_vjp`` at orders 1 and 2 and ``check_transforms``, every outcome a row;
* :mod:`.runner`: the checks in a worker process, each under a time limit;
* :mod:`.report`: the table, JSON and JUnit XML;
* :mod:`.html`: a static page with each FAIL's picture (``--html``);
* :mod:`.record` (with :mod:`.calls`, :mod:`.recorded` and :mod:`.watchdog`): the rules a program calls, recorded
  while it runs (``--record``, ``pytest --handgrad-record``);
* :mod:`.baseline`: a stored audit, so that only what got worse fails (``--baseline``).

Nothing here imports JAX at module level: the pytest plugin imports this package lazily.
"""

from handgrad.audit.checks import CHECKS, Row
from handgrad.audit.config import AuditConfig, ConfigError, FunctionConfig
from handgrad.audit.discover import Discovery, Rule, Skipped, TargetError, discover

__all__ = ["CHECKS", "AuditConfig", "ConfigError", "Discovery", "FunctionConfig", "Row", "Rule", "Skipped",
           "TargetError", "discover"]
