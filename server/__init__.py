"""server stage of cluda-deploy."""
