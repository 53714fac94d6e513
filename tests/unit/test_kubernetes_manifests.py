"""deploy/kubernetes: the kustomize base and its example overlay, rendered and checked offline.

Rendering: with `kubectl kustomize` where kubectl is on PATH, and always with `render` below,
a deliberately tiny kustomize that knows only what the overlay may use (resources, namespace,
`images:`, strategic-merge `patches:` of the base's objects) and refuses anything else, so
the checks run on a machine without kubectl too. Where kubectl exists, both renderings must
be the same objects: the tiny one cannot drift from kustomize's unnoticed.

Checks: every rendered object against the Kubernetes OpenAPI schemas of the oldest and the
newest version `kubernetes-validate` ships that we support (strict: an unknown field fails),
then what a schema cannot say: probes, security context, resources, Secret references, the
volumes serve writes to, env var names that are real settings, the serve command line that
the CLI accepts.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from reconciler.cli.main import build_parser, cmd_serve
from reconciler.config import Settings
from tests.helpers import ROOT

DEPLOY = ROOT / "deploy" / "kubernetes"
BASE = DEPLOY / "base"
OVERLAY = DEPLOY / "overlays" / "example"
# the oldest Kubernetes the manifests promise to work on, and the newest schemas shipped
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
# environment variables that are not reconciler settings but are read by what it runs
FOREIGN_ENV = {"SOPS_AGE_KEY_FILE"}
SECRET_SETTINGS = {"RECONCILER_DATABASE_URL", "RECONCILER_MASTER_KEYS", "RECONCILER_ADMIN_TOKEN"}
# what `reconciler serve` may write (docs/operations.md#kubernetes): the git checkout under the
# data dir, and a /tmp for tools that expect one
WRITABLE = {"/var/lib/reconciler", "/tmp"}  # noqa: S108 (paths inside the container)

Obj = dict[str, Any]


# --- a tiny kustomize ---------------------------------------------------------------------------

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
# list fields whose items strategic merge joins by `name` (Kubernetes' patchMergeKey for each)
MERGE_BY_NAME = {
    "containers",
    "initContainers",
    "env",
    "ports",
    "volumes",
    "volumeMounts",
}


def render(folder: Path) -> list[Obj]:
    """The objects of the kustomization in `folder`, as `kubectl kustomize` renders the subset
    of kustomize this repository's manifests use; anything else is refused, not guessed."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED
    assert not unknown, f"{folder}: the test's renderer does not know {sorted(unknown)}"
    objects: list[Obj] = []
    for entry in kustomization.get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            objects.extend(render(path))
        else:
            objects.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for patch in kustomization.get("patches", []):
        assert set(patch) == {"path"}, f"{folder}: only `patches: [{{path: ...}}]` is supported"
        body = yaml.safe_load((folder / patch["path"]).read_text())
        targets = [o for o in objects if _key(o) == _key(body)]
        assert len(targets) == 1, f"{patch['path']}: patches no object of the resources"
        index = objects.index(targets[0])
        objects[index] = _merge(targets[0], body)
    for image in kustomization.get("images", []):
        for obj in objects:
            for container in _containers(obj):
                if container["image"].split(":")[0] == image["name"]:
                    name = image.get("newName", image["name"])
                    container["image"] = f"{name}:{image['newTag']}" if "newTag" in image else name
    if "namespace" in kustomization:
        for obj in objects:
            obj["metadata"]["namespace"] = kustomization["namespace"]
    return objects


