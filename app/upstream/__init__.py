"""The payment gateways behind the jobs: the contract a run talks to (contract.py), its typed
outcomes (errors.py), the payment they answer with, a shared rate limiter, and one package per
gateway (iamport V1 first)."""
