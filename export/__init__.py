"""export stage of cluda-deploy."""
