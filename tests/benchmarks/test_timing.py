"""Where a step synchronises with the host: the sites `host_sync_sites` reports from CUDA's sync debug warnings
(raised here by hand, since the mode itself needs a GPU)."""
import importlib.util
import warnings
from collections import Counter

import torch

from benchmarks.timing import SYNC_WARNING, host_sync_sites, report_host_syncs


def sync_here():
    warnings.warn(SYNC_WARNING, stacklevel=1)  # the line the site names


SYNC_LINE = sync_here.__code__.co_firstlineno + 1


def test_each_sync_is_counted_at_the_project_line_that_made_it():
    def step():
        sync_here()
        warnings.warn("an unrelated warning", stacklevel=1)

    sites = host_sync_sites(step, steps=3)
    assert sites == Counter({f"tests/benchmarks/test_timing.py:{SYNC_LINE} sync_here": 3})


def test_a_sync_inside_a_library_names_our_caller_and_the_library_call(tmp_path):
    library = tmp_path / "fake_library.py"
    library.write_text(f"import warnings\n\n\ndef item():\n    warnings.warn({SYNC_WARNING!r})\n")
    spec = importlib.util.spec_from_file_location("fake_library", library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def step():
        module.item()

    line = step.__code__.co_firstlineno + 1
    sites = host_sync_sites(step, steps=2)
    assert sites == Counter({f"tests/benchmarks/test_timing.py:{line} step via fake_library.py:5 item": 2})


def test_a_step_without_syncs_has_no_sites():
    assert host_sync_sites(lambda: torch.ones(3).sum()) == Counter()


def test_the_check_says_it_needs_cuda_on_a_cpu(capsys):
    report_host_syncs("a step", lambda: None, torch.device("cpu"))
    assert capsys.readouterr().out == "  host syncs in a step: not checked (needs cuda)\n"
