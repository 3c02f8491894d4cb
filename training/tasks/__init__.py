"""Fine-tuning tasks built from data that ships in PyPI packages (no network at run time)."""
