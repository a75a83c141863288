"""The BCC engine: BCC's Python bindings, sock_diag and stable hooks only, for hosts without BTF.

Exports what the registry needs (tcptop/engines/__init__.py): `preflight()` and `Engine`.
"""

from tcptop.engines.bcc.engine import BccEngine as Engine, preflight

__all__ = ["Engine", "preflight"]
