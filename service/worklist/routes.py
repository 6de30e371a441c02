"""Worklist (placeholder while being written)."""

from fastapi import APIRouter

router = APIRouter(tags=["worklist"])
