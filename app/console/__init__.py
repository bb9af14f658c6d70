"""The operator console: a static single-page app served at /console, talking to /v1 by fetch."""

from app.console.routes import router

__all__ = ["router"]
