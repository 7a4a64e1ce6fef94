"""PCCP governance: plan as code, acceptance gate, approvals, change log."""
