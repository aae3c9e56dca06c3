"""ftpprobe: tell, with evidence, why FTP breaks on a path.

Layers (see README "Architecture"): :mod:`~ftpprobe.codec` (bytes, no I/O),
:mod:`~ftpprobe.transport` and :mod:`~ftpprobe.data` (trio sockets),
:mod:`~ftpprobe.catalog` (the probe files), :mod:`~ftpprobe.executors`
(carry out a probe, record an :mod:`~ftpprobe.observations` value),
:mod:`~ftpprobe.rules` (observations to findings, pure, by vantage),
:mod:`~ftpprobe.verdict` (the answer first), :mod:`~ftpprobe.runner`,
:mod:`~ftpprobe.report`, :mod:`~ftpprobe.cli`.
"""

__version__ = "0.1.0"
