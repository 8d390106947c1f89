"""deploy/k8s: every manifest validates against the Kubernetes API schemas (kubernetes-validate's
bundled JSON schemas, strict: unknown fields are errors; no network), the kustomization renders
and sets N, the image and the sweep file, and the workers run the command README documents.

The kustomization is rendered by `render` below, a small Python implementation of exactly the
kustomize features the file uses (resources, configMapGenerator with files and literals and its
name-hash suffix, inline JSON6902 patches, images, replacements); any other field fails the test
rather than being ignored. Where kubectl is installed, its built-in kustomize renders the same
files and the two results must agree (names up to the hash suffix, whose algorithm differs)."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from vitsweep.sweep.spec import load_sweep

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
MANIFESTS = ("postgres.yaml", "mlflow.yaml", "dashboard.yaml", "workers.yaml")
# The oldest Kubernetes whose API schema takes the Job as written (podFailurePolicy rules with
# onExitCodes alone), and the newest kubernetes-validate knows.
VERSIONS = ("1.29", latest_version())
N_SHIPPED = 4
IMAGE = "vitsweep"


# --- a small kustomize ---------------------------------------------------------------------------

SUPPORTED = {"apiVersion", "kind", "resources", "images", "patches", "replacements", "configMapGenerator"}


def render(root: Path) -> list[dict[str, Any]]:
    """kustomize build ROOT, for the fields deploy/k8s/kustomization.yaml uses (in kustomize's order:
    resources, generators, patches, images, replacements; then references to generated names)."""
    k = yaml.safe_load((root / "kustomization.yaml").read_text())
    assert set(k) <= SUPPORTED, f"render() does not implement {set(k) - SUPPORTED}: extend it or the test lies"
    docs = [d for f in k["resources"] for d in yaml.safe_load_all((root / f).read_text()) if d]
    renames: dict[str, str] = {}
    for gen in k.get("configMapGenerator", []):
        assert set(gen) <= {"name", "files", "literals"}, gen
        data: dict[str, str] = {}
        for entry in gen.get("files", []):
            key, _, path = entry.rpartition("=")
            data[key or Path(path).name] = (root / path).read_text()
        for entry in gen.get("literals", []):
            key, _, value = entry.partition("=")
            data[key] = value
        digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]
        renames[gen["name"]] = f"{gen['name']}-{digest}"
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": renames[gen["name"]]}, "data": data})
    for p in k.get("patches", []):
        assert set(p) == {"target", "patch"}, p
        targets = [d for d in docs if matches(d, p["target"])]
        assert targets, f"patch target {p['target']} matches no resource"
        for d in targets:
            for op in yaml.safe_load(p["patch"]):
                json_patch(d, op)
    for img in k.get("images", []):
        for d in docs:
            for c in containers(d):
                name, tag = split_image(c["image"])
                if name == img["name"]:
                    c["image"] = f"{img.get('newName', name)}:{img.get('newTag', tag)}"
    for r in k.get("replacements", []):
        sources = [d for d in docs if matches(d, r["source"])]
        assert len(sources) == 1, r["source"]
        value = get_path(sources[0], r["source"]["fieldPath"])
        for t in r["targets"]:
            selected = [d for d in docs if matches(d, t["select"])]
            assert selected, t["select"]
            for d in selected:
                for field in t["fieldPaths"]:
                    set_path(d, field, copy.deepcopy(value))
    for d in docs:
        for pod in pod_specs(d):
            for c in pod.get("initContainers", []) + pod["containers"]:
                for ref in c.get("envFrom", []):
                    if "configMapRef" in ref:
                        ref["configMapRef"]["name"] = renames.get(ref["configMapRef"]["name"], ref["configMapRef"]["name"])
                for e in c.get("env", []):
                    key_ref = e.get("valueFrom", {}).get("configMapKeyRef")
                    if key_ref:
                        key_ref["name"] = renames.get(key_ref["name"], key_ref["name"])
            for v in pod.get("volumes", []):
                if "configMap" in v:
                    v["configMap"]["name"] = renames.get(v["configMap"]["name"], v["configMap"]["name"])
    return docs


def matches(doc: dict[str, Any], selector: dict[str, str]) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    want = {"kind": doc["kind"], "name": doc["metadata"]["name"], "group": group, "version": version}
    return all(want[key] == value for key, value in selector.items() if key != "fieldPath")


def json_patch(doc: dict[str, Any], op: dict[str, Any]) -> None:
    *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in op["path"].lstrip("/").split("/")]
    node = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) and last != "-" else last
    if op["op"] == "replace":
        assert (key < len(node)) if isinstance(node, list) else key in node, f"replace of a missing {op['path']}"
        node[key] = op["value"]
    elif op["op"] == "add" and isinstance(node, list):
        node.insert(len(node) if key == "-" else key, op["value"])
    elif op["op"] == "add":
        node[key] = op["value"]
    elif op["op"] == "remove":
        del node[key]
    else:
        raise AssertionError(f"render() does not implement the JSON patch op {op['op']!r}")


def get_path(doc: dict[str, Any], dotted: str) -> Any:
    node: Any = doc
    for part in dotted.split("."):
        node = node[part]
    return node


def set_path(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = doc
    for part in parents:
        node = node[part]
    assert last in node, f"replacement target {dotted} does not exist"
    node[last] = value


def pod_specs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
        yield doc["spec"]["template"]["spec"]


def containers(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for pod in pod_specs(doc):
        yield from pod.get("initContainers", [])
        yield from pod["containers"]


def split_image(image: str) -> tuple[str, str]:
    """(name, tag) of an image reference without a digest; a registry's port is part of the name."""
    if ":" not in image.rsplit("/", 1)[-1]:
        return image, "latest"
    name, _, tag = image.rpartition(":")
    return name, tag


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {strip_hash(d["metadata"]["name"]) if kind == "ConfigMap" else d["metadata"]["name"]: d
            for d in docs if d["kind"] == kind}


