"""Convergence summary, netCDF round trip and diagnostic plots of an LLC run."""

from __future__ import annotations

import math
from pathlib import Path

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from llc.run.diagnostics import summarize, to_inference_data, trend, write_netcdf
from llc.run.plots import draw_plots

C, T, P = 4, 1000, 3


def _run(llc: np.ndarray, rng: np.random.Generator, **kwargs: object) -> az.InferenceData:
    chains, draws = llc.shape
    loss = rng.normal(size=(chains, draws))
    return to_inference_data(llc, loss, rng.normal(size=(chains, draws, P)), **kwargs)


def _ar1(rng: np.random.Generator, phi: float, chains: int, draws: int) -> np.ndarray:
    x = np.empty((chains, draws))
    x[:, 0] = rng.normal(size=chains)
    for t in range(1, draws):
        x[:, t] = phi * x[:, t - 1] + math.sqrt(1 - phi**2) * rng.normal(size=chains)
    return x


def test_iid_draws_have_full_ess_unit_rhat_and_naive_standard_error() -> None:
    llc = np.random.default_rng(0).normal(3.0, 2.0, size=(C, T))
    s = summarize(llc)
    assert s["chains_used"] == C
    assert s["llc_mean"] == pytest.approx(3.0, abs=0.15)
    assert s["llc_std"] == pytest.approx(2.0, rel=0.05)
    assert 0.85 * C * T < s["ess_bulk"] < 1.15 * C * T
    assert 0.85 * C * T < s["ess_tail"] < 1.15 * C * T
    assert s["r_hat"] == pytest.approx(1.0, abs=0.01)
    assert s["llc_se"] == pytest.approx(s["llc_std"] / math.sqrt(C * T), rel=0.1)
    assert all(type(v) is float for k, v in s.items() if k != "chains_used")


def test_autocorrelated_draws_have_ess_far_below_draw_count() -> None:
    s = summarize(_ar1(np.random.default_rng(1), 0.95, C, T))
    # AR(1) with phi=0.95 has ESS ≈ N (1 - phi) / (1 + phi) ≈ N / 39.
    assert s["ess_bulk"] < C * T / 10
    assert s["llc_se"] > 3 * s["llc_std"] / math.sqrt(C * T)


def test_chains_centred_apart_have_rhat_above_threshold() -> None:
    llc = np.random.default_rng(2).normal(size=(C, T)) + np.arange(C)[:, None]
    assert summarize(llc)["r_hat"] > 1.1


def test_diverged_chains_are_dropped_whole() -> None:
    llc = np.random.default_rng(3).normal(size=(C, T))
    llc[1] = np.nan
    llc[2, :500] += 100.0  # far off before it diverges, so keeping any of it would move the mean
    llc[2, 500:] = np.nan
    s = summarize(llc)
    assert s["chains_used"] == 2
    assert s["llc_mean"] == pytest.approx(llc[[0, 3]].mean())
    assert s["r_hat"] < 1.05


def test_one_usable_chain_has_ess_but_no_rhat() -> None:
    llc = np.random.default_rng(4).normal(size=(2, T))
    llc[0, -1] = np.nan
    s = summarize(llc)
    assert s["chains_used"] == 1
    assert math.isnan(s["r_hat"])
    assert 0.8 * T < s["ess_bulk"] < 1.2 * T


def test_no_usable_chain_gives_all_nan() -> None:
    s = summarize(np.full((3, 50), np.nan))
    assert s["chains_used"] == 0
    assert all(math.isnan(v) for k, v in s.items() if k != "chains_used")


