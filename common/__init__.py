"""What the orchestrator and the proxy workers both speak.

The SMB data plane (``common.smb``), the database models, the typed settings, credential
encryption and the Celery application. Nothing here decides migration policy: that is the
orchestrator's job.
"""

import os as _os
import sys as _sys

# impacket installs example scripts (smbclient.py, smbserver.py ...) beside our console
# scripts, and Python puts a console script's own directory first on sys.path, so
# ``import smbclient`` would find impacket's script instead of smbprotocol's package.
# Drop the interpreter's bin directory from the import path; nothing importable lives there.
_bin_dir = _os.path.dirname(_os.path.abspath(_sys.executable))
_sys.path[:] = [p for p in _sys.path if _os.path.abspath(p or ".") != _bin_dir]
