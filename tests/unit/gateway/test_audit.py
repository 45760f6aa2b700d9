"""The audit chain's verification: an intact chain passes; an edited, inserted or deleted
record is named."""

from gateway import audit


def chain(n: int, start: int = 1, prev: str = audit.GENESIS) -> list[audit.Entry]:
    entries = []
    for seq in range(start, start + n):
        record = {"seq": seq, "prev": prev, "tenant": "t", "request_id": f"r{seq}"}
        record["hash"] = audit.record_hash(record)
        prev = record["hash"]
        entries.append(audit.Entry(f"id-{seq}", record))
    return entries


def head(entries):
    return entries[-1].record["seq"], entries[-1].record["hash"]


def test_intact_chain():
    entries = chain(5)
    assert audit.verify(entries, None, head(entries)) == (5, [])


def test_edited_record_is_named():
    entries = chain(5)
    entries[2].record["tenant"] = "mallory"
    _, problems = audit.verify(entries, None, head(entries))
    assert [(p.kind, p.seq) for p in problems] == [("edited", 3)]


def test_deleted_records_are_named():
    entries = chain(6)
    _, problems = audit.verify(entries[:2] + entries[4:], None, head(entries))
    assert [(p.kind, p.seq) for p in problems] == [("deleted", 5)]
    assert "3..4" in str(problems[0])
    _, problems = audit.verify(entries[:4], None, head(entries))
    assert [(p.kind, p.seq) for p in problems] == [("deleted", 6)]


def test_inserted_record_is_named():
    entries = chain(4)
    forged = dict(entries[1].record, tenant="forged")
    forged["hash"] = audit.record_hash(forged)
    _, problems = audit.verify([*entries[:2], audit.Entry("x", forged), *entries[2:]], None, head(entries))
    assert ("inserted", 2) in [(p.kind, p.seq) for p in problems]
    # Re-hashed to fit its place, the forgery still breaks the link of the record after it.
    relinked = dict(entries[2].record, tenant="forged")
    relinked["hash"] = audit.record_hash(relinked)
    _, problems = audit.verify([*entries[:2], audit.Entry("x", relinked), entries[3]], None, head(entries))
    assert [(p.kind, p.seq) for p in problems] == [("inserted", 4)]


def test_retention_anchor_starts_the_chain_later():
    entries = chain(10)
    anchor = (entries[3].record["seq"], entries[3].record["hash"])
    assert audit.verify(entries[4:], anchor, head(entries)) == (6, [])
    _, problems = audit.verify(entries[4:], None, head(entries))
    assert [p.kind for p in problems] == ["deleted"]


def test_files_rotate_and_merge_in_chain_order(tmp_path):
    files = audit.AuditFiles(tmp_path, max_bytes=200, retention_days=180)
    for entry in chain(8):
        files.append(entry.record)
    assert len(list(tmp_path.glob("audit-*.jsonl"))) > 1
    entries = audit.file_entries(tmp_path)
    assert [e.record["seq"] for e in entries] == list(range(1, 9))
    assert audit.verify(entries, None, None) == (8, [])
