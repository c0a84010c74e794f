"""The Axis body-worn content destination: the Body Worn Integration API (a subset of
OpenStack Swift plus a JSON connection file) on the box, mapped onto the one ingest road.

`accounts` (logins and tokens), `names` (containers, objects, metadata headers), `mapping`
(Axis metadata -> recording columns), `directory` (System/Users/Devices), `documents`
(Capabilities.json, Categories.json, the connection file) and `destination` (the service the
Swift blueprint in `edgebox.web.swift` calls). docs/axis.md describes the mapping.
"""

from edgebox.axis.accounts import AxisAccounts
from edgebox.axis.destination import AxisDestination

__all__ = ["AxisAccounts", "AxisDestination"]
