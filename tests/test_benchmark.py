"""The benchmark report writer: regenerated sections replace theirs, hand-written ones stay."""

from cornernet_tf import benchmark


def test_write_report_replaces_generated_sections_and_keeps_hand_written_ones(tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_text("# Benchmarks\n\nold header\n\n## decode\n\nold decode figures\n\n"
                    "## corner_pool_notes\n\nmeasured by hand: 31 ms\n\n- a list item\n")
    benchmark.write_report({"decode": "new decode figures"}, str(path), "cmd")
    text = path.read_text()
    assert "old decode figures" not in text
    assert "## decode\n\nnew decode figures\n\nMeasured " in text
    assert "with `cmd`." in text
    # The hand-written section survives, verbatim and after the generated ones.
    assert "## corner_pool_notes\n\nmeasured by hand: 31 ms\n\n- a list item\n" in text
    assert text.index("## decode") < text.index("## corner_pool_notes")
