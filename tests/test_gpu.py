"""CUDA jobs: allowed only when the data owner's policy says so, and only where a GPU is; on a GPU the
job trains with device="cuda" and is released like any other. The GPU cases skip without a GPU
(`benchmarks/gpu.py` is the fuller check to run on one)."""

from __future__ import annotations

import pytest
import xgboost as xgb

from remote_magic.client.errors import RemoteError
from remote_magic_server.jobs.tasks import gpu_present
from tests.serverproc import running

SPEC = {"dataset": "breast_cancer_rules", "label": "malignant", "eval": {"fraction": 0.25, "seed": 2}}
HAS_GPU = gpu_present() and bool(xgb.build_info().get("USE_CUDA"))


@pytest.fixture(scope="module")
def gpu_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("gpu")
    users = {"alice": ["breast_cancer_rules"]}
    with running(base / "data", base / "server.log", users, policy='devices = ["cpu", "cuda"]') as server:
        yield server


def test_cuda_is_refused_where_the_policy_does_not_allow_it(server):
    with pytest.raises(RemoteError) as refused:
        server.client().train(xgb.XGBClassifier(n_estimators=2, device="cuda"), SPEC)
    assert refused.value.code == "parameter_out_of_bounds" and "allows 'cpu'" in refused.value.message
    assert server.client().dataset("breast_cancer_rules").bounds.devices == ["cpu"]


def test_the_policy_can_allow_cuda(gpu_server):
    assert gpu_server.client().dataset("breast_cancer_rules").bounds.devices == ["cpu", "cuda"]
    cpu = gpu_server.client().train(xgb.XGBClassifier(n_estimators=3, max_depth=2), SPEC, timeout=120)
    assert cpu.rounds["total"] == 3


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU: the job trains instead")
def test_cuda_without_a_gpu_is_refused_with_a_fixed_message(gpu_server):
    with pytest.raises(RemoteError) as refused:
        gpu_server.client().train(xgb.XGBClassifier(n_estimators=2, device="cuda"), SPEC, timeout=120)
    assert refused.value.code == "parameter_out_of_bounds" and "needs a GPU" in refused.value.message


@pytest.mark.skipif(not HAS_GPU, reason="no NVIDIA GPU (or an XGBoost built without CUDA)")
def test_a_cuda_job_trains_on_the_gpu_and_matches_the_cpu(gpu_server):
    model = dict(n_estimators=20, max_depth=3)
    on_gpu = gpu_server.client().train(xgb.XGBClassifier(**model, device="cuda"), SPEC, timeout=300)
    on_cpu = gpu_server.client().train(xgb.XGBClassifier(**model), SPEC, timeout=300)
    assert on_gpu.rounds == on_cpu.rounds and on_gpu.summary == on_cpu.summary
    assert abs(on_gpu.metrics["auc"] - on_cpu.metrics["auc"]) <= 0.005
    status = gpu_server.client().job(on_gpu.job_id).status
    assert status.isolation is not None and status.isolation.get("gpu", "none found") != "none found"