def _merge(base: Any, patch: Any, field: str = "") -> Any:
    """Strategic merge as kustomize does it for these objects: maps merged key by key, lists
    of MERGE_BY_NAME joined by item name, every other list (args) replaced by the patch's."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            merged[key] = _merge(base[key], value, key) if key in base else copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_BY_NAME:
        merged_list = copy.deepcopy(base)
        for item in patch:
            names = [i["name"] for i in merged_list]
            if item["name"] in names:
                at = names.index(item["name"])
                merged_list[at] = _merge(merged_list[at], item)
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
    return copy.deepcopy(patch)


def _key(obj: Obj) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def _containers(obj: Obj) -> list[Obj]:
    if obj["kind"] != "Deployment":
        return []
    pod = obj["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def _kubectl(folder: Path) -> list[Obj]:
    run = subprocess.run(
        ["kubectl", "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    return [d for d in yaml.safe_load_all(run.stdout) if d]


def _by_key(objects: list[Obj]) -> dict[tuple[str, str], Obj]:
    keyed = {_key(o): o for o in objects}
    assert len(keyed) == len(objects), "two objects of one kind and name"
    return keyed


@pytest.fixture(scope="module", params=["base", "overlay"])
def rendered(request: pytest.FixtureRequest) -> tuple[str, dict[tuple[str, str], Obj]]:
    folder = BASE if request.param == "base" else OVERLAY
    return request.param, _by_key(render(folder))


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on PATH")
@pytest.mark.parametrize("folder", [BASE, OVERLAY], ids=["base", "overlay"])
def test_kubectl_kustomize_renders_what_the_test_renders(folder: Path) -> None:
    assert _by_key(_kubectl(folder)) == _by_key(render(folder))


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_passes_the_kubernetes_schemas(
    rendered: tuple[str, dict[tuple[str, str], Obj]], version: str
) -> None:
    _, objects = rendered
    assert objects
    for key, obj in objects.items():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{key} against Kubernetes {version}: {exc.message} at {list(exc.path)}")


def test_the_objects(rendered: tuple[str, dict[tuple[str, str], Obj]]) -> None:
    _, objects = rendered
    assert sorted(objects) == [
        ("ConfigMap", "vapi-reconciler"),
        ("Deployment", "vapi-reconciler"),
        ("PodDisruptionBudget", "vapi-reconciler"),
        ("Service", "vapi-reconciler"),
        ("ServiceAccount", "vapi-reconciler"),
    ], "no Secret object: the manifests reference Secrets created out of band"


def _deployment(objects: dict[tuple[str, str], Obj]) -> tuple[Obj, Obj, Obj]:
    deployment = objects["Deployment", "vapi-reconciler"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return deployment, pod, container


def test_two_replicas_with_a_disruption_budget_and_a_service(
    rendered: tuple[str, dict[tuple[str, str], Obj]],
) -> None:
    _, objects = rendered
    deployment, pod, container = _deployment(objects)
    assert deployment["spec"]["replicas"] == 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    pdb = objects["PodDisruptionBudget", "vapi-reconciler"]["spec"]
    assert pdb["minAvailable"] == 1
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    service = objects["Service", "vapi-reconciler"]["spec"]
    assert service["selector"].items() <= labels.items()
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["ports"]} <= port_names
    assert pod["serviceAccountName"] == "vapi-reconciler"
    assert pod["automountServiceAccountToken"] is False


def test_probes_on_healthz_and_readyz(rendered: tuple[str, dict[tuple[str, str], Obj]]) -> None:
    _, objects = rendered
    _, _, container = _deployment(objects)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    listen = container["args"][container["args"].index("--listen") + 1]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert ports[container[probe]["httpGet"]["port"]] == int(listen.rsplit(":", 1)[1])


def test_non_root_read_only_and_no_capabilities(
    rendered: tuple[str, dict[tuple[str, str], Obj]],
) -> None:
    _, objects = rendered
    _, pod, container = _deployment(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user (Dockerfile)
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # the read-only root leaves writable exactly the emptyDirs serve writes to
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {
        m["mountPath"]
        for m in container["volumeMounts"]
        if not m.get("readOnly") and "emptyDir" in volumes[m["name"]]
    }
    assert writable == WRITABLE
    assert all(
        "emptyDir" in volumes[m["name"]] or m.get("readOnly") for m in container["volumeMounts"]
    )


def test_resources_requested_and_limited(rendered: tuple[str, dict[tuple[str, str], Obj]]) -> None:
    _, objects = rendered
    _, _, container = _deployment(objects)
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}, kind


def test_secrets_only_by_reference(rendered: tuple[str, dict[tuple[str, str], Obj]]) -> None:
    _, objects = rendered
    _, pod, container = _deployment(objects)
    env = {e["name"]: e for e in container["env"]}
    for name in SECRET_SETTINGS:
        assert set(env[name]) == {"name", "valueFrom"}, name
        assert "secretKeyRef" in env[name]["valueFrom"], name
    config = objects["ConfigMap", "vapi-reconciler"]["data"]
    assert not SECRET_SETTINGS & set(config)
    assert not {"RECONCILER_MASTER_KEY", "SOPS_AGE_KEY"} & (set(config) | set(env))
    # the age key: a file from a Secret volume, named by SOPS_AGE_KEY_FILE
    key_file = Path(env["SOPS_AGE_KEY_FILE"]["value"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount = mounts[str(key_file.parent)]
    assert mount["readOnly"] is True
    (volume,) = (v for v in pod["volumes"] if v["name"] == mount["name"])
    assert [i["path"] for i in volume["secret"]["items"]] == [key_file.name]


def test_every_env_var_is_a_real_setting(rendered: tuple[str, dict[tuple[str, str], Obj]]) -> None:
    _, objects = rendered
    _, _, container = _deployment(objects)
    settings = {f.alias for f in Settings.model_fields.values() if f.alias}
    names = {e["name"] for e in container["env"]}
    for source in container["envFrom"]:
        names |= set(objects["ConfigMap", source["configMapRef"]["name"]]["data"])
    unknown = names - settings - FOREIGN_ENV
    assert not unknown, f"not a setting of reconciler/config.py: {sorted(unknown)}"
    # and the settings load from the ConfigMap's values
    config = objects["ConfigMap", "vapi-reconciler"]["data"]
    Settings(**config)


def test_the_command_is_one_the_cli_accepts(
    rendered: tuple[str, dict[tuple[str, str], Obj]],
) -> None:
    _, objects = rendered
    _, _, container = _deployment(objects)
    assert "command" not in container, "the image's entrypoint is `reconciler`"
    args = build_parser().parse_args(container["args"])
    assert args.func is cmd_serve
    assert args.git_url and args.git_ref


def test_the_overlay_sets_the_image_and_the_base_leaves_a_placeholder() -> None:
    _, _, base = _deployment(_by_key(render(BASE)))
    _, _, overlay = _deployment(_by_key(render(OVERLAY)))
    assert base["image"] == "vapi-reconciler"
    assert overlay["image"].startswith("ghcr.io/") and ":" in overlay["image"]
    assert all(o["metadata"]["namespace"] == "voice" for o in render(OVERLAY))
