"""People: accounts, roles, sign-in and sessions, the auditor's daily review. Never imports
``vault/``, ``recording/`` or ``release/``."""
