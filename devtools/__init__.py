"""Tooling for developing the service, never installed in production: the local stack, the
embedded servers, the iamport sandbox, the demo and the API-doc generator."""
