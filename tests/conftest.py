"""STIRSHAKEN_CORE=python|compiled runs the in-process tests on that SIP core (CI runs the
unit suites a second time on the Python reference); the service's own core is its config's
``[sip] core``."""

from __future__ import annotations

import os

from stirshaken_proxy.sip import message

if os.environ.get("STIRSHAKEN_CORE"):
    message.use_core(os.environ["STIRSHAKEN_CORE"])
