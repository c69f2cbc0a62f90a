"""results.md layout: one column per resolution and checkpoint, whatever the number of sets."""

from engine.results import format_table


def face_result(accuracy: float) -> dict:
    metrics = {"accuracy": accuracy, "std": 0.01, "tar": 0.5}
    return {"task": "face", "protocol": "insightface", "far_target": 1e-3, "main": accuracy,
            "sets": {name: {"results": {"112": metrics, "14": metrics}} for name in ("lfw", "cfp_fp", "agedb_30")}}


def test_face_table_has_each_column_once_for_many_sets():
    table = format_table({"last": face_result(0.9), "best": face_result(0.95), "last_iteration": 7,
                          "best_iteration": 5})
    header = table.splitlines()[2]
    assert header == "| set | 112 (last @ 7) | 112 (best @ 5) | 14 (last @ 7) | 14 (best @ 5) |"
    assert "| lfw | 90.00 ± 1.00 | 95.00 ± 1.00 | 90.00 ± 1.00 | 95.00 ± 1.00 |" in table
