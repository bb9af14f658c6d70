"""The people and services that steer the service: API keys, their audit trail, the activity."""
