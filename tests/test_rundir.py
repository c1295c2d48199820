"""A run directory counts as a result only when sealed and intact."""

from llc.rundir import RunDir


def test_sealed_directory_is_complete_and_any_damage_is_detected(tmp_path):
    run = RunDir(tmp_path, "abc")
    run.prepare()
    run.write_json("config.json", {"a": 1})
    (run.path / "trace.nc").write_bytes(b"x" * 100)
    assert not run.is_complete()
    run.seal()
    assert run.is_complete()
    (run.path / "trace.nc").write_bytes(b"x" * 50)  # truncated
    assert not run.is_complete()


def test_missing_file_or_torn_manifest_is_incomplete(tmp_path):
    run = RunDir(tmp_path, "abc")
    run.prepare()
    run.write_json("metrics.json", {"llc_mean": 1.0})
    run.seal()
    (run.path / "metrics.json").unlink()
    assert not run.is_complete()
    run.write_json("metrics.json", {"llc_mean": 1.0})
    run.seal()
    (run.path / "complete.json").write_text('{"run_id": "abc", "fil')
    assert not run.is_complete()


def test_prepare_unseals_a_directory_being_recomputed(tmp_path):
    run = RunDir(tmp_path, "abc")
    run.prepare()
    run.seal()
    run.prepare()
    assert not run.is_complete()
