"""Who the caller is: the key's name and scopes (the console shows only what a key may do)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import KeyHolder
from app.operators.schemas import CallerPublic

router = APIRouter(prefix="/v1/me", tags=["keys"])


@router.get("", response_model=CallerPublic)
def read_me(caller: KeyHolder) -> CallerPublic:
    """The calling key's id, name, scopes and accounts; any valid key may ask."""
    accounts = sorted(caller.accounts) if caller.accounts is not None else None
    return CallerPublic(
        id=caller.key_id, name=caller.name, scopes=sorted(caller.scopes), accounts=accounts
    )
