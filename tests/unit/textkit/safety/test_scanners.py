"""The output moderation classifier (alt-profanity-check, offline)."""

from llmesh.common.v1 import common_pb2
from textkit.safety.scanners import ModerationScanner


def test_profanity_blocks_and_clean_text_passes():
    scanner = ModerationScanner("no", threshold=0.9)
    verdict = scanner.scan("you are a fucking idiot")
    assert verdict is not None and verdict.category == common_pb2.SAFETY_CATEGORY_MODERATION
    assert scanner.scan("json.dumps serialises an object to a JSON formatted string.") is None
    assert scanner.scan("   ") is None
