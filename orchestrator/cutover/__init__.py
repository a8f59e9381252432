"""Cutover: the destination takes over the source's name, addresses and share paths.

``stages`` is the stage machine (``create_cutover``, ``run_cutover``, ``rollback``) over
``CutoverRun`` / ``CutoverStage`` rows; ``plan`` the plan it follows; ``samba`` and
``windows`` the operations on each kind of host (SSH and WinRM); ``smbconf`` reversible
smb.conf edits; ``verify`` the check a user at the old address would make.
The final delta transfer is the transfer engine's, passed in as a ``DeltaTransfer``
(``delta.EngineDeltaTransfer``); ``service`` is what the CLI (``cli``) and the API call.

Nothing in this package may delete a file of a share or put a credential in a message.
"""
