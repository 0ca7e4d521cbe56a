"""training stage of cluda-deploy."""
