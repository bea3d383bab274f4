"""The trace reader on small hand-written files in the three header variants, and bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from warmstart.infra.errors import TraceFormatError
from warmstart.scheduler.traces import DEFAULT_MEMORY_MB, load_trace

DUR_HEADER = ("HashOwner,HashApp,HashFunction,Average,Count,Minimum,Maximum,percentile_Average_0,"
              "percentile_Average_1,percentile_Average_25,percentile_Average_50,"
              "percentile_Average_75,percentile_Average_99,percentile_Average_100")


def _write(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n")
    return path


def test_sample_header_with_window_and_function_first_memory(tmp_path: Path) -> None:
    _write(tmp_path / "invocations.csv", """
HashOwner,HashApp,HashFunction,Trigger,480,481,482
o1,a1,f1,http,1,0,2
o1,a1,f2,timer,0,0,3
""")
    _write(tmp_path / "durations.csv", DUR_HEADER + "\no1,a1,f2,50,3,1,90,1,1,2,3,4,5,6")
    _write(tmp_path / "memory.csv", """
HashFunction,HashOwner,HashApp,SampleCount,AverageAllocatedMb
f2,o1,a1,10,300.0
f1,o1,a1,10,100.0
""")
    tr = load_trace(tmp_path)
    assert tr.names == ["f1", "f2"]
    assert tr.minutes.tolist() == [480, 481, 482]
    assert tr.counts.tolist() == [[1, 0, 2], [0, 0, 3]]
    assert tr.memory_mb.tolist() == [100.0, 300.0]
    assert tr.duration_ms.tolist() == [50.0, 50.0]  # f1 defaulted to the median of known
    assert tr.defaulted_duration == ["f1"] and tr.defaulted_memory == []


def test_full_day_files_with_per_app_memory(tmp_path: Path) -> None:
    minutes = ",".join(str(m) for m in range(1, 1441))
    row = ",".join("1" if m % 60 == 0 else "0" for m in range(1, 1441))
    inv = _write(tmp_path / "invocations_per_function_md.anon.d01.csv",
                 f"HashOwner,HashApp,HashFunction,Trigger,{minutes}\no,a,f,timer,{row}\n"
                 f"o,b,g,http,{row}")
    _write(tmp_path / "app_memory_percentiles.anon.d01.csv",
           "HashOwner,HashApp,SampleCount,AverageAllocatedMb\no,a,5,256")
    tr = load_trace(inv)
    assert tr.counts.shape == (2, 1440) and tr.counts.sum() == 48
    assert tr.memory_mb[0] == 256.0
    assert tr.memory_mb[1] == 256.0 and tr.defaulted_memory == ["g"]  # median of known


def test_minute_prefixed_columns_function_first(tmp_path: Path) -> None:
    _write(tmp_path / "invocations.csv", """
HashFunction,Trigger,minute_2,minute_1,minute_3
f,http,5,4,0
""")
    tr = load_trace(tmp_path)
    assert tr.minutes.tolist() == [1, 2, 3]
    assert tr.counts.tolist() == [[4, 5, 0]]  # columns put in minute order
    assert tr.memory_mb.tolist() == [DEFAULT_MEMORY_MB]


@pytest.mark.parametrize("text, words", [
    ("HashOwner,HashApp,Trigger,1,2\no,a,http,1,2", ["HashFunction"]),
    ("HashFunction,Trigger,x,y\nf,http,1,2", ["per-minute columns"]),
    ("HashFunction,1,2\nf,1,x", ["column 2", "'x'"]),
    ("HashFunction,1,2\nf,1,-3", ["column 2", "'-3'"]),
    ("HashFunction,1,3\nf,1,1", ["not consecutive"]),
    ("HashFunction,1,2\nf,1", ["2 fields", "line 2"]),
])
def test_bad_invocations_name_file_column_and_fix(tmp_path: Path, text: str,
                                                   words: list[str]) -> None:
    _write(tmp_path / "invocations.csv", text)
    with pytest.raises(TraceFormatError) as err:
        load_trace(tmp_path)
    assert "invocations.csv" in str(err.value)
    for w in words:
        assert w in str(err.value)


def test_bad_memory_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="does not exist"):
        load_trace(tmp_path / "nope")
    with pytest.raises(TraceFormatError, match="no invocations file"):
        load_trace(tmp_path)
    _write(tmp_path / "invocations.csv", "HashFunction,1\nf,1")
    _write(tmp_path / "memory.csv", "HashFunction,SampleCount\nf,1")
    with pytest.raises(TraceFormatError, match="memory.csv: no AverageAllocatedMb"):
        load_trace(tmp_path)


def test_shared_sample_loads_fast() -> None:
    path = Path("/work/shared/traces/azure2019-500x8h")
    if not path.exists():
        pytest.skip("shared sample not present")
    import time
    t0 = time.perf_counter()
    tr = load_trace(path)
    assert time.perf_counter() - t0 < 2.0
    assert tr.counts.shape == (500, 480) and np.all(tr.memory_mb > 0)
    assert not tr.defaulted_memory and not tr.defaulted_duration
