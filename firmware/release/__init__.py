"""Who may see which call, and how a call leaves the box: the calls list, requests, approval,
export, forms, the ledger. Reads calls through ``vault/``; never imports ``recording/``."""
