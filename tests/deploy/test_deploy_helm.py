"""The Helm chart (k8s/) lints and renders with the Helm library (helm-python-sdk, Helm SDK v4,
no helm binary) for the default and the GPU values; every rendered manifest validates: built-in
kinds against Kubernetes' JSON schemas (kubernetes-validate, strict), RayCluster / ServiceMonitor /
PodMonitor against the vendored CRD schemas in data/, and every Ray pod template against
Kubernetes' PodTemplateSpec. Selectors are checked against the labels they must match."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dyref_promql import DASHBOARD_DIR, ROOT

helm = pytest.importorskip("helm_python", reason="helm-python-sdk not installed (pip install -e '.[test]')")
kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed (pip install -e '.[test]')")
jsonschema = pytest.importorskip("jsonschema")

CHART = ROOT / "k8s"
DATA = Path(__file__).with_name("data")
KUBE = "1.30"
CRD_SCHEMAS = {("ray.io/v1", "RayCluster"): "raycluster-ray-v1.json",
               ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
               ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor-monitoring-v1.json"}
GPU_VALUES = yaml.safe_load((CHART / "values-gpu.yaml").read_text())
VALUE_SETS = {"default": {}, "gpu": GPU_VALUES}


def render(values: dict, namespace: str = "ml") -> list[dict]:
    chart = helm.Chart.load(str(CHART))
    chart.validate_schema(values)
    out = chart.render(values, name="dyref", namespace=namespace, is_install=True)
    docs = []
    for path, text in out.items():
        if path.endswith(".txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def _matches(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        op, val = e["operator"], labels.get(e["key"])
        if (op == "In" and val not in e["values"]) or (op == "NotIn" and val in e["values"]) \
                or (op == "Exists" and val is None) or (op == "DoesNotExist" and val is not None):
            return False
    return True


def _containers(docs):
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield d["metadata"]["name"], d["spec"]["template"]
        if d["kind"] == "RayCluster":
            yield d["metadata"]["name"] + "/head", d["spec"]["headGroupSpec"]["template"]
            for g in d["spec"]["workerGroupSpecs"]:
                yield d["metadata"]["name"] + "/" + g["groupName"], g["template"]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_chart_lints_clean(name):
    report = helm.lint(str(CHART), VALUE_SETS[name], strict=True, kube_version="v1.30.0")
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not serious, report


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_manifests_validate_against_kubernetes_and_crd_schemas(name):
    docs = render(VALUE_SETS[name])
    kinds = {d["kind"] for d in docs}
    assert {"RayCluster", "Job", "Deployment", "StatefulSet", "Service", "ServiceMonitor", "PodMonitor",
            "ConfigMap", "PersistentVolumeClaim", "Secret"} <= kinds
    for d in docs:
        key = (d["apiVersion"], d["kind"])
        where = f"{d['kind']}/{d['metadata']['name']}"
        if key in CRD_SCHEMAS:
            schema = json.loads((DATA / CRD_SCHEMAS[key]).read_text())
            errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(d), key=str)
            assert not errors, f"{where}: " + "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:5])
        else:
            try:
                kv.validate(d, KUBE, strict=True)
            except kv.ValidationError as e:
                pytest.fail(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
    for where, template in _containers(by_kind(docs, "RayCluster")):
        pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
        try:
            kv.validate(pod, KUBE, strict=True)
        except kv.ValidationError as e:
            pytest.fail(f"{where} pod template: {'.'.join(map(str, e.path))}: {e.message}")


def test_crd_schemas_reject_what_the_operator_would_reject():
    docs = render({})
    ray = by_kind(docs, "RayCluster")[0]
    schema = json.loads((DATA / CRD_SCHEMAS[("ray.io/v1", "RayCluster")]).read_text())
    bad = json.loads(json.dumps(ray))
    bad["spec"]["workerGroupSpecs"][0]["replicas"] = "two"
    del bad["spec"]["workerGroupSpecs"][1]["groupName"]
    bad["spec"]["headGroupSpec"]["rayStartParms"] = {}
    msgs = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(bad)]
    assert any("'two' is not of type 'integer'" in m for m in msgs)
    assert any("'groupName' is a required property" in m for m in msgs)
    assert any("rayStartParms" in m for m in msgs)
    sm = by_kind(docs, "ServiceMonitor")[0]
    sm["spec"]["endpoints"][0]["interval"] = "15 seconds"
    schema = json.loads((DATA / CRD_SCHEMAS[("monitoring.coreos.com/v1", "ServiceMonitor")]).read_text())
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(sm))


def test_values_schema_rejects_bad_values():
    chart = helm.Chart.load(str(CHART))
    for bad in ({"learner": {"kind": "Pod"}}, {"ray": {"auth": {"mode": "password"}}}, {"redis": {"maxmemory": "lots"}},
                {"ray": {"generators": {"gpusPerPod": -1}}}, {"no_such_key": 1}):
        with pytest.raises(helm.HelmError):
            chart.validate_schema(bad)


def test_gpu_values_request_gpus_for_generators_rewards_and_learner():
    docs = render(GPU_VALUES)
    ray = by_kind(docs, "RayCluster")[0]
    groups = {g["groupName"]: g for g in ray["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"generators", "rewards", "gateway"}
    for name, g in groups.items():
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) == 1, name
        role = {"generators": "generator", "rewards": "reward", "gateway": "gateway"}[name]
        assert json.loads(json.loads(g["rayStartParams"]["resources"])) == {role: 1}
    job = by_kind(docs, "Job")[0]
    assert int(job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) == 1
    gen = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "dyref-generator")
    args = gen["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--replicas") + 1] == "8"       # 8 pods x 1 actor
    assert by_kind(docs, "Ingress")
    default_ray = by_kind(render({}), "RayCluster")[0]
    for g in default_ray["spec"]["workerGroupSpecs"]:
        assert "nvidia.com/gpu" not in g["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_learner_keeps_checkpoints_on_a_pvc_and_can_be_a_deployment():
    docs = render({})
    pvc = by_kind(docs, "PersistentVolumeClaim")[0]
    job = by_kind(docs, "Job")[0]
    spec = job["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["runs"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["runs"] == "/data/runs"
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["DYREF_RL__CHECKPOINT_DIR"].startswith("/data/runs")
    assert spec["containers"][0]["args"][:2] == ["dyref", "learner"]
    dep = render({"learner": {"kind": "Deployment"}})
    assert not by_kind(dep, "Job")
    learner = next(d for d in by_kind(dep, "Deployment") if d["metadata"]["name"] == "dyref-learner")
    assert learner["spec"]["strategy"]["type"] == "Recreate"


def test_redis_bundled_or_external():
    docs = render({})
    sts = by_kind(docs, "StatefulSet")[0]
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction" and "--maxmemory" in args
    assert sts["spec"]["volumeClaimTemplates"]
    ext = render({"redis": {"bundled": False, "externalUrl": "rediss://user:pw@redis.example:6380/0"}})
    assert not by_kind(ext, "StatefulSet")
    for where, template in _containers(ext):
        env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0]["env"]}
        assert env["DYREF_REDIS__URL"] == "rediss://user:pw@redis.example:6380/0", where
    with pytest.raises(helm.HelmError, match="externalUrl"):
        render({"redis": {"bundled": False}})


def test_every_dyref_container_shares_config_and_ray_auth():
    docs = render({})
    secret = next(d for d in by_kind(docs, "Secret") if d["metadata"]["name"] == "dyref-ray-auth")
    assert len(secret["data"]["token"]) > 40
    for where, template in _containers(docs):
        c = template["spec"]["containers"][0]
        if "redis" in where:
            continue
        env = {e["name"]: e for e in c["env"]}
        assert env["DYREF_PROFILE"]["value"] == "cpu-tiny", where
        assert env["DYREF_METRICS_HOST"]["value"] == "0.0.0.0", where
        assert env["RAY_AUTH_MODE"]["value"] == "token", where
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "dyref-ray-auth", where
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True, where
    off = render({"ray": {"auth": {"mode": "disabled"}}})
    assert not [d for d in by_kind(off, "Secret") if d["metadata"]["name"] == "dyref-ray-auth"]
    for where, template in _containers(off):
        assert "RAY_AUTH_TOKEN" not in {e["name"] for e in template["spec"]["containers"][0].get("env", [])}, where


def test_monitors_select_the_pods_that_export_metrics():
    docs = render(GPU_VALUES)
    services = by_kind(docs, "Service")
    sm = by_kind(docs, "ServiceMonitor")[0]
    scraped = [s for s in services if _matches(sm["spec"]["selector"], s["metadata"]["labels"])]
    assert {s["metadata"]["name"] for s in scraped} == {"dyref-learner-metrics", "dyref-driver-metrics", "dyref-gateway"}
    endpoint_ports = {e["port"] for e in sm["spec"]["endpoints"]}
    pods = {name: t for name, t in _containers(docs)}
    for s in scraped:
        assert {p["name"] for p in s["spec"]["ports"]} & endpoint_ports, s["metadata"]["name"]
        if s["metadata"]["name"] == "dyref-gateway":  # KubeRay labels each worker group's pods with these
            assert s["spec"]["selector"] == {"ray.io/cluster": "dyref-ray", "ray.io/group": "gateway"}
            continue
        selected = [n for n, t in pods.items() if _matches({"matchLabels": s["spec"]["selector"]}, t["metadata"]["labels"])]
        assert selected, f"{s['metadata']['name']} selects no pod"
        for n in selected:
            ports = {p["name"] for p in pods[n]["spec"]["containers"][0]["ports"]}
            assert "metrics" in ports and any(p.get("readinessProbe") for p in pods[n]["spec"]["containers"]), n
    pm = by_kind(docs, "PodMonitor")[0]
    ray_pods = [n for n, t in pods.items() if _matches(pm["spec"]["selector"], t["metadata"]["labels"])]
    assert sorted(ray_pods) == ["dyref-ray/gateway", "dyref-ray/generators", "dyref-ray/head", "dyref-ray/rewards"]
    gen_ports = {p["name"]: p["containerPort"] for p in pods["dyref-ray/generators"]["spec"]["containers"][0]["ports"]}
    for ep in pm["spec"]["podMetricsEndpoints"]:
        assert ep["port"] in gen_ports or ep["port"] == "metrics"
    assert gen_ports["dyref-gen-0"] == 9101 and gen_ports["dyref-gen-7"] == 9108  # metricsPort + 1 + actor index


def test_one_configmap_per_dashboard_with_the_sidecar_label():
    docs = render({})
    cms = [d for d in by_kind(docs, "ConfigMap") if d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    files = sorted(p.name for p in DASHBOARD_DIR.glob("*.json"))
    assert sorted(k for cm in cms for k in cm["data"]) == files
    for cm in cms:
        (fname, body), = cm["data"].items()
        assert json.loads(body) == json.loads((DASHBOARD_DIR / fname).read_text())
    off = render({"monitoring": {"grafanaDashboards": {"enabled": False}}})
    assert not [d for d in by_kind(off, "ConfigMap") if d["metadata"].get("labels", {}).get("grafana_dashboard")]


def test_gateway_service_and_ingress():
    docs = render(GPU_VALUES)
    svc = next(s for s in by_kind(docs, "Service") if s["metadata"]["name"] == "dyref-gateway")
    assert svc["spec"]["ports"][0]["targetPort"] == "serve"
    ray = by_kind(docs, "RayCluster")[0]["spec"]
    groups = {g["groupName"]: g["template"]["spec"]["containers"][0] for g in ray["workerGroupSpecs"]}
    # the gateway's replicas serve HTTP on the gateway group's pods; the head runs no Serve proxy
    assert {"name": "serve", "containerPort": 8000} in groups["gateway"]["ports"]
    head = ray["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "serve" not in {p["name"] for p in head["ports"]}
    ing = by_kind(docs, "Ingress")[0]
    assert ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "dyref-gateway"
    gw = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "dyref-gateway")
    args = gw["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["dyref", "gateway", "serve"] and args[args.index("--host") + 1] == "0.0.0.0"
    assert not by_kind(render({}), "Ingress")


def test_notes_and_readme_exist():
    out = helm.Chart.load(str(CHART)).render({}, name="dyref", namespace="ml", is_install=True)
    notes = next(v for k, v in out.items() if k.endswith("NOTES.txt"))
    assert "port-forward svc/dyref-gateway" in notes and "dyref-learner" in notes
    readme = (CHART / "README.md").read_text()
    for step in ("kuberay-operator", "helm install", "helm upgrade", "/generate", "values-gpu.yaml"):
        assert step in readme, step


def test_learner_with_trainer_workers_is_a_ray_node_sized_for_them():
    one = by_kind(render({}), "Job")[0]["spec"]["template"]["spec"]["containers"][0]
    assert one["args"][:2] == ["dyref", "learner"]  # one worker: Redis only, no Ray
    docs = render({"learner": {"workers": 4, "strategy": "fsdp2", "gpus": 4, "gpusPerWorker": 1, "cpusPerWorker": 2}})
    c = by_kind(docs, "Job")[0]["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][:3] == ["ray-node", "dyref", "learner"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DYREF_RL__LEARNER__WORKERS"] == "4" and env["DYREF_RL__LEARNER__STRATEGY"] == "fsdp2"
    assert json.loads(env["RAY_RESOURCES"]) == {"trainer": 1}
    assert env["RAY_NUM_CPUS"] == "8" and env["RAY_NUM_GPUS"] == "4"
    assert env["RAY_HEAD_ADDRESS"].endswith("-head-svc.ml.svc:6379")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 4
    # the chart refuses workers that cannot have their GPUs, and a strategy it does not know
    with pytest.raises(Exception, match=r"learner\.workers=4 x learner\.gpusPerWorker=1 needs 4 GPUs, but learner\.gpus=2"):
        render({"learner": {"workers": 4, "gpus": 2, "gpusPerWorker": 1}})
    with pytest.raises(Exception, match="strategy"):
        render({"learner": {"strategy": "zero3"}})


def test_learner_on_the_direct_weight_path_joins_ray_even_with_one_worker():
    # its weight source actor lives on the learner's node (common/transport/direct.py)
    docs = render({"learner": {"weightTransport": "direct"}})
    c = by_kind(docs, "Job")[0]["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][:3] == ["ray-node", "dyref", "learner"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DYREF_RL__LEARNER__WEIGHT_TRANSPORT"] == "direct" and json.loads(env["RAY_RESOURCES"]) == {"trainer": 1}
    one = {e["name"]: e.get("value") for e in by_kind(render({}), "Job")[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert one["DYREF_RL__LEARNER__WEIGHT_TRANSPORT"] == "redis" and "RAY_RESOURCES" not in one
    with pytest.raises(Exception, match="weightTransport"):
        render({"learner": {"weightTransport": "nccl"}})