def test_netcdf_round_trip_keeps_values_stats_and_attrs(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    llc = rng.normal(size=(C, 50))
    llc[3, 20:] = np.nan
    stats = {
        "energy": rng.normal(size=(C, 50)),
        "step_size": np.full((C, 50), 1e-4),
        "diverging": rng.random((C, 50)) < 0.1,
    }
    attrs = {"sampler": "sgld", "n": 5000, "beta": 0.1, "localized": True, "seed": np.int64(7)}
    idata = _run(llc, rng, sample_stats=stats, attrs=attrs)
    path = write_netcdf(idata, tmp_path / "run.nc")
    back = az.from_netcdf(path)
    for name in ("llc", "loss", "w_proj"):
        np.testing.assert_array_equal(back.posterior[name].values, idata.posterior[name].values)
    assert back.posterior["w_proj"].dims == ("chain", "draw", "w_proj_dim")
    for name, values in stats.items():
        np.testing.assert_array_equal(back.sample_stats[name].values, values)
    assert back.sample_stats["diverging"].dtype == bool
    assert {k: back.posterior.attrs[k] for k in attrs} == {**attrs, "localized": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run.nc"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    path = write_netcdf(_run(rng.normal(size=(2, 20)), rng, attrs={"version": 1}), tmp_path / "run.nc")
    before = path.read_bytes()
    broken = _run(rng.normal(size=(2, 20)), rng)
    broken.posterior.attrs["unwritable"] = None
    with pytest.raises(TypeError):
        write_netcdf(broken, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["run.nc"]


def test_attrs_that_netcdf_cannot_hold_are_refused() -> None:
    rng = np.random.default_rng(7)
    with pytest.raises(TypeError, match="widths"):
        _run(rng.normal(size=(2, 20)), rng, attrs={"widths": [8, 8]})


LLC_PLOTS = {"llc_running.png", "llc_rank.png", "llc_trace.png", "llc_ess_evolution.png", "llc_autocorr.png"}


def _assert_pngs(paths: list[Path]) -> None:
    for path in paths:
        assert path.stat().st_size > 0
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert min(image.size) > 100


def test_plots_include_energy_only_when_energy_is_recorded(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    llc = _ar1(rng, 0.5, C, 200) + 5.0
    open_figures = plt.get_fignums()
    with_energy = draw_plots(
        _run(llc, rng, sample_stats={"energy": rng.normal(size=(C, 200))}), tmp_path / "a", llc_true=5.0
    )
    without = draw_plots(_run(llc, rng), tmp_path / "b")
    assert {p.name for p in with_energy} == LLC_PLOTS | {"energy.png"}
    assert {p.name for p in without} == LLC_PLOTS
    assert {p.name for p in (tmp_path / "b").iterdir()} == LLC_PLOTS
    _assert_pngs(with_energy + without)
    assert plt.get_fignums() == open_figures


def test_plots_drop_diverged_chains_and_skip_what_needs_more_chains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    traced = []
    plot_trace = az.plot_trace

    def spy(data: az.InferenceData, **kwargs: object) -> object:
        traced.append(data.posterior["llc"].values)
        return plot_trace(data, **kwargs)

    # ArviZ draws NaN chains without complaint, so only what it is handed shows they were dropped.
    monkeypatch.setattr(az, "plot_trace", spy)
    rng = np.random.default_rng(9)
    llc = rng.normal(size=(3, 100))
    llc[0] = np.nan
    energy = rng.normal(size=(3, 100))
    energy[0] = np.nan
    two_left = draw_plots(_run(llc, rng, sample_stats={"energy": energy}), tmp_path / "two")
    assert {p.name for p in two_left} == LLC_PLOTS | {"energy.png"}
    np.testing.assert_array_equal(traced[0], llc[1:])
    _assert_pngs(two_left)
    llc[1, 50:] = np.nan
    one_left = draw_plots(_run(llc, rng), tmp_path / "one")
    assert {p.name for p in one_left} == LLC_PLOTS - {"llc_rank.png"}
    _assert_pngs(one_left)
    assert draw_plots(_run(np.full((2, 100), np.nan), rng), tmp_path / "none") == []


def test_the_trend_compares_the_last_quarter_with_the_second_in_the_chains_standard_errors() -> None:
    rng = np.random.default_rng(3)
    flat = rng.normal(10.0, 1.0, size=(C, T))
    steps = flat + np.repeat([0.0, 0.0, 1.0, 2.0], T // 4)[None, :]  # +2 from quarter 2 to quarter 4
    assert trend(steps)["llc_rise"] == pytest.approx(2.0 / np.mean(steps), rel=0.05)
    assert trend(steps)["llc_rise_z"] > 10 and abs(trend(flat)["llc_rise_z"]) < 3
    # One chain gives no standard error of the rise, and a short trace no quarters.
    assert trend(flat[:1]) == {} and trend(flat[:, :4]) == {}
