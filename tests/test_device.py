import os

import pytest
import torch

from clcourse import device
from clcourse.device import autocast_dtype, get_device, get_profile, seed_everything, summary


def test_get_device_prefers_explicit_choice():
    assert get_device("cpu") == torch.device("cpu")
    assert get_device().type in ("cuda", "mps", "cpu")


def test_seed_everything_makes_torch_reproducible():
    g1 = seed_everything(3)
    a = torch.rand(4), torch.rand(4, generator=g1)
    g2 = seed_everything(3)
    b = torch.rand(4), torch.rand(4, generator=g2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_seed_must_be_non_negative_int():
    with pytest.raises(ValueError, match="non-negative int"):
        seed_everything(-1)


@pytest.mark.parametrize(
    "requested, device, expected",
    [("auto", "cpu", "quick"), ("auto", "cuda", "full"), ("full", "cpu", "full"), ("quick", "cuda", "quick")],
)
def test_profile_resolution(requested, device, expected):
    p = get_profile(requested, device=device)
    assert p.name == expected and p.requested == requested
    assert p.pick("q", "f") == ("q" if expected == "quick" else "f")


def test_profile_reads_environment(monkeypatch):
    monkeypatch.setenv("CLCOURSE_PROFILE", "full")
    assert get_profile(device="cpu").name == "full"
    monkeypatch.setenv("CLCOURSE_PROFILE", "huge")
    with pytest.raises(ValueError, match="quick', 'full' or 'auto'"):
        get_profile(device="cpu")


def test_summary_is_one_line():
    line = summary(get_profile("quick", device="cpu"))
    assert "\n" not in line and "profile quick" in line and "torch" in line


def test_no_autocast_on_cpu():
    assert autocast_dtype("cpu") is None


def test_usable_cpus_respects_a_cgroup_quota(monkeypatch):
    monkeypatch.setattr(device, "_cgroup_cpu_quota", lambda: 1.5)
    assert device.usable_cpus() == min(2, len(os.sched_getaffinity(0)))
    monkeypatch.setattr(device, "_cgroup_cpu_quota", lambda: None)
    assert device.usable_cpus() == len(os.sched_getaffinity(0))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(device.usable_cpus() + 3)
        assert device.fit_threads_to_cpus() == device.usable_cpus()
    finally:
        torch.set_num_threads(threads)


def test_torch_threads_sets_and_restores_the_thread_count():
    before = torch.get_num_threads()
    with device.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with device.torch_threads(None):
        assert torch.get_num_threads() == before
