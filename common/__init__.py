"""What every layer may import: it imports nothing of the studio's."""

from common.errors import StudioError

__all__ = ["StudioError"]