def strip_hash(name: str) -> str:
    return re.sub(r"-[a-z0-9]{10}$", "", name)


def the_job(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return by_kind(docs, "Job")["vitsweep-workers"]


def worker_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (worker,) = [c for c in the_job(docs)["spec"]["template"]["spec"]["containers"] if c["name"] == "worker"]
    return worker


def copy_of_deploy(tmp_path: Path) -> Path:
    root = tmp_path / "k8s"
    shutil.copytree(K8S, root)
    return root


def edit_kustomization(root: Path, old: str, new: str) -> None:
    path = root / "kustomization.yaml"
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


# --- the tests -----------------------------------------------------------------------------------

def test_every_manifest_validates_against_the_kubernetes_schemas():
    docs = [d for f in MANIFESTS for d in yaml.safe_load_all((K8S / f).read_text()) if d] + render(K8S)
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "Deployment", "Service", "PersistentVolumeClaim", "Job", "ConfigMap"} <= kinds
    for version in VERSIONS:
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} on Kubernetes {version}: {e.message} "
                            f"at {'/'.join(map(str, e.path))}")


def test_the_validation_catches_a_mistake():
    job = copy.deepcopy(the_job(render(K8S)))
    job["spec"]["paralellism"] = 4  # a typo
    with pytest.raises(kubernetes_validate.ValidationError, match="paralellism"):
        kubernetes_validate.validate(job, VERSIONS[-1], strict=True)


def test_the_job_is_indexed_with_n_pods_of_one_gpu_each():
    job = the_job(render(K8S))
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == N_SHIPPED
    pod = spec["template"]["spec"]
    worker = worker_container(render(K8S))
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["restartPolicy"] == "Never"
    # a user's mistake (exit 2) fails the Job at once; a preemption (SIGTERM: trial re-queued) is not a failure
    rules = {r["action"]: r for r in spec["podFailurePolicy"]["rules"]}
    assert rules["FailJob"]["onExitCodes"] == {"containerName": "worker", "operator": "In", "values": [2]}
    assert rules["Ignore"]["onPodConditions"][0]["type"] == "DisruptionTarget"


