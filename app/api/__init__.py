"""HTTP routers; app/main.py wires them."""
