"""The analysis of finished runs: the law, its fit, comparisons, plans, regime diagnostics and their
figures. Statistics and plotting only: nothing here imports torch, the model or the submitter."""