def readme_worker_command() -> list[str]:
    """The multi-host worker command in README's "Beyond one machine" (its first `vitsweep run`)."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("Without containers, on each GPU machine"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    command = re.search(r"^vitsweep run .*?(?<!\\)$", block.replace("\\\n", ""), re.M).group(0)
    return shlex.split(command)


def test_the_workers_run_the_command_readme_documents():
    docs = render(K8S)
    worker = worker_container(docs)
    job_argv = worker["command"] + worker["args"]
    readme_argv = readme_worker_command()
    assert job_argv[:2] == readme_argv[:2] == ["vitsweep", "run"]
    assert [a for a in job_argv if a.startswith("-")] == [a for a in readme_argv if a.startswith("-")] \
        == ["--storage", "--tracking-uri"]
    # README's placeholders filled in with the cluster's: the ConfigMap's defaults, the Secret's user
    # and password, the Services' names
    defaults = by_kind(docs, "ConfigMap")["vitsweep-db-defaults"]["data"]
    env = {**defaults, "POSTGRES_USER": "USER", "POSTGRES_PASSWORD": "PASSWORD"}

    def expand(arg: str) -> str:  # Kubernetes' $(VAR) expansion of command and args
        return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg)

    job = dict(zip(job_argv[3::2], map(expand, job_argv[4::2])))
    readme = dict(zip(readme_argv[3::2], readme_argv[4::2]))
    assert job["--storage"] == readme["--storage"].replace("DBHOST", "postgres")
    assert job["--tracking-uri"] == readme["--tracking-uri"].replace("MLFLOWHOST", "mlflow")
    # the sweep file: the ConfigMap mounted where the argument points (relative to the image's /app)
    sweep_arg = Path(job_argv[2])
    mount = next(m for m in worker["volumeMounts"] if Path("/app", sweep_arg).parent == Path(m["mountPath"]))
    volume = next(v for v in the_job(docs)["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert strip_hash(volume["configMap"]["name"]) == "vitsweep-sweep"
    assert sweep_arg.name in by_kind(docs, "ConfigMap")["vitsweep-sweep"]["data"]


def test_the_hosts_and_ports_in_the_commands_are_services_of_the_deployment():
    docs = render(K8S)
    services = by_kind(docs, "Service")
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    defaults = by_kind(docs, "ConfigMap")["vitsweep-db-defaults"]["data"]
    for host, port in ((defaults["POSTGRES_HOST"], int(defaults["POSTGRES_PORT"])), ("mlflow", 5000),
                       ("optuna-dashboard", 8080)):
        service = services[host]
        assert port in [p["port"] for p in service["spec"]["ports"]]
        assert any(service["spec"]["selector"].items() <= labels.items() for labels in pods), host
    # every ConfigMap and claim a pod names exists (the Secret vitsweep-db is the user's: README)
    names = {(d["kind"], strip_hash(d["metadata"]["name"])) for d in docs}
    claims = {t["metadata"]["name"] for d in docs if d["kind"] == "StatefulSet" for t in d["spec"]["volumeClaimTemplates"]}
    for d in docs:
        for pod in pod_specs(d):
            for v in pod.get("volumes", []):
                if "configMap" in v:
                    assert ("ConfigMap", strip_hash(v["configMap"]["name"])) in names, v
                if "persistentVolumeClaim" in v:
                    assert ("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) in names, v
            for c in pod.get("initContainers", []) + pod["containers"]:
                for m in c.get("volumeMounts", []):
                    assert m["name"] in {v["name"] for v in pod.get("volumes", [])} | claims, (c["name"], m)


def test_the_kustomization_sets_n_the_image_and_the_sweep_file(tmp_path):
    root = copy_of_deploy(tmp_path)
    (root / "mine.yaml").write_text((REPO / "sweeps" / "smoke.yaml").read_text())
    edit_kustomization(root, "value: 4", "value: 12")
    edit_kustomization(root, "newName: vitsweep  # REGISTRY/vitsweep", "newName: registry.example.org/ml/vitsweep")
    edit_kustomization(root, 'newTag: "0.1.0"', 'newTag: "2.3"')
    edit_kustomization(root, "files: [sweep.yaml]", "files: [sweep.yaml=mine.yaml]")
    docs = render(root)
    spec = the_job(docs)["spec"]
    assert spec["completions"] == spec["parallelism"] == 12
    images = {c["name"]: c["image"] for d in docs for c in containers(d)}
    assert images == {"wait-for-stores": "registry.example.org/ml/vitsweep:2.3", "worker": "registry.example.org/ml/vitsweep:2.3",
                      "mlflow": "registry.example.org/ml/vitsweep:2.3", "dashboard": "registry.example.org/ml/vitsweep:2.3",
                      "postgres": "postgres:16"}
    assert by_kind(docs, "ConfigMap")["vitsweep-sweep"]["data"] == {"sweep.yaml": (REPO / "sweeps" / "smoke.yaml").read_text()}
    shipped = by_kind(render(K8S), "ConfigMap")["vitsweep-sweep"]["metadata"]["name"]
    assert by_kind(docs, "ConfigMap")["vitsweep-sweep"]["metadata"]["name"] != shipped  # a new sweep, a new name


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed (its kustomize cross-checks render())")
@pytest.mark.parametrize("edited", [False, True], ids=["shipped", "edited"])
def test_kustomize_itself_renders_the_same(tmp_path, edited):
    root = copy_of_deploy(tmp_path)
    if edited:
        edit_kustomization(root, "value: 4", "value: 7")
        edit_kustomization(root, 'newTag: "0.1.0"', 'newTag: "9"')
    out = subprocess.run(["kubectl", "kustomize", str(root)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    theirs = [d for d in yaml.safe_load_all(out.stdout) if d]

    def normal(docs: list[dict[str, Any]]) -> list[str]:
        text = [json.dumps(d, sort_keys=True) for d in docs]
        for d in docs:  # generated names: the same prefix, a hash suffix of each tool's own
            if d["kind"] == "ConfigMap" and strip_hash(d["metadata"]["name"]) != d["metadata"]["name"]:
                text = [t.replace(f'"{d["metadata"]["name"]}"', f'"{strip_hash(d["metadata"]["name"])}-HASH"') for t in text]
        return sorted(text)

    assert normal(theirs) == normal(render(root))


def test_the_shipped_sweep_is_adan_betas_and_valid():
    shipped = yaml.safe_load((K8S / "sweep.yaml").read_text())
    assert shipped == yaml.safe_load((REPO / "sweeps" / "adan_betas.yaml").read_text())
    assert load_sweep(K8S / "sweep.yaml").study.name == "adan_betas"


def test_an_external_database_needs_only_the_secret(tmp_path):
    root = copy_of_deploy(tmp_path)
    edit_kustomization(root, "  - postgres.yaml", "")
    docs = render(root)
    assert not [d for d in docs if d["metadata"]["name"].startswith("postgres")]
    for doc in docs:
        kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)
    for d in docs:
        for c in containers(d):
            # the database's location only through the ConfigMap, overridden by the Secret (the later envFrom wins)
            assert "postgres:" not in json.dumps(c), c["name"]
            refs = [next(iter(r)) for r in c.get("envFrom", [])]
            assert refs == ["configMapRef", "secretRef"], c["name"]
            assert c["envFrom"][1]["secretRef"]["name"] == "vitsweep-db"


def test_no_credentials_in_the_manifests():
    docs = render(K8S)
    assert "Secret" not in {d["kind"] for d in docs}  # created by the user (README), never committed
    for d in docs:
        assert "POSTGRES_PASSWORD" not in d.get("data", {}), d["metadata"]["name"]
        for c in containers(d):
            assert "POSTGRES_PASSWORD" not in {e["name"] for e in c.get("env", [])}, c["name"]


def test_the_init_script_is_compose_s():
    init = by_kind(render(K8S), "ConfigMap")["postgres-init"]["data"]["10-create-mlflow-db.sh"]
    assert init == (REPO / "docker" / "create-mlflow-db.sh").read_text()
